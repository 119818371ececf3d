"""Collections (a spec of specs: bench/study/arms.py) and the masking-across-methods report
(bench/analysis/across.py): arms run in turn as ordinary studies, bad collections stop with one
line, and the report's margins, winners and cross-method verdict follow from the runs."""
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from bench.analysis.across import arm_frames, summary, winners, depends_on_method, write_across_report
from bench.cli import main
from bench.core.errors import ConfigError
from bench.study.arms import is_collection, load_collection

REPO = Path(__file__).resolve().parents[1]


def arm_spec(tmp_path, name, method, strategies, tiny_base, seeds=2):
    base = dict(tiny_base, method=method)
    if method != "mae":  # the method's own tiny ViT, no decoder
        base["model"] = {"preset": f"{method}_vit_tiny_patch4", "embed_dim": 32, "depth": 2, "num_heads": 2}
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump({"name": name, "base": base, "grid": {"masking.strategy": strategies},
                                    "seeds": seeds, "baselines": True, "launch": {"executor": "debug"}}))
    return path


def collection(tmp_path, arms, **extra):
    path = tmp_path / "both.yaml"
    path.write_text(yaml.safe_dump({"name": "both", "description": "two arms", "arms": arms, **extra}))
    return path


# ----------------------------------------------------------------------------- loading
def test_the_committed_collection_loads_every_arm_at_the_small_profile():
    loaded = load_collection(REPO / "ablations" / "masking_across_methods.yaml", profile="small")
    assert [s.name for s in loaded.arms] == ["mae_table1f_mask_sampling-small", "across_mae-small",
                                            "across_simmim-small", "across_beit-small", "across_spark-small",
                                            "videomae_table1b_masking-small"]
    methods = [{r.config["method"] for r in s.runs} for s in loaded.arms]
    assert methods == [{"mae"}, {"mae"}, {"simmim"}, {"beit"}, {"spark"}, {"videomae"}]

    def settings(*studies):
        return {(r.config["masking"]["strategy"], r.config["masking"]["ratio"])
                for study in studies for r in study.runs if not r.config.get("baseline")}
    at_075 = {(s, 0.75) for s in ("random", "block", "grid", "walker", "coarse")}
    # MAE: Table 1f's random, block, grid (and its block 0.5) and the arm's walker and coarse, never twice
    assert settings(*loaded.arms[:2]) == at_075 | {("block", 0.5)}
    assert not settings(loaded.arms[0]) & settings(loaded.arms[1])
    for study, paper_ratio in zip(loaded.arms[2:5], (0.6, 0.3827, 0.6)):
        expected = at_075 | {(s, paper_ratio) for s in ("random", "block", "walker", "coarse")}  # grid: no 0.6/0.38
        assert settings(study) == expected, study.name
    for study in loaded.arms:
        assert {r.config["seed"] for r in study.runs} == {0, 1, 2}, study.name
        assert sum(bool(r.config.get("baseline")) for r in study.runs) == 6  # random init + raw pixels, 3 seeds
    assert is_collection(REPO / "ablations" / "masking_across_methods.yaml")
    assert not is_collection(REPO / "ablations" / "quickstart.yaml")


@pytest.mark.parametrize("text, key, allowed", [
    ({"name": "x", "arms": ["a.yaml"], "grid": {}}, "grid", "allowed: name, description, arms"),
    ({"name": "x", "arms": []}, "arms", "a non-empty list of spec files"),
    ({"name": "x", "arms": ["nothere.yaml"]}, "arms[0]", "a spec file, relative to this one"),
    ({"name": "x", "arms": ["a.yaml", "a.yaml"]}, "arms[1]", "each spec once"),
    ({"name": "x", "arms": ["both.yaml"]}, "arms[0]", "itself a collection"),
    ({"name": "a/b", "arms": ["a.yaml"]}, "name", "a name without '/'"),
])
def test_a_bad_collection_is_one_line_naming_file_and_key(tmp_path, tiny_base, text, key, allowed):
    arm_spec(tmp_path, "a", "mae", ["random"], tiny_base)
    path = tmp_path / "both.yaml"
    path.write_text(yaml.safe_dump(text))
    with pytest.raises(ConfigError) as err:
        load_collection(path)
    assert str(err.value).startswith(f"{path}: {key}: ") and allowed in str(err.value) and "\n" not in str(err.value)


