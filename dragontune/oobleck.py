"""The Oobleck VAE of Stable Audio (diffusers ``AutoencoderOobleck``) as a dragontune ``Codec``.

``encode(audio[B, C, T]) -> latent[B, latent_channels, T / hop]`` is the mean of the VAE posterior (no sampling:
the same clip always gives the same latent, which VAE-FAD needs); mono input is repeated to the VAE's channel
count and the length is zero-padded to a multiple of the hop. ``decode`` returns mono ``[B, 1, F * hop]`` (the
Codec contract), ``decode_channels`` all of the VAE's channels.
The id hashes the weights, so exemplar statistics cached for one VAE are never reused for another.
"""

from __future__ import annotations

from typing import Any

import torch

from dragontune.codecs import Codec
from dragontune.errors import AudioError
from dragontune.utils import sha256_tensors


class OobleckCodec(Codec):
    def __init__(self, vae, source: str = ""):
        self.vae = vae
        self.source = str(source)
        self._id = f"oobleck:{sha256_tensors(vae.state_dict())[:16]}"

    @property
    def sample_rate(self) -> int:
        return int(self.vae.config.sampling_rate)

    @property
    def latent_channels(self) -> int:
        return int(self.vae.config.decoder_input_channels)

    @property
    def hop_length(self) -> int:
        return int(self.vae.hop_length)

    @property
    def audio_channels(self) -> int:
        return int(self.vae.config.audio_channels)

    @property
    def id(self) -> str:
        return self._id

    def config(self) -> dict[str, Any]:
        return {"type": "oobleck", "source": self.source, "id": self._id}

    def _device(self) -> torch.device:
        return next(self.vae.parameters()).device

    def encode(self, audio: torch.Tensor) -> torch.Tensor:
        if not isinstance(audio, torch.Tensor) or audio.dim() != 3:
            raise AudioError(f"OobleckCodec.encode expects audio[B, C, T], got "
                             f"{tuple(audio.shape) if isinstance(audio, torch.Tensor) else type(audio).__name__}")
        x = audio.to(self._device(), torch.float32)
        ch = self.audio_channels
        if x.shape[1] != ch:
            if x.shape[1] == 1:
                x = x.expand(-1, ch, -1)
            elif ch == 1:
                x = x.mean(1, keepdim=True)
            else:
                raise AudioError(f"audio has {x.shape[1]} channels; the VAE takes {ch} (or mono)")
        pad = (-x.shape[-1]) % self.hop_length
        if pad:
            x = torch.nn.functional.pad(x, (0, pad))
        with torch.no_grad():
            return self.vae.encode(x).latent_dist.mean.float()

    def decode(self, latent: torch.Tensor) -> torch.Tensor:
        if not isinstance(latent, torch.Tensor) or latent.dim() != 3 or latent.shape[1] != self.latent_channels:
            raise AudioError(f"OobleckCodec.decode expects latents [B, {self.latent_channels}, F], got "
                             f"{tuple(latent.shape) if isinstance(latent, torch.Tensor) else type(latent).__name__}")
        return self.decode_channels(latent).mean(1, keepdim=True)  # the Codec contract: mono

    def decode_channels(self, latent: torch.Tensor) -> torch.Tensor:
        """``latent[B, C, F]`` -> ``audio[B, audio_channels, F * hop]`` (stereo for Stable Audio Open)."""
        with torch.no_grad():
            return self.vae.decode(latent.to(self._device(), torch.float32)).sample.float()
