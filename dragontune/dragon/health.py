"""Is the preference loss still learning? A per-round check of the training statistics.

A sigmoid-based preference loss can stop learning without failing: for Diffusion-KTO, once |beta (g - z)|
is large for every sample, both sides of every term are flat and the gradient is zero while the loss sits at a
constant (0.5 with balanced D+ / D-); for Diffusion-DPO, once every pair is ordered by a wide margin. The loop
logs the share of saturated terms and the gradient norm before clipping; this monitor turns "stalled for
several rounds" into one warning that names the knobs.
"""

from __future__ import annotations

from dragontune.dragon.objectives import OBJECTIVES
from dragontune.utils import log


class LearningMonitor:
    """Counts consecutive rounds in which training looked stalled and warns once per stall.

    A round is stalled when at least ``saturated_share`` of the loss terms are saturated, or when the gradient
    norm fell below ``grad_ratio`` times the first round's.
    """

    def __init__(self, loss: str, patience: int = 3, saturated_share: float = 0.95, grad_ratio: float = 1e-3):
        self.loss = loss
        self.patience = int(patience)
        self.saturated_share = float(saturated_share)
        self.grad_ratio = float(grad_ratio)
        self.first_grad: float | None = None
        self.stalled = 0
        self.warned = False

    def knobs(self) -> str:
        return OBJECTIVES[self.loss].stall_advice

    def update(self, rnd: int, stats: dict) -> dict:
        """Record one round's ``train/*`` statistics; returns the monitor's fields for metrics.jsonl."""
        gn = stats.get("train/grad_norm")
        sat = stats.get("train/saturated")
        if gn is not None and self.first_grad is None and gn > 0:
            self.first_grad = float(gn)
        flat = (sat is not None and sat >= self.saturated_share) or (
            gn is not None and self.first_grad is not None and gn < self.grad_ratio * self.first_grad)
        self.stalled = self.stalled + 1 if flat else 0
        if self.stalled >= self.patience and not self.warned:
            log.warning(
                "round %d: the %s loss has stopped learning for %d rounds (saturated terms %.0f %%, gradient norm "
                "%.3g vs %.3g in the first round): try %s", rnd, self.loss.upper(), self.stalled,
                100 * (sat if sat is not None else float("nan")), gn if gn is not None else float("nan"),
                self.first_grad or float("nan"), self.knobs())
            self.warned = True
        if self.stalled == 0:
            self.warned = False
        return {"health/stalled_rounds": self.stalled}