def test_a_profile_an_arm_lacks_stops_before_anything_runs(tmp_path, tiny_base, capsys):
    arm_spec(tmp_path, "a", "mae", ["random"], tiny_base)
    path = collection(tmp_path, ["a.yaml"])
    assert main(["run", str(path), "--profile", "small", "--results", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert "a.yaml: profiles: 'small' is not defined" in err and not (tmp_path / "r").exists()


# ----------------------------------------------------------------------------- running and reporting
def test_a_collection_runs_each_arm_as_its_own_study_then_compares_them(tmp_path, tiny_base, capsys):
    results, reports = tmp_path / "results", tmp_path / "reports"
    arm_spec(tmp_path, "arm_mae", "mae", ["random", "grid"], tiny_base)
    arm_spec(tmp_path, "arm_simmim", "simmim", ["random", "block"], tiny_base)
    path = collection(tmp_path, ["arm_mae.yaml", "arm_simmim.yaml"])
    assert main(["plan", str(path), "--results", str(results)]) == 0
    out = capsys.readouterr().out
    assert "study arm_mae" in out and "study arm_simmim" in out and out.count("8 runs, 0 done, 8 to run") == 2
    assert main(["run", str(path), "--results", str(results), "--reports", str(reports)]) == 0
    for arm in ("arm_mae", "arm_simmim"):  # each arm: its own results, report and baselines
        assert len(list((results / arm).glob("*/result.json"))) == 8
        assert (reports / arm / "runs.csv").is_file()
    table = pd.read_csv(reports / "both" / "table.csv")
    assert sorted(zip(table["method"], table["strategy"])) == [("MAE", "grid"), ("MAE", "random"),
                                                                ("SimMIM", "block"), ("SimMIM", "random")]
    runs = pd.read_csv(reports / "arm_mae" / "runs.csv")
    random = runs[(runs["masking.strategy"] == "random") & runs["baseline"].isna()]["finetune_top1"].mean()
    scratch = runs[runs["baseline"] == "random_init"]["finetune_top1"].mean()
    row = table[(table["method"] == "MAE") & (table["strategy"] == "random")].iloc[0]
    assert row["finetune_margin"] == pytest.approx(random - scratch, abs=1e-3)
    assert (reports / "both" / "heatmap.png").stat().st_size > 10_000
    # run again: nothing reruns, the comparison is rewritten from the same runs
    assert main(["run", str(path), "--results", str(results), "--reports", str(reports), "--no-report"]) == 0
    assert "0 finished, 8 already done" in capsys.readouterr().err


def _runs_csv(folder: Path, method: str, cells: dict, scratch: list[float]) -> None:
    """A report's runs.csv: per strategy, its seeds' top-1s (both evals alike), then random-init seeds."""
    rows = [{"method": method, "masking.strategy": s, "masking.ratio": 0.75, "seed": i, "finetune_top1": v,
             "linear_probe_top1": v - 5, "baseline": None} for s, values in cells.items() for i, v in enumerate(values)]
    rows += [{"method": method, "seed": i, "finetune_top1": v, "linear_probe_top1": v - 5, "baseline": "random_init"}
             for i, v in enumerate(scratch)]
    folder.mkdir(parents=True)
    pd.DataFrame(rows).to_csv(folder / "runs.csv", index=False)


def test_winners_margins_and_a_method_dependent_answer_from_committed_runs(tmp_path, tiny_base):
    for name, method in (("one", "mae"), ("two", "simmim"), ("three", "beit")):
        arm_spec(tmp_path, name, method, ["random"], tiny_base)
    loaded = load_collection(collection(tmp_path, ["one.yaml", "two.yaml", "three.yaml"]))
    reports = tmp_path / "reports"
    # MAE: random clearly above block; SimMIM: block clearly above random; BEiT not run yet
    _runs_csv(reports / "one", "mae", {"random": [80.0, 80.2, 80.1], "block": [70.0, 70.3, 70.1]}, [60.0, 60.2, 60.1])
    _runs_csv(reports / "two", "simmim", {"random": [68.0, 75.0, 76.0], "block": [78.0, 78.1, 78.2]}, [50.0, 51, 52])
    frame, missing = arm_frames(loaded, reports)
    assert missing == ["three"]
    table = summary(frame)
    mae_random = table[(table["method"] == "MAE") & (table["strategy"] == "random")].iloc[0]
    assert mae_random["finetune_mean"] == pytest.approx(80.1) and mae_random["finetune_margin"] == pytest.approx(20.0)
    assert mae_random["linear_probe_margin"] == pytest.approx(80.1 - 5 - (60.1 - 5))
    found = winners(table, "finetune")
    assert [(w["row"], w["winner"], w["runner_up"]) for w in found] == [("MAE 0.75", "random", "block"),
                                                                         ("SimMIM 0.75", "block", "random")]
    assert found[0]["resolved_over"] == ["block"] and found[1]["resolved_over"] == []  # SimMIM's random is noisy
    assert depends_on_method(table, found, "finetune") == []  # resolved in MAE's row only: not a resolved reversal
    _runs_csv(reports / "three", "beit", {"random": [70.0, 70.1, 70.2], "block": [75.0, 75.1, 75.2]}, [60, 60, 60])
    table = summary(arm_frames(loaded, reports)[0])
    depends = depends_on_method(table, winners(table, "finetune"), "finetune")
    assert depends == ["MAE 0.75 prefers random over block, BEiT 0.75 the reverse"]
    # a fourth arm of MAE's with another strategy joins MAE's row (a setting two arms held would name its arm)
    arm_spec(tmp_path, "four", "mae", ["random"], tiny_base)
    loaded = load_collection(collection(tmp_path, ["one.yaml", "two.yaml", "three.yaml", "four.yaml"]))
    _runs_csv(reports / "four", "mae", {"walker": [79.0, 79.1, 79.2]}, [60.0, 60.2, 60.1])
    table = summary(arm_frames(loaded, reports)[0])
    mae = table[table["method"] == "MAE"]
    assert set(mae["row"]) == {"MAE 0.75"} and set(mae["strategy"]) == {"random", "block", "walker"}
    paths = write_across_report(loaded, None, reports)
    text = paths["table_md"].read_text()
    assert "| MAE 0.75 | 80.1 ± 0.1 (+20.0) | 70.1 ± 0.2 (+10.0) | 79.1 ± 0.1 (+19.0) | 60.1 |" in text
    assert "the winning strategy depends on the method, by a resolved margin" in text
    assert paths["heatmap"].stat().st_size > 10_000


def test_report_of_a_collection_from_the_command_line(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "bench", "report", "ablations/masking_across_methods.yaml",
                           "--profile", "small", "--reports", str(tmp_path)], cwd=REPO, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    text = (tmp_path / "masking_across_methods-small" / "table.md").read_text()
    assert "Not run yet" in text and "across_spark-small" in text


def test_an_arm_that_varies_more_than_the_mask_is_refused(tmp_path, tiny_base):
    arm_spec(tmp_path, "one", "mae", ["random"], tiny_base)
    loaded = load_collection(collection(tmp_path, ["one.yaml"]))
    folder = tmp_path / "reports" / "one"
    folder.mkdir(parents=True)
    rows = [{"method": "mae", "masking.strategy": "random", "masking.ratio": 0.75, "seed": 0, "finetune_top1": v,
             "linear_probe_top1": v, "pretrain.target": t, "baseline": None} for v, t in ((80, "pixel"), (70, "hog"))]
    pd.DataFrame(rows).to_csv(folder / "runs.csv", index=False)
    with pytest.raises(ValueError, match="arm one has two runs of random at 0.75, seed 0: an arm may vary the masking"):
        arm_frames(loaded, tmp_path / "reports")
