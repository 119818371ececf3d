"""Our study beside the paper's numbers: reports/<study>/comparison.md, comparison.csv, comparison.png.

A study that reproduces a paper's subtable names it (spec key `paper: {source: mae, subtable:
table1f}`, kept in study.json; `mimbench report --paper mae:table1f` overrides it). Our settings
are matched to the paper's by the config values of the subtable's axes (Table 1f: masking.strategy
and masking.ratio together). Per metric, fine-tune (ft) and linear probe (lin), the comparison has

  - each setting: ours (mean ± std over seeds, 95% bootstrap interval, n) beside the paper's
    number, and the delta ours − paper;
  - since the scales differ (a tiny ViT on Fashion-MNIST against ViT-L on ImageNet-1K), the
    orderings: ranks, whether our best setting is the paper's, and Kendall's tau-b over the
    settings both have;
  - our pairwise orderings, each with whether it is resolved (Welch's t-test, Holm-corrected over
    the metric's pairs; bench.analysis.stats), roughly how many seeds would resolve it if not,
    and whether the paper orders the two settings the same way;
  - each claim of the paper checked against our means where it has a machine check: passes,
    fails, or cannot judge (a setting we did not run, or a difference not resolved).

Other numbers a subtable gives (Table 1c's FLOPs, Table 2's wall-clock) are compared relative
to the paper's baseline setting, ours to ours and the paper's to the paper's.

The pieces: bench.analysis.matching (the records, matching settings), bench.analysis.claims
(the claims' checks), bench.analysis.compare_markdown (comparison.md), bench.analysis.compare_plot
(comparison.png); this module computes the orderings and the table and writes the files.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd

from bench.analysis.claims import at_paper_scale, check_claim
from bench.analysis.compare_markdown import format_comparison, ours_setup
from bench.analysis.compare_plot import plot_comparison
from bench.analysis.frames import runs_frame, varying_axes
from bench.analysis.matching import (METRICS, OTHER_NUMBERS, Comparison, PairOrder, Ranking, Setting,
                                     match_settings)
from bench.papers import Subtable, parse_paper_ref, subtable
from bench.analysis.baselines import format_baselines, reference_lines, split_baselines
from bench.analysis.stats import bootstrap_ci, holm, kendall, resolved, seeds_to_resolve, welch_p
from bench.core.errors import ConfigError
from bench.core.files import atomic_write_text
from bench.launch.store import read_study_manifest


# ----------------------------------------------------------------------------- orderings
def rank_agreement(settings: list[Setting], metric: str) -> Ranking:
    """Our best against the paper's, and Kendall's tau, over the settings both have a number for."""
    column = METRICS[metric][0]
    common = [s for s in settings if len(s.ours(column)) and not math.isnan(s.paper(metric))]
    if not common:
        return Ranking(metric, [], None, [], None, "", math.nan)
    ours = [s.mean(column) for s in common]
    paper = [s.paper(metric) for s in common]
    our_best = common[int(np.argmax(ours))]
    paper_best = [s for s, p in zip(common, paper) if p == max(paper)]
    matches = our_best in paper_best
    notes = []
    if not matches:
        close = [p.label for p in paper_best if resolved(welch_p(p.ours(column), our_best.ours(column))) is False]
        if close:
            notes.append(f"the paper's best ({', '.join(close)}) is not resolved from our best")
    ran = [s for s in settings if len(s.ours(column))]
    best_of_all = max(ran, key=lambda s: s.mean(column))
    if best_of_all.point is None or math.isnan(best_of_all.paper(metric)):
        notes.append(f"our best of all settings is {best_of_all.label} ({best_of_all.mean(column):.1f}), "
                     "which has no paper value")
    tau, tau_p = kendall(ours, paper) if len(common) > 1 else (math.nan, math.nan)
    return Ranking(metric, common, our_best, paper_best, matches, "; ".join(notes), tau, tau_p)


def pairwise_orders(settings: list[Setting], metric: str) -> list[PairOrder]:
    """Every pair of our settings, higher mean first (ours, best to worst): resolved or not (Welch's
    test, Holm-corrected over the metric's pairs) and, if not, roughly how many seeds would tell."""
    column = METRICS[metric][0]
    ran = sorted((s for s in settings if len(s.ours(column))), key=lambda s: -s.mean(column))
    pairs = []
    for i, higher in enumerate(ran):
        for lower in ran[i + 1:]:
            hp, lp = higher.paper(metric), lower.paper(metric)
            paper = "" if math.isnan(hp) or math.isnan(lp) else \
                "same order" if hp > lp else "reversed" if hp < lp else "tied"
            pairs.append(PairOrder(metric, higher, lower, higher.mean(column) - lower.mean(column), None, paper))
    adjusted = holm([welch_p(p.higher.ours(column), p.lower.ours(column)) for p in pairs])
    for pair, p in zip(pairs, adjusted):
        pair.p, pair.resolved = (math.nan if p is None else p), resolved(p)
        if pair.resolved is False:
            pair.seeds_needed = seeds_to_resolve(pair.higher.ours(column), pair.lower.ours(column),
                                                 comparisons=len(pairs))
    return pairs


# ----------------------------------------------------------------------------- the comparison
def comparison_table(settings: list[Setting], sub: Subtable, rankings: dict[str, Ranking]) -> pd.DataFrame:
    """comparison.csv: per setting, per metric ours (mean, std, n, 95% CI), the paper's, the delta
    and the ranks among the settings both have; then the other numbers, raw and relative."""
    baseline = next((s for s in settings if s.point is not None and s.point.default), None)
    at_baseline = baseline or Setting((), "", None, None)  # no baseline: every ratio is nan
    rows = []
    for s in settings:
        row = {"setting": s.label, **dict(zip(sub.axes, s.values)), "in_paper": s.point is not None,
               "paper_baseline": s is baseline, "we_ran": s.samples is not None}
        for metric, (column, _) in METRICS.items():
            values = s.ours(column)
            lo, hi = bootstrap_ci(values)
            common = rankings[metric].common
            row.update({f"{metric}_ours_mean": s.mean(column),
                        f"{metric}_ours_std": values.std(ddof=1) if len(values) > 1 else math.nan,
                        f"{metric}_ours_n": len(values), f"{metric}_ours_ci_lo": lo, f"{metric}_ours_ci_hi": hi,
                        f"{metric}_paper": s.paper(metric), f"{metric}_delta": s.mean(column) - s.paper(metric),
                        f"{metric}_ours_rank": _rank_in(s, common, lambda x: x.mean(column)),
                        f"{metric}_paper_rank": _rank_in(s, common, lambda x: x.paper(metric))})
        for number in (m for m in sub.metrics if m in OTHER_NUMBERS):
            column = OTHER_NUMBERS[number][0]
            row.update({f"{number}_ours_mean": s.mean(column),
                        f"{number}_ours_rel": _ratio(s.mean(column), at_baseline.mean(column)),
                        f"{number}_paper": s.paper(number),
                        f"{number}_paper_rel": _ratio(s.paper(number), at_baseline.paper(number))})
        rows.append(row)
    return pd.DataFrame(rows)


def _rank_in(setting: Setting, group: list[Setting], score) -> float:
    """1 = the highest score in the group (ties share the better rank); nan when not in the group."""
    if setting not in group:
        return math.nan
    return 1.0 + sum(score(other) > score(setting) for other in group)


def _ratio(value: float, baseline: float) -> float:
    return value / baseline if baseline and not math.isnan(baseline) else math.nan


def compare(runs: pd.DataFrame, sub: Subtable) -> Comparison:
    """Everything the comparison report shows, computed from our runs and the paper's subtable
    (baseline runs, if `runs` has them, are not settings: they are left out here)."""
    runs, _ = split_baselines(runs)
    settings = match_settings(runs, sub)
    rankings = {metric: rank_agreement(settings, metric) for metric in METRICS}
    pairs = [pair for metric in METRICS for pair in pairwise_orders(settings, metric)]
    claims = [check_claim(claim, settings, at_paper_scale(runs, sub)) for claim in sub.claims]
    by_setting = runs.groupby(list(sub.axes), dropna=False)
    pooled = [key for key in varying_axes(runs)  # keys that vary within a setting, not only with it
              if key not in sub.axes and by_setting[key].nunique(dropna=False).max() > 1]
    return Comparison(sub, settings, comparison_table(settings, sub, rankings), rankings, pairs, claims, pooled)


# ----------------------------------------------------------------------------- the files
def resolve_subtable(study_dir: Path | str, paper: str | dict | None = None) -> Subtable | None:
    """The subtable named by `paper` ('mae:table1f' or {source, subtable}), else by the study's
    study.json; None when neither names one."""
    paper = paper or read_study_manifest(study_dir).get("paper")
    if not paper:
        return None
    return subtable(*parse_paper_ref(paper))


def write_comparison(study_dir: Path | str, reports_root: Path | str = "reports", paper: str | dict | None = None,
                     runs: pd.DataFrame | None = None, baselines: pd.DataFrame | None = None) -> dict | None:
    """Write comparison.md, comparison.csv and comparison.png under reports_root/<study>/.

    Returns their paths (comparison_md, comparison_csv, comparison_png) and the Comparison, or
    None when no paper subtable is named. `runs` and `baselines`: the study's settings and baseline
    runs (bench.analysis.baselines.split_baselines of runs_frame), when the caller has them.
    """
    study_dir = Path(study_dir)
    sub = resolve_subtable(study_dir, paper)
    if sub is None:
        return None
    if runs is None:
        runs, baselines = split_baselines(runs_frame(study_dir))
    if runs.empty:
        raise ConfigError(str(study_dir), "no finished runs (a run is finished when its result.json is complete)")
    comparison = compare(runs, sub)
    study = study_dir.name
    out = Path(reports_root) / study
    paths = {"comparison_md": out / "comparison.md", "comparison_csv": out / "comparison.csv",
             "comparison_png": out / "comparison.png"}
    description = read_study_manifest(study_dir).get("description")
    text = format_comparison(comparison, study, runs, description)
    if baselines is not None and not baselines.empty:
        text += "\n## Baselines\n\n" + format_baselines(baselines, runs, list(sub.axes))
    atomic_write_text(paths["comparison_md"], text)
    atomic_write_text(paths["comparison_csv"], comparison.table.to_csv(index=False))
    title = f"{study} vs {sub.label}: {sub.title}\nours: {ours_setup(runs)}\npaper: {sub.setup_text}"
    plot_comparison(comparison, paths["comparison_png"], title,
                    reference_lines(baselines) if baselines is not None else None)
    return {**paths, "comparison": comparison}
