"""Reports: tables and plots from fabricated result folders with known accuracies."""
import copy
import json
import math

import pandas as pd
import pytest
from scipy import stats as scipy_stats

from bench.analysis.frames import runs_frame, varying_axes
from bench.analysis.plots import plot_study
from bench.analysis.report import format_markdown, summary_table, write_report
from bench.launch.store import RESULT_KEYS, RunFolder

BASE = {
    "seed": 0,
    "data": {"name": "synthetic", "img_size": 16, "train_limit": 512, "test_limit": None},
    "model": {"preset": "mae_vit_tiny_patch4", "embed_dim": 32, "depth": 2, "decoder_depth": 1,
              "decoder_embed_dim": 32},
    "masking": {"strategy": "random", "ratio": 0.75, "params": {}},
    "pretrain": {"epochs": 2, "target": "norm_pixel"},
    "evals": {"linear_probe": {"enabled": True, "feature": "cls"},
              "finetune": {"enabled": True, "feature": "avgpool"}},
}
# What each strategy's config resolves its params to: they vary with the strategy, but follow it.
PARAMS = {"random": {}, "block": {"min_patches": 4, "attempts": 10}, "grid": {"random_offset": False}}


def add_run(root, study, run_id, *, finetune, probe, seed=0, **overrides):
    """A finished run: overrides are dotted config keys, e.g. masking__ratio=0.5."""
    config = copy.deepcopy(BASE)
    config["seed"] = seed
    for key, value in overrides.items():
        *parents, leaf = key.split("__")
        node = config
        for p in parents:
            node = node[p]
        node[leaf] = value
    config["masking"]["params"] = copy.deepcopy(PARAMS[config["masking"]["strategy"]])
    run = RunFolder(root, study, run_id)
    run.start(config)
    result = {k: None for k in RESULT_KEYS} | {
        "run_id": run_id, "study": study, "finetune_top1": finetune, "linear_probe_top1": probe,
        "linear_probe_feature": "cls", "finetune_feature": "avgpool", "device": "cpu (test)",
        "pretrain_images_per_s": 1000.0, "pretrain_wall_s": 1.0, "n_params": 123,
        "evals": {"finetune": {"top1": finetune, "wall_s": 1.0}},
    }
    run.write_result(result)
    return run


# strategy -> (fine-tune, linear probe) per seed
SCORES = {"random": ([84.0, 85.0], [60.0, 62.0]),
          "block": ([82.0, 82.5], [55.0, 56.0]),
          "grid": ([80.0, 81.0], [50.0, 53.0])}


@pytest.fixture
def strategies(tmp_path):
    """3 strategies x 2 seeds, plus a run that crashed before writing its result."""
    for i, (strategy, (ft, lp)) in enumerate(SCORES.items()):
        for seed in (0, 1):
            add_run(tmp_path, "sampling", f"{strategy}{seed}", finetune=ft[seed], probe=lp[seed], seed=seed,
                    masking__strategy=strategy)
    half = RunFolder(tmp_path, "sampling", "zzhalf")
    half.start(BASE | {"masking": {"strategy": "halfdone", "ratio": 0.75, "params": {}}})
    return tmp_path / "sampling"


def test_runs_frame_flattens_config_and_skips_unfinished_runs(strategies):
    frame = runs_frame(strategies)
    assert len(frame) == 6 and "zzhalf" not in set(frame["run_id"])
    assert {"seed", "masking.strategy", "masking.ratio", "masking.params.min_patches", "model.decoder_depth",
            "evals.linear_probe.feature", "finetune_top1", "pretrain_images_per_s"} <= set(frame.columns)
    assert "evals" not in frame.columns and "evals.finetune.top1" not in frame.columns  # nested results stay out
    assert frame.loc[frame["run_id"] == "block0", "masking.params.min_patches"].item() == 4


