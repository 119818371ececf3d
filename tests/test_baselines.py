"""Baselines measured in the study: random init (fine-tune from scratch, probe and k-NN on random
features) and raw pixels, as runs with their own ids, shared across studies through the cache."""
import json

import yaml

from bench.cli import main
from bench.launch.store import RunFolder
from bench.study.baselines import baseline_config
from bench.study.config import resolve
from bench.study.run_ids import run_id
from bench.study.spec import load_study


def spec(tmp_path, name, strategies, tiny_base):
    base = dict(tiny_base)
    base["evals"] = {**base["evals"], "knn": {"enabled": True}}
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump({"name": name, "base": base, "grid": {"masking.strategy": strategies},
                                    "seeds": 2, "baselines": True, "launch": {"executor": "debug"}}))
    return path


def test_a_baseline_ignores_what_it_does_not_use(tiny_base):
    a, b = resolve(tiny_base), resolve({**tiny_base, "masking": {"strategy": "grid", "ratio": 0.75},
                                        "model": {**tiny_base["model"], "decoder_depth": 3}})
    assert run_id(a) != run_id(b)
    for kind in ("random_init", "raw_pixels"):  # masking, pre-training and decoder do not matter to a baseline
        assert run_id(baseline_config(a, kind)) == run_id(baseline_config(b, kind))
    assert run_id(baseline_config(a, "random_init")) != run_id(baseline_config(a, "raw_pixels"))
    assert baseline_config(a, "raw_pixels")["evals"]["finetune"]["enabled"] is False
    assert run_id(baseline_config({**a, "seed": 1}, "random_init")) != run_id(baseline_config(a, "random_init"))
    # a study that probes none of its settings (MAE Fig. 9) still probes its baselines, at the recipe's
    # probe: the same runs as a study that does
    probe = {**tiny_base["evals"].get("linear_probe", {}), "enabled": False}
    no_probe = resolve({**tiny_base, "evals": {**tiny_base["evals"], "linear_probe": probe}})
    for kind in ("random_init", "raw_pixels"):
        assert baseline_config(no_probe, kind)["evals"]["linear_probe"]["enabled"] is True
        assert run_id(baseline_config(no_probe, kind)) == run_id(baseline_config(a, kind))


def test_baselines_run_once_per_seed_show_in_the_report_and_are_shared_across_studies(tmp_path, tiny_base, capsys):
    results, reports = tmp_path / "results", tmp_path / "reports"
    first = load_study(spec(tmp_path, "one", ["random", "grid"], tiny_base))
    kinds = [r.config["baseline"] for r in first.runs]
    assert kinds == [None] * 4 + ["random_init", "raw_pixels"] * 2  # 2 settings x 2 seeds, then 2 kinds x 2 seeds
    assert main(["run", str(spec(tmp_path, "one", ["random", "grid"], tiny_base)), "--results", str(results),
                 "--reports", str(reports)]) == 0
    text = (reports / "one" / "table.md").read_text()
    assert "| random init, no pre-training (fine-tune = from scratch) |" in text
    assert "| raw pixels (linear probe recipe; k-NN) | — |" in text
    for run in first.runs[4:]:
        result = json.loads(RunFolder(results, "one", run.run_id).result_path.read_text())
        assert result["pretrained_by"] is None and result["linear_probe_top1"] is not None
        assert (result["finetune_top1"] is None) == (run.config["baseline"] == "raw_pixels")
        assert not [r for r in RunFolder(results, "one", run.run_id).read_metrics() if r["phase"] == "pretrain"]

    # another study with the same model, data, evals and seeds: its baselines come from the cache
    assert main(["run", str(spec(tmp_path, "two", ["block"], tiny_base)), "--results", str(results),
                 "--reports", str(reports), "--no-report"]) == 0
    capsys.readouterr()
    second = load_study(spec(tmp_path, "two", ["block"], tiny_base))
    for run in second.runs[2:]:
        rows = RunFolder(results, "two", run.run_id).read_metrics()
        assert rows and all(r["from_run"].startswith("one/") for r in rows)
        same = json.loads(RunFolder(results, "one", run.run_id).result_path.read_text())
        again = json.loads(RunFolder(results, "two", run.run_id).result_path.read_text())
        assert again["linear_probe_top1"] == same["linear_probe_top1"] and again["knn_top1"] == same["knn_top1"]


def test_a_bad_baselines_value_is_one_line_before_anything_runs(tmp_path, tiny_base, capsys):
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump({"name": "bad", "base": tiny_base, "baselines": "yes"}))
    assert main(["plan", str(path), "--results", str(tmp_path / "results")]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"mimbench: error: {path}: baselines: 'yes' is not allowed; allowed: true or false"
    assert not (tmp_path / "results").exists()
