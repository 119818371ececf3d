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
  - our pairwise orderings, each with whether it is within seed noise (bench.analysis.stats.within_noise)
    and whether the paper orders the two settings the same way;
  - each claim of the paper checked against our means where it has a machine check: passes,
    fails, or cannot judge (a setting we did not run, or a difference within seed noise).

Other numbers a subtable gives (Table 1c's FLOPs, Table 2's wall-clock) are compared relative
to the paper's baseline setting, ours to ours and the paper's to the paper's.
"""
from __future__ import annotations

import math
import textwrap
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib import patches  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402

from bench.core.errors import ConfigError  # noqa: E402
from bench.analysis.papers import (Claim, Point, Subtable, load_paper, parse_paper_ref, same_setting,  # noqa: E402
                                 same_value, subtable)
from bench.analysis.report import (MISSING, _bars, _fmt_value, _lines, _not_run, _save_png, _zoom, axis_label,  # noqa: E402
                          runs_frame, varying_axes)
from bench.analysis.stats import NOISE_RULE, bootstrap_ci, kendall_tau, within_noise  # noqa: E402
from bench.launch.store import atomic_write_text, read_study_manifest  # noqa: E402

METRICS = {"ft": ("finetune_top1", "fine-tune top-1"), "lin": ("linear_probe_top1", "linear probe top-1")}
OTHER_NUMBERS = {  # a paper number -> (our result column, what it is, our unit, the paper's unit)
    "flops": ("pretrain_gflops_per_image", "pre-training FLOPs", "GFLOPs/image", "× of the baseline"),
    "pretrain_wall_h": ("pretrain_wall_s", "pre-training wall-clock", "s", "h"),
}
PASSES, FAILS, CANNOT_JUDGE, STATED_ONLY = "passes", "fails", "cannot judge", "stated only"


@dataclass(eq=False)  # settings compare by identity
class Setting:
    """One setting of the subtable's axes: the paper's numbers, our per-seed results, or both."""
    values: tuple                          # the axes' config values
    label: str                             # the paper's name for it, else the values
    point: Point | None                    # None: the paper has no such setting
    samples: dict[str, np.ndarray] | None  # result column -> per-seed values; None: we did not run it
    matched_as: tuple = ()                 # the setting in the paper's terms (values, unless scaled_by)

    def ours(self, column: str) -> np.ndarray:
        return np.array([]) if self.samples is None else self.samples.get(column, np.array([]))

    def mean(self, column: str) -> float:
        values = self.ours(column)
        return float(values.mean()) if len(values) else math.nan

    def paper(self, metric: str) -> float:
        value = None if self.point is None else self.point.values.get(metric)
        return math.nan if value is None else value

    @property
    def values_text(self) -> str:
        return ", ".join(_fmt_value(v) for v in self.values)

    @property
    def name(self) -> str:
        """'block 50% (`block, 0.5`)': the paper's name, with the config values when they differ."""
        return self.label if self.label == self.values_text else f"{self.label} (`{self.values_text}`)"


@dataclass
class Ranking:
    """How our ordering of one metric compares with the paper's, over the settings both have."""
    metric: str
    common: list[Setting]
    our_best: Setting | None
    paper_best: list[Setting]   # several when the paper ties
    best_matches: bool | None   # None: no setting in common
    note: str                   # why a mismatch may not matter; our best of all when the paper lacks it
    tau: float                  # Kendall's tau-b; nan with fewer than two settings in common


@dataclass
class PairOrder:
    """One of our pairwise orderings: `higher` has the higher mean of `metric` than `lower`."""
    metric: str
    higher: Setting
    lower: Setting
    delta: float
    within_noise: bool | None   # None: one seed, noise cannot be judged
    paper: str                  # 'same order', 'reversed', 'tied', or '' when the paper lacks one


@dataclass
class ClaimCheck:
    claim: Claim
    verdict: str                # passes / fails / cannot judge / stated only
    detail: str


@dataclass
class Comparison:
    subtable: Subtable
    settings: list[Setting]
    table: pd.DataFrame         # comparison.csv: one row per setting
    rankings: dict[str, Ranking]
    pairs: list[PairOrder]
    claims: list[ClaimCheck]
    pooled_axes: list[str]      # other keys our runs vary: pooled within a setting


