"""Budget before launch (bench.study.budget): each run's FLOPs, the meta-device build, GPU-hours, plan's flags."""
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from bench.cli import main
from bench.data import dataset_entry
from bench.methods import create_method
from bench.study import budget
from bench.study.baselines import baseline_config
from bench.study.config import resolve
from bench.study.spec import load_study
from bench.targets import create_target
from test_bad_inputs import imagefolder

REPO = Path(__file__).resolve().parents[1]
AVGPOOL = {"linear_probe": {"feature": "avgpool"}, "knn": {"feature": "avgpool"}}
TINY_PRESETS = [  # each method's tiny preset, on the data its small profile reads
    ("mae", "mae_vit_tiny_patch4", {}, "random"),
    ("beit", "beit_vit_tiny_patch4", {}, "block"),
    ("simmim", "simmim_vit_tiny_patch4", {}, "random"),
    ("simmim", "simmim_swin_tiny_patch2", {}, "random"),
    ("spark", "spark_resnet_tiny", {}, "random"),
    ("videomae", "videomae_vit_tiny_patch8", {"name": "moving_fashion_mnist", "frames": 16}, "tube"),
]


def tiny_config(method, preset, data=None, strategy="random", ratio=0.75):
    return resolve({"method": method, "model": {"preset": preset}, "evals": AVGPOOL,
                    "data": {"name": "fashion_mnist", "img_size": 32, **(data or {})},
                    "masking": {"strategy": strategy, "ratio": ratio}})


def cpu_flops(cfg, ratio):
    """flops_per_image of the config's model built the ordinary way, on the CPU."""
    method = create_method(cfg["method"])
    model = method.build_model(cfg, dataset_entry(cfg["data"]["name"]).channels, create_target("pixel"))
    return method.flops_per_image(model, ratio)


# ----------------------------------------------------------------------------- one run's FLOPs
def test_run_budget_is_flops_per_image_times_images_times_epochs(tiny_base):
    # k-NN on avgpool, the probe on cls: not the same features, so each extracts its own
    cfg = resolve({**tiny_base, "evals": {**tiny_base["evals"], "knn": {"enabled": True, "feature": "avgpool"}}})
    assert cfg["evals"]["linear_probe"]["feature"] == "cls"
    forward, encoder = cpu_flops(cfg, 0.75)["total"], cpu_flops(cfg, 0.0)["encoder"]
    out = budget.run_budget(cfg, 512, 256)
    assert out["pretrain"] == 3 * forward * 512 * 2  # pretrain.epochs 2
    assert out["finetune"] == 3 * encoder * 512 * 1 + encoder * 256
    assert out["linear_probe"] == encoder * (512 + 256)  # augmentation none: features computed once
    assert out["knn"] == encoder * (512 + 256)
    assert out["evals"] == out["finetune"] + out["linear_probe"] + out["knn"]
    assert out["total"] == out["pretrain"] + out["evals"] and out["train_per_image"] == 3 * forward
    # MAE's encoder at ratio 0 sees every patch: the eval ViT's cost, more than pre-training's 25%
    assert encoder > cpu_flops(cfg, 0.75)["encoder"] * 3


def test_a_probe_on_augmented_images_runs_the_encoder_every_epoch(tiny_base):
    tiny_base["evals"]["linear_probe"]["augmentation"] = "crop_rand"
    tiny_base["evals"]["finetune"]["enabled"] = False
    cfg = resolve(tiny_base)
    encoder = cpu_flops(cfg, 0.0)["encoder"]
    out = budget.run_budget(cfg, 512, 256)
    assert out["linear_probe"] == encoder * 512 * 3 + encoder * 256  # 3 epochs, frozen: forward only
    assert out["finetune"] == 0 and out["knn"] == 0


def test_baselines_random_init_does_not_pretrain_and_raw_pixels_is_about_zero(tiny_base):
    cfg = resolve(tiny_base)
    setting = budget.run_budget(cfg, 512, 256)
    scratch = budget.run_budget(baseline_config(cfg, "random_init"), 512, 256)
    assert scratch["pretrain"] == 0 and scratch["evals"] == setting["evals"]
    raw = budget.run_budget(baseline_config(cfg, "raw_pixels"), 512, 256)
    assert raw["total"] == 0 and raw["evals"] == 0


@pytest.mark.parametrize("method,preset,data,strategy", TINY_PRESETS, ids=[p[1] for p in TINY_PRESETS])
def test_the_budget_counts_what_a_cpu_build_counts(method, preset, data, strategy):
    """Built on the meta device where the method's model allows it (else on the CPU): the same numbers."""
    cfg = tiny_config(method, preset, data, strategy)
    for ratio in (0.75, 0.0):
        assert budget.flops_per_image(cfg, ratio) == cpu_flops(cfg, ratio)
    if preset == "simmim_swin_tiny_patch2":  # Swin's count reads shapes only: it is built on the meta device
        assert all(p.is_meta for p in budget._models[budget._model_key(cfg)].parameters())


# ----------------------------------------------------------------------------- a study: cells, totals, rates
def tiny_study(tmp_path, tiny_base, **extra):
    spec = {"name": "priced", "base": tiny_base, "grid": {"masking.ratio": [0.5, 0.75]}, "seeds": [0],
            "baselines": True, **extra}
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    return load_study(tmp_path / "spec.yaml")