def test_target_params_follow_the_target(tmp_path):
    params = {"pixel": {}, "pca": {"components": 8}, "hog": {"bins": 9}}
    for target, target_params in params.items():
        add_run(tmp_path, "targets", target, finetune=80.0, probe=60.0, pretrain__target=target,
                pretrain__target_params=target_params)
    frame = runs_frame(tmp_path / "targets")
    assert "pretrain.target_params.components" in frame
    assert varying_axes(frame) == ["pretrain.target"]


def test_a_key_added_later_is_no_axis_between_runs_written_before_and_after_it(tmp_path):
    """Runs stored before pretrain.precision existed read as fp32, like the runs after it."""
    add_run(tmp_path, "upgrade", "before", finetune=80.0, probe=60.0, masking__strategy="random")
    add_run(tmp_path, "upgrade", "after", finetune=81.0, probe=61.0, masking__strategy="block",
            pretrain__precision="fp32")
    frame = runs_frame(tmp_path / "upgrade")
    assert list(frame["pretrain.precision"]) == ["fp32", "fp32"]
    assert varying_axes(frame) == ["masking.strategy"]
    assert RunFolder(tmp_path, "upgrade", "before").read_config()["pretrain"]["precision"] == "fp32"


def _stored_run(root, study, config, folder_id, finetune):
    run = RunFolder(root, study, folder_id)
    run.start(config)
    run.write_result({k: None for k in RESULT_KEYS} | {"run_id": folder_id, "study": study, "finetune_top1": finetune,
                                                       "linear_probe_top1": 50.0})


def test_a_run_under_an_older_id_counts_until_its_config_runs_under_todays(tmp_path):
    """Runs stored before model.mask_token_in_encoder existed have older ids. Alone, they are
    reported (as the same config); once the config has run under today's id they step aside."""
    from bench.study.config import resolve
    from bench.study.run_ids import run_id
    config = resolve({"masking": {"strategy": "block"}})
    old = copy.deepcopy(config)
    del old["model"]["mask_token_in_encoder"], old["evals"]["knn"]
    _stored_run(tmp_path, "s", old, "0ld0ld0ld0ld", 70.0)
    other = resolve({"masking": {"strategy": "grid"}})
    _stored_run(tmp_path, "s", other, run_id(other), 60.0)
    frame = runs_frame(tmp_path / "s")
    assert sorted(frame["finetune_top1"]) == [60.0, 70.0]
    assert varying_axes(frame) == ["masking.strategy"]  # the added keys read as their old values
    _stored_run(tmp_path, "s", config, run_id(config), 71.0)  # the same config, run again today
    frame = runs_frame(tmp_path / "s")
    assert sorted(frame["finetune_top1"]) == [60.0, 71.0] and "0ld0ld0ld0ld" not in set(frame["run_id"])


def test_summary_over_seeds_is_exact(strategies):
    frame = runs_frame(strategies)
    axes = varying_axes(frame)
    assert axes == ["masking.strategy"]  # not the seed, nor the params that follow the strategy
    table = summary_table(frame, axes)
    per_eval = ["mean", "std", "n", "ci_lo", "ci_hi", "vs_best", "p_vs_best"]
    assert list(table.columns) == (["masking.strategy"] + [f"finetune_{c}" for c in per_eval]
                                   + [f"linear_probe_{c}" for c in per_eval] + ["n"])  # no k-NN column: not run
    assert list(table["masking.strategy"]) == ["block", "grid", "random"]  # first seen (folders by name)
    for row in table.to_dict("records"):
        ft, lp = SCORES[row["masking.strategy"]]
        assert row["n"] == 2 and row["finetune_n"] == 2 and row["linear_probe_n"] == 2
        assert row["finetune_mean"] == pytest.approx(sum(ft) / 2)
        assert row["finetune_std"] == pytest.approx(abs(ft[0] - ft[1]) / math.sqrt(2))  # ddof=1
        assert row["linear_probe_mean"] == pytest.approx(sum(lp) / 2)
        assert row["linear_probe_std"] == pytest.approx(abs(lp[0] - lp[1]) / math.sqrt(2))
        # two seeds: the percentile bootstrap interval of the mean spans the two seeds
        assert (row["finetune_ci_lo"], row["finetune_ci_hi"]) == pytest.approx((min(ft), max(ft)))
        # two seeds each: Welch's test (Holm over the two comparisons) cannot resolve 2-4 point gaps
        assert row["finetune_vs_best"] == ("best" if row["masking.strategy"] == "random" else "not resolved")
    best = SCORES["random"][0]
    raw = {s: scipy_stats.ttest_ind(SCORES[s][0], best, equal_var=False).pvalue for s in ("block", "grid")}
    low, high = sorted(raw.values())
    holm = {s: max(2 * low, high) if p == high else 2 * low for s, p in raw.items()}
    for row in table.to_dict("records"):
        if row["masking.strategy"] != "random":
            assert row["finetune_p_vs_best"] == pytest.approx(min(1.0, holm[row["masking.strategy"]]))


