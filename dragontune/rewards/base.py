"""The Reward API (DESIGN.md layer 7).

A reward scores a batch of generated clips held in memory. Scores are always *higher is better*
(distances are negated). Set rewards (class ``dist_to_dist``) also report the set score and a
per-sample leave-one-out credit ``credit[i] = r(D) - r(D minus i)``.
"""

from __future__ import annotations

import abc
import dataclasses
from typing import Literal, Sequence

import torch

RewardClass = Literal["instance", "instance_to_dist", "dist_to_dist"]


@dataclasses.dataclass
class RewardResult:
    #: per-sample scores, higher is better, float64 ``[N]``; NaN marks a sample that could not be scored.
    #: For set rewards with no per-sample score this is the leave-one-out credit.
    scores: torch.Tensor
    #: set score r(D) for dist_to_dist rewards, else None
    set_score: float | None = None
    #: leave-one-out credit per sample for dist_to_dist rewards, else None
    credit: torch.Tensor | None = None
    #: reward name, for logs
    name: str = ""


@dataclasses.dataclass
class ScoringBatch:
    """What a reward sees: generated audio plus the prompts that produced it."""

    audio: torch.Tensor  # [N, C, T] float32
    sample_rate: int
    prompts: Sequence[str]


class Reward(abc.ABC):
    name: str = "reward"
    reward_class: RewardClass = "instance"
    #: True if larger raw metric is better; scores are always reported higher-is-better
    higher_is_better: bool = True

    @abc.abstractmethod
    def __call__(self, batch: ScoringBatch) -> RewardResult:
        ...

    def set_score(self, batch: ScoringBatch) -> float:
        """Score of the whole set (dist_to_dist) or the mean per-sample score (others)."""
        r = self(batch)
        if r.set_score is not None:
            return float(r.set_score)
        s = r.scores[torch.isfinite(r.scores)]
        return float(s.mean()) if s.numel() else float("nan")
