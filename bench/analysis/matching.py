"""A comparison's records: our settings matched to a paper subtable's, and what is said about them.

    match_settings(runs, sub)   the paper's settings (its order) and ours, matched by the config
                                values of the subtable's axes
    Setting / Ranking / PairOrder / ClaimCheck / Comparison   the records compare.py computes and
                                compare_markdown.py / compare_plot.py show

METRICS are the metrics a paper's subtable gives (ft, lin), each with our result column;
OTHER_NUMBERS the other numbers some subtables give (FLOPs, wall-clock), compared relative to
the paper's baseline setting.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

from bench.papers import Claim, Point, Subtable, same_setting
from bench.analysis.tables import fmt_value
from bench.core.errors import ConfigError

METRICS = {"ft": ("finetune_top1", "fine-tune top-1"), "lin": ("linear_probe_top1", "linear probe top-1")}
OTHER_NUMBERS = {  # a paper number -> (our result column, what it is, our unit, the paper's unit)
    "flops": ("pretrain_gflops_per_image", "pre-training FLOPs", "GFLOPs/image", "× of the baseline"),
    "pretrain_wall_h": ("pretrain_wall_s", "pre-training wall-clock", "s", "h"),
}


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
        return ", ".join(fmt_value(v) for v in self.values)

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
    tau_p: float = math.nan     # its two-sided p-value


@dataclass
class PairOrder:
    """One of our pairwise orderings: `higher` has the higher mean of `metric` than `lower`."""
    metric: str
    higher: Setting
    lower: Setting
    delta: float
    resolved: bool | None       # Welch's test, Holm-corrected over the metric's pairs; None: one seed
    paper: str                  # 'same order', 'reversed', 'tied', or '' when the paper lacks one
    p: float = math.nan         # the Holm-corrected p-value
    seeds_needed: int | None = None  # roughly, per setting, to resolve the gap at the observed spread


@dataclass
class ClaimCheck:
    claim: Claim
    verdict: str                # passes / fails / cannot judge / stated only (bench.analysis.claims)
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
            settings.append(Setting(values=values, label=", ".join(fmt_value(v) for v in matched_as), point=None,
                                    samples=samples, matched_as=matched_as))
    if numeric_axis(settings):
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
                          f"{sub.axes[0]} = {fmt_value(values[0])} have {key} {', '.join(map(str, ours))}")
    return (values[0] * sub.scaled_by["paper"] / _plain(ours[0]),)


def numeric_axis(settings: list[Setting]) -> bool:
    """One axis whose values are all numbers (not booleans, not missing)."""
    return bool(settings) and all(len(s.values) == 1 and isinstance(s.values[0], (int, float))
                                  and not isinstance(s.values[0], bool) and not math.isnan(s.values[0])
                                  for s in settings)
