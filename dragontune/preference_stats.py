"""Statistics of pairwise preference votes (the paper's human listening test columns).

Each vote compares the fine-tuned clip with the baseline clip of the same prompt and seed and says which is
better, or "no preference". From the counts ``wins`` (fine-tuned preferred), ``losses`` (baseline preferred)
and ``ties`` (no preference) :func:`preference_stats` gives

* the **win rate** under a stated tie rule:
  ``"half"`` (default, as in :func:`dragontune.win_rates.instance_win_rate`): a tie counts one half of a win,
  so the rate is ``(wins + ties / 2) / (wins + losses + ties)``;
  ``"drop"`` (the sign test): ties are left out, the rate is ``wins / (wins + losses)``;
* its **Wilson 95 % interval** (:func:`dragontune.win_rates.wilson_interval`, which accepts half counts) and
  its lower bound;
* the **binomial p-value against 50 %**: two-sided (and one-sided "greater") exact binomial test of the
  success count ``s`` out of ``n``. With the half rule ``s`` can be a half-integer; the tail then uses the
  continuous extension of the binomial tail, ``P(X >= s) = I_{1/2}(s, n - s + 1)`` (regularised incomplete
  beta), which equals the exact binomial sum whenever ``s`` is whole. Counting a tie as half a Bernoulli
  trial overstates its variance, so this test is conservative;
* **P(win rate > 50 %)** under a Beta posterior with a uniform prior: ``Beta(1 + s, 1 + n - s)``.

Pure float64 functions; no SciPy at run time (the tests check every number against SciPy).
"""

from __future__ import annotations

import math

from dragontune.win_rates import wilson_interval

TIE_RULES = ("half", "drop")


def _betacf(a: float, b: float, x: float) -> float:
    """Continued fraction of the incomplete beta function (modified Lentz), converges for x < (a+1)/(a+b+2)."""
    tiny = 1e-300
    qab, qap, qam = a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 10_000):
        m2 = 2 * m
        aa = m * (b - m) * x / ((qam + m2) * (a + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        h *= d * c
        aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        delta = d * c
        h *= delta
        if abs(delta - 1.0) < 1e-15:
            return h
    raise ArithmeticError(f"incomplete beta: continued fraction did not converge (a={a}, b={b}, x={x})")


def betainc(a: float, b: float, x: float) -> float:
    """Regularised incomplete beta function ``I_x(a, b)`` for ``a, b > 0`` and ``0 <= x <= 1``.

    Evaluated directly by the continued fraction on the side where it converges fast; the other side is
    ``1 - I_{1-x}(b, a)``, so a small result is only accurate to absolute (not relative) precision there:
    callers that need a small tail ask for it on its own side (see :func:`binomial_tail_ge`).
    """
    a, b, x = float(a), float(b), float(x)
    if not (a > 0 and b > 0) or not (0.0 <= x <= 1.0):
        raise ValueError(f"betainc: need a > 0, b > 0 and 0 <= x <= 1, got a={a}, b={b}, x={x}")
    if x == 0.0 or x == 1.0:
        return x
    log_front = (math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b)
                 + a * math.log(x) + b * math.log1p(-x))
    if x < (a + 1.0) / (a + b + 2.0):
        return math.exp(log_front) * _betacf(a, b, x) / a
    return 1.0 - math.exp(log_front) * _betacf(b, a, 1.0 - x) / b


def binomial_tail_ge(s: float, n: int) -> float:
    """``P(X >= s)`` for ``X ~ Binomial(n, 1/2)``; ``s`` may be a half-integer (continuous extension)."""
    if s <= 0:
        return 1.0
    if s > n:
        return 0.0
    return betainc(s, n - s + 1.0, 0.5)


def binomial_p_value(s: float, n: int) -> tuple[float, float]:
    """(two-sided, one-sided greater) binomial p-values of ``s`` successes in ``n`` trials against 1/2.

    Two-sided at 1/2 (a symmetric null): ``min(1, 2 min(P(X >= s), P(X <= s)))``, as
    ``scipy.stats.binomtest(s, n, 0.5)`` gives for whole ``s``. ``n == 0`` gives (1, 1).
    """
    if n == 0:
        return 1.0, 1.0
    upper = binomial_tail_ge(s, n)
    lower = binomial_tail_ge(n - s, n)  # P(X <= s) = P(X >= n - s) by symmetry
    return min(1.0, 2.0 * min(upper, lower)), upper


def prob_above_half(a: float, b: float) -> float:
    """``P(p > 1/2)`` for ``p ~ Beta(a, b)``, i.e. ``I_{1/2}(b, a)`` (accurate when small, too)."""
    return betainc(b, a, 0.5)


def preference_stats(wins: int, losses: int, ties: int = 0, tie_rule: str = "half", z: float = 1.96) -> dict:
    """The listening test's columns for one set of votes; see the module docstring for the definitions.

    Returns ``{votes, wins, losses, ties, tie_rule, n, successes, win_rate, lo, hi, lower_bound,
    p_value, p_greater, p_better}``: ``n`` and ``successes`` are the counts the statistics use (ties
    dropped or counted half), ``p_value`` is two-sided, ``p_better`` is P(win rate > 50 %). With no
    usable vote the win rate is NaN, the interval (0, 1), the p-values 1 and ``p_better`` 0.5.
    """
    counts = {"wins": wins, "losses": losses, "ties": ties}
    for k, v in counts.items():
        if isinstance(v, bool) or int(v) != v or v < 0:
            raise ValueError(f"preference_stats: {k} must be a whole number >= 0, got {v!r}")
    wins, losses, ties = int(wins), int(losses), int(ties)
    if tie_rule not in TIE_RULES:
        raise ValueError(f"preference_stats: tie_rule {tie_rule!r} must be one of {', '.join(TIE_RULES)}")
    if tie_rule == "half":
        n, s = wins + losses + ties, wins + 0.5 * ties
    else:
        n, s = wins + losses, float(wins)
    lo, hi = wilson_interval(s, n, z)
    p_two, p_greater = binomial_p_value(s, n)
    return {
        "votes": wins + losses + ties, "wins": wins, "losses": losses, "ties": ties, "tie_rule": tie_rule,
        "n": n, "successes": s, "win_rate": s / n if n else float("nan"), "lo": lo, "hi": hi,
        "lower_bound": lo, "p_value": p_two, "p_greater": p_greater,
        "p_better": prob_above_half(1.0 + s, 1.0 + n - s),
    }