# ----------------------------------------------------------------------------- matching
def _plain(value):
    """numpy scalars as Python values, so settings print and compare plainly."""
    return value.item() if isinstance(value, np.generic) else value


def match_settings(runs: pd.DataFrame, sub: Subtable) -> list[Setting]:
    """The paper's settings (in its order) and ours, matched by the config values of `sub.axes`.

    A single numeric axis is sorted by value; otherwise the paper's order comes first, then our
    settings it does not have, in the spec's order. With `sub.scaled_by` ({key, paper}) a value
    matches as a fraction of that key: ours / our key's value against the paper's / `paper`.
    """
    missing = [key for key in sub.axes + ((sub.scaled_by["key"],) if sub.scaled_by else ()) if key not in runs]
    if missing:
        raise ConfigError("paper", f"{sub.paper}:{sub.id} varies {', '.join(sub.axes)}, "
                          f"but the runs' configs have no {missing[0]}")
    columns = [c for c, _ in METRICS.values()] + [c for c, *_ in OTHER_NUMBERS.values()]
    ours = []
    for values, group in runs.groupby(list(sub.axes), sort=False, dropna=False):
        values = tuple(_plain(v) for v in (values if isinstance(values, tuple) else (values,)))
        samples = {c: pd.to_numeric(group[c], errors="coerce").dropna().to_numpy(dtype=float)
                   for c in columns if c in group}
        ours.append((values, _in_paper_terms(values, group, sub), samples))
    settings = []
    for point in sub.points:
        match = next((o for o in ours if same_setting(o[1], point.setting)), None)
        settings.append(Setting(values=match[0] if match else point.setting, label=point.label, point=point,
                                samples=match[2] if match else None, matched_as=point.setting))
    for values, matched_as, samples in ours:
        if not any(same_setting(matched_as, p.setting) for p in sub.points):
            settings.append(Setting(values=values, label=", ".join(_fmt_value(v) for v in matched_as), point=None,
                                    samples=samples, matched_as=matched_as))
    if _numeric_axis(settings):
        settings.sort(key=lambda s: s.values[0])
    return settings


def _in_paper_terms(values: tuple, group: pd.DataFrame, sub: Subtable) -> tuple:
    """Our setting as the paper's: the values themselves, or scaled as sub.scaled_by says."""
    if sub.scaled_by is None:
        return values
    key = sub.scaled_by["key"]
    ours = pd.unique(group[key])
    if len(ours) != 1 or not isinstance(_plain(ours[0]), (int, float)) or not ours[0]:
        raise ConfigError("paper", f"{sub.paper}:{sub.id} matches {sub.axes[0]} per {key}, but the runs of "
                          f"{sub.axes[0]} = {_fmt_value(values[0])} have {key} {', '.join(map(str, ours))}")
    return (values[0] * sub.scaled_by["paper"] / _plain(ours[0]),)


def _numeric_axis(settings: list[Setting]) -> bool:
    """One axis whose values are all numbers (not booleans, not missing)."""
    return bool(settings) and all(len(s.values) == 1 and isinstance(s.values[0], (int, float))
                                  and not isinstance(s.values[0], bool) and not math.isnan(s.values[0])
                                  for s in settings)


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
        close = [p.label for p in paper_best if within_noise(p.ours(column), our_best.ours(column))]
        if close:
            notes.append(f"the paper's best ({', '.join(close)}) is within our seed noise of our best")
    ran = [s for s in settings if len(s.ours(column))]
    best_of_all = max(ran, key=lambda s: s.mean(column))
    if best_of_all.point is None or math.isnan(best_of_all.paper(metric)):
        notes.append(f"our best of all settings is {best_of_all.label} ({best_of_all.mean(column):.1f}), "
                     "which has no paper value")
    tau = kendall_tau(ours, paper) if len(common) > 1 else math.nan
    return Ranking(metric, common, our_best, paper_best, matches, "; ".join(notes), tau)


def pairwise_orders(settings: list[Setting], metric: str) -> list[PairOrder]:
    """Every pair of our settings, higher mean first (ours, best to worst), with its seed noise."""
    column = METRICS[metric][0]
    ran = sorted((s for s in settings if len(s.ours(column))), key=lambda s: -s.mean(column))
    pairs = []
    for i, higher in enumerate(ran):
        for lower in ran[i + 1:]:
            hp, lp = higher.paper(metric), lower.paper(metric)
            paper = "" if math.isnan(hp) or math.isnan(lp) else \
                "same order" if hp > lp else "reversed" if hp < lp else "tied"
            pairs.append(PairOrder(metric, higher, lower, higher.mean(column) - lower.mean(column),
                                   within_noise(higher.ours(column), lower.ours(column)), paper))
    return pairs


