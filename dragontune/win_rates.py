"""Win rates of a fine-tuned model against its baseline, with intervals (the metrics layer; docs/evaluation.md).

* :func:`wilson_interval`: the Wilson score interval of a proportion (ties may count one half).
* :func:`instance_win_rate`: share of prompts whose fine-tuned score beats the baseline's, with its Wilson
  interval over the prompts.
* :func:`bootstrap_set_difference`: for set rewards (one score per set), a paired bootstrap over prompts of the
  difference of the two models' set scores, its percentile interval and the bootstrap win share.

Pure float64 functions of scores; the evaluation (``dragontune.evaluate``) and the listening-test statistics
(``dragontune.preference_stats``) build on them.
"""

from __future__ import annotations

import math
from typing import Any, Callable

import numpy as np
import torch

__all__ = ["wilson_interval", "instance_win_rate", "bootstrap_set_difference"]


def wilson_interval(wins: float, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval for a proportion ``wins / n`` (``wins`` may be fractional: ties count 1/2).

    ``n == 0`` gives ``(0.0, 1.0)``: nothing is known. The bounds are clipped to [0, 1].
    """
    n = int(n)
    wins = float(wins)
    if n < 0 or not (0.0 <= wins <= n) or not math.isfinite(wins):
        raise ValueError(f"wilson_interval: need 0 <= wins <= n, got wins={wins}, n={n}")
    if not z > 0:
        raise ValueError(f"wilson_interval: z must be > 0, got {z}")
    if n == 0:
        return 0.0, 1.0
    p = wins / n
    z2 = z * z
    denom = 1.0 + z2 / n
    centre = (p + z2 / (2 * n)) / denom
    half = z / denom * math.sqrt(max(p * (1.0 - p) / n + z2 / (4.0 * n * n), 0.0))
    lo, hi = centre - half, centre + half
    # at p = 0 (p = 1) the lower (upper) bound is exactly 0 (1); remove rounding residue
    if wins == 0:
        lo = 0.0
    if wins == n:
        hi = 1.0
    return max(0.0, lo), min(1.0, hi)


def _as_f64(x: Any, name: str) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().to(torch.float64).cpu().numpy()
    a = np.asarray(x, dtype=np.float64)
    if a.ndim != 1:
        raise ValueError(f"{name} must be one-dimensional, got shape {a.shape}")
    return a


def instance_win_rate(scores_a: Any, scores_b: Any, z: float = 1.96) -> dict:
    """Share of prompts where B (fine-tuned) scores higher than A (baseline); ties count 1/2.

    Pairs where either score is NaN/Inf are dropped and counted in ``nan_dropped``. Returns
    ``{win_rate, lo, hi, n, wins, ties, losses, nan_dropped, mean_a, mean_b}`` with the Wilson interval
    ``(lo, hi)`` over the ``n`` kept pairs; ``win_rate`` is NaN when ``n == 0``.
    """
    a, b = _as_f64(scores_a, "scores_a"), _as_f64(scores_b, "scores_b")
    if a.shape != b.shape:
        raise ValueError(f"instance_win_rate: {a.shape[0]} baseline scores but {b.shape[0]} model scores")
    ok = np.isfinite(a) & np.isfinite(b)
    a, b = a[ok], b[ok]
    n = int(a.shape[0])
    wins_strict = int((b > a).sum())
    ties = int((b == a).sum())
    wins = wins_strict + 0.5 * ties
    lo, hi = wilson_interval(wins, n, z)
    return {
        "win_rate": wins / n if n else float("nan"),
        "lo": lo,
        "hi": hi,
        "n": n,
        "wins": wins_strict,
        "ties": ties,
        "losses": n - wins_strict - ties,
        "nan_dropped": int((~ok).sum()),
        "mean_a": float(a.mean()) if n else float("nan"),
        "mean_b": float(b.mean()) if n else float("nan"),
    }


def bootstrap_set_difference(
    set_score_fn: Callable[[np.ndarray], tuple[float, float]],
    n_prompts: int,
    clips_per_prompt: int = 1,
    n_boot: int = 200,
    seed: int = 0,
    level: float = 0.95,
) -> dict:
    """Paired bootstrap over prompts of a set reward's difference (fine-tuned minus baseline).

    The clips are ordered prompt-major (clip ``i * S + s`` is seed ``s`` of prompt ``i``). Each resample draws
    ``n_prompts`` prompts with replacement and keeps every clip of each drawn prompt, for *both* models
    (``set_score_fn(clip_indices) -> (score_a, score_b)``): prompts are the independent units. Returns the
    percentile ``level`` interval of ``score_b - score_a`` (``diff_lo``, ``diff_hi``), its mean, and the
    **bootstrap win share** (share of resamples with B higher, ties 1/2) -- a summary of the same resamples, not
    a probability of anything and not an interval. Resamples where a score is not finite are dropped, counted.
    Deterministic given ``seed``.
    """
    n, S, n_boot = int(n_prompts), int(clips_per_prompt), int(n_boot)
    if n < 1:
        raise ValueError(f"bootstrap_set_difference: need n_prompts >= 1, got {n}")
    if S < 1:
        raise ValueError(f"bootstrap_set_difference: need clips_per_prompt >= 1, got {S}")
    if n_boot < 1:
        raise ValueError(f"bootstrap_set_difference: need n_boot >= 1, got {n_boot}")
    if not 0 < level < 1:
        raise ValueError(f"bootstrap_set_difference: level must be in (0, 1), got {level}")
    rng = np.random.default_rng(int(seed))
    diffs = []
    dropped = 0
    offs = np.arange(S)
    for _ in range(n_boot):
        pidx = rng.integers(0, n, size=n)
        idx = (pidx[:, None] * S + offs[None, :]).reshape(-1)
        sa, sb = set_score_fn(idx)
        sa, sb = float(sa), float(sb)
        if not (math.isfinite(sa) and math.isfinite(sb)):
            dropped += 1
            continue
        diffs.append(sb - sa)
    d = np.asarray(diffs, dtype=np.float64)
    k = int(d.shape[0])
    ties = int((d == 0).sum())
    q = (1.0 - level) / 2.0
    return {
        "boot_win_share": (float((d > 0).sum()) + 0.5 * ties) / k if k else float("nan"),
        "n_boot": k,
        "ties": ties,
        "nan_dropped": dropped,
        "diff_mean": float(d.mean()) if k else float("nan"),
        "diff_lo": float(np.quantile(d, q)) if k else float("nan"),
        "diff_hi": float(np.quantile(d, 1.0 - q)) if k else float("nan"),
        "level": level,
    }
