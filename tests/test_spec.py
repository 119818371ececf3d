"""Specs: expansion (grid product, zip, seeds), validation errors, run-id stability."""
import hashlib
import json
import subprocess
import sys

import pytest
import yaml

from bench.core.errors import ConfigError
from bench.core.hashing import canonical_json
from bench.data import identity_digest
from bench.study.config import resolve, resolve_launch
from bench.study.run_ids import run_id
from bench.study.spec import load_study


def identified(cfg):
    """A resolved config as load_study makes it: with the digest of its data in data.identity."""
    return {**cfg, "data": {**cfg["data"], "identity": identity_digest(cfg["data"], None)}}


def write_spec(tmp_path, spec, name="spec.yaml"):
    path = tmp_path / name
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def test_grid_is_a_product_and_seeds_multiply(tmp_path, tiny_base):
    spec = {"name": "s", "base": tiny_base, "seeds": 3,
            "grid": {"masking.strategy": ["random", "block", "grid"], "masking.ratio": [0.5, 0.75]}}
    study = load_study(write_spec(tmp_path, spec))
    assert len(study.runs) == 3 * 2 * 3
    assert study.axes == ["masking.strategy", "masking.ratio"]
    combos = {(r.config["masking"]["strategy"], r.config["masking"]["ratio"], r.config["seed"]) for r in study.runs}
    assert len(combos) == 18
    assert len({r.run_id for r in study.runs}) == 18


def test_zip_varies_keys_together(tmp_path, tiny_base):
    spec = {"name": "s", "base": tiny_base, "seeds": [0, 7],
            "zip": [{"masking.strategy": ["random", "block", "block", "grid"],
                     "masking.ratio": [0.75, 0.5, 0.75, 0.75]}]}
    study = load_study(write_spec(tmp_path, spec))
    pairs = sorted({(r.config["masking"]["strategy"], r.config["masking"]["ratio"]) for r in study.runs})
    assert pairs == [("block", 0.5), ("block", 0.75), ("grid", 0.75), ("random", 0.75)]
    assert len(study.runs) == 8
    assert sorted({r.config["seed"] for r in study.runs}) == [0, 7]


def test_grid_values_that_resolve_to_the_same_config_run_once(tmp_path, tiny_base):
    spec = {"name": "s", "base": tiny_base, "grid": {"masking.ratio": [0.75, 0.75, 0.5]}}
    assert len(load_study(write_spec(tmp_path, spec)).runs) == 2


@pytest.mark.parametrize("mutate, key, allowed", [
    (lambda s: s["grid"].update({"masking.ratio": [0.5, 1.5]}), "grid.masking.ratio[1]", "0.0 < x < 1.0"),
    (lambda s: s["grid"].update({"masking.strategy": ["random", "spiral"]}), "grid.masking.strategy[1]", "random, block, grid"),
    (lambda s: s["base"]["model"].update({"depth": 0}), "base.model.depth", ">= 1"),
    (lambda s: s["base"]["model"].update({"decoder_depth": "deep"}), "base.model.decoder_depth", "int"),
    (lambda s: s["base"]["pretrain"].update({"target": "hog2"}), "base.pretrain.target", "pixel, norm_pixel"),
    (lambda s: s["base"]["data"].update({"augmentation": "mixup"}), "base.data.augmentation", "crop_rand"),
    (lambda s: s["base"]["pretrain"].update({"epoch": 3}), "base.pretrain.epoch", "epochs"),
    (lambda s: s["grid"].update({"masking.rato": [0.5]}), "grid.masking.rato", "dotted config key"),
    (lambda s: s.update({"seeds": -1}), "seeds", "a count >= 1"),
    (lambda s: s.update({"zip": [{"masking.ratio": [0.5, 0.6], "pretrain.epochs": [1]}]}), "zip[0]", "unequal"),
    (lambda s: s["base"]["masking"].update({"params": {"min_patchez": 3}}), "base.masking.params.min_patchez", "none"),
    (lambda s: s.update({"launch": {"executor": "kubernetes"}}), "launch.executor", "debug, local, slurm"),
    (lambda s: s.update({"nmae": "x"}), "nmae", "name, description, base"),
])
def test_validation_errors_are_one_line_naming_file_key_and_allowed(tmp_path, tiny_base, mutate, key, allowed):
    spec = {"name": "s", "base": tiny_base, "grid": {}}
    mutate(spec)
    path = write_spec(tmp_path, spec)
    with pytest.raises(ConfigError) as info:
        load_study(path)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"{path}: {key}:"), message
    assert allowed in message, message