# ----------------------------------------------------------------------------- claims
def at_paper_scale(runs: pd.DataFrame, sub: Subtable) -> bool:
    """Whether every run has the paper's setup in our config keys (the paper file's setup.config)."""
    wanted = sub.setup.get("config") or {}
    return bool(wanted) and all(key in runs and runs[key].map(lambda v: same_value(v, value)).all()
                                for key, value in wanted.items())


def check_claim(claim: Claim, settings: list[Setting], paper_scale: bool = True) -> ClaimCheck:
    """A claim's machine check against our per-setting means (see bench.analysis.papers.CHECK_KINDS).

    An absolute bound (kind `above`) is on the paper's scale: with runs at another scale
    (paper_scale False) it cannot be judged.
    """
    check = claim.check
    if check is None:
        return ClaimCheck(claim, STATED_ONLY, "no machine check")
    column, label = METRICS[check["metric"]]
    ran = [s for s in settings if len(s.ours(column))]
    if not ran:
        return ClaimCheck(claim, CANNOT_JUDGE, f"we have no {label}")
    if check["kind"] == "monotone_increasing":
        return _check_monotone(claim, ran, column, check.get("upto"))
    if check["kind"] == "argmax":
        return _check_argmax(claim, ran, column, check["at"])
    if check["kind"] == "above":
        lowest = min(ran, key=lambda s: s.mean(column))
        detail = f"lowest mean {lowest.mean(column):.1f} at {lowest.label}"
        if not paper_scale:
            return ClaimCheck(claim, CANNOT_JUDGE, f"{detail}; the bound is absolute, on the paper's scale, "
                                                   "and our runs are at another")
        return ClaimCheck(claim, PASSES if lowest.mean(column) > check["bound"] else FAILS, detail)
    raise ValueError(f"unknown check kind {check['kind']!r}")


def _check_monotone(claim: Claim, ran: list[Setting], column: str, upto) -> ClaimCheck:
    if not _numeric_axis(ran):
        return ClaimCheck(claim, CANNOT_JUDGE, "the axis is not numeric")
    steps = sorted((s for s in ran if upto is None or s.matched_as[0] <= upto or same_value(s.matched_as[0], upto)),
                   key=lambda s: s.values[0])
    if len(steps) < 2:
        return ClaimCheck(claim, CANNOT_JUDGE, "fewer than two of our settings in the range")
    path = " → ".join(f"{s.mean(column):.1f}" for s in steps)
    drops, noisy, unknown = [], [], []
    for a, b in zip(steps, steps[1:]):
        if b.mean(column) > a.mean(column):
            continue
        same = within_noise(a.ours(column), b.ours(column))
        text = f"{a.label} → {b.label}"
        (noisy if same else unknown if same is None else drops).append(text)
    if drops or unknown:
        detail = f"drops {'; '.join(drops + unknown)}" + (" (one seed: noise not judged)" if unknown else "")
        return ClaimCheck(claim, FAILS, f"{path}: {detail}")
    if noisy:
        return ClaimCheck(claim, CANNOT_JUDGE, f"{path}: drops within seed noise at {'; '.join(noisy)}")
    return ClaimCheck(claim, PASSES, f"{path}: rises at every step")


