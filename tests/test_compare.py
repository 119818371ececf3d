"""The paper's numbers as package data, and the comparison report on fabricated result folders."""
import math
from pathlib import Path

import pandas as pd
import pytest

import bench.analysis.compare_plot
from bench.cli import main
from bench.analysis.claims import FAILS, CANNOT_JUDGE, PASSES, STATED_ONLY
from bench.analysis.compare import compare, write_comparison
from bench.core.errors import ConfigError
from bench.analysis.frames import runs_frame
from bench.papers import load_paper, parse_paper_ref, subtable
from bench.analysis.report import write_report
from bench.study.spec import load_study
from bench.launch.store import RESULT_KEYS, RunFolder, write_study_manifest
from test_report import add_run

# MAE Table 1 (ViT-L/16, ImageNet-1K, 800 epochs): setting -> (fine-tune, linear probe)
TABLE1 = {
    "table1a": {1: (84.8, 65.5), 2: (84.9, 70.0), 4: (84.9, 71.9), 8: (84.9, 73.5), 12: (84.4, 73.3)},
    "table1b": {128: (84.9, 69.1), 256: (84.8, 71.3), 512: (84.9, 73.5), 768: (84.4, 73.1), 1024: (84.3, 73.1)},
    "table1c": {True: (84.2, 59.6), False: (84.9, 73.5)},
    "table1d": {"pixel": (84.9, 73.5), "norm_pixel": (85.4, 73.9), "pca": (84.6, 72.3), "dvae_token": (85.3, 71.6)},
    "table1e": {"none": (84.0, 65.7), "crop_fixed": (84.7, 73.1), "crop_rand": (84.9, 73.5),
                "crop_color": (84.3, 71.9)},
    "table1f": {("random", 0.75): (84.9, 73.5), ("block", 0.5): (83.9, 72.3), ("block", 0.75): (82.8, 63.9),
                ("grid", 0.75): (84.0, 66.0)},
}
AXES = {"table1a": ["model.decoder_depth"], "table1b": ["model.decoder_embed_dim"],
        "table1c": ["model.mask_token_in_encoder"], "table1d": ["pretrain.target"],
        "table1e": ["data.augmentation"], "table1f": ["masking.strategy", "masking.ratio"]}
SAMPLING = TABLE1["table1f"]
SEED_OFFSETS = (-0.2, 0.0, 0.2)  # three seeds, sd 0.2


# ----------------------------------------------------------------------------- the paper's numbers
def test_every_table1_number_is_in_the_data_exactly():
    for sid, numbers in TABLE1.items():
        sub = subtable("mae", sid)
        assert list(sub.axes) == AXES[sid] and sub.source == f"Table 1{sid[-1]}"
        assert len(sub.points) == len(numbers)
        for setting, (ft, lin) in numbers.items():
            point = sub.point_at(setting)
            assert point is not None, (sid, setting)
            assert (point.ft, point.lin) == (ft, lin), (sid, setting)
    assert subtable("mae", "table1d").point_at("hog") is None  # not in MAE's Table 1d
    assert subtable("mae", "table1c").point_at(True).values["flops"] == 3.3
    defaults = {sid: [p.setting for p in subtable("mae", sid).points if p.default] for sid in TABLE1}
    assert defaults == {"table1a": [(8,)], "table1b": [(512,)], "table1c": [(False,)], "table1d": [("pixel",)],
                        "table1e": [("crop_rand",)], "table1f": [("random", 0.75)]}


