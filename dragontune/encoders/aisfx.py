"""``aisfx``: the general-audio (sound-effects) embedding of the PyPI package ``aisfx`` 0.1.2, in PyTorch.

The package ships one trained model, "X-Sequential-CE" (a 9-layer CNN from the DCASE cross-task
baseline, trained across nine sound-effect libraries), as ``aisfx/models/checkpoint.pth``. This module
re-implements its network (:class:`AisfxNet`, same state-dict keys, loaded strictly) and its librosa
front-end (``aisfx/spectrogram/spectrogram_librosa.py``) in torch; neither librosa nor the package's
code runs here.

Front-end (per clip): down-mix, resample to 44.1 kHz, divide by the clip's peak ``max|x|`` (the
package's normalisation; silence is left as is) -> STFT (n_fft 2048, hop 1024, periodic Hann, centred,
zero padding = librosa >= 0.10) -> power -> 96-band HTK mel filterbank over 0-22050 Hz, each band
normalised to unit sum (librosa ``htk=True, norm=1``) -> ``log10(10000 x + 1)`` -> divided by
9.457798957824707 (the package's "original" min-max normalisation, min 0).

Windowing (the package's ``blocking`` with ``drop_partial_block=True``): blocks of 100 frames (~2.3 s)
with a hop of ``round(100 * hop)`` frames (default 0.5 -> 50 frames, ~1.16 s), starting at frame 0;
a trailing partial block is dropped. One 512-d frame per block: conv blocks -> mean over frequency ->
max over time.

The package's own librosa front-end returns the mel spectrogram as ``[mels, frames]`` and blocks it
without transposing (its essentia front-end, used in training, returns ``[frames, mels]``); this module
uses ``[frames, mels]``, the layout the network was trained on.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from dragontune.audio import resample, validate_audio
from dragontune.encoders.base import Encoder
from dragontune.errors import EncoderError
from dragontune.utils import sha256_file

__all__ = [
    "AisfxEncoder",
    "AisfxNet",
    "aisfx_log_mel",
    "aisfx_blocks",
    "htk_mel_filterbank",
    "aisfx_package_dir",
    "default_aisfx_weights",
    "load_aisfx_checkpoint",
    "SR",
    "N_FFT",
    "HOP",
    "N_MELS",
    "BLOCK_FRAMES",
    "SPEC_MAX",
]

SR = 44100
N_FFT = 2048
HOP = 1024
N_MELS = 96
F_MIN, F_MAX = 0.0, 22050.0
BLOCK_FRAMES = 100
#: the package's "original" spectrogram normalisation: (spec - 0) / (9.457798957824707 - 0)
SPEC_MAX = 9.457798957824707
EMBED_DIM = 512
INSTALL_HINT = "install the weights with `pip install --no-deps aisfx==0.1.2` (librosa is not needed)"


# ----------------------------------------------------------------------------------------------
# front-end


def htk_mel_filterbank(
    sample_rate: int = SR, n_fft: int = N_FFT, n_mels: int = N_MELS, fmin: float = F_MIN, fmax: float = F_MAX
) -> np.ndarray:
    """HTK-scale triangular mel filterbank ``[n_mels, n_fft // 2 + 1]``, each row scaled to unit sum (float64).

    Same construction as ``librosa.filters.mel(htk=True, norm=1)``: band edges equally spaced on
    ``2595 log10(1 + f / 700)``, triangles over the FFT bin frequencies, rows divided by their L1 norm.
    """
    fft_freqs = np.linspace(0.0, sample_rate / 2.0, n_fft // 2 + 1)
    mel_lo, mel_hi = (2595.0 * np.log10(1.0 + np.array([fmin, fmax], dtype=np.float64) / 700.0)).tolist()
    edges = 700.0 * (10.0 ** (np.linspace(mel_lo, mel_hi, n_mels + 2) / 2595.0) - 1.0)
    widths = np.diff(edges)
    ramps = edges[:, None] - fft_freqs[None, :]
    rising = -ramps[:-2] / widths[:-1, None]
    falling = ramps[2:] / widths[1:, None]
    weights = np.maximum(0.0, np.minimum(rising, falling))
    sums = weights.sum(axis=1, keepdims=True)
    if np.any(sums == 0):
        raise EncoderError(f"mel filterbank has empty bands for n_fft={n_fft}, n_mels={n_mels} at {sample_rate} Hz")
    return weights / sums


_FB: dict[str, torch.Tensor] = {}


def aisfx_log_mel(wave: torch.Tensor, peak_normalize: bool = True) -> torch.Tensor:
    """Mono 44.1 kHz waveform ``[T]`` -> the aisfx input spectrogram ``[1 + T // 1024, 96]`` (float32).

    Peak normalisation (optional, on by default as in the package), centred STFT with zero padding,
    power, unit-sum HTK mel, ``log10(10000 x + 1) / 9.457798957824707``. Computed in float64 on the
    waveform's device.
    """
    if not isinstance(wave, torch.Tensor) or wave.dim() != 1:
        raise EncoderError(f"aisfx_log_mel expects a 1-D waveform tensor, got {getattr(wave, 'shape', type(wave))}")
    x = wave.detach().to(torch.float64)
    if peak_normalize:
        peak = x.abs().max() if x.numel() else x.new_zeros(())
        x = x / torch.where(peak > 0, peak, torch.ones_like(peak))
    if "fb" not in _FB:
        _FB["fb"] = torch.from_numpy(htk_mel_filterbank())
    fb = _FB["fb"].to(x.device)
    window = torch.hann_window(N_FFT, periodic=True, dtype=torch.float64, device=x.device)
    spec = torch.stft(x, n_fft=N_FFT, hop_length=HOP, window=window, center=True, pad_mode="constant", return_complex=True)
    power = spec.real.square() + spec.imag.square()  # [1025, frames]
    mel = fb @ power  # [96, frames]
    return (torch.log10(10000.0 * mel + 1.0) / SPEC_MAX).T.contiguous().to(torch.float32)


def aisfx_blocks(spec: torch.Tensor, hop_frames: int) -> torch.Tensor:
    """Spectrogram ``[frames, 96]`` -> blocks ``[n, 100, 96]`` at frames ``0, hop, 2 hop, ...``, partial block dropped."""
    n_frames = spec.shape[0]
    if n_frames < BLOCK_FRAMES:
        raise EncoderError(f"aisfx needs at least {BLOCK_FRAMES} spectrogram frames for one block, got {n_frames}")
    starts = range(0, n_frames - BLOCK_FRAMES + 1, hop_frames)
    return torch.stack([spec[s : s + BLOCK_FRAMES] for s in starts])


# ----------------------------------------------------------------------------------------------
# network


class _ConvBlock(nn.Module):
    """Two 3x3 convolutions (no bias) each with batch-norm and ReLU, then max-pooling."""

    def __init__(self, c_in: int, c_out: int):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, padding=1, bias=False)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.bn2 = nn.BatchNorm2d(c_out)

    def forward(self, x: torch.Tensor, pool: int) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.relu(self.bn2(self.conv2(x)))
        return F.max_pool2d(x, pool) if pool > 1 else x


class _EmbeddingNet(nn.Module):
    def __init__(self, width: int = 64):
        super().__init__()
        self.conv_block1 = _ConvBlock(1, width)
        self.conv_block2 = _ConvBlock(width, 2 * width)
        self.conv_block3 = _ConvBlock(2 * width, 4 * width)
        self.conv_block4 = _ConvBlock(4 * width, 8 * width)

    def forward(self, blocks: torch.Tensor) -> torch.Tensor:
        x = blocks.unsqueeze(1)  # [N, 1, time, mel]
        x = self.conv_block1(x, 2)
        x = self.conv_block2(x, 2)
        x = self.conv_block3(x, 2)
        x = self.conv_block4(x, 1)
        return x.mean(dim=3).amax(dim=2)  # mean over frequency, max over time -> [N, 512]


class AisfxNet(nn.Module):
    """The aisfx "CrossNet": the embedding CNN plus one 3-layer classifier head per training library.

    ``head_classes``: number of classes of each head, in head order (the checkpoint's ``ds_dict``).
    Only :meth:`embed` is used as an encoder; :meth:`head_logits` gives the classifiers' outputs.
    """

    def __init__(self, head_classes: list[int], width: int = 64):
        super().__init__()
        self.embedding_net = _EmbeddingNet(width)
        d = 8 * width
        self.fc = nn.ModuleList(
            nn.Sequential(nn.Linear(d, d // 2), nn.ReLU(), nn.Linear(d // 2, d // 4), nn.ReLU(), nn.Linear(d // 4, n))
            for n in head_classes
        )

    def embed(self, blocks: torch.Tensor) -> torch.Tensor:
        """Blocks ``[N, 100, 96]`` -> embeddings ``[N, 512]``."""
        return self.embedding_net(blocks)

    def head_logits(self, embedding: torch.Tensor, head: int) -> torch.Tensor:
        return self.fc[head](embedding)


def aisfx_package_dir() -> Path:
    """Directory of the installed ``aisfx`` package, found without importing it."""
    spec = importlib.util.find_spec("aisfx")
    if spec is None or not spec.submodule_search_locations:
        raise EncoderError(f"the Python package 'aisfx' is not installed; {INSTALL_HINT}")
    return Path(list(spec.submodule_search_locations)[0])


def default_aisfx_weights() -> Path:
    """``<aisfx package>/models/checkpoint.pth``."""
    return aisfx_package_dir() / "models" / "checkpoint.pth"


def _numpy_safe_globals() -> list[Any]:
    """The NumPy objects the checkpoint's ``ds_dict`` pickles (``np.int64`` indices), for ``weights_only`` loading."""
    try:
        from numpy._core.multiarray import scalar
    except ImportError:  # NumPy 1.x
        from numpy.core.multiarray import scalar  # type: ignore[no-redef]
    return [(scalar, "numpy.core.multiarray.scalar"), scalar, np.dtype, type(np.dtype(np.int64))]


def load_aisfx_checkpoint(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, tuple[int, int]]]:
    """Read ``checkpoint.pth`` safely (``weights_only=True``) -> (state dict, {library: (head index, classes)})."""
    p = Path(path)
    if not p.is_file():
        raise EncoderError(f"aisfx weights file {str(p)!r} does not exist; {INSTALL_HINT}")
    try:
        with torch.serialization.safe_globals(_numpy_safe_globals()):
            obj = torch.load(str(p), map_location="cpu", weights_only=True)
    except Exception as e:  # unpickling errors come in many types
        raise EncoderError(f"aisfx weights file {str(p)!r} cannot be read ({type(e).__name__}: {str(e)[:300]}); "
                           f"{INSTALL_HINT}") from None
    if not (isinstance(obj, (tuple, list)) and len(obj) == 2 and isinstance(obj[0], dict) and isinstance(obj[1], dict)):
        raise EncoderError(f"aisfx weights file {str(p)!r} is not an aisfx checkpoint (expected (state_dict, ds_dict))")
    state, ds = obj
    heads = {str(k): (int(v[0]), int(v[1])) for k, v in ds.items()}
    if sorted(i for i, _ in heads.values()) != list(range(len(heads))):
        raise EncoderError(f"aisfx weights file {str(p)!r}: head indices {sorted(heads.values())} are not 0..{len(heads) - 1}")
    return state, heads


# ----------------------------------------------------------------------------------------------
# encoder


class AisfxEncoder(Encoder):
    """aisfx as an :class:`Encoder`: one 512-d frame per 100-frame (~2.3 s) block, hop ``hop`` blocks.

    ``hop``: block hop as a fraction of the block (the package's ``emb_hop_size``; default 0.5 = 50
    frames ~ 1.16 s). ``peak_normalize``: divide each clip by its peak first (the package does).
    ``weights``: path of ``checkpoint.pth`` (default: the installed package's). Weights load on first use.
    """

    name = "aisfx"
    sample_rate = SR
    dim = EMBED_DIM
    cross_modal = False
    #: one full block: 1 + T // 1024 >= 100 frames  <=>  T >= 99 * 1024 = 101376 samples (2.299 s)
    min_samples = (BLOCK_FRAMES - 1) * HOP

    def __init__(
        self,
        hop: float = 0.5,
        peak_normalize: bool = True,
        weights: str | os.PathLike | None = None,
        device: str | torch.device = "cpu",
    ) -> None:
        hop_frames = int(np.round(BLOCK_FRAMES * float(hop))) if isinstance(hop, (int, float)) else 0
        if isinstance(hop, bool) or not 1 <= hop_frames <= BLOCK_FRAMES:
            raise EncoderError(f"aisfx hop must be a fraction of the 100-frame block in [0.01, 1], got {hop!r}")
        self.hop = float(hop)
        self.hop_frames = hop_frames
        self.peak_normalize = bool(peak_normalize)
        self.device = torch.device(device)
        self._weights = Path(weights) if weights is not None else None
        self._net: AisfxNet | None = None
        self._heads: dict[str, tuple[int, int]] | None = None
        self._id: str | None = None

    @property
    def weights(self) -> Path:
        if self._weights is None:
            self._weights = default_aisfx_weights()
        return self._weights

    def _load(self) -> AisfxNet:
        if self._net is None:
            state, heads = load_aisfx_checkpoint(self.weights)
            order = sorted(heads.values())
            net = AisfxNet([n for _, n in order])
            try:
                net.load_state_dict(state, strict=True)
            except RuntimeError as e:
                raise EncoderError(f"aisfx weights file {str(self.weights)!r} does not match the aisfx network: "
                                   f"{str(e)[:400]}") from None
            self._net = net.eval().to(self.device)
            self._heads = heads
        return self._net

    @property
    def head_names(self) -> list[str]:
        """The training libraries of the classifier heads, in head order."""
        self._load()
        assert self._heads is not None
        return [k for k, _ in sorted(self._heads.items(), key=lambda kv: kv[1][0])]

    @property
    def id(self) -> str:
        if self._id is None:
            if not self.weights.is_file():
                raise EncoderError(f"aisfx weights file {str(self.weights)!r} does not exist; {INSTALL_HINT}")
            self._id = (
                f"aisfx:sr{SR}:nfft{N_FFT}:hop{HOP}:mel{N_MELS}-htk-unitsum:block{BLOCK_FRAMES}:"
                f"hop{self.hop_frames}:peaknorm-{int(self.peak_normalize)}:"
                f"weights-sha256-{sha256_file(self.weights)[:16]}"
            )
        return self._id

    def spectrogram_blocks(self, audio: torch.Tensor, sample_rate: int) -> list[torch.Tensor]:
        """``audio[B, C, T]`` -> B stacks of input blocks ``[blocks, 100, 96]`` (float32, on ``device``)."""
        self.check_input(audio, sample_rate)
        if audio.shape[0] == 0:
            return []
        self.check_length(audio, int(sample_rate))
        validate_audio(audio, "audio given to the aisfx encoder")
        x = audio.detach().to("cpu", torch.float32).mean(dim=1)  # [B, T]
        x = resample(x, int(sample_rate), SR)
        if x.shape[-1] < self.min_samples:  # resampling rounded a borderline clip below the minimum
            self.check_length(x[:, None], SR)
        x = x.to(self.device)
        return [aisfx_blocks(aisfx_log_mel(x[b], self.peak_normalize), self.hop_frames) for b in range(x.shape[0])]

    def forward_blocks(self, blocks: torch.Tensor) -> torch.Tensor:
        """Input blocks ``[N, 100, 96]`` -> embeddings ``[N, 512]`` (float32, CPU), no grad."""
        if blocks.dim() != 3 or tuple(blocks.shape[1:]) != (BLOCK_FRAMES, N_MELS):
            raise EncoderError(f"aisfx blocks must be [N, {BLOCK_FRAMES}, {N_MELS}], got {tuple(blocks.shape)}")
        net = self._load()
        with torch.no_grad():
            return net.embed(blocks.to(self.device, torch.float32)).float().cpu().contiguous()

    def embed_audio(self, audio: torch.Tensor, sample_rate: int) -> list[torch.Tensor]:
        """``audio[B, C, T]`` -> B tensors ``[blocks, 512]`` (float32, CPU); each clip runs on its own."""
        return [self.forward_blocks(b) for b in self.spectrogram_blocks(audio, sample_rate)]


def make_encoder(context: Any, **kwargs: Any) -> Encoder:
    """The registry's factory (entry ``aisfx:make_encoder``): the context's device unless one is given."""
    if "device" not in kwargs and getattr(context, "device", None) is not None:
        kwargs["device"] = context.device
    return AisfxEncoder(**kwargs)