def test_bad_spec_on_the_command_line_is_one_line_and_exit_2(tmp_path, tiny_base):
    tiny_base["masking"]["ratio"] = 1.0
    path = write_spec(tmp_path, {"name": "s", "base": tiny_base})
    proc = subprocess.run([sys.executable, "-m", "bench.cli", "plan", str(path)], capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0
    assert f"{path}: base.masking.ratio: 1.0 is out of range" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_run_id_is_stable_across_key_order_number_spelling_and_processes(tmp_path, tiny_base):
    a = resolve(tiny_base)
    reordered = json.loads(json.dumps(tiny_base, sort_keys=True))
    reordered["pretrain"]["blr"] = 0.0015
    reordered["masking"]["ratio"] = 0.75
    spellings = []
    for blr in ("1.5e-3", "0.0015", "15e-4", "1.5E-03"):  # YAML 1.2 numbers: every spelling is a float
        path = tmp_path / f"blr{len(spellings)}.yaml"
        text = yaml.safe_dump({"name": "s", "base": tiny_base}, sort_keys=False)
        path.write_text(text.replace("blr: 0.0015", f"blr: {blr}"))
        assert f"blr: {blr}" in path.read_text()
        spellings.append(load_study(path).runs[0].run_id)
    assert spellings == [run_id(identified(a))] * 4
    assert run_id(resolve(reordered)) == run_id(a)
    code = f"import json; from bench.study.config import resolve; from bench.study.run_ids import run_id; print(run_id(resolve(json.loads({json.dumps(json.dumps(tiny_base))}))))"
    other = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                           env={"PYTHONHASHSEED": "123", "PATH": ""}, check=True).stdout.strip()
    assert other == run_id(a)


def test_run_id_changes_with_every_setting_but_not_with_launch(tmp_path, tiny_base):
    base_id = run_id(resolve(tiny_base))
    for dotted, value in [("masking.ratio", 0.5), ("seed", 1), ("model.decoder_depth", 2),
                          ("evals.linear_probe.feature", "avgpool"), ("masking.params", {"random_offset": True})]:
        cfg = json.loads(json.dumps(tiny_base))
        node = cfg
        *parents, leaf = dotted.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
        if dotted == "masking.params":
            cfg["masking"]["strategy"] = "grid"
        assert run_id(resolve(cfg)) != base_id, dotted
    cfg = json.loads(json.dumps(tiny_base))
    cfg["pretrain"]["precision"] = "bf16"
    assert run_id(resolve(cfg)) != base_id
    path = write_spec(tmp_path, {"name": "s", "base": tiny_base, "launch": {"executor": "debug", "threads": 1}})
    study = load_study(path, {"parallel": 4, "device": "cpu"})
    assert study.runs[0].run_id == run_id(identified(resolve(tiny_base)))
    assert resolve_launch({"parallel": 4})["parallel"] == 4


def test_a_key_added_later_keeps_earlier_run_ids_at_its_old_value(tiny_base):
    """pretrain.precision and method came after results existed: at fp32 and mae (what runs
    computed before them) the id is the one a config without the keys hashed to, so old folders
    still count as done."""
    resolved = resolve(tiny_base)
    assert resolved["pretrain"]["precision"] == "fp32"  # the resolved config says it
    assert resolved["method"] == "mae"
    written_before = json.loads(json.dumps(resolved))
    del written_before["pretrain"]["precision"]
    del written_before["method"]
    del written_before["baseline"]
    del written_before["data"]["identity"]  # null: not identified (what load_study leaves without the data)
    del written_before["model"]["head"]  # BEiT and SimMIM's keys, at MAE's values
    for key in ("loss", "loss_on", "drop_path", "clip_grad", "optimizer", "weight_decay_end",
                "accum_iter"):  # gradient accumulation: 1 micro-batch, what every run did before it
        del written_before["pretrain"][key]
    for key in ("accum_iter", "mixup", "cutmix", "rand_augment", "reprob"):  # the fine-tune recipe's later keys
        del written_before["evals"]["finetune"][key]
    for key in ("depths", "stage_num_heads", "window_size",  # a Swin's (SimMIM), null on a ViT
                "backbone", "sparse", "densify", "hierarchical",  # a CNN's (SparK)
                "tubelet_size"):  # VideoMAE's, null on an image preset
        del written_before["model"][key]
    for key in ("frames", "frame_stride"):  # VideoMAE's clips: null and 1 with images
        del written_before["data"][key]
    old_id = hashlib.sha256(canonical_json(written_before).encode()).hexdigest()[:12]
    assert run_id(resolved) == old_id
    assert run_id(resolve(written_before)) == old_id  # an old stored config resolves to the same id
    assert resolved["pretrain"]["precision"] == "fp32"  # hashing did not edit the config


def test_resolved_config_holds_the_preset_numbers_and_strategy_defaults():
    cfg = resolve({"model": {"preset": "mae_vit_large_patch16"}, "data": {"img_size": 224},
                   "masking": {"strategy": "block"}})
    assert (cfg["model"]["embed_dim"], cfg["model"]["depth"], cfg["model"]["num_heads"]) == (1024, 24, 16)
    assert (cfg["model"]["decoder_embed_dim"], cfg["model"]["decoder_depth"]) == (512, 8)
    assert cfg["masking"]["params"]["min_patches"] == 16 and cfg["masking"]["params"]["min_aspect"] == 0.3  # BEiT's
    assert cfg["pretrain"]["blr"] == 1.5e-4 and (cfg["pretrain"]["beta1"], cfg["pretrain"]["beta2"]) == (0.9, 0.95)