def test_setup_figures_and_table2():
    paper = load_paper("mae")
    assert set(paper.subtables) == set(TABLE1) | {"fig5", "fig7", "fig9", "table2"}
    assert subtable("mae", "table1a").setup_text == "ViT-L/16, ImageNet-1K, 800 epochs pre-training"
    fig5 = subtable("mae", "fig5")
    assert not fig5.plotted_values_given and [p.values for p in fig5.points] == [{"lin": 73.5}]
    assert {c.check["kind"] for c in fig5.claims if c.check} == {"monotone_increasing", "argmax", "above"}
    assert any("54.6" in c.text and c.check is None for c in fig5.claims)  # the lowest point: a statement
    assert subtable("mae", "fig7").points == () and all(c.check is None or c.check["kind"] == "monotone_increasing"
                                                        for c in subtable("mae", "fig7").claims)
    fig9 = subtable("mae", "fig9")
    assert {p.setting[0]: p.ft for p in fig9.points} == {0: 73.5, 0.5: 79.1, 1: 81.0}
    table2 = subtable("mae", "table2")
    assert {p.setting: p.values["pretrain_wall_h"] for p in table2.points} == {
        (True, 8): 42.4, (False, 8): 15.4, (False, 1): 11.6}
    assert subtable("mae", "table1a").point_at(8.0).lin == 73.5  # numbers match by value
    assert subtable("mae", "table1c").point_at(1) is None  # True is not 1


def test_paper_references():
    assert parse_paper_ref("mae:table1f") == ("mae", "table1f")
    assert parse_paper_ref({"source": "mae", "subtable": "fig5"}) == ("mae", "fig5")
    with pytest.raises(ConfigError, match="allowed: PAPER:SUBTABLE"):
        parse_paper_ref("mae")
    with pytest.raises(ConfigError, match="allowed: table1a"):
        subtable("mae", "table9")
    with pytest.raises(ConfigError, match="allowed: beit, mae, simmim"):
        subtable("dino", "table1")


# ----------------------------------------------------------------------------- the comparison
def sampling_study(root, name, score):
    """Table 1f's four settings x 3 seeds; `score(ft, lin)` gives our (ft, lin) from the paper's."""
    for i, ((strategy, ratio), paper) in enumerate(SAMPLING.items()):
        ft, lin = score(*paper)
        for seed, offset in enumerate(SEED_OFFSETS):
            add_run(root, name, f"s{i}-{seed}", finetune=ft + offset, probe=lin + offset, seed=seed,
                    masking__strategy=strategy, masking__ratio=ratio)
    return root / name


def test_ordered_like_the_paper(tmp_path, monkeypatch):
    study = sampling_study(tmp_path, "same", lambda ft, lin: (ft + 4.0, lin - 10.0))  # other scale, same order
    figures = []
    save = bench.analysis.compare_plot.save_png
    monkeypatch.setattr(bench.analysis.compare_plot, "save_png", lambda fig, path: (figures.append(fig), save(fig, path)))
    out = write_comparison(study, tmp_path / "reports", "mae:table1f")
    comparison = out["comparison"]
    for metric in ("ft", "lin"):
        ranking = comparison.rankings[metric]
        assert ranking.tau == pytest.approx(1.0) and ranking.best_matches
        assert ranking.our_best.label == "random 75%" and [s.label for s in ranking.paper_best] == ["random 75%"]

    # grid 75% (84.0) and block 50% (83.9): 0.1 apart, seeds 0.4 apart -> not resolved; the rest are
    noisy = {(p.metric, p.higher.label, p.lower.label) for p in comparison.pairs if p.resolved is False}
    assert noisy == {("ft", "grid 75%", "block 50%")}
    unresolved = next(p for p in comparison.pairs if p.resolved is False)
    assert unresolved.p == pytest.approx(0.57, abs=0.01) and unresolved.seeds_needed == 99  # 0.1 apart at sd 0.2
    assert all(p.paper == "same order" for p in comparison.pairs)

    md = out["comparison_md"].read_text()
    assert "| block 50% (`block, 0.5`) | 87.9 ± 0.2 | [87.7, 88.1] | 3 | 83.9 | +4.0 | 3 / 3 |" in md
    assert ("| random 75% (`random, 0.75`) (paper's baseline) | 63.5 ± 0.2 | [63.3, 63.7] | 3 | 73.5 | -10.0 "
            "| 1 / 1 |") in md
    assert "| grid 75% > block 50% | 0.1 | not resolved (0.57) | ~99 | same order |" in md
    assert "| random 75% > block 75% | 2.1 | resolved (0.0013) | — | same order |" in md
    # four settings in perfect agreement: the exact two-sided p of tau = 1 is 2/4! = 0.083
    assert md.count("Kendall's tau-b between our ordering and the paper's (4 settings): **1.00** (p = 0.083)") == 2
    assert md.count(": **same**") == 2
    for number in ("84.9", "83.9", "82.8", "84.0", "73.5", "72.3", "63.9", "66.0"):
        assert f"| {number} |" in md

    table = pd.read_csv(out["comparison_csv"])
    assert list(table["setting"]) == ["random 75%", "block 50%", "block 75%", "grid 75%"]  # the paper's order
    assert list(table["ft_delta"].round(6)) == [4.0] * 4 and list(table["lin_delta"].round(6)) == [-10.0] * 4

    png = out["comparison_png"].read_bytes()
    assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 10_000
    paper_series = [line.get_ydata().tolist() for ax in figures[0].axes for line in ax.get_lines()
                    if line.get_marker() == "D"]
    assert paper_series == [[84.9, 83.9, 82.8, 84.0], [73.5, 72.3, 63.9, 66.0]]  # beside ours, on right axes
    assert sum(len(ax.patches) for ax in figures[0].axes) >= 8  # our bars: 4 settings x 2 metrics


