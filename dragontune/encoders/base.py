"""The Encoder interface (DESIGN.md layer 5).

An encoder turns a batch of clips ``audio[B, C, T]`` (at any sample rate: the caller passes it) into one
``frames x dim`` tensor per clip, with deterministic windowing and no random crops. Cross-modal encoders
also embed text. Weights load lazily from a local path; nothing is ever downloaded.
"""

from __future__ import annotations

import abc
import numbers
from typing import Sequence

import torch

from dragontune.errors import EncoderError


class Encoder(abc.ABC):
    #: registry name, e.g. "codec", "musicnn", "clap-mini"
    name: str = "encoder"
    #: sample rate the network runs at; input at other rates is resampled
    sample_rate: int = 16000
    #: embedding dimension of one frame
    dim: int = 0
    #: shortest clip (in samples at ``sample_rate``) that yields at least ``min_frames`` frames
    min_samples: int = 1
    #: whether embed_text is available
    cross_modal: bool = False

    @property
    @abc.abstractmethod
    def id(self) -> str:
        """Stable identity: name, windowing parameters and a hash of the weights."""

    @abc.abstractmethod
    def embed_audio(self, audio: torch.Tensor, sample_rate: int) -> list[torch.Tensor]:
        """``audio[B, C, T]`` at ``sample_rate`` -> list of B tensors ``[frames, dim]`` (float32, CPU)."""

    def embed_text(self, texts: Sequence[str]) -> torch.Tensor:
        raise EncoderError(
            f"encoder {self.name!r} is audio-only and cannot embed text; use a cross-modal encoder "
            "(e.g. clap-mini or clap-hf) for text exemplars or CLAP scores"
        )

    def embed_clip(self, audio: torch.Tensor, sample_rate: int) -> torch.Tensor:
        """One vector per clip: the mean over its frames. ``[B, dim]``."""
        return torch.stack([f.mean(dim=0) for f in self.embed_audio(audio, sample_rate)])

    def check_input(self, audio: torch.Tensor, sample_rate: int) -> None:
        """Raise EncoderError unless ``audio`` is a ``[B, C, T]`` tensor with C >= 1 and ``sample_rate`` a positive int."""
        if not isinstance(audio, torch.Tensor) or audio.dim() != 3:
            shape = tuple(audio.shape) if isinstance(audio, torch.Tensor) else type(audio).__name__
            raise EncoderError(f"encoder {self.name!r} expects audio[B, C, T], got {shape}")
        if isinstance(sample_rate, bool) or not isinstance(sample_rate, numbers.Integral) or sample_rate <= 0:
            raise EncoderError(f"sample_rate must be a positive int, got {sample_rate!r}")
        if audio.shape[1] == 0:
            raise EncoderError(f"encoder {self.name!r} got audio with 0 channels (shape {tuple(audio.shape)})")

    def check_length(self, audio: torch.Tensor, sample_rate: int) -> None:
        need = self.min_samples * sample_rate / self.sample_rate
        if audio.shape[-1] < need:
            raise EncoderError(
                f"clip of {audio.shape[-1]} samples ({audio.shape[-1] / sample_rate:.3f} s at {sample_rate} Hz) "
                f"is shorter than encoder {self.name!r}'s minimum of {self.min_samples} samples "
                f"({self.min_samples / self.sample_rate:.3f} s); pad or generate longer clips"
            )
