"""Statistics over seeds (scipy): bootstrap intervals, Kendall's tau-b with its p, Welch's test with Holm's
correction, and the seeds a gap would need."""
import math

import numpy as np
import pytest

from scipy import stats as scipy_stats

from bench.analysis.stats import bootstrap_ci, holm, kendall, kendall_tau, resolved, seeds_to_resolve, welch_p


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


def test_kendall_p_value_is_scipys():
    tau, p = kendall([1, 2, 3, 4], [10, 20, 30, 40])
    assert tau == 1.0 and p == pytest.approx(scipy_stats.kendalltau([1, 2, 3, 4], [10, 20, 30, 40]).pvalue)
    assert p == pytest.approx(2 / 24)  # exact: one of 4! orderings is perfectly concordant, two-sided
    assert all(math.isnan(v) for v in kendall([1], [2]))


def test_welch_p_value():
    a, b = [84.0, 85.0, 84.5], [80.0, 80.4, 80.9]
    assert welch_p(a, b) == pytest.approx(scipy_stats.ttest_ind(a, b, equal_var=False).pvalue)
    assert resolved(welch_p(a, b)) is True
    assert resolved(welch_p([84.0, 85.0], [84.2, 84.6])) is False  # the seeds interleave
    assert welch_p([84.0], [84.1, 84.2]) is None and resolved(None) is None  # one seed: cannot judge
    assert welch_p([84.0, float("nan")], [84.1, 84.2]) is None
    assert welch_p([1.0, 1.0], [2.0, 2.0]) == 0.0 and welch_p([1.0, 1.0], [1.0, 1.0]) == 1.0  # no spread


def test_holm_correction():
    # sorted 0.01, 0.02, 0.04 -> x3, x2, x1 = 0.03, 0.04, 0.04 (kept monotone), back in the given order
    assert holm([0.04, 0.01, None, 0.02]) == [pytest.approx(0.04), pytest.approx(0.03), None, pytest.approx(0.04)]
    assert holm([0.5, 0.9]) == [pytest.approx(1.0), pytest.approx(1.0)]  # capped at 1
    assert holm([]) == []


def test_seeds_to_resolve_grows_as_the_gap_shrinks():
    a = [70.0, 72.0, 71.0]
    wide = seeds_to_resolve(a, [69.0, 71.0, 70.0])  # sd 1 in both, gap 1: the normal approximation says 16
    assert wide == 17  # the t-test needs one more
    # the n found has 80% power and n - 1 has less (power of Welch's test simulated with scipy's t-test)
    rng = np.random.default_rng(0)
    for n, above in ((wide, True), (wide - 1, False)):
        hits = [scipy_stats.ttest_ind(rng.normal(1, 1, n), rng.normal(0, 1, n)).pvalue < 0.05 for _ in range(4000)]
        assert (np.mean(hits) >= 0.78) == above or abs(np.mean(hits) - 0.8) < 0.02
    assert seeds_to_resolve(a, [69.0, 71.0, 70.0], comparisons=6) > wide  # a stricter level needs more
    assert seeds_to_resolve(a, [69.9, 71.9, 70.9]) is None  # a 0.1 gap: more than MAX_SEEDS
    assert seeds_to_resolve([1.0], [2.0, 3.0]) is None and seeds_to_resolve([1.0, 1.0], [2.0, 2.0]) is None
