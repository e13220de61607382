"""Set scores of index subsets of one scored batch, for the greedy and split demonstration builders.

The batch is embedded once; every subset is then scored from the cached clip vectors. Subsets of one clip
are scored as a point mass: for FAD a Gaussian with zero covariance (the Fréchet distance is then exact),
for KAD the within-set term of a single sample is k(x, x) = 1 (the V-statistic; the unbiased estimator is
undefined for one sample), for Vendi the score of one point (1).
"""

from __future__ import annotations

from typing import Callable

import torch

from dragontune.errors import RewardError
from dragontune.metrics import _rbf, _sqdist, fad_from_embeddings, frechet_distance, kad, vendi_score
from dragontune.rewards.base import Reward, ScoringBatch
from dragontune.rewards.builtin import FADReward, KADReward, VendiReward, WeightedReward


def subset_scorer(reward: Reward, batch: ScoringBatch) -> Callable[[torch.Tensor], float]:
    """Return ``score(indices) -> float`` (higher is better) of the set reward on ``batch[indices]``."""
    if isinstance(reward, WeightedReward):
        parts = [(w, subset_scorer(r, batch)) for w, r in reward.components]
        return lambda idx: sum(w * f(idx) for w, f in parts)
    if isinstance(reward, (FADReward, KADReward, VendiReward)):
        frames = reward.embed(batch)
        if isinstance(reward, FADReward) and reward.pooling == "frames":
            sizes = torch.tensor([f.shape[0] for f in frames])
            starts = torch.cat([torch.zeros(1, dtype=torch.long), sizes.cumsum(0)[:-1]])
            allf = torch.cat(frames)
        x = reward.clip_vectors(frames)
        ex = reward.exemplars

        def score(idx) -> float:
            idx = torch.as_tensor(idx, dtype=torch.long).flatten()
            if idx.numel() == 0:
                raise RewardError("cannot score an empty subset")
            if isinstance(reward, VendiReward):
                return float(vendi_score(x[idx], q=reward.q))
            if isinstance(reward, KADReward):
                if idx.numel() >= 2:
                    return -float(kad(x[idx], ex.sample, bandwidth=reward.bandwidth))
                y = ex.sample.to(x)
                m = y.shape[0]
                kyy = _rbf(_sqdist(y, y), reward.bandwidth)
                syy = (kyy.sum() - kyy.diagonal().sum()) / (m * (m - 1))
                return -float(1.0 + syy - 2 * _rbf(_sqdist(x[idx], y), reward.bandwidth).mean())
            # FAD
            if reward.pooling == "frames":
                rows = torch.cat([torch.arange(int(starts[i]), int(starts[i] + sizes[i])) for i in idx.tolist()])
                pts, ref = allf[rows], ex.frames
            else:
                pts, ref = x[idx], ex.clips
            if pts.shape[0] >= 2:
                return -float(fad_from_embeddings(pts, ref))
            mu = pts[0]
            return -float(frechet_distance(mu, torch.zeros(mu.numel(), mu.numel(), dtype=mu.dtype, device=mu.device),
                                           ref.mu, ref.cov, sqrt_cov2=ref.sqrt()))

        return score

    def generic(idx) -> float:  # any other reward: re-score the sub-batch
        idx = torch.as_tensor(idx, dtype=torch.long).flatten()
        return reward.set_score(ScoringBatch(batch.audio[idx], batch.sample_rate, [batch.prompts[int(i)] for i in idx]))

    return generic
