"""The one model interface the loop, generation and the rewards use (DESIGN.md layer 3).

Everything is expressed in EDM variables: a noisy latent ``x_sigma = x0 + sigma * n`` and a denoiser
``D(x_sigma; sigma, c) ~ E[x0 | x_sigma]``, which is what the project's solvers integrate. A model family with
another parameterisation (Stable Audio's v-prediction over ``t = atan(sigma) 2 / pi``, an epsilon model) maps its
own network output to ``D`` inside ``denoiser`` and computes its own training objective in ``denoising_error``.

A ``DiffusionModel`` has:

- ``cond(prompts) -> dict`` (the conditioning tensors, batch-first), ``null_cond(cond)`` (the unconditional
  condition of the same batch, for CFG) and ``drop_condition(cond, drop[B])`` (condition dropout in training:
  rows where ``drop`` is True become the null condition);
- ``denoiser(x, sigma[B], **cond) -> D`` and ``denoising_error(x0, noise, sigma, cond) -> [B]``, the per-sample
  training error with the noise and sigma given explicitly (DPO/KTO share them between policy and reference);
- ``train_sigma(n, generator, p_mean, p_std)``: the noise levels of the model's training distribution;
- ``sampling_schedule(sampler_config)``: which sigma schedule generation integrates, as
  ``{"kind": "karras" | "exponential", "sigma_min", "sigma_max", "rho"}`` (``generate.schedule_sigmas`` builds
  it: this layer does not import the samplers);
- ``codec`` (``encode``/``decode``, ``sample_rate``), ``latent_shape``, ``device``;
- ``trainable`` (the ``nn.Module`` whose parameters the optimiser updates; for LoRA only the adapters require
  grad), ``eval_mode()`` (a context: eval mode for generation, restored after).

The frozen reference of DRAGON is a second ``DiffusionModel``: a frozen deep copy, or the same module with its
LoRA adapters disabled (:class:`dragontune.models.lora.AdaptersOffReference`), so no second copy of the weights.
"""

from __future__ import annotations

import abc
import contextlib
from typing import Iterator

import torch
from torch import nn


class DiffusionModel(abc.ABC):
    device: torch.device
    codec: object

    # -- conditioning
    @abc.abstractmethod
    def cond(self, prompts) -> dict[str, torch.Tensor]: ...

    @abc.abstractmethod
    def null_cond(self, cond: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]: ...

    @abc.abstractmethod
    def drop_condition(self, cond: dict[str, torch.Tensor], drop: torch.Tensor) -> dict[str, torch.Tensor]: ...

    # -- prediction and training objective
    @property
    @abc.abstractmethod
    def denoiser(self): ...

    @abc.abstractmethod
    def denoising_error(self, x0: torch.Tensor, noise: torch.Tensor, sigma: torch.Tensor,
                        cond: dict[str, torch.Tensor]) -> torch.Tensor: ...

    @abc.abstractmethod
    def train_sigma(self, n: int, generator: torch.Generator, p_mean: float, p_std: float) -> torch.Tensor: ...

    @abc.abstractmethod
    def sampling_schedule(self, sc) -> dict: ...

    # -- latents and audio
    @property
    @abc.abstractmethod
    def latent_shape(self) -> tuple[int, ...]: ...

    @property
    def sample_rate(self) -> int:
        return int(self.codec.sample_rate)

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        return self.codec.decode(latents.float())

    def encode(self, audio: torch.Tensor) -> torch.Tensor:
        return self.codec.encode(audio)

    # -- training
    @property
    @abc.abstractmethod
    def trainable(self) -> nn.Module: ...

    def parameters(self) -> Iterator[nn.Parameter]:
        """The parameters the optimiser updates (those that require grad)."""
        return (p for p in self.trainable.parameters() if p.requires_grad)

    def fingerprint_state(self) -> dict[str, torch.Tensor]:
        """The tensors whose hash proves a frozen reference unchanged."""
        return self.trainable.state_dict()

    @contextlib.contextmanager
    def eval_mode(self):
        m = self.trainable
        was = m.training
        m.eval()
        try:
            yield
        finally:
            m.train(was)

    def set_grad_checkpointing(self, on: bool) -> None:
        raise NotImplementedError(f"{type(self).__name__} has no activation checkpointing")

    # -- checkpoints: the full network, or only the LoRA adapters when the model has them
    lora: dict | None = None
    source: str = ""
    full_artifact: str = "model"

    @abc.abstractmethod
    def full_state(self) -> tuple[dict[str, torch.Tensor], dict[str, str]]: ...

    @abc.abstractmethod
    def load_full_state(self, tensors: dict[str, torch.Tensor], meta: dict[str, str], source: str) -> None: ...

    @abc.abstractmethod
    def save_full(self, path) -> None: ...

    def checkpoint_state(self) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
        """What a training checkpoint holds: the adapters (LoRA) or the full network, with metadata."""
        from dragontune.models import lora

        if lora.has_lora(self):
            return lora.adapter_state(self), lora.lora_metadata(self)
        return self.full_state()

    def load_checkpoint_state(self, tensors: dict[str, torch.Tensor], meta: dict[str, str], source: str) -> None:
        from dragontune.errors import CheckpointError
        from dragontune.models import lora

        if lora.has_lora(self):
            lora.check_same_lora(self, meta, source)
            lora.load_adapter_state(self, tensors, source)
            return
        if meta.get("format") == lora.FORMAT:
            raise CheckpointError(f"{source!r} holds LoRA adapters {meta.get('lora')}, but this run trains the full "
                                  "model (lora.rank = 0); resume with the lora settings the run was started with")
        self.load_full_state(tensors, meta, source)

    def save_trained(self, out_dir) -> "Path":
        """The result of training in ``out_dir``: ``adapter/`` (peft format) for LoRA, else the full model."""
        from pathlib import Path

        from dragontune.models import lora

        if lora.has_lora(self):
            return lora.save_adapters(self, Path(out_dir) / "adapter", self.source)
        path = Path(out_dir) / self.full_artifact
        self.save_full(path)
        return path

    def trained_path(self, out_dir) -> "Path":
        from pathlib import Path

        from dragontune.models import lora

        return Path(out_dir) / ("adapter" if lora.has_lora(self) else self.full_artifact)
