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
    declared = wav_declared_frames(p)
    if declared is not None and declared > x.shape[1]:
        raise AudioError(f"audio file {str(p)!r} is truncated: its header declares {declared} samples per channel "
                         f"but it holds {x.shape[1]} ({x.shape[1] / sr:.3f} of {declared / sr:.3f} s); re-export or "
                         "re-copy it")
    validate_audio(x, str(p))
    if mono and x.shape[0] > 1:
        x = x.mean(dim=0, keepdim=True)
    if sample_rate is not None and sr != sample_rate:
        x = resample(x, sr, sample_rate)
    return x


def wav_declared_frames(path: str | os.PathLike) -> int | None:
    """Frames per channel that a RIFF/WAVE file's ``data`` chunk header declares (None: not a WAV, or a
    streaming header whose size is a placeholder). libsndfile silently reads a truncated file short."""
    import struct

    try:
        with open(path, "rb") as f:
            head = f.read(12)
            if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
                return None
            block_align = None
            while True:
                ch = f.read(8)
                if len(ch) < 8:
                    return None
                cid, size = ch[:4], struct.unpack("<I", ch[4:])[0]
                if cid == b"fmt ":
                    fmt = f.read(size)
                    if len(fmt) >= 14:
                        block_align = struct.unpack("<H", fmt[12:14])[0]
                    if size % 2:
                        f.read(1)
                elif cid == b"data":
                    if not block_align or size in (0, 0xFFFFFFFF):
                        return None
                    return size // block_align
                else:
                    f.seek(size + (size % 2), 1)
    except OSError:
        return None


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


def save_wav(path: str | os.PathLike, audio: torch.Tensor, sample_rate: int, warn: bool = True) -> int:
    """Write ``[C, T]`` or ``[T]`` float audio as 16-bit PCM WAV, atomically; returns how many samples were
    beyond full scale and clipped to [-1, 1] (with a warning saying how many unless ``warn=False``)."""
    import io

    import soundfile as sf

    from dragontune.utils import log

    a = audio.detach().cpu().float()
    if a.dim() == 1:
        a = a[None]
    validate_audio(a, f"audio for {str(path)!r}")
    n_clip = int((a.abs() > 1.0).sum())
    if n_clip and warn:
        log.warning("%s: %d of %d samples (%.2f %%) are beyond full scale (peak %.2f) and were clipped",
                    path, n_clip, a.numel(), 100.0 * n_clip / a.numel(), float(a.abs().max()))
    buf = io.BytesIO()
    sf.write(buf, a.clamp(-1, 1).T.numpy(), sample_rate, subtype="PCM_16", format="WAV")
    atomic_write_bytes(path, buf.getvalue())
    return n_clip


def fit_length(x: torch.Tensor, length: int) -> torch.Tensor:
    """Crop or zero-pad the last axis to ``length`` samples (deterministic: crop from the start)."""
    T = x.shape[-1]
    if T >= length:
        return x[..., :length]
    return torch.nn.functional.pad(x, (0, length - T))