def test_plan_lists_runs_and_runs_nothing(tmp_path, tiny_base):
    path = write_spec(tmp_path, {"name": "planned", "base": tiny_base, "grid": {"masking.strategy": ["random", "grid"]},
                                 "seeds": 2})
    proc = subprocess.run([sys.executable, "-m", "bench.cli", "plan", str(path), "--results", str(tmp_path / "r")],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "4 runs, 0 done, 4 to run" in proc.stdout
    assert "varies masking.strategy: random, grid" in proc.stdout
    assert not (tmp_path / "r").exists()


def test_profile_overlays_the_spec_and_names_its_own_study(tmp_path, tiny_base):
    spec = {"name": "s", "base": tiny_base, "seeds": [0], "grid": {"model.decoder_depth": [1, 8]},
            "profiles": {"small": {"base": {"pretrain": {"epochs": 1}}, "seeds": [0, 1],
                                   "grid": {"model.decoder_depth": [1, 2]}}}}
    path = write_spec(tmp_path, spec)
    paper, small = load_study(path), load_study(path, profile="small")
    assert paper.name == "s" and small.name == "s-small"
    assert sorted({r.config["model"]["decoder_depth"] for r in paper.runs}) == [1, 8]
    assert sorted({r.config["model"]["decoder_depth"] for r in small.runs}) == [1, 2]
    assert len(small.runs) == 4 and {r.config["pretrain"]["epochs"] for r in small.runs} == {1}
    assert {r.config["pretrain"]["epochs"] for r in paper.runs} == {tiny_base["pretrain"]["epochs"]}
    # the overlay merges key by key: the rest of the base is untouched
    assert {r.config["model"]["embed_dim"] for r in small.runs} == {tiny_base["model"]["embed_dim"]}
    with pytest.raises(ConfigError, match=r"spec.yaml: profiles: 'huge' is not defined; allowed: small"):
        load_study(path, profile="huge")


def test_a_profile_can_extend_another(tmp_path, tiny_base):
    spec = {"name": "s", "base": tiny_base, "seeds": [0],
            "profiles": {"small": {"base": {"pretrain": {"epochs": 1, "warmup_epochs": 0}}, "seeds": [0, 1]},
                         "small_long": {"extends": "small", "base": {"pretrain": {"epochs": 3}}},
                         "a": {"extends": "b"}, "b": {"extends": "a"}}}
    path = write_spec(tmp_path, spec)
    long = load_study(path, profile="small_long")
    assert long.name == "s-small_long" and len(long.runs) == 2  # seeds from small
    assert {(r.config["pretrain"]["epochs"], r.config["pretrain"]["warmup_epochs"]) for r in long.runs} == {(3, 0)}
    with pytest.raises(ConfigError, match=r"spec.yaml: profiles.b.extends: 'a' is not allowed"):
        load_study(path, profile="a")


def test_extends_merges_a_shared_recipe(tmp_path, tiny_base):
    write_spec(tmp_path, {"base": tiny_base, "seeds": [3], "profiles": {"small": {"seeds": [0, 1]}}}, "_recipe.yaml")
    path = write_spec(tmp_path, {"extends": "_recipe.yaml", "name": "child", "paper": {"source": "mae", "subtable": "table1a"},
                                 "base": {"masking": {"ratio": 0.5}}, "grid": {"model.decoder_depth": [1, 2]}})
    study = load_study(path)
    assert {r.config["masking"]["ratio"] for r in study.runs} == {0.5}
    assert {r.config["seed"] for r in study.runs} == {3}
    assert {r.config["model"]["embed_dim"] for r in study.runs} == {tiny_base["model"]["embed_dim"]}
    assert study.paper == {"source": "mae", "subtable": "table1a"}
    assert len(load_study(path, profile="small").runs) == 4
    write_spec(tmp_path, {"extends": "loop.yaml", "name": "x"}, "loop.yaml")
    with pytest.raises(ConfigError, match="extends itself"):
        load_study(tmp_path / "loop.yaml")


def test_every_mae_ablation_spec_expands_at_both_scales():
    from pathlib import Path
    specs = sorted((Path(__file__).parent.parent / "ablations" / "mae").glob("[!_]*.yaml"))
    assert len(specs) == 11  # the 9 subtables and 2 Table 1f investigations
    for path in specs:
        paper, small = load_study(path), load_study(path, profile="small")
        assert paper.paper and paper.paper["source"] == "mae" and paper.axes and small.axes == paper.axes
        assert {r.config["model"]["preset"] for r in paper.runs} == {"mae_vit_large_patch16"}
        assert {r.config["data"]["name"] for r in small.runs} == {"fashion_mnist"}
        assert sorted({r.config["seed"] for r in small.runs}) == [0, 1, 2]
