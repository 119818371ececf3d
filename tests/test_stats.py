"""Statistics over seeds: bootstrap intervals, Kendall's tau-b, and the seed-noise rule."""
import math

import numpy as np
import pytest

from bench.analysis.stats import bootstrap_ci, kendall_tau, within_noise


def test_bootstrap_is_deterministic_and_inside_the_data():
    values = [84.1, 84.9, 85.3, 84.4, 85.0]
    lo, hi = bootstrap_ci(values, seed=3)
    assert (lo, hi) == bootstrap_ci(values, seed=3)
    assert min(values) <= lo < np.mean(values) < hi <= max(values)


def test_bootstrap_edge_cases():
    assert bootstrap_ci([72.5]) == (72.5, 72.5)
    assert bootstrap_ci([72.5, float("nan"), None]) == (72.5, 72.5)  # NaNs dropped
    assert all(math.isnan(v) for v in bootstrap_ci([float("nan")]))
    assert bootstrap_ci([80.0, 81.0]) == (80.0, 81.0)  # two seeds: the interval spans them
    assert bootstrap_ci([3.0, 3.0, 3.0]) == (3.0, 3.0)
    with pytest.raises(ValueError):
        bootstrap_ci([1.0, 2.0], level=95)


def test_bootstrap_matches_the_normal_interval_for_many_values():
    values = np.random.default_rng(0).normal(70.0, 2.0, size=400)
    lo, hi = bootstrap_ci(values, level=0.95, n_resamples=4000)
    half_width = 1.96 * values.std(ddof=1) / math.sqrt(len(values))
    assert lo == pytest.approx(values.mean() - half_width, abs=0.05)
    assert hi == pytest.approx(values.mean() + half_width, abs=0.05)


def test_kendall_tau_hand_computed():
    assert kendall_tau([1, 2, 3, 4], [10, 20, 30, 40]) == 1.0
    assert kendall_tau([1, 2, 3, 4], [40, 30, 20, 10]) == -1.0
    # ties in a (pair 1-2) and in b (pair 2-3): 4 concordant, 0 discordant of 6 pairs -> 4 / sqrt(5 * 5)
    assert kendall_tau([1, 2, 2, 3], [1, 2, 3, 3]) == pytest.approx(0.8)
    # 7 concordant, 1 discordant, one tie in each of 10 pairs -> 6 / sqrt(9 * 9)
    assert kendall_tau([1, 2, 3, 3, 4], [2, 1, 3, 4, 4]) == pytest.approx(6 / 9)
    assert math.isnan(kendall_tau([1, 1, 1], [1, 2, 3]))  # a constant ordering: undefined
    assert math.isnan(kendall_tau([1], [1]))
    assert kendall_tau([1, 2, float("nan"), 3], [3, 2, 1, 1]) == pytest.approx(kendall_tau([1, 2, 3], [3, 2, 1]))


def test_kendall_tau_equals_scipy_tau_b():
    scipy_stats = pytest.importorskip("scipy.stats")
    rng = np.random.default_rng(1)
    for _ in range(20):
        a, b = rng.integers(0, 4, size=7), rng.integers(0, 4, size=7)
        expected = scipy_stats.kendalltau(a, b).statistic
        assert kendall_tau(a, b) == pytest.approx(expected, nan_ok=True)


def test_within_noise_rule():
    assert within_noise([84.0, 85.0], [84.2, 84.6]) is True  # the seeds interleave
    assert within_noise([84.0, 85.0], [80.0, 80.4]) is False
    # sd sqrt(2) for both, n 2: two standard errors of the difference = 2 * sqrt(2) = 2.83
    assert within_noise([0.0, 2.0], [2.8, 4.8]) is True
    assert within_noise([0.0, 2.0], [2.9, 4.9]) is False
    assert within_noise([84.0], [84.1, 84.2]) is None  # one seed: cannot judge
    assert within_noise([84.0, float("nan")], [84.1, 84.2]) is None