def test_reversed_order(tmp_path):
    study = sampling_study(tmp_path, "reversed", lambda ft, lin: (170.0 - ft, 140.0 - lin))
    comparison = compare(runs_frame(study), subtable("mae", "table1f"))
    for metric in ("ft", "lin"):
        ranking = comparison.rankings[metric]
        assert ranking.tau == pytest.approx(-1.0) and ranking.best_matches is False
        assert ranking.our_best.label == "block 75%"
    assert {p.paper for p in comparison.pairs} == {"reversed"}
    md = write_comparison(study, tmp_path / "reports", "mae:table1f")["comparison_md"].read_text()
    assert md.count(": **differs**") == 2 and "**-1.00**" in md


def test_manifest_names_the_subtable_and_write_report_adds_the_comparison(tmp_path):
    study = sampling_study(tmp_path, "sampling", lambda ft, lin: (ft, lin))
    write_study_manifest(study, "sampling", "Mask sampling", "spec.yaml", ["masking.strategy", "masking.ratio"],
                         [], [["masking.strategy", "masking.ratio"]], paper={"source": "mae", "subtable": "table1f"})
    out = write_report(study, tmp_path / "reports")
    for key in ("comparison_md", "comparison_csv", "comparison_png"):
        assert out[key].exists() and out[key].parent == tmp_path / "reports" / "sampling"
    assert out["comparison_md"].read_text().startswith("# sampling: ours vs MAE Table 1f\n\nMask sampling\n")
    assert write_comparison(tmp_path / "nothing-named", tmp_path / "reports") is None


def test_cli_paper_flag(tmp_path, capsys):
    study = sampling_study(tmp_path, "flag", lambda ft, lin: (ft, lin))
    assert main(["report", str(study), "--reports", str(tmp_path / "reports"), "--paper", "mae:table1f"]) == 0
    assert (tmp_path / "reports" / "flag" / "comparison.png").exists()
    assert "comparison.md" in capsys.readouterr().out
    assert main(["report", str(study), "--reports", str(tmp_path / "reports"), "--paper", "mae:table9"]) == 2
    err = capsys.readouterr().err
    assert "paper.subtable: 'table9' is not in mae" in err and err.count("\n") == 1


def test_unmatched_settings_on_both_sides(tmp_path):
    for target, (ft, lin) in {"pixel": (80.0, 60.0), "norm_pixel": (81.0, 62.0), "hog": (82.0, 63.0)}.items():
        add_run(tmp_path, "targets", target, finetune=ft, probe=lin, pretrain__target=target)
    comparison = compare(runs_frame(tmp_path / "targets"), subtable("mae", "table1d"))
    assert [s.label for s in comparison.settings] == ["pixel (w/o norm)", "pixel (w/ norm)", "PCA", "dVAE token", "hog"]
    assert [s.samples is not None for s in comparison.settings] == [True, True, False, False, True]
    ranking = comparison.rankings["ft"]
    assert [s.label for s in ranking.common] == ["pixel (w/o norm)", "pixel (w/ norm)"] and ranking.best_matches
    assert "our best of all settings is hog" in ranking.note
    md = write_comparison(tmp_path / "targets", tmp_path / "reports", "mae:table1d")["comparison_md"].read_text()
    assert "not run by us: PCA, dVAE token; ours only (no paper value): hog" in md
    assert "| hog | 82.0 | — | 1 | — | — | — |" in md
    assert "with one seed per setting, whether one is resolved cannot be judged" in md