def _check_argmax(claim: Claim, ran: list[Setting], column: str, at: tuple) -> ClaimCheck:
    target = next((s for s in ran if same_setting(s.matched_as, at)), None)
    at_text = ", ".join(_fmt_value(v) for v in at)
    if target is None:
        return ClaimCheck(claim, CANNOT_JUDGE, f"we did not run {at_text}")
    best = max(ran, key=lambda s: s.mean(column))
    if best is target:
        return ClaimCheck(claim, PASSES, f"our best is {best.label} ({best.mean(column):.1f})")
    detail = f"our best is {best.label} ({best.mean(column):.1f}); {target.label} has {target.mean(column):.1f}"
    same = within_noise(target.ours(column), best.ours(column))
    if same:
        return ClaimCheck(claim, CANNOT_JUDGE, detail + ", within seed noise of it")
    return ClaimCheck(claim, FAILS, detail + (" (one seed: noise not judged)" if same is None else ""))


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
    """Everything the comparison report shows, computed from our runs and the paper's subtable."""
    settings = match_settings(runs, sub)
    rankings = {metric: rank_agreement(settings, metric) for metric in METRICS}
    pairs = [pair for metric in METRICS for pair in pairwise_orders(settings, metric)]
    claims = [check_claim(claim, settings, at_paper_scale(runs, sub)) for claim in sub.claims]
    by_setting = runs.groupby(list(sub.axes), dropna=False)
    pooled = [key for key in varying_axes(runs)  # keys that vary within a setting, not only with it
              if key not in sub.axes and by_setting[key].nunique(dropna=False).max() > 1]
    return Comparison(sub, settings, comparison_table(settings, sub, rankings), rankings, pairs, claims, pooled)


# ----------------------------------------------------------------------------- markdown
def _fmt(value: float, signed: bool = False) -> str:
    if value is None or math.isnan(value):
        return MISSING
    return f"{value:+.1f}" if signed else f"{value:.1f}"


def _row(cells: list[str]) -> str:
    return "| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |"


def _header(names: list[str], align: str) -> list[str]:
    """A markdown table's header; `align` has an 'l' or 'r' per column."""
    return [_row(names), "|" + "|".join(" --- " if a == "l" else " ---: " for a in align) + "|"]


def _ours_setup(runs: pd.DataFrame) -> str:
    """'12 runs, seeds 0, 1, 2: fashion_mnist, mae_vit_tiny_patch4, 4 epochs pre-training'."""
    def distinct(column: str) -> str:
        return ", ".join(_fmt_value(v) for v in pd.unique(runs[column])) if column in runs else MISSING

    seeds = sorted(runs["seed"].unique()) if "seed" in runs else []
    seed_text = f", {len(seeds)} seeds" if len(seeds) > 8 else \
        f", seed{'s' if len(seeds) > 1 else ''} {', '.join(map(str, seeds))}" if seeds else ""
    return (f"{_count(len(runs), 'run')}{seed_text}: {distinct('data.name')}, {distinct('model.preset')}, "
            f"{distinct('pretrain.epochs')} epochs pre-training")


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


def _metric_section(comparison: Comparison, metric: str) -> list[str]:
    column, label = METRICS[metric]
    settings = comparison.settings
    if not any(len(s.ours(column)) for s in settings) and all(math.isnan(s.paper(metric)) for s in settings):
        return [f"## {label} ({metric})", "", "Not run by us, and not in the paper's subtable."]
    lines = [f"## {label} ({metric})", ""]
    lines += _header(["setting", "ours", "95% CI", "n", "paper", "Δ ours − paper", "rank ours / paper"], "lrrrrrr")
    for s, row in zip(settings, comparison.table.to_dict("records")):
        n = row[f"{metric}_ours_n"]
        ours = MISSING if n == 0 else _fmt(row[f"{metric}_ours_mean"]) + \
            ("" if n < 2 else f" ± {row[f'{metric}_ours_std']:.1f}")
        interval = MISSING if n < 2 else f"[{row[f'{metric}_ours_ci_lo']:.1f}, {row[f'{metric}_ours_ci_hi']:.1f}]"
        ranks = MISSING if math.isnan(row[f"{metric}_ours_rank"]) else \
            f"{row[f'{metric}_ours_rank']:.0f} / {row[f'{metric}_paper_rank']:.0f}"
        name = s.name + (" (paper's baseline)" if row["paper_baseline"] else "")
        lines.append(_row([name, ours, interval, n if s.samples is not None else "not run",
                           _fmt(row[f"{metric}_paper"]), _fmt(row[f"{metric}_delta"], signed=True), ranks]))
    ranking = comparison.rankings[metric]
    lines.append("")
    if ranking.our_best is None:
        lines.append("- No setting has both our number and the paper's: orderings cannot be compared.")
    else:
        common = _count(len(ranking.common), "setting")
        paper_best = ", ".join(s.label for s in ranking.paper_best)
        tied = "tied at " if len(ranking.paper_best) > 1 else ""
        verdict = "**same**" if ranking.best_matches else "**differs**"
        note = f" ({ranking.note})" if ranking.note else ""
        lines.append(f"- Best setting, over the {common} both have: ours **{ranking.our_best.label}** "
                     f"({ranking.our_best.mean(column):.1f}), the paper's **{paper_best}** "
                     f"({tied}{ranking.paper_best[0].paper(metric):.1f}): {verdict}{note}.")
        tau = "— (fewer than two settings)" if math.isnan(ranking.tau) else f"**{ranking.tau:.2f}**"
        lines.append(f"- Kendall's tau-b between our ordering and the paper's ({common}): {tau}.")
    pairs = [p for p in comparison.pairs if p.metric == metric]
    if pairs and all(p.within_noise is None for p in pairs):
        lines += ["", "Our pairwise orderings: with one seed per setting, whether one is within seed noise "
                  "cannot be judged."]
    elif pairs:
        lines += ["", "Our pairwise orderings, and whether each is within seed noise:", ""]
        lines += _header(["ours", "Δ", "within seed noise", "the paper"], "lrll")
        for p in pairs:
            noise = "cannot judge (one seed)" if p.within_noise is None else "yes" if p.within_noise else "no"
            lines.append(_row([f"{p.higher.label} > {p.lower.label}", f"{p.delta:.1f}", noise, p.paper or MISSING]))
    return lines