def test_markdown_cells(strategies):
    frame = runs_frame(strategies)
    text = format_markdown(summary_table(frame, ["masking.strategy"]), ["masking.strategy"])
    lines = text.splitlines()
    assert lines[0] == "| masking.strategy | fine-tune top-1 | 95% CI | n | linear probe top-1 | 95% CI | n |"
    assert "| random | **84.5 ± 0.7** | [84.0, 85.0] | 2 | **61.0 ± 1.4** | [60.0, 62.0] | 2 |" in lines  # the best
    # 82.25: half to even; two seeds resolve none of the gaps (Welch + Holm): every other setting gets †
    assert "| block | 82.2 ± 0.4 † | [82.0, 82.5] | 2 | 55.5 ± 0.7 † | [55.0, 56.0] | 2 |" in lines
    assert "| grid | 80.5 ± 0.7 † | [80.0, 81.0] | 2 | 51.5 ± 2.1 † | [50.0, 53.0] | 2 |" in lines


def test_settings_not_resolved_from_the_best_are_marked(tmp_path):
    scores = {"random": [84.0, 85.0, 84.5], "block": [84.2, 84.6, 84.4], "grid": [80.0, 80.4, 80.2]}
    for strategy, ft in scores.items():
        for seed in (0, 1, 2):
            add_run(tmp_path, "noise", f"{strategy}{seed}", finetune=ft[seed], probe=60.0 + seed, seed=seed,
                    masking__strategy=strategy)
    table = summary_table(runs_frame(tmp_path / "noise"), ["masking.strategy"])
    assert dict(zip(table["masking.strategy"], table["finetune_vs_best"])) == {
        "random": "best", "block": "not resolved", "grid": "below"}
    text = format_markdown(table, ["masking.strategy"])
    assert "| block | 84.4 ± 0.2 † | [84.2, 84.6] | 3 |" in text
    assert "| grid | 80.2 ± 0.2 | [80.0, 80.4] | 3 |" in text
    assert "†: not resolved from it by Welch's t-test" in text and "Holm's correction" in text


def test_single_runs_and_missing_evals_in_markdown(tmp_path):
    add_run(tmp_path, "s", "a", finetune=None, probe=70.04, masking__strategy="random")
    add_run(tmp_path, "s", "b", finetune=None, probe=71.0, masking__strategy="grid")
    frame = runs_frame(tmp_path / "s")
    table = summary_table(frame, varying_axes(frame))
    assert math.isnan(table.loc[0, "linear_probe_std"])
    assert table.loc[0, "finetune_n"] == 0 and table.loc[0, "linear_probe_n"] == 1
    assert table.loc[0, "linear_probe_vs_best"] == "unknown"  # one seed each: noise cannot be judged
    text = format_markdown(table, ["masking.strategy"])
    assert "| random | — | — | 0 | 70.0 | — | 1 |" in text and "±" not in text and "†" not in text.split("\n\n")[0]