def test_decoder_widths_match_per_encoder_width(tmp_path):
    """Table 1b's widths are for ViT-L's 1024-wide encoder: a 128-wide encoder's 16 is the paper's 128."""
    for width in (16, 32, 64, 96, 128):
        paper_width = width * 8
        ft, lin = TABLE1["table1b"][paper_width]
        add_run(tmp_path, "widths", f"w{width:03d}", finetune=ft - 5, probe=lin - 5, model__embed_dim=128,
                model__decoder_embed_dim=width)
    comparison = compare(runs_frame(tmp_path / "widths"), subtable("mae", "table1b"))
    assert [(s.values[0], s.label) for s in comparison.settings] == [
        (16, "128"), (32, "256"), (64, "512"), (96, "768"), (128, "1024")]
    assert comparison.rankings["lin"].tau == pytest.approx(1.0)
    assert list(comparison.table["ft_delta"].round(6)) == [-5.0] * 5
    md = write_comparison(tmp_path / "widths", tmp_path / "reports", "mae:table1b")["comparison_md"].read_text()
    assert "| 128 (`16`) | 79.9 | — | 1 | 84.9 | -5.0 | 1 / 1 |" in md
    assert "as a fraction of model.embed_dim (the paper's: 1024)" in md


@pytest.mark.parametrize("profile", [None, "small"])
def test_every_mae_spec_matches_its_subtable(tmp_path, profile):
    """The specs' config values are the paper's settings: every paper setting is run, at both scales."""
    specs = sorted((Path(__file__).parents[1] / "ablations" / "mae").glob("[tf]*.yaml"))
    assert len(specs) == 11  # the 9 subtables, and 2 Table 1f investigations (one of them runs its block rows only)
    partial = {"table1f_block_params.yaml": {"block 50%", "block 75%"}}
    for spec in specs:
        study = load_study(spec, {}, profile)
        for run in study.runs:
            folder = RunFolder(tmp_path, study.name, run.run_id)
            folder.start(run.config)
            folder.write_result({k: None for k in RESULT_KEYS} | {"run_id": run.run_id, "study": study.name,
                                                                  "finetune_top1": 80.0, "config": run.config})
        comparison = compare(runs_frame(tmp_path / study.name), subtable(*parse_paper_ref(study.paper)))
        ran = {s.label for s in comparison.settings if s.samples is not None}
        assert ran == partial.get(spec.name, {s.label for s in comparison.settings}), spec.name
        assert comparison.pooled_axes == [], spec.name


def test_a_missing_axis_key_is_a_config_error(tmp_path):
    import dataclasses
    add_run(tmp_path, "s", "a", finetune=80.0, probe=60.0)
    sub = dataclasses.replace(subtable("mae", "fig9"), axes=("evals.finetune.no_such_key",))
    with pytest.raises(ConfigError, match="no evals.finetune.no_such_key"):
        compare(runs_frame(tmp_path / "s"), sub)


# ----------------------------------------------------------------------------- the paper's claims
PAPER_SCALE = dict(model__preset="mae_vit_large_patch16", data__name="imagefolder", pretrain__epochs=800)


def ratio_study(root, name, scores, paper_scale=True):
    """Masking ratios; scores: ratio -> (ft per seed, lin per seed). Runs at the paper's setup
    (ViT-L/16, ImageFolder, 800 epochs) unless paper_scale is False."""
    scale = PAPER_SCALE if paper_scale else {}
    for ratio, (fts, lins) in scores.items():
        for seed, (ft, lin) in enumerate(zip(fts, lins)):
            add_run(root, name, f"r{ratio}-{seed}", finetune=ft, probe=lin, seed=seed, masking__ratio=ratio,
                    **scale)
    return compare(runs_frame(root / name), subtable("mae", "fig5"))


def verdicts(comparison):
    return [c.verdict for c in comparison.claims]


