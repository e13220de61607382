"""Rewards: (encoder, metric, exemplar statistics). See :mod:`dragontune.rewards.base`."""

from dragontune.rewards.base import Reward, RewardResult, ScoringBatch

__all__ = ["Reward", "RewardResult", "ScoringBatch"]