def test_write_report_writes_all_files(strategies, tmp_path):
    out = write_report(strategies, tmp_path / "reports", description="Mask sampling (MAE Table 1f)")
    assert out["n_runs"] == 6 and len(out["table"]) == 3
    for key in ("table_md", "table_csv", "plot", "runs_csv"):
        assert out[key].exists() and out[key].parent == tmp_path / "reports" / "sampling"
    png = out["plot"].read_bytes()
    assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 10_000
    md = out["table_md"].read_text()
    assert md.startswith("# sampling\n\nMask sampling (MAE Table 1f)\n")
    assert "| random | **84.5 ± 0.7** | [84.0, 85.0] | 2 | **61.0 ± 1.4** | [60.0, 62.0] | 2 |" in md
    assert "6 runs (seeds 0, 1) on cpu (test)" in md and "linear probe on the cls feature" in md
    assert len(pd.read_csv(out["runs_csv"])) == 6 and len(pd.read_csv(out["table_csv"])) == 3
    assert {"finetune_ci_lo", "finetune_ci_hi", "finetune_n", "finetune_vs_best"} <= set(pd.read_csv(out["table_csv"]))
    assert "comparison_md" not in out  # the study names no paper subtable
    assert not list(out["plot"].parent.glob(".*"))  # no temporary files left behind


def test_numeric_axis_sorts_numerically(tmp_path):
    for i, ratio in enumerate([0.9, 0.25, 0.75, 0.5]):
        add_run(tmp_path, "ratio", f"r{i}", finetune=80 + ratio, probe=50 + 10 * ratio, masking__ratio=ratio)
    out = write_report(tmp_path / "ratio", tmp_path / "reports")
    assert list(out["table"]["masking.ratio"]) == [0.25, 0.5, 0.75, 0.9]
    assert "| 0.25 | 80.2 | — | 1 | 52.5 | — | 1 |" in out["table_md"].read_text()


def test_two_axes(tmp_path):
    scores = {}
    for ratio in (0.75, 0.5):
        for strategy in ("random", "block"):
            for seed in (0, 1):
                ft = 80 + 10 * ratio + (2 if strategy == "random" else 0) + seed
                scores.setdefault((ratio, strategy), []).append(ft)
                add_run(tmp_path, "grid2", f"{strategy}-{ratio}-{seed}", finetune=ft, probe=None, seed=seed,
                        masking__ratio=ratio, masking__strategy=strategy)
    frame = runs_frame(tmp_path / "grid2")
    axes = varying_axes(frame)
    assert axes == ["masking.ratio", "masking.strategy"]  # numeric first: it goes on the x axis
    table = summary_table(frame, axes)
    assert [tuple(r) for r in table[axes].itertuples(index=False)] == [
        (0.5, "block"), (0.5, "random"), (0.75, "block"), (0.75, "random")]
    for row in table.to_dict("records"):
        assert row["finetune_mean"] == pytest.approx(sum(scores[row["masking.ratio"], row["masking.strategy"]]) / 2)
        assert row["finetune_std"] == pytest.approx(1 / math.sqrt(2)) and row["n"] == 2
        assert math.isnan(row["linear_probe_mean"])
    out = write_report(tmp_path / "grid2", tmp_path / "reports")  # an eval that never ran: "not run" panel
    assert "| 0.5 | block | 85.5 ± 0.7 † | [85.0, 86.0] | 2 | — | — | 0 |" in out["table_md"].read_text()  # not resolved: 2 seeds
    assert out["plot"].read_bytes().startswith(b"\x89PNG")


def test_no_varying_axis_gives_one_row_named_by_the_study(tmp_path):
    add_run(tmp_path, "one", "a", finetune=80.0, probe=60.0, seed=0)
    add_run(tmp_path, "one", "b", finetune=82.0, probe=62.0, seed=1)
    frame = runs_frame(tmp_path / "one")
    assert varying_axes(frame) == []
    table = summary_table(frame, [])
    assert list(table["study"]) == ["one"] and table.loc[0, "n"] == 2
    text = format_markdown(table, [])
    assert "| one | 81.0 ± 1.4 | [80.0, 82.0] | 2 | 61.0 ± 1.4 | [60.0, 62.0] | 2 |" in text
    assert "**" not in text and "†" not in text  # one row: nothing to mark
    plot_study(frame, [], tmp_path / "one.png", "one")
    assert (tmp_path / "one.png").stat().st_size > 0