def _other_numbers_section(comparison: Comparison, number: str) -> list[str]:
    _, what, our_unit, paper_unit = OTHER_NUMBERS[number]
    baseline = next((s for s in comparison.settings if s.point is not None and s.point.default), None)
    title = f"## {what}, relative to the paper's baseline" + (f" ({baseline.label})" if baseline else "")
    lines = [title, ""] + _header(["setting", f"ours ({our_unit})", "ours ÷ baseline",
                                   f"paper ({paper_unit})", "paper ÷ baseline"], "lrrrr")
    for s, row in zip(comparison.settings, comparison.table.to_dict("records")):
        mean = row[f"{number}_ours_mean"]
        lines.append(_row([s.name, MISSING if math.isnan(mean) else f"{mean:.3g}",
                           _fmt_ratio(row[f"{number}_ours_rel"]), _fmt_value(row[f"{number}_paper"]),
                           _fmt_ratio(row[f"{number}_paper_rel"])]))
    return lines


def _fmt_ratio(value: float) -> str:
    return MISSING if math.isnan(value) else f"{value:.2f}×"


def format_comparison(comparison: Comparison, study: str, runs: pd.DataFrame, description: str | None = None) -> str:
    """comparison.md."""
    sub = comparison.subtable
    paper_title = load_paper(sub.paper).title
    ours_only = [s.label for s in comparison.settings if s.point is None]
    not_run = [s.label for s in comparison.settings if s.point is not None and s.samples is None]
    in_both = len(sub.points) - len(not_run)
    matched = (f"Settings are matched by the config values of {', '.join(sub.axes)}: {in_both} of the paper's "
               f"{_count(len(sub.points), 'setting')} {'is' if in_both == 1 else 'are'} in our study")
    matched += f"; not run by us: {', '.join(not_run)}" if not_run else ""
    matched += f"; ours only (no paper value): {', '.join(ours_only)}" if ours_only else ""
    if not sub.points:
        matched = "The paper gives no numbers for this ablation, only the claims below"
    metric_names = "; ".join(f"{k} = {v}" for k, v in (sub.setup.get("metrics") or {}).items())
    lines = [f"# {study}: ours vs {sub.paper.upper()} {sub.source.split(' (')[0]}", ""]
    if description:
        lines += [description, ""]
    lines += [f"**Paper**: {paper_title}, {sub.source}: {sub.title}. {sub.setup_text}; {metric_names}.", "",
              f"**Ours**: {_ours_setup(runs)}.", "",
              "The scales differ (our data and model are not the paper's), so a delta (ours − paper) says little by "
              "itself: compare the orderings first (ranks, the best setting, Kendall's tau).", "",
              matched + "."]
    if not sub.plotted_values_given:
        lines += ["", "The paper gives this ablation as a plot: only the numbers and claims its text states are "
                  "here, not the plotted values."]
    lines += [f"\nNote: {note}" for note in sub.notes]
    if sub.scaled_by:
        lines += ["", f"Our {sub.axes[0]} matches the paper's as a fraction of {sub.scaled_by['key']} (the paper's: "
                  f"{sub.scaled_by['paper']:g}); the setting names are the paper's, our values are in backticks."]
    if comparison.pooled_axes:
        lines += ["", f"Our runs also vary {', '.join(comparison.pooled_axes)}, which the paper's subtable does not: "
                  "they are pooled within each setting."]
    for metric in METRICS:
        lines += [""] + _metric_section(comparison, metric)
    for number in (m for m in sub.metrics if m in OTHER_NUMBERS):
        lines += [""] + _other_numbers_section(comparison, number)
    if comparison.claims:
        lines += ["", "## The paper's claims", ""] + _header(["claim", "check", "verdict", "detail"], "llll")
        for c in comparison.claims:
            check = MISSING if c.claim.check is None else ", ".join(
                f"{k}: {_fmt_check_value(v)}" for k, v in c.claim.check.items())
            lines.append(_row([c.claim.text, check, f"**{c.verdict}**", c.detail]))
    lines += ["", f"Seed noise: two settings are within seed noise when {NOISE_RULE}; with one seed it cannot be "
              "judged. 95% CI: percentile bootstrap of the mean over seeds."]
    return "\n".join(lines) + "\n"


