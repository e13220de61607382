"""The ``codec`` audio encoder: the generator's own codec latents as FAD features (the paper's "VAE-FAD").

A clip is encoded by the codec to ``latent[C, F]``; its frames are the means of non-overlapping windows
of ``window`` latent frames (a trailing partial window is dropped), giving ``[F // window, C]``.
"""

from __future__ import annotations

import torch

from dragontune.audio import resample, validate_audio
from dragontune.codecs import Codec
from dragontune.encoders.base import Encoder
from dragontune.errors import ConfigError, EncoderError


class CodecEncoder(Encoder):
    """Frames = window-means of codec latents. ``dim = codec.latent_channels``; no weights to load."""

    name = "codec"
    cross_modal = False

    def __init__(self, codec: Codec, window: int = 4):
        if not isinstance(codec, Codec):
            raise ConfigError(f"CodecEncoder needs a dragontune.codecs.Codec, got {type(codec).__name__}")
        if int(window) < 1:
            raise ConfigError(f"CodecEncoder window must be >= 1 latent frame, got {window}")
        self.codec = codec
        self.window = int(window)
        self.sample_rate = int(codec.sample_rate)
        self.dim = int(codec.latent_channels)
        #: two windows: the fewest frames from which a Gaussian has a (rank-1) covariance
        self.min_samples = max(2 * self.window * int(codec.hop_length), int(getattr(codec, "min_samples", 0)))

    @property
    def id(self) -> str:
        return f"codec:{self.codec.id}:window={self.window}"

    def _pool(self, latent: torch.Tensor) -> list[torch.Tensor]:
        B, C, F = latent.shape
        n = F // self.window
        if n < 2:
            raise EncoderError(
                f"latent of {F} frames gives {n} window(s) of {self.window} frames; encoder {self.name!r} needs "
                f"at least {2 * self.window} latent frames ({self.min_samples} samples at {self.sample_rate} Hz)"
            )
        x = latent[..., : n * self.window].to(torch.float32).reshape(B, C, n, self.window).mean(dim=-1)
        x = x.transpose(1, 2).cpu()
        return [x[b].contiguous() for b in range(B)]

    def embed_latent(self, latent: torch.Tensor) -> list[torch.Tensor]:
        """``latent[B, C, F]`` (this codec's latents) -> B tensors ``[F // window, dim]`` without decoding."""
        if not isinstance(latent, torch.Tensor) or latent.dim() != 3 or latent.shape[1] != self.dim:
            shape = tuple(latent.shape) if isinstance(latent, torch.Tensor) else type(latent).__name__
            raise EncoderError(f"embed_latent expects latents [B, {self.dim}, F] of codec {self.codec.id}, got {shape}")
        with torch.no_grad():
            return self._pool(latent.detach())

    def embed_audio(self, audio: torch.Tensor, sample_rate: int) -> list[torch.Tensor]:
        self.check_input(audio, sample_rate)
        self.check_length(audio, sample_rate)
        validate_audio(audio, "audio passed to the codec encoder")
        with torch.no_grad():
            x = audio.detach().to(torch.float32).mean(dim=1, keepdim=True)
            x = resample(x, int(sample_rate), self.sample_rate)
            if x.shape[-1] < self.min_samples:  # resampling rounded a borderline clip below the minimum
                self.check_length(x, self.sample_rate)
            return self._pool(self.codec.encode(x))
