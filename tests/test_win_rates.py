"""Win-rate statistics (dragontune/win_rates.py): Wilson arithmetic against the score test, ties, NaN handling,
the paired bootstrap over prompts."""

import math

import numpy as np
import pytest
import torch

from dragontune.win_rates import bootstrap_set_difference, instance_win_rate, wilson_interval


def test_wilson_hand_values():
    # 8/10 at 95%: the textbook Wilson interval (0.4902, 0.9433)
    lo, hi = wilson_interval(8, 10)
    assert lo == pytest.approx(0.4902, abs=5e-5) and hi == pytest.approx(0.9433, abs=5e-5)
    # 0/n: lower bound exactly 0, upper z^2/(n+z^2)
    z = 1.96
    lo, hi = wilson_interval(0, 10, z)
    assert lo == 0.0 and hi == pytest.approx(z * z / (10 + z * z), rel=1e-12)
    # n/n mirrors 0/n
    lo2, hi2 = wilson_interval(10, 10, z)
    assert hi2 == 1.0 and lo2 == pytest.approx(10 / (10 + z * z), rel=1e-12)
    # p = 1/2: symmetric around 1/2, half width z sqrt(1/(4n) + z^2/(4n^2)) / (1 + z^2/n)
    n = 50
    lo, hi = wilson_interval(25, n, z)
    half = z * math.sqrt(1 / (4 * n) + z * z / (4 * n * n)) / (1 + z * z / n)
    assert lo == pytest.approx(0.5 - half, rel=1e-12) and hi == pytest.approx(0.5 + half, rel=1e-12)
    # fractional wins (ties count half) are allowed
    lo, hi = wilson_interval(2.5, 5)
    assert lo < 0.5 < hi and (lo + hi) / 2 == pytest.approx(0.5)
    # n = 0: nothing known
    assert wilson_interval(0, 0) == (0.0, 1.0)
    with pytest.raises(ValueError):
        wilson_interval(11, 10)


def test_wilson_inverts_the_score_test():
    """The Wilson interval is the set of p the score test does not reject: (p_hat - p)^2 <= z^2 p (1 - p) / n.

    Its ends are found here by root finding on that inequality (SciPy's brentq), not from the closed form.
    """
    from scipy.optimize import brentq
    from scipy.stats import norm

    z = float(norm.ppf(0.975))
    for n in (1, 3, 17, 200):
        for w in np.linspace(0, n, 7):
            p_hat = w / n
            f = lambda p: (p_hat - p) ** 2 - z * z * p * (1 - p) / n  # noqa: E731  (<= 0 inside the interval)
            inside = min(max(p_hat, 1e-13), 1 - 1e-13)  # f < 0 there, also at p_hat = 0 or 1
            lo_ref = 0.0 if p_hat == 0 else brentq(f, 0.0, inside, xtol=1e-14)
            hi_ref = 1.0 if p_hat == 1 else brentq(f, inside, 1.0, xtol=1e-14)
            lo, hi = wilson_interval(w, n, z)
            assert lo == pytest.approx(lo_ref, abs=1e-10) and hi == pytest.approx(hi_ref, abs=1e-10), (w, n)
            # just outside each end the test rejects, just inside it does not
            for end, step in ((lo, -1e-6), (hi, 1e-6)):
                if 0.0 < end < 1.0:
                    assert f(end + step) > 0 > f(end - step)