def _fmt_check_value(value) -> str:
    if isinstance(value, tuple):
        return ", ".join(_fmt_value(v) for v in value)
    return _fmt_value(value)


# ----------------------------------------------------------------------------- the plot
def plot_comparison(comparison: Comparison, path: Path | str, title: str) -> None:
    """Per metric (ft, lin) a panel: ours against the axis, as report.plot_study draws it (left
    axis), and the paper's numbers as a second series on a right axis of their own."""
    sub = comparison.subtable
    ran = [s for s in comparison.settings if s.samples is not None]
    numeric = _numeric_axis(ran)
    x_name = sub.axes[0] if numeric else " / ".join(sub.axes)
    x_order = [s.values[0] for s in ran] if numeric else [s.label for s in ran]
    position = {id(s): (s.values[0] if numeric else i) for i, s in enumerate(ran)}
    colors = sns.color_palette("colorblind", 2)
    ours_color, paper_color = colors[0], colors[1]
    panel_w = 5.6 if numeric else min(max(4.6, 0.7 * len(ran) + 2.0), 8.0)
    bounds = {c.claim.check["metric"]: c.claim.check["bound"] for c in comparison.claims
              if c.claim.check and c.claim.check["kind"] == "above"}

    with sns.axes_style("whitegrid"), sns.plotting_context("notebook", font_scale=0.9):
        fig, panels = plt.subplots(1, len(METRICS), figsize=(len(METRICS) * panel_w, 4.9), layout="constrained")
        for ax, (metric, (column, label)) in zip(panels, METRICS.items()):
            ax.set_title(f"{label} (%)")
            data = pd.DataFrame([{x_name: s.values[0] if numeric else s.label, "_x": i, "_level": 0, column: v}
                                 for i, s in enumerate(ran) for v in s.ours(column)])
            if data.empty:
                _not_run(ax)
                ax.set_title(f"{label} (%): not run by us")
                continue
            if numeric:
                _lines(ax, data, column, x_name, x_order, [ours_color], 1)
            else:
                _bars(ax, data, column, x_order, [ours_color], 1, small=len(ran) > 10)
                if max(map(len, x_order)) * len(x_order) > 6 * panel_w:
                    plt.setp(ax.get_xticklabels(), rotation=25, ha="right")
            _zoom(ax, data[column])
            ax.set_xlabel(axis_label(x_name) if numeric else ", ".join(axis_label(a) for a in sub.axes))
            ax.set_ylabel("ours (%)", color=ours_color)
            ax.tick_params(axis="y", colors=ours_color)
            _paper_series(ax, [(position[id(s)], s.paper(metric)) for s in ran if not math.isnan(s.paper(metric))],
                          bounds.get(metric), numeric, paper_color, sub)
        ours_handle = plt.Line2D([], [], color=ours_color, marker="o", lw=2) if numeric else patches.Patch(color=ours_color)
        handles = [ours_handle,
                   plt.Line2D([], [], ls="", marker="o", ms=4, alpha=0.6, color=ours_color if numeric else "0.15"),
                   plt.Line2D([], [], color=paper_color, marker="D", ls="--" if numeric else "", lw=1.5)]
        names = ["ours: mean over seeds (left axis)", "ours: one run (seed)",
                 f"paper: {sub.paper.upper()} {sub.source.split(' (')[0]} (right axis)"]
        if bounds:
            handles.append(plt.Line2D([], [], color=paper_color, ls=":", lw=1.5))
            names.append("paper: a bound its text states")
        fig.legend(handles, names, loc="outside lower center", ncol=len(names), frameon=False, fontsize=9)
        width = int(len(METRICS) * panel_w * 11)
        fig.suptitle("\n".join(textwrap.fill(line, width) for line in title.splitlines()), fontsize=12)
        _save_png(fig, Path(path))


