"""A first-in first-out pool of recent on-policy generations, kept as reward features.

Why: a set reward's per-sample credit computed from one round's 32 clips comes from rank-deficient
statistics (32 clips in 64-512 dimensions) and rewards what lowers the metric *at n = 32*. Scoring each new
clip by how the set reward of a pool of a few hundred recent generations changes when the clip joins it
(``Reward.pool_credit``) gives a credit of the full-set metric at a size where its statistics mean something,
without generating more per round (METHOD.md §2, subset-replace credit after Li et al. 2026).

The pool stores features only (clip vectors or frames, float64), never audio; it is part of the finetune
checkpoint, so a resumed run continues with the same pool.
"""

from __future__ import annotations

import dataclasses

import torch

from dragontune.errors import ConfigError, RewardError
from dragontune.rewards.base import Features, Reward
from dragontune.utils import log


@dataclasses.dataclass
class PoolConfig:
    size: int = 256            # clips kept, first in first out (the builder "pool" scores against them)
    warmup: int = -1           # clips the frozen reference generates before round 1 to fill the pool (-1: size)
    max_mb: float = 2048.0     # memory budget of the stored features; a larger pool is refused
    cache_dir: str = ""        # keep the warm-up generations of the frozen baseline here ("" = regenerate)

    def check(self) -> None:
        if isinstance(self.size, bool) or not isinstance(self.size, int) or self.size < 2:
            raise ConfigError(f"pool.size={self.size!r} must be an integer >= 2 (clips kept in the credit pool); "
                              "256 or more is recommended")
        if isinstance(self.warmup, bool) or not isinstance(self.warmup, int) or self.warmup < -1:
            raise ConfigError(f"pool.warmup={self.warmup!r} must be -1 (fill the pool), 0 (no warm-up) or a clip count")
        if not self.max_mb > 0:
            raise ConfigError(f"pool.max_mb={self.max_mb!r} must be > 0 (MB of memory the pool may use)")

    @property
    def warmup_clips(self) -> int:
        return self.size if self.warmup == -1 else min(self.warmup, self.size)

    def check_budget(self, bytes_per_clip: float, what: str) -> None:
        need = self.size * bytes_per_clip / 2**20
        if need > self.max_mb:
            raise ConfigError(
                f"a pool of pool.size={self.size} clips of {what} needs {need:.0f} MB, over the budget "
                f"pool.max_mb={self.max_mb:g}: lower pool.size (at most {int(self.max_mb * 2**20 // bytes_per_clip)}) "
                "or raise pool.max_mb"
            )


class FeaturePool:
    """The last ``capacity`` clips' features, oldest first."""

    def __init__(self, capacity: int):
        self.capacity = int(capacity)
        self.features: Features | None = None
        self._warned_rank = False

    def __len__(self) -> int:
        return 0 if self.features is None else self.features.n

    def push(self, feats: Features) -> None:
        merged = feats if self.features is None else Features.cat([self.features, feats])
        if merged.n > self.capacity:
            merged = merged.subset(torch.arange(merged.n - self.capacity, merged.n))
        merged.prompts = None  # features only: the pool is a sample of the policy's output distribution
        self.features = merged

    def credit(self, reward: Reward, feats: Features) -> torch.Tensor:
        """Per-sample credit of ``feats`` against the pool: ``r(pool + {i}) - r(pool)``."""
        if self.features is None or self.features.n < 2:
            raise RewardError(f"the credit pool holds {len(self)} clip(s); it needs at least 2 (pool.warmup fills it "
                              "before round 1)")
        self._warn_rank(feats)
        return reward.pool_credit(self.features, feats)

    def _warn_rank(self, feats: Features) -> None:
        x = feats.clips
        if self._warned_rank or x is None:
            return
        n, d = len(self), int(x.shape[1])
        if n <= d:
            log.warning("credit pool: %d clips in %d dimensions: its covariance has rank at most %d < %d, so credits "
                        "still reflect small-set statistics; raise pool.size above %d", n, d, n - 1, d, 2 * d)
        self._warned_rank = True

    # -- checkpoint --------------------------------------------------------------------------------------------

    def state_tensors(self) -> dict[str, torch.Tensor]:
        if self.features is None:
            return {"pool.empty": torch.ones(1, dtype=torch.int64)}
        return {f"pool.{k}": v for k, v in self.features.tensors().items()}

    def load_state_tensors(self, tensors: dict[str, torch.Tensor], where: str) -> None:
        t = {k[len("pool."):]: v for k, v in tensors.items() if k.startswith("pool.")}
        if not t:
            raise RewardError(f"{where} holds no credit pool; it was written by a run without builder=pool")
        self.features = None if "empty" in t else Features.from_tensors(t)
