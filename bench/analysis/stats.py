"""Statistics over seeds: bootstrap intervals, Kendall's tau, and whether a difference is seed noise.

The noise rule (`within_noise`): two settings differ by no more than seed noise when

    |mean_a - mean_b| <= 2 * sqrt(sd_a**2 / n_a + sd_b**2 / n_b)        (sd with ddof=1)

that is, when the difference of the means is within two standard errors of that difference
(roughly a two-sided test at the 5% level). It needs at least two seeds of each setting; with one
seed the spread is unknown and the answer is None ("cannot judge").

Why not "the 95% bootstrap intervals overlap": with the 2-3 seeds a study usually has, the
percentile bootstrap interval of the mean is exactly the range of the seeds (a resample of
three copies of the lowest seed already has probability 1/27 > 2.5%), so its overlap says
little beyond "the seeds interleave". The intervals are still reported, as a description.
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np

NOISE_RULE = "|Δ mean| ≤ 2·√(sd₁²/n₁ + sd₂²/n₂), the standard error of the difference (sd over seeds, ddof=1)"


def _finite(values: Sequence[float]) -> np.ndarray:
    """The values as a float array, NaNs (and Nones) dropped."""
    array = np.asarray([np.nan if v is None else v for v in values], dtype=float)
    return array[~np.isnan(array)]


def bootstrap_ci(values: Sequence[float], level: float = 0.95, n_resamples: int = 10_000,
                 seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of `values` (one value per seed).

    NaNs are dropped; no value gives (nan, nan), one value gives (value, value). The same
    `seed` gives the same interval.
    """
    if not 0 < level < 1:
        raise ValueError(f"level {level} is not allowed; allowed: 0 < level < 1")
    values = _finite(values)
    if len(values) == 0:
        return (math.nan, math.nan)
    if len(values) == 1:
        return (float(values[0]), float(values[0]))
    rng = np.random.default_rng(seed)
    means = values[rng.integers(0, len(values), size=(n_resamples, len(values)))].mean(axis=1)
    tail = (1 - level) / 2
    lo, hi = np.quantile(means, [tail, 1 - tail])
    return (float(lo), float(hi))


def kendall_tau(a: Sequence[float], b: Sequence[float]) -> float:
    """Kendall's tau-b between two scorings of the same items (ties allowed); nan if undefined.

    tau-b = (concordant - discordant) / sqrt((pairs - ties_a) * (pairs - ties_b)), where a pair
    tied in `a` or in `b` is neither concordant nor discordant. Equals scipy.stats.kendalltau.
    Items that are NaN in either scoring are left out.
    """
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"kendall_tau needs two equally long lists, got {a.shape} and {b.shape}")
    both = ~np.isnan(a) & ~np.isnan(b)
    a, b = a[both], b[both]
    concordant = discordant = ties_a = ties_b = 0
    for i in range(len(a)):
        for j in range(i + 1, len(a)):
            sign = np.sign(a[i] - a[j]) * np.sign(b[i] - b[j])
            ties_a += a[i] == a[j]
            ties_b += b[i] == b[j]
            concordant += sign > 0
            discordant += sign < 0
    pairs = len(a) * (len(a) - 1) // 2
    denominator = math.sqrt((pairs - ties_a) * (pairs - ties_b))
    return (concordant - discordant) / denominator if denominator else math.nan


def within_noise(a: Sequence[float], b: Sequence[float]) -> bool | None:
    """Whether two settings' per-seed values differ by no more than seed noise (rule: NOISE_RULE).

    None when either setting has fewer than two (non-NaN) seeds: the noise cannot be judged.
    """
    a, b = _finite(a), _finite(b)
    if len(a) < 2 or len(b) < 2:
        return None
    standard_error = math.sqrt(a.var(ddof=1) / len(a) + b.var(ddof=1) / len(b))
    return bool(abs(a.mean() - b.mean()) <= 2 * standard_error)