PAPER_BAR_OFFSET = 0.22  # where a bar's paper diamond sits, right of its centre (bar width 0.8)


def _paper_series(ax, points: list[tuple], bound: float | None, numeric: bool, color, sub: Subtable) -> None:
    """The paper's numbers on a right-hand y axis; a dotted line for a bound; a note when none."""
    if not points and bound is None:
        ax.text(0.02, 0.97, "paper: no number given", transform=ax.transAxes, ha="left", va="top",
                fontsize=8, color=color)
        return
    right = ax.twinx()
    right.grid(False)
    values = [y for _, y in points]
    if points:
        # on a line, at the setting; on a bar, in its right-hand part, clear of our mean's label
        # (centred above the bar); the paper's value is written beside its diamond either way
        xs = [x if numeric else x + PAPER_BAR_OFFSET for x, _ in points]
        right.plot(xs, values, ls="--" if numeric else "", lw=1.5, marker="D", ms=7, color=color, zorder=4)
        for x, y in zip(xs, values):
            right.annotate(f"{y:.1f}", (x, y), textcoords="offset points", xytext=(7, 0), ha="left", va="center",
                           fontsize=8, color=color, fontweight="bold")
    if bound is not None:
        right.axhline(bound, color=color, ls=":", lw=1.5)
        right.annotate(f"> {bound:g}", (1.0, bound), xycoords=("axes fraction", "data"), xytext=(-4, 3),
                       textcoords="offset points", ha="right", va="bottom", fontsize=8, color=color)
        values.append(bound)
    _zoom(right, pd.Series(values))
    right.set_ylabel("paper (%)", color=color)
    right.tick_params(axis="y", colors=color)


# ----------------------------------------------------------------------------- the report
def resolve_subtable(study_dir: Path | str, paper: str | dict | None = None) -> Subtable | None:
    """The subtable named by `paper` ('mae:table1f' or {source, subtable}), else by the study's
    study.json; None when neither names one."""
    paper = paper or read_study_manifest(study_dir).get("paper")
    if not paper:
        return None
    return subtable(*parse_paper_ref(paper))


def write_comparison(study_dir: Path | str, reports_root: Path | str = "reports", paper: str | dict | None = None,
                     runs: pd.DataFrame | None = None) -> dict | None:
    """Write comparison.md, comparison.csv and comparison.png under reports_root/<study>/.

    Returns their paths (comparison_md, comparison_csv, comparison_png) and the Comparison, or
    None when no paper subtable is named. `runs`: runs_frame(study_dir), when the caller has it.
    """
    study_dir = Path(study_dir)
    sub = resolve_subtable(study_dir, paper)
    if sub is None:
        return None
    runs = runs_frame(study_dir) if runs is None else runs
    if runs.empty:
        raise ConfigError(str(study_dir), "no finished runs (a run is finished when its result.json is complete)")
    comparison = compare(runs, sub)
    study = study_dir.name
    out = Path(reports_root) / study
    paths = {"comparison_md": out / "comparison.md", "comparison_csv": out / "comparison.csv",
             "comparison_png": out / "comparison.png"}
    description = read_study_manifest(study_dir).get("description")
    atomic_write_text(paths["comparison_md"], format_comparison(comparison, study, runs, description))
    atomic_write_text(paths["comparison_csv"], comparison.table.to_csv(index=False))
    source = f"{sub.paper.upper()} {sub.source.split(' (')[0]}"
    title = f"{study} vs {source}: {sub.title}\nours: {_ours_setup(runs)}\npaper: {sub.setup_text}"
    plot_comparison(comparison, paths["comparison_png"], title)
    return {**paths, "comparison": comparison}