def test_instance_win_rate_ties_count_half_and_nan_dropped():
    a = [1.0, 2.0, 3.0, 4.0, float("nan"), 5.0]
    b = [2.0, 2.0, 1.0, 5.0, 1.0, float("inf")]
    r = instance_win_rate(a, b)
    # kept pairs: (1,2) win, (2,2) tie, (3,1) loss, (4,5) win
    assert r["n"] == 4 and r["nan_dropped"] == 2
    assert (r["wins"], r["ties"], r["losses"]) == (2, 1, 1)
    assert r["win_rate"] == pytest.approx(2.5 / 4)
    assert (r["lo"], r["hi"]) == pytest.approx(wilson_interval(2.5, 4))
    assert r["mean_a"] == pytest.approx(2.5) and r["mean_b"] == pytest.approx(2.5)
    # identical scores: every pair a tie -> exactly 1/2, interval contains 1/2
    s = torch.randn(30, dtype=torch.float64)
    r = instance_win_rate(s, s.clone())
    assert r["win_rate"] == 0.5 and r["ties"] == 30 and r["lo"] < 0.5 < r["hi"]
    # all NaN: nothing to compare
    r = instance_win_rate([float("nan")], [1.0])
    assert r["n"] == 0 and math.isnan(r["win_rate"]) and (r["lo"], r["hi"]) == (0.0, 1.0)
    with pytest.raises(ValueError):
        instance_win_rate([1.0, 2.0], [1.0])


def test_bootstrap_deterministic_and_identical_sets():
    g = np.random.default_rng(1)
    xa, xb = g.normal(size=40), g.normal(size=40) + 0.3

    def fn(idx):
        return float(xa[idx].mean()), float(xb[idx].mean())

    r1 = bootstrap_set_difference(fn, 40, n_boot=100, seed=7)
    r2 = bootstrap_set_difference(fn, 40, n_boot=100, seed=7)
    r3 = bootstrap_set_difference(fn, 40, n_boot=100, seed=8)
    assert r1 == r2
    assert r1 != r3
    assert 0 <= r1["boot_win_share"] <= 1 and r1["n_boot"] == 100
    assert r1["diff_lo"] <= r1["diff_mean"] <= r1["diff_hi"]
    # both sets scored on the SAME indices: identical score sets tie on every resample
    same = bootstrap_set_difference(lambda idx: (float(xa[idx].std()), float(xa[idx].std())), 40, n_boot=50, seed=0)
    assert same["boot_win_share"] == 0.5 and same["ties"] == 50
    assert same["diff_lo"] == same["diff_hi"] == 0.0
    # a clearly better B wins every resample
    better = bootstrap_set_difference(lambda idx: (float(xa[idx].mean()), float(xa[idx].mean()) + 1.0), 40, n_boot=50)
    assert better["boot_win_share"] == 1.0 and better["diff_lo"] == pytest.approx(1.0)
    # non-finite resamples are dropped and counted
    calls = iter(range(1000))
    nanfn = lambda idx: (float("nan") if next(calls) % 2 else 0.0, 1.0)  # noqa: E731
    r = bootstrap_set_difference(nanfn, 5, n_boot=10)
    assert r["nan_dropped"] == 5 and r["n_boot"] == 5


def test_bootstrap_resamples_whole_prompts_for_both_models():
    """Each resample is a multiset of prompts with every seed of each prompt; A and B see the same clips."""
    seen = []

    def fn(idx):
        seen.append(np.array(idx))
        return 0.0, 0.0

    bootstrap_set_difference(fn, 9, clips_per_prompt=3, n_boot=5, seed=3)
    assert len(seen) == 5
    for s in seen:
        assert s.shape == (27,)
        groups = s.reshape(9, 3)
        assert (groups % 3 == np.arange(3)).all() and (groups // 3 == groups[:, :1] // 3).all()
    # the interval is of the difference and covers the true difference of two shifted populations
    g = np.random.default_rng(0)
    xa = g.normal(size=(60, 3))
    xb = xa + 0.5 + 0.1 * g.normal(size=(60, 3))
    fa, fb = xa.reshape(-1), xb.reshape(-1)
    r = bootstrap_set_difference(lambda idx: (fa[idx].mean(), fb[idx].mean()), 60, 3, n_boot=300, seed=1)
    assert r["diff_lo"] < 0.5 < r["diff_hi"] and r["diff_lo"] > 0.4 and r["boot_win_share"] == 1.0