def test_gpu_hours_at_a_stated_rate_and_what_is_still_to_run(tmp_path, tiny_base):
    study = tiny_study(tmp_path, tiny_base)
    done = study.runs[0].run_id
    statuses = {r.run_id: "done" if r.run_id == done else "to do" for r in study.runs}
    out = budget.plan_budget(study, statuses, budget.check_rates(False, "1e-6", None))  # 1 MFLOP/s
    totals = {r.run_id: budget.run_budget(r.config, 512, 256)["total"] for r in study.runs}
    assert [c.header for c in out.headers] == [budget.HEADER, "GPU-h"] and len(out.cells) == len(study.runs) == 4
    for rid, total in totals.items():
        assert out.cells[rid][1] == ("~0" if total == 0 else budget.hours_text(total / 1e6 / 3600))
    first = budget.run_budget(study.runs[0].config, 512, 256)
    assert out.cells[done][0] == f"{budget.flop_text(first['pretrain'], '')} + {budget.flop_text(first['evals'], '')}"
    total, todo = sum(totals.values()), sum(totals.values()) - totals[done]
    assert out.lines[0].startswith("compute: pretrain ")
    assert f"total {budget.flop_text(total)}; {budget.hours_text(total / 1e6 / 3600)} GPU-hours at 1e-06 TFLOP/s " \
           f"sustained; still to run: {budget.flop_text(todo)} ({budget.hours_text(todo / 1e6 / 3600)} GPU-hours)" \
           in out.lines[0]
    assert "512 train / 256 test" in out.lines[1] and "pixel width" in out.lines[1]


def test_a_measured_images_per_s_prices_the_first_setting_s_pretraining_at_that_rate(tmp_path, tiny_base):
    study = tiny_study(tmp_path, tiny_base)
    out = budget.plan_budget(study, {}, budget.check_rates(False, None, "0.01"))
    first = budget.run_budget(study.runs[0].config, 512, 256)
    rate = 0.01 * first["train_per_image"]
    assert "every phase priced at that rate" in out.lines[0] and study.runs[0].run_id in out.lines[0]
    assert out.cells[study.runs[0].run_id][1] == budget.hours_text(first["total"] / rate / 3600)
    # its pre-training alone: 512 images × 2 epochs at 0.01 images/s
    assert first["pretrain"] / rate / 3600 == pytest.approx(512 * 2 / 0.01 / 3600)


def test_a_run_whose_image_count_is_not_known_says_unknown(tmp_path, tiny_base, monkeypatch):
    study = tiny_study(tmp_path, tiny_base)
    monkeypatch.setattr(budget, "image_counts", lambda data, root, memo=None: (None, 256))
    out = budget.plan_budget(study, {}, budget.check_rates(True, None, None))
    assert [c.header for c in out.headers] == [budget.HEADER] and set(out.cells.values()) == {("unknown",)}
    assert "4 runs unknown" in out.lines[0] and "unknown train / 256 test" in out.lines[1]


def test_no_compute_asked_no_columns():
    assert budget.check_rates(False, None, None) is None
    assert budget.plan_budget(None, {}, None) == budget.PlanBudget()


def test_si_units():
    assert budget.flop_text(1.234e18) == "1.23 EFLOP" and budget.flop_text(0) == "0 FLOP"
    assert budget.flop_text(4.56e11, "") == "456G" and budget.flop_text(2.36e21) == "2.36 ZFLOP"
    assert budget.hours_text(6543.7) == "6,544" and budget.hours_text(1.234) == "1.23"


# ----------------------------------------------------------------------------- the command line
@pytest.mark.parametrize("flags,key", [(["--gpu-tflops", "0"], "--gpu-tflops"),
                                       (["--gpu-tflops", "nan"], "--gpu-tflops"),
                                       (["--gpu-tflops", "fast"], "--gpu-tflops"),
                                       (["--images-per-s", "-5"], "--images-per-s"),
                                       (["--images-per-s", "inf"], "--images-per-s"),
                                       (["--gpu-tflops", "100", "--images-per-s", "900"], "--images-per-s")])
def test_a_bad_rate_is_one_line_and_exit_2(flags, key, capsys):
    assert main(["plan", "ablations/quickstart.yaml", *flags]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith(f"mimbench: error: {key}: ") and "allowed" in err


def test_plan_prices_the_paper_scale_grid_on_a_tiny_imagefolder(tmp_path):
    imagefolder(tmp_path / "imagenet")  # 2 train and 2 val images: ViT-L/16 at 224 px, 800 epochs each
    env = {**os.environ, "COLUMNS": "250", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "bench", "plan", "ablations/mae/fig5_mask_ratio.yaml", "--data-root",
                           str(tmp_path / "imagenet"), "--gpu-tflops", "100", "--results", str(tmp_path / "r")],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "11 runs, 0 done, 11 to run" in out and "varies masking.ratio" in out
    assert "pretrain + evals" in out and "GPU-h" in out
    cell = re.compile(r"│ [\d.]+[kMGTPEZ]? \+ [\d.]+[kMGTPEZ]? +│ [\d.,<]+ ")  # "571T + 0 │ 1.59 │"
    rows = [line for line in out.splitlines() if cell.search(line)]
    assert len(rows) == 10 and "~0 (no encoder)" in out  # nine ratios and the random-init baseline; raw pixels
    assert re.search(r"compute: pretrain [\d.]+ PFLOP, evals [\d.]+ TFLOP, total [\d.]+ PFLOP; [\d.]+ GPU-hours at "
                     r"100 TFLOP/s sustained; still to run: [\d.]+ PFLOP \([\d.]+ GPU-hours\)", out), out
    assert "images per run: 2 train / 2 test" in out