def test_empty_study_raises_one_line(tmp_path):
    RunFolder(tmp_path, "empty", "half").start(BASE)  # started, never finished
    with pytest.raises(ValueError) as err:
        write_report(tmp_path / "empty", tmp_path / "reports")
    assert str(err.value) == (f"{tmp_path / 'empty'}: no finished runs "
                              "(a run is finished when its result.json is complete)")
    assert "\n" not in str(err.value) and not (tmp_path / "reports").exists()


def test_a_null_setting_sorts_last_and_prints_as_a_dash(tmp_path):
    add_run(tmp_path, "limit", "a", finetune=80.0, probe=60.0, data__test_limit=None)
    add_run(tmp_path, "limit", "b", finetune=81.0, probe=61.0, data__test_limit=256)
    out = write_report(tmp_path / "limit", tmp_path / "reports")
    assert list(out["table"]["data.test_limit"].fillna(-1)) == [256, -1]
    text = out["table_md"].read_text()
    first, second = "| 256 | **81.0** | — | 1 | **61.0** | — | 1 |", "| — | 80.0 | — | 1 | 60.0 | — | 1 |"
    assert text.index(first) < text.index(second)


def test_knn_is_a_third_eval_when_it_has_values(tmp_path):
    for i, ratio in enumerate([0.5, 0.75]):
        for seed in (0, 1):
            run = add_run(tmp_path, "knn", f"r{i}{seed}", finetune=80.0 + i, probe=60.0 + i, seed=seed,
                          masking__ratio=ratio)
            result = json.loads(run.result_path.read_text()) | {"knn_top1": 50.0 + 2 * i + seed}
            run.write_result(result)
    out = write_report(tmp_path / "knn", tmp_path / "reports")
    assert list(out["table"]["knn_mean"]) == [50.5, 52.5]
    lines = out["table_md"].read_text().splitlines()
    assert ("| masking.ratio | fine-tune top-1 | 95% CI | n | linear probe top-1 | 95% CI | n "
            "| k-NN top-1 | 95% CI | n |") in lines
    assert ("| 0.75 | **81.0 ± 0.0** | [81.0, 81.0] | 2 | **61.0 ± 0.0** | [61.0, 61.0] | 2 "
            "| **52.5 ± 0.7** | [52.0, 53.0] | 2 |") in lines
    assert out["plot"].read_bytes().startswith(b"\x89PNG")


def test_a_report_counts_only_the_specs_current_runs_and_names_code_versions(tmp_path):
    """Finished runs the spec's grid no longer has are left out and named; mixed code versions are said."""
    from bench.launch.store import write_study_manifest
    from bench.study.run_ids import run_id, with_added_later

    runs = [add_run(tmp_path, "s", f"r{i}", finetune=70.0 + i, probe=60.0, masking__ratio=ratio)
            for i, ratio in enumerate((0.5, 0.75, 0.9))]
    ids = [run_id(with_added_later(r.read_config())) for r in runs]
    for run, commit in zip(runs, ("a" * 40, "b" * 40 + "-dirty", "b" * 40)):
        result = json.loads(run.result_path.read_text()) | {"git_commit": commit}
        run.result_path.write_text(json.dumps(result))
    write_study_manifest(tmp_path / "s", "s", "", "spec.yaml", ["masking.ratio"], ids[:2])  # 0.9 left the grid
    paths = write_report(tmp_path / "s", tmp_path / "reports")
    text = paths["table_md"].read_text()
    assert paths["n_runs"] == 2 and "| 0.9 |" not in text
    assert "Not in this spec (left out): 1 finished run, r2." in text
    assert "The runs come from 2 code versions: aaaaaaa; bbbbbbb-dirty." in text


