"""Statistics over seeds, from scipy: is a difference resolved, do two orderings agree, how many
seeds would tell.

    welch_p(a, b)             two-sided p of Welch's t-test between two settings' per-seed values
    holm(p_values)            Holm's step-down correction across a table's comparisons
    resolved(p)               p < ALPHA: the difference is resolved (not seed noise)
    kendall(a, b)             Kendall's tau-b between two orderings, with its two-sided p-value
    seeds_to_resolve(a, b)    roughly how many seeds per setting would resolve the observed gap (t-test power)
    bootstrap_ci(values)      percentile bootstrap interval of the mean (a description, not a test)

A difference is "resolved" when Welch's t-test (unequal variances; scipy.stats.ttest_ind) gives
p < 0.05 after Holm's correction over the comparisons of the same table, and "not resolved"
otherwise. With fewer than two seeds of a setting there is no spread to test against: "cannot
judge". With the 2–3 seeds a small study has, a test has little power, so for an unresolved pair
the report also says roughly how many seeds per setting would resolve the observed gap at the
observed spread (80% power of a t-test at 0.05 / the table's comparisons) — a guide for the next
launch, not a promise.

Why not "the 95% bootstrap intervals overlap": with 2–3 seeds the percentile bootstrap interval of
the mean is close to the range of the seeds, so its overlap says little beyond "the seeds
interleave". The intervals are still reported, as a description.
"""
from __future__ import annotations

import math
import warnings
from typing import Sequence

import numpy as np
from scipy import stats

ALPHA = 0.05
POWER = 0.8
TEST_RULE = ("Welch's t-test (two-sided, unequal variances) with Holm's correction across the table's "
             f"comparisons; resolved when the corrected p < {ALPHA:g}")


def finite(values: Sequence[float]) -> np.ndarray:
    """The values as a float array, NaNs (and Nones) dropped."""
    array = np.asarray([np.nan if v is None else v for v in values], dtype=float)
    return array[~np.isnan(array)]


def welch_p(a: Sequence[float], b: Sequence[float]) -> float | None:
    """Two-sided p-value of Welch's t-test; None when either side has fewer than two values.
    Two settings whose seeds agree exactly (no spread) give 0 when their means differ, 1 when not."""
    a, b = finite(a), finite(b)
    if len(a) < 2 or len(b) < 2:
        return None
    if a.var(ddof=1) == 0 and b.var(ddof=1) == 0:
        return 1.0 if a.mean() == b.mean() else 0.0
    with warnings.catch_warnings():  # nearly equal seeds: scipy warns of precision loss, the p stays right
        warnings.simplefilter("ignore", RuntimeWarning)
        return float(stats.ttest_ind(a, b, equal_var=False).pvalue)


def holm(p_values: Sequence[float | None]) -> list[float | None]:
    """Holm-adjusted p-values (step-down, kept monotone, capped at 1); None stays None."""
    known = sorted((p, i) for i, p in enumerate(p_values) if p is not None)
    adjusted: list[float | None] = [None] * len(p_values)
    running = 0.0
    for rank, (p, i) in enumerate(known):
        running = max(running, min(1.0, (len(known) - rank) * p))
        adjusted[i] = running
    return adjusted


def resolved(p: float | None) -> bool | None:
    """True when the (corrected) p-value resolves the difference; None when it cannot be judged."""
    return None if p is None else bool(p < ALPHA)


def kendall(a: Sequence[float], b: Sequence[float]) -> tuple[float, float]:
    """Kendall's tau-b between two scorings of the same items, and its two-sided p-value
    (scipy.stats.kendalltau; exact for small n without ties). Items NaN in either are left out;
    (nan, nan) with fewer than two items."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"kendall needs two equally long lists, got {a.shape} and {b.shape}")
    both = ~np.isnan(a) & ~np.isnan(b)
    if both.sum() < 2:
        return math.nan, math.nan
    result = stats.kendalltau(a[both], b[both])
    return float(result.statistic), float(result.pvalue)


def kendall_tau(a: Sequence[float], b: Sequence[float]) -> float:
    """Kendall's tau-b alone (see `kendall`)."""
    return kendall(a, b)[0]


MAX_SEEDS = 100  # beyond this, "more than 100": the gap is too small for seeds to tell


def seeds_to_resolve(a: Sequence[float], b: Sequence[float], alpha: float = ALPHA, power: float = POWER,
                     comparisons: int = 1) -> int | None:
    """Roughly how many seeds per setting would resolve the observed difference of means with
    probability `power`, at the observed spread (pooled variance), by a two-sided t-test at
    alpha / `comparisons` (Holm's correction is at most that strict): the smallest n whose
    noncentral-t power reaches `power`. None when it cannot be estimated (fewer than two seeds,
    no spread) or when it would take more than MAX_SEEDS."""
    a, b = finite(a), finite(b)
    if len(a) < 2 or len(b) < 2:
        return None
    delta = abs(a.mean() - b.mean())
    sd = math.sqrt((a.var(ddof=1) + b.var(ddof=1)) / 2)
    if sd == 0:
        return None
    level = alpha / max(1, comparisons)
    for n in range(2, MAX_SEEDS + 1):
        df = 2 * n - 2
        critical = stats.t.ppf(1 - level / 2, df)
        shift = delta / (sd * math.sqrt(2 / n))
        if stats.nct.sf(critical, df, shift) + stats.nct.cdf(-critical, df, shift) >= power:
            return n
    return None


def bootstrap_ci(values: Sequence[float], level: float = 0.95, n_resamples: int = 10_000,
                 seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of `values` (one value per seed;
    scipy.stats.bootstrap). NaNs are dropped; no value gives (nan, nan), one value (value, value);
    the same `seed` gives the same interval."""
    if not 0 < level < 1:
        raise ValueError(f"level {level} is not allowed; allowed: 0 < level < 1")
    values = finite(values)
    if len(values) == 0:
        return (math.nan, math.nan)
    if len(values) == 1 or values.min() == values.max():
        return (float(values[0]), float(values[0])) if len(values) == 1 else (float(values.min()),) * 2
    result = stats.bootstrap((values,), np.mean, confidence_level=level, n_resamples=n_resamples,
                             method="percentile", random_state=np.random.default_rng(seed))
    return (float(result.confidence_interval.low), float(result.confidence_interval.high))