def test_claims_pass(tmp_path):
    comparison = ratio_study(tmp_path, "good", {0.25: ([84, 84.2], [50, 50.2]), 0.5: ([85, 85.2], [55, 55.2]),
                                                0.75: ([85.5, 85.7], [60, 60.2]), 0.9: ([85, 85.2], [52, 52.2])})
    assert verdicts(comparison) == [PASSES, PASSES, PASSES, STATED_ONLY, STATED_ONLY]
    assert comparison.claims[0].detail == "50.1 → 55.1 → 60.1: rises at every step"  # only up to 75%


def test_claims_fail(tmp_path):
    comparison = ratio_study(tmp_path, "bad", {0.25: ([80, 80.2], [56, 56.2]), 0.5: ([85, 85.2], [55, 55.2]),
                                               0.75: ([85.5, 85.7], [60, 60.2]), 0.9: ([85, 85.2], [62, 62.2])})
    assert verdicts(comparison)[:3] == [FAILS, FAILS, FAILS]
    assert comparison.claims[0].detail == "56.1 → 55.1 → 60.1: drops 0.25 → 0.5"
    assert comparison.claims[1].detail == "our best is 0.9 (62.1); 75% has 60.1"
    assert comparison.claims[2].detail.startswith("lowest mean 80.1 at 0.25")


def test_an_absolute_bound_is_judged_only_at_the_paper_scale(tmp_path):
    # the same numbers from a small-scale study: fine-tuning "above 82.5%" says nothing about them
    scores = {0.25: ([80, 80.2], [56, 56.2]), 0.75: ([85.5, 85.7], [60, 60.2])}
    small = ratio_study(tmp_path, "small", scores, paper_scale=False)
    assert small.claims[2].verdict == CANNOT_JUDGE
    assert small.claims[2].detail.startswith("lowest mean 80.1 at 0.25; the bound is absolute")
    assert small.claims[0].verdict == PASSES  # orderings are judged at any scale
    assert ratio_study(tmp_path, "large", scores).claims[2].verdict == FAILS


def test_claims_not_resolved_or_not_run_cannot_be_judged(tmp_path):
    noisy = ratio_study(tmp_path, "noisy", {0.5: ([85, 86], [60, 61]), 0.75: ([85, 86], [60.4, 60.4]),
                                            0.9: ([85, 86], [60.5, 61.5])})
    assert verdicts(noisy)[:2] == [CANNOT_JUDGE, CANNOT_JUDGE]  # 0.9 beats 0.75, not resolved
    assert "not resolved" in noisy.claims[1].detail
    missing = ratio_study(tmp_path, "missing", {0.5: ([85], [60]), 0.9: ([86], [61])})
    assert verdicts(missing)[1] == CANNOT_JUDGE and missing.claims[1].detail == "we did not run 0.75"
    assert math.isnan(missing.rankings["lin"].tau) and missing.rankings["lin"].our_best is None


def test_a_table_without_numbers_says_so_and_has_no_paper_legend(tmp_path, monkeypatch):
    """SimMIM's head table: numbers not given; the plot says so in each panel and its legend
    names only our series (no paper marker drawn, none in the legend)."""
    for i, head in enumerate(("linear", "mlp", "decoder")):
        for seed, offset in enumerate(SEED_OFFSETS):
            add_run(tmp_path, "heads", f"h{i}-{seed}", finetune=80.0 + i + offset, probe=60.0 + offset, seed=seed,
                    model__head=head)
    figures = []
    save = bench.analysis.compare_plot.save_png
    monkeypatch.setattr(bench.analysis.compare_plot, "save_png", lambda fig, path: (figures.append(fig), save(fig, path)))
    write_comparison(tmp_path / "heads", tmp_path / "reports", "simmim:head")
    fig = figures[0]
    legend = [t.get_text() for legend in fig.legends for t in legend.get_texts()]
    assert legend == ["ours: mean over seeds (left axis)", "ours: one run (seed)"]
    notes = [t.get_text() for ax in fig.axes for t in ax.texts]
    assert notes.count("paper: no number given") == 2
    assert not [line for ax in fig.axes for line in ax.get_lines() if line.get_marker() == "D"]
