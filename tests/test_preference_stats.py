"""Listening-test statistics against SciPy (binomtest, beta) and an exact rational brute force."""

import math
from fractions import Fraction

import pytest
from scipy import special, stats

from dragontune.preference_stats import (betainc, binomial_p_value, binomial_tail_ge, preference_stats,
                                         prob_above_half)


def _exact_tail_ge(k: int, n: int) -> float:
    return float(Fraction(sum(math.comb(n, i) for i in range(k, n + 1)), 2 ** n))


def _close(a, b, rel=1e-9, abs_=1e-300):
    return math.isclose(a, b, rel_tol=rel, abs_tol=abs_)


@pytest.mark.parametrize("a,b,x", [(0.5, 0.5, 0.3), (1, 1, 0.7), (3.5, 2, 0.5), (20, 30, 0.5), (200, 180.5, 0.5),
                                   (1000.5, 1, 0.999), (2, 700, 0.01), (60, 40, 0.5)])
def test_betainc_matches_scipy(a, b, x):
    assert _close(betainc(a, b, x), float(special.betainc(a, b, x)), rel=1e-11)


def test_binomial_tail_is_the_exact_sum_and_scipy():
    for n in (1, 2, 5, 10, 37, 100, 549, 1000):
        for k in sorted({0, 1, n // 3, n // 2, n // 2 + 1, (2 * n) // 3, n - 1, n}):
            exact = _exact_tail_ge(k, n)
            assert _close(binomial_tail_ge(k, n), exact, rel=1e-10), (k, n)
            assert _close(binomial_tail_ge(k, n), float(stats.binom.sf(k - 1, n, 0.5)), rel=1e-9), (k, n)


def test_two_sided_p_value_matches_binomtest():
    for n in (1, 4, 9, 20, 101, 549, 2000):
        for k in sorted({0, 1, n // 4, n // 2, (n + 1) // 2, (3 * n) // 4, n}):
            two, greater = binomial_p_value(k, n)
            ref = stats.binomtest(k, n, 0.5)
            assert _close(two, ref.pvalue, rel=1e-9), (k, n, two, ref.pvalue)
            assert _close(greater, stats.binomtest(k, n, 0.5, alternative="greater").pvalue, rel=1e-9)
    # a tail far below float64 resolution of 1 - x is still accurate (computed on its own side)
    two, _ = binomial_p_value(900, 1000)
    assert _close(two, stats.binomtest(900, 1000, 0.5).pvalue, rel=1e-8) and 0 < two < 1e-100


def test_half_integer_tail_interpolates_and_is_monotone():
    n = 31
    vals = [binomial_tail_ge(s / 2, n) for s in range(0, 2 * n + 1)]
    assert all(a >= b for a, b in zip(vals, vals[1:]))
    for k in range(1, n):  # the half-integer lies between its whole neighbours
        assert binomial_tail_ge(k, n) >= binomial_tail_ge(k + 0.5, n) >= binomial_tail_ge(k + 1, n)
        assert _close(binomial_tail_ge(k + 0.5, n), float(special.betainc(k + 0.5, n - k + 0.5, 0.5)), rel=1e-10)


def test_prob_above_half_matches_scipy_beta():
    for a, b in [(1, 1), (2, 1), (1, 2), (335.5, 215.5), (40, 60), (5.5, 5.5), (1000, 10)]:
        assert _close(prob_above_half(a, b), float(stats.beta.sf(0.5, a, b)), rel=1e-9, abs_=1e-15), (a, b)


def test_preference_stats_tie_rules():
    w, l, t = 30, 15, 5
    half = preference_stats(w, l, t, "half")
    assert half["n"] == 50 and half["successes"] == 32.5 and half["win_rate"] == 0.65
    assert half["votes"] == 50 and half["ties"] == 5
    drop = preference_stats(w, l, t, "drop")
    assert drop["n"] == 45 and drop["successes"] == 30 and math.isclose(drop["win_rate"], 30 / 45)
    ref = stats.binomtest(30, 45, 0.5)
    assert _close(drop["p_value"], ref.pvalue, rel=1e-9)
    ci = ref.proportion_ci(0.95, method="wilson")
    assert abs(drop["lo"] - ci.low) < 1e-3 and abs(drop["hi"] - ci.high) < 1e-3  # z 1.96 vs 1.95996
    assert _close(drop["p_better"], float(stats.beta.sf(0.5, 31, 16)), rel=1e-9)
    assert _close(half["p_better"], float(stats.beta.sf(0.5, 33.5, 18.5)), rel=1e-9)
    # ties counted half pull the rate toward 50 %: less evidence than dropping them
    assert half["win_rate"] < drop["win_rate"] and half["p_value"] > drop["p_value"]
    # an even number of ties under "half" is an exact binomial test of wins + ties/2
    even = preference_stats(30, 14, 6, "half")
    assert _close(even["p_value"], stats.binomtest(33, 50, 0.5).pvalue, rel=1e-9)


def test_preference_stats_direction_and_edges():
    # reversing the votes mirrors the statistics around 50 %
    a, b = preference_stats(40, 20, 4), preference_stats(20, 40, 4)
    assert math.isclose(a["win_rate"], 1 - b["win_rate"]) and math.isclose(a["lo"], 1 - b["hi"])
    assert math.isclose(a["p_value"], b["p_value"]) and math.isclose(a["p_better"], 1 - b["p_better"])
    assert a["p_better"] > 0.99 and b["p_better"] < 0.01
    e = preference_stats(0, 0, 0)
    assert math.isnan(e["win_rate"]) and (e["lo"], e["hi"]) == (0.0, 1.0) and e["p_value"] == 1.0
    assert e["p_better"] == pytest.approx(0.5)
    only_ties = preference_stats(0, 0, 3, "drop")
    assert only_ties["n"] == 0 and only_ties["votes"] == 3
    for bad in ((-1, 0, 0), (1.5, 0, 0), (True, 0, 0)):
        with pytest.raises(ValueError, match="whole number"):
            preference_stats(*bad)
    with pytest.raises(ValueError, match="tie_rule"):
        preference_stats(1, 1, 1, "coin")