def test_baselines_are_shown_and_settings_that_do_not_beat_them_flagged(tmp_path):
    """Baseline runs (config key `baseline`) get their own table and lines in the plot; a setting
    that does not beat the random-init baseline by a resolved margin is flagged ‡."""
    scores = {"random": ([84.0, 85.0, 84.5], [70.0, 71.0, 70.5]), "grid": ([80.0, 80.6, 80.3], [60.4, 60.2, 60.9])}
    for strategy, (ft, lin) in scores.items():
        for seed in range(3):
            add_run(tmp_path, "b", f"{strategy}{seed}", finetune=ft[seed], probe=lin[seed], seed=seed,
                    masking__strategy=strategy)
    for seed, (ft, lin) in enumerate([(80.1, 60.0), (80.5, 60.8), (80.3, 60.4)]):
        run = add_run(tmp_path, "b", f"scratch{seed}", finetune=ft, probe=lin, seed=seed)
        config = run.read_config() | {"baseline": "random_init"}
        run.config_path.write_text(__import__("yaml").safe_dump(config))
        result = json.loads(run.result_path.read_text())
        result.pop("config", None)
        run.result_path.write_text(json.dumps(result))
    run = add_run(tmp_path, "b", "pixels0", finetune=None, probe=84.5, seed=0)
    run.config_path.write_text(__import__("yaml").safe_dump(run.read_config() | {"baseline": "raw_pixels"}))

    paths = write_report(tmp_path / "b", tmp_path / "reports")
    table = paths["table"]
    assert list(table["masking.strategy"]) == ["grid", "random"] and paths["n_runs"] == 6  # baselines apart
    assert dict(zip(table["masking.strategy"], table["finetune_vs_baseline"])) == {"random": "beats",
                                                                                  "grid": "not above"}
    text = paths["table_md"].read_text()
    assert "| grid | 80.3 ± 0.3 ‡ |" in text and "| random | **84.5 ± 0.5** |" in text
    assert "| random init, no pre-training (fine-tune = from scratch) | 80.3 ± 0.2 | 60.4 ± 0.4 | 3 |" in text
    assert "| raw pixels (linear probe recipe; k-NN) | — | 84.5 | 1 |" in text
    assert "‡: not above the random init baseline" in text
    assert "with one seed on either side" not in text  # three seeds on each side: a measured verdict
    runs_csv = pd.read_csv(paths["runs_csv"])
    assert sorted(runs_csv["baseline"].dropna()) == ["random_init"] * 3 + ["raw_pixels"]


def test_the_baseline_mark_is_explained_only_where_it_is_used(tmp_path):
    """No ‡ footnote when every setting beats the random-init baseline; with one baseline seed the
    footnote says why a mark cannot be avoided."""
    for seed, (ft, lin) in enumerate([(84.0, 70.0), (85.0, 71.0), (84.5, 70.5)]):
        add_run(tmp_path, "b", f"random{seed}", finetune=ft, probe=lin, seed=seed)
    for seed, (ft, lin) in enumerate([(80.1, 60.0), (80.5, 60.8), (80.3, 60.4)]):
        run = add_run(tmp_path, "b", f"scratch{seed}", finetune=ft, probe=lin, seed=seed)
        run.config_path.write_text(__import__("yaml").safe_dump(run.read_config() | {"baseline": "random_init"}))
    text = write_report(tmp_path / "b", tmp_path / "reports")["table_md"].read_text()
    assert "every setting beats it by a resolved margin" in text and "‡" not in text

    add_run(tmp_path, "one", "random0", finetune=84.0, probe=70.0, seed=0)
    run = add_run(tmp_path, "one", "scratch0", finetune=80.1, probe=60.0, seed=0)
    run.config_path.write_text(__import__("yaml").safe_dump(run.read_config() | {"baseline": "random_init"}))
    text = write_report(tmp_path / "one", tmp_path / "reports")["table_md"].read_text()
    assert "‡: not above the random init baseline" in text and "with one seed on either side" in text
