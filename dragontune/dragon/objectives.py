"""The preference objective of a DRAGON round: Diffusion-DPO or Diffusion-KTO behind one interface.

An objective answers the three questions the training step asks, so that the loop has no loss branches:

- which **items** a step draws from the round's demonstrations (DPO: (winner, loser) pairs; KTO: (sample,
  desirable) rows);
- which **samples** a chunk of items denoises, with which shared sigma, noise and condition dropout (the two
  members of a DPO pair share them; KTO can pair its D+ and D- samples or put a whole step on one draw);
- the **loss of a chunk** given the policy's and the reference's per-sample denoising errors
  (``dragon/losses.py``).

The randomness itself (one sigma, noise and dropout draw per item, from the round's generator) is drawn by
the loop, identically on every rank, before the objective arranges it: the order of draws is part of what
makes a resumed run exact.
"""

from __future__ import annotations

import abc
import dataclasses
from typing import Callable

import torch

from dragontune.dragon.builders import Demonstrations
from dragontune.dragon.losses import diffusion_dpo_loss, diffusion_kto_loss

__all__ = ["PreferenceObjective", "DPOObjective", "KTOObjective", "KTO_NOISE", "OBJECTIVES", "objective_for"]

#: how KTO's samples of one step share sigma, noise and dropout
KTO_NOISE = ("independent", "paired", "shared")

ChunkLoss = Callable[[torch.Tensor, torch.Tensor], "tuple[torch.Tensor, dict]"]


class PreferenceObjective(abc.ABC):
    """What one optimiser step of a preference loss takes and computes."""

    #: the loss's name in configs and logs ("dpo" / "kto")
    name: str
    #: statistics that are counts: summed over processes, not averaged
    count_keys: frozenset[str]
    #: the knobs to try when this loss has stopped learning (named in the health warning)
    stall_advice: str

    @classmethod
    @abc.abstractmethod
    def from_config(cls, cfg) -> "PreferenceObjective":
        """The objective with its settings from a :class:`~dragontune.dragon.loop.DragonConfig`."""

    @abc.abstractmethod
    def items(self, demos: Demonstrations) -> torch.Tensor:
        """``[n, 2]`` int64 rows a step draws from (pairs, or sample index and label)."""

    def arrange(self, chunk: torch.Tensor, sigma: torch.Tensor, noise: torch.Tensor, drop: torch.Tensor):
        """Per-item randomness of a step, rearranged across items before it is striped over processes."""
        return sigma, noise, drop

    @abc.abstractmethod
    def samples(self, chunk: torch.Tensor, sigma: torch.Tensor, noise: torch.Tensor, drop: torch.Tensor):
        """``(sample indices, sigma, noise, drop)`` of the samples this process denoises for ``chunk``."""

    @abc.abstractmethod
    def chunk_loss(self, chunk: torch.Tensor, device) -> ChunkLoss:
        """``(err_pol, err_ref) -> (loss, stats)`` for the samples of :meth:`samples`, in that order."""


@dataclasses.dataclass(frozen=True)
class DPOObjective(PreferenceObjective):
    """Diffusion-DPO over (winner, loser) pairs; both members of a pair at the same sigma, noise and dropout."""

    beta: float
    name = "dpo"
    count_keys = frozenset({"n_pairs"})
    stall_advice = "a lower optim.lr or beta (the pairs are already separated by a wide margin)"

    @classmethod
    def from_config(cls, cfg):
        return cls(beta=cfg.beta)

    def items(self, demos):
        if demos.pairs is None:
            raise ValueError("Diffusion-DPO needs paired demonstrations (a pair builder), got labels")
        return demos.pairs

    def samples(self, chunk, sigma, noise, drop):
        # winners first, then losers: the loss splits the errors at the middle
        return torch.cat([chunk[:, 0], chunk[:, 1]]), sigma.repeat(2), noise.repeat(2, 1, 1), drop.repeat(2)

    def chunk_loss(self, chunk, device):
        def loss(err_pol, err_ref):
            h = err_pol.shape[0] // 2
            return diffusion_dpo_loss(err_pol[:h], err_pol[h:], err_ref[:h], err_ref[h:], beta=self.beta)

        return loss


@dataclasses.dataclass(frozen=True)
class KTOObjective(PreferenceObjective):
    """Diffusion-KTO over labelled samples (D+ desirable, D- undesirable)."""

    beta: float
    w_desirable: float = 1.0
    w_undesirable: float = 1.0
    reference: str = "clamped_mean"
    utility: str = "sigmoid"
    noise: str = "independent"
    name = "kto"
    count_keys = frozenset({"n_pos", "n_neg"})
    stall_advice = ("the KTO recipe's settings kto_utility=log_sigmoid (keeps a gradient for samples on the wrong "
                    "side of the reference point), kto_reference=mean (keeps the terms centred when the policy "
                    "drifts on every sample), kto_noise=shared (the reference point at the samples' own noise "
                    "draw) and optim.lr=1e-5, or a lower beta")

    @classmethod
    def from_config(cls, cfg):
        return cls(beta=cfg.beta, w_desirable=cfg.kto_w_desirable, w_undesirable=cfg.kto_w_undesirable,
                   reference=cfg.kto_reference, utility=cfg.kto_utility, noise=cfg.kto_noise)

    def __post_init__(self):
        if self.noise not in KTO_NOISE:
            raise ValueError(f"kto_noise={self.noise!r} must be one of {', '.join(KTO_NOISE)}")

    def items(self, demos):
        idx, desirable = demos.kto_inputs()
        return torch.stack([idx, desirable.long()], dim=1)

    def arrange(self, chunk, sigma, noise, drop):
        if self.noise == "paired":
            # the k-th D+ and the k-th D- sample of the step share sigma, noise and dropout, as the two members of
            # a DPO pair do: their implicit rewards then differ by what the samples are, not by the noise draw
            desirable = chunk[:, 1].bool()
            slot = torch.where(desirable, torch.cumsum(desirable.long(), 0) - 1,
                               torch.cumsum((~desirable).long(), 0) - 1)
            return sigma[slot], noise[slot], drop[slot]
        if self.noise == "shared":
            # every sample of the step at one sigma and one noise draw: the batch-mean reference point z is then
            # measured at the noise level of the samples it is compared with, not averaged over unrelated levels
            first = torch.zeros(chunk.shape[0], dtype=torch.long)
            return sigma[first], noise[first], drop[first]
        return sigma, noise, drop

    def samples(self, chunk, sigma, noise, drop):
        return chunk[:, 0], sigma, noise, drop

    def chunk_loss(self, chunk, device):
        desirable = chunk[:, 1].bool().to(device)

        def loss(err_pol, err_ref):
            return diffusion_kto_loss(err_pol, err_ref, desirable, beta=self.beta, w_desirable=self.w_desirable,
                                      w_undesirable=self.w_undesirable, reference=self.reference,
                                      utility=self.utility)

        return loss


#: the objectives by loss name
OBJECTIVES: dict[str, type[PreferenceObjective]] = {"dpo": DPOObjective, "kto": KTOObjective}


def objective_for(loss: str, cfg) -> PreferenceObjective:
    """The objective named ``loss`` ("dpo" / "kto") with its settings from a :class:`DragonConfig`."""
    if loss not in OBJECTIVES:
        raise ValueError(f"unknown preference loss {loss!r}; known: {', '.join(OBJECTIVES)}")
    return OBJECTIVES[loss].from_config(cfg)
