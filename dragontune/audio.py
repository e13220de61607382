"""Audio I/O, resampling, down-mixing and validation (layer 1). No torchaudio: soundfile + soxr."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from dragontune.errors import AudioError
from dragontune.utils import atomic_write_bytes

AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg")


def load_audio(path: str | os.PathLike, sample_rate: int | None = None, mono: bool = True) -> torch.Tensor:
    """Read an audio file as float32 ``[C, T]`` in [-1, 1], optionally resampled and down-mixed.

    Raises :class:`AudioError` naming the file if it is missing, unreadable, empty or non-finite.
    """
    import soundfile as sf

    p = Path(path)
    if not p.is_file():
        raise AudioError(f"audio file {str(p)!r} does not exist")
    try:
        data, sr = sf.read(str(p), dtype="float32", always_2d=True)
    except Exception as e:  # soundfile raises several types for corrupt data
        raise AudioError(f"audio file {str(p)!r} could not be decoded ({e}); re-export it as WAV or FLAC") from None
    x = torch.from_numpy(np.ascontiguousarray(data.T))
    if x.shape[1] == 0:
        raise AudioError(f"audio file {str(p)!r} contains no samples")
    validate_audio(x, str(p))
    if mono and x.shape[0] > 1:
        x = x.mean(dim=0, keepdim=True)
    if sample_rate is not None and sr != sample_rate:
        x = resample(x, sr, sample_rate)
    return x


def resample(x: torch.Tensor, sr_from: int, sr_to: int) -> torch.Tensor:
    """Resample ``[..., T]`` from ``sr_from`` to ``sr_to`` with soxr (high quality, deterministic)."""
    if sr_from == sr_to:
        return x
    import soxr

    shape = x.shape
    flat = x.reshape(-1, shape[-1]).detach().cpu().to(torch.float64).numpy()
    out = np.stack([soxr.resample(ch, sr_from, sr_to, quality="HQ") for ch in flat])
    return torch.from_numpy(out).to(x.dtype).reshape(*shape[:-1], out.shape[-1]).to(x.device)


def validate_audio(x: torch.Tensor, name: str = "audio") -> None:
    """Raise if ``x`` contains NaN or Inf, naming the source and the first bad sample."""
    bad = ~torch.isfinite(x)
    if bad.any():
        idx = bad.reshape(-1).nonzero()[0].item()
        kind = "NaN" if torch.isnan(x.reshape(-1)[idx]) else "Inf"
        raise AudioError(f"{name} contains {kind} values (first at flat index {idx}); fix or remove it")


def save_wav(path: str | os.PathLike, audio: torch.Tensor, sample_rate: int) -> None:
    """Write ``[C, T]`` or ``[T]`` float audio as 16-bit PCM WAV, atomically. Values are clipped to [-1, 1]."""
    import io

    import soundfile as sf

    a = audio.detach().cpu().float()
    if a.dim() == 1:
        a = a[None]
    validate_audio(a, f"audio for {str(path)!r}")
    buf = io.BytesIO()
    sf.write(buf, a.clamp(-1, 1).T.numpy(), sample_rate, subtype="PCM_16", format="WAV")
    atomic_write_bytes(path, buf.getvalue())


def fit_length(x: torch.Tensor, length: int) -> torch.Tensor:
    """Crop or zero-pad the last axis to ``length`` samples (deterministic: crop from the start)."""
    T = x.shape[-1]
    if T >= length:
        return x[..., :length]
    return torch.nn.functional.pad(x, (0, length - T))
