"""``musicnn`` music taggers (Pons & Serra, 2019) ported to PyTorch, weights read from the PyPI package.

The PyPI package ``musicnn`` 0.1.0 ships two trained musicnn taggers as TensorFlow-1 checkpoints:
``MTT_musicnn`` (MagnaTagATune) and ``MSD_musicnn`` (Million Song Dataset), 50 tags each. This module
re-implements their graph (``musicnn/models.py: build_musicnn``) and their input pipeline
(``musicnn/extractor.py: batch_data``) in PyTorch and loads the checkpoint with
:mod:`dragontune.encoders.tf_bundle`; TensorFlow is not needed.

Input pipeline: mono audio at 16 kHz -> STFT (n_fft 512, hop 256, periodic Hann, centred with
``pad_mode`` padding) -> power spectrum -> 96-band Slaney mel filterbank (librosa's default) ->
``log10(10000 * mel + 1)`` -> patches of 187 frames (3 s). Unlike the original, the mel is NOT cast to
float16 before the log (that cast overflows to ``inf`` on loud music; see ``docs/musicnn.md``).

Network: batch-norm on the input; front-end of timbral filters (7x38 and 7x67 time x frequency,
204 each, max-pooled over frequency) and temporal filters (128x1, 64x1, 32x1, 51 each, 'same'
padding, max-pooled over frequency) -> 561 channels; mid-end of three 7-tap 1-D convolutions with 64
filters (residual on the 2nd and 3rd) -> dense concatenation, 753 channels; back-end max- and
mean-pooling over time -> 1506 -> batch-norm -> dense 200 + ReLU + batch-norm (the "penultimate"
layer) -> dense 50 (logits; sigmoid = taggram). All batch-norms use eps 1e-3 (TF default).
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from dragontune.audio import resample, validate_audio
from dragontune.encoders.base import Encoder
from dragontune.encoders.tf_bundle import read_tf_checkpoint
from dragontune.errors import CheckpointError, EncoderError

__all__ = [
    "MusicnnEncoder",
    "musicnn_log_mel",
    "slaney_mel_filterbank",
    "musicnn_package_dir",
    "musicnn_forward",
    "load_musicnn_params",
    "MUSICNN_MODELS",
    "MUSICNN_LAYERS",
]

SR = 16000
N_FFT = 512
HOP = 256
N_MELS = 96
PATCH_FRAMES = 187
BN_EPS = 1e-3
MUSICNN_MODELS = ("MTT_musicnn", "MSD_musicnn")
#: layer -> dim. "pooled" is the temporal mean of the 753 mid-end channels, "max_pooled" their max.
MUSICNN_LAYERS = {"penultimate": 200, "pooled": 753, "max_pooled": 753, "taggram": 50}
_INSTALL_HINT = "install the weights with `pip install --no-deps musicnn==0.1.0` (TensorFlow is not needed)"

# Tag lists of musicnn/configuration.py (MTT_LABELS, MSD_LABELS), in output order.
_TAGS = {
    "MTT_musicnn": (
        "guitar", "classical", "slow", "techno", "strings", "drums", "electronic", "rock", "fast", "piano",
        "ambient", "beat", "violin", "vocal", "synth", "female", "indian", "opera", "male", "singing",
        "vocals", "no vocals", "harpsichord", "loud", "quiet", "flute", "woman", "male vocal", "no vocal",
        "pop", "soft", "sitar", "solo", "man", "classic", "choir", "voice", "new age", "dance", "male voice",
        "female vocal", "beats", "harp", "cello", "no voice", "weird", "country", "metal", "female voice",
        "choral",
    ),
    "MSD_musicnn": (
        "rock", "pop", "alternative", "indie", "electronic", "female vocalists", "dance", "00s",
        "alternative rock", "jazz", "beautiful", "metal", "chillout", "male vocalists", "classic rock",
        "soul", "indie rock", "Mellow", "electronica", "80s", "folk", "90s", "chill", "instrumental", "punk",
        "oldies", "blues", "hard rock", "ambient", "acoustic", "experimental", "female vocalist", "guitar",
        "Hip-Hop", "70s", "party", "country", "easy listening", "sexy", "catchy", "funk", "electro",
        "heavy metal", "Progressive rock", "60s", "rnb", "indie pop", "sad", "House", "happy",
    ),
}


# ----------------------------------------------------------------------------------------------
# front-end


def _hz_to_mel_slaney(f: np.ndarray) -> np.ndarray:
    f = np.asarray(f, dtype=np.float64)
    f_sp = 200.0 / 3.0
    min_log_hz = 1000.0
    min_log_mel = min_log_hz / f_sp
    logstep = np.log(6.4) / 27.0
    safe = np.maximum(f, min_log_hz)
    return np.where(f >= min_log_hz, min_log_mel + np.log(safe / min_log_hz) / logstep, f / f_sp)


def _mel_to_hz_slaney(m: np.ndarray) -> np.ndarray:
    m = np.asarray(m, dtype=np.float64)
    f_sp = 200.0 / 3.0
    min_log_hz = 1000.0
    min_log_mel = min_log_hz / f_sp
    logstep = np.log(6.4) / 27.0
    return np.where(m >= min_log_mel, min_log_hz * np.exp(logstep * (m - min_log_mel)), f_sp * m)


def slaney_mel_filterbank(
    sample_rate: int = SR, n_fft: int = N_FFT, n_mels: int = N_MELS, fmin: float = 0.0, fmax: float | None = None
) -> np.ndarray:
    """Slaney-scale, Slaney-normalised triangular mel filterbank ``[n_mels, n_fft // 2 + 1]`` (float64).

    Same construction as ``librosa.filters.mel(htk=False, norm="slaney")``: band edges equally spaced
    on the Slaney mel scale (linear below 1 kHz, logarithmic above), each triangle scaled to unit area
    (``2 / (f_upper - f_lower)``).
    """
    fmax = sample_rate / 2.0 if fmax is None else float(fmax)
    fft_freqs = np.linspace(0.0, sample_rate / 2.0, n_fft // 2 + 1)
    edges = _mel_to_hz_slaney(np.linspace(_hz_to_mel_slaney(fmin), _hz_to_mel_slaney(fmax), n_mels + 2))
    widths = np.diff(edges)
    ramps = edges[:, None] - fft_freqs[None, :]
    rising = -ramps[:-2] / widths[:-1, None]
    falling = ramps[2:] / widths[1:, None]
    weights = np.maximum(0.0, np.minimum(rising, falling))
    weights *= (2.0 / (edges[2:] - edges[:-2]))[:, None]
    return weights


_FB_CACHE: dict[tuple, torch.Tensor] = {}


def musicnn_log_mel(wave: torch.Tensor, pad_mode: str = "constant") -> torch.Tensor:
    """Mono 16 kHz waveform ``[T]`` -> musicnn log-mel ``[1 + T // 256, 96]`` float32.

    STFT with a periodic Hann window (n_fft 512, hop 256, ``center=True`` with ``pad_mode`` padding:
    "constant" is librosa >= 0.10's default, "reflect" that of the librosa the models were trained
    with), power 2, Slaney mel, ``log10(10000 x + 1)``. Computed in float64, returned as float32.
    """
    if wave.dim() != 1:
        raise EncoderError(f"musicnn_log_mel expects a 1-D waveform, got shape {tuple(wave.shape)}")
    if pad_mode not in ("constant", "reflect"):
        raise EncoderError(f"musicnn pad_mode must be 'constant' or 'reflect', got {pad_mode!r}")
    if "fb" not in _FB_CACHE:
        _FB_CACHE["fb"] = torch.from_numpy(slaney_mel_filterbank())
    x = wave.detach().to("cpu", torch.float64)
    window = torch.hann_window(N_FFT, periodic=True, dtype=torch.float64)
    spec = torch.stft(
        x, n_fft=N_FFT, hop_length=HOP, window=window, center=True, pad_mode=pad_mode, return_complex=True
    )
    power = spec.real.square() + spec.imag.square()  # [257, frames]
    mel = _FB_CACHE["fb"] @ power  # [96, frames]
    return torch.log10(10000.0 * mel + 1.0).T.contiguous().to(torch.float32)


# ----------------------------------------------------------------------------------------------
# network


def _bn(x: torch.Tensor, p: dict[str, torch.Tensor], name: str) -> torch.Tensor:
    return F.batch_norm(
        x, p[f"{name}/moving_mean"], p[f"{name}/moving_variance"], p[f"{name}/gamma"], p[f"{name}/beta"],
        training=False, eps=BN_EPS,
    )


def _conv2d_weight(k: torch.Tensor) -> torch.Tensor:
    """TF kernel ``[kh, kw, in, out]`` -> torch ``[out, in, kh, kw]``."""
    return k.permute(3, 2, 0, 1).contiguous()


def _conv1d_weight(k: torch.Tensor) -> torch.Tensor:
    """TF kernel ``[7, C, 1, out]`` spanning all C rows -> torch conv1d weight ``[out, C, 7]``."""
    return k[:, :, 0, :].permute(2, 1, 0).contiguous()


def _freq_extreme(z: torch.Tensor, gamma: torch.Tensor) -> torch.Tensor:
    """``max_f BN(relu(z))`` computed as ``BN(relu(max_f z))`` (or ``min_f`` where ``gamma < 0``).

    ReLU and the eval-mode batch-norm are monotone per channel (non-decreasing where gamma >= 0,
    non-increasing where gamma < 0), and so are their rounded floating-point versions, so pooling first
    gives bit-identical results while running ReLU and batch-norm on ~60-96x fewer values.
    """
    zmin, zmax = torch.aminmax(z, dim=3)
    return torch.where((gamma >= 0)[None, :, None], zmax, zmin)


def musicnn_forward(params: dict[str, torch.Tensor], x: torch.Tensor) -> dict[str, torch.Tensor]:
    """Patches ``[N, 187, 96]`` (time, mel) -> dict of ``logits``/``taggram`` ``[N,50]``, ``penultimate``
    ``[N,200]``, ``pooled`` / ``max_pooled`` ``[N,753]``. ``params`` holds the converted weights."""
    p = params
    h = x.unsqueeze(1)  # [N, 1, time, mel]
    h = _bn(h, p, "batch_normalization")
    front = []
    padded = F.pad(h, (0, 0, 3, 3))  # time only, as the original
    for conv, bn in (("conv2d", "batch_normalization_1"), ("conv2d_1", "batch_normalization_2")):
        z = F.conv2d(padded, p[f"{conv}/w"], p[f"{conv}/bias"])
        front.append(_bn(F.relu(_freq_extreme(z, p[f"{bn}/gamma"])), p, bn))  # [N, 204, time]
    for conv, bn, k in (
        ("conv2d_2", "batch_normalization_3", 128),
        ("conv2d_3", "batch_normalization_4", 64),
        ("conv2d_4", "batch_normalization_5", 32),
    ):
        before = (k - 1) // 2  # TF 'same': the extra row of padding goes after
        z = F.conv2d(F.pad(h, (0, 0, before, k - 1 - before)), p[f"{conv}/w"], p[f"{conv}/bias"])
        front.append(_bn(F.relu(_freq_extreme(z, p[f"{bn}/gamma"])), p, bn))  # [N, 51, time]
    front_cat = torch.cat(front, dim=1)  # [N, 561, time]
    m1 = _bn(F.relu(F.conv1d(F.pad(front_cat, (3, 3)), p["conv2d_5/w"], p["conv2d_5/bias"])), p, "batch_normalization_6")
    m2 = _bn(F.relu(F.conv1d(F.pad(m1, (3, 3)), p["conv2d_6/w"], p["conv2d_6/bias"])), p, "batch_normalization_7") + m1
    m3 = _bn(F.relu(F.conv1d(F.pad(m2, (3, 3)), p["conv2d_7/w"], p["conv2d_7/bias"])), p, "batch_normalization_8") + m2
    mid = torch.cat([front_cat, m1, m2, m3], dim=1)  # [N, 753, time]
    max_pool = mid.amax(dim=2)
    mean_pool = mid.mean(dim=2)
    flat = torch.stack([max_pool, mean_pool], dim=2).reshape(x.shape[0], -1)  # TF flattens [753, 2]
    flat = _bn(flat, p, "batch_normalization_9")
    dense = F.relu(flat @ p["dense/kernel"] + p["dense/bias"])
    penultimate = _bn(dense, p, "batch_normalization_10")
    logits = penultimate @ p["dense_1/kernel"] + p["dense_1/bias"]
    return {
        "logits": logits,
        "taggram": torch.sigmoid(logits),
        "penultimate": penultimate,
        "pooled": mean_pool,
        "max_pooled": max_pool,
    }


_BN_SIZES = (1, 204, 204, 51, 51, 51, 64, 64, 64, 1506, 200)
_CONV_KERNELS = (
    (7, 38, 1, 204), (7, 67, 1, 204), (128, 1, 1, 51), (64, 1, 1, 51), (32, 1, 1, 51),
    (7, 561, 1, 64), (7, 64, 1, 64), (7, 64, 1, 64),
)


def _expected_shapes() -> dict[str, tuple[int, ...]]:
    """Every model variable of a musicnn checkpoint (64 mid-end filters, 200 back-end units) and its shape."""
    shapes: dict[str, tuple[int, ...]] = {}
    for i, n in enumerate(_BN_SIZES):
        bn = "batch_normalization" if i == 0 else f"batch_normalization_{i}"
        for v in ("beta", "gamma", "moving_mean", "moving_variance"):
            shapes[f"{bn}/{v}"] = (n,)
    for i, k in enumerate(_CONV_KERNELS):
        conv = "conv2d" if i == 0 else f"conv2d_{i}"
        shapes[f"{conv}/kernel"] = k
        shapes[f"{conv}/bias"] = (k[3],)
    shapes.update({"dense/kernel": (1506, 200), "dense/bias": (200,), "dense_1/kernel": (200, 50), "dense_1/bias": (50,)})
    return shapes


def musicnn_package_dir() -> Path:
    """Directory of the installed ``musicnn`` package (found without importing it or TensorFlow)."""
    spec = importlib.util.find_spec("musicnn")
    if spec is None or not spec.submodule_search_locations:
        raise EncoderError(f"the Python package 'musicnn' is not installed; {_INSTALL_HINT}")
    return Path(list(spec.submodule_search_locations)[0])


def load_musicnn_params(weights_dir: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read a musicnn TF checkpoint directory (``.index`` + ``.data-00000-of-00001``) into torch weights."""
    d = Path(weights_dir)
    prefix = str(d) + os.sep
    for f in (".index", ".data-00000-of-00001"):
        if not (d / f).is_file():
            raise EncoderError(f"musicnn weights file {str(d / f)!r} is missing; {_INSTALL_HINT}")
    expected = _expected_shapes()
    try:
        raw = read_tf_checkpoint(prefix, names=list(expected))
    except CheckpointError as e:
        raise EncoderError(f"musicnn weights in {str(d)!r} cannot be read: {e}; {_INSTALL_HINT}") from None
    for name, shape in expected.items():
        if raw[name].shape != shape:
            raise EncoderError(
                f"musicnn weights in {str(d)!r}: {name} has shape {raw[name].shape}, expected {shape} "
                "(not a musicnn model with 64 mid-end filters and 200 back-end units)"
            )
    p = {k: torch.from_numpy(v.astype(np.float32)) for k, v in raw.items()}
    for i in range(8):
        conv = "conv2d" if i == 0 else f"conv2d_{i}"
        k = p.pop(f"{conv}/kernel")
        p[f"{conv}/w"] = _conv1d_weight(k) if i >= 5 else _conv2d_weight(k)
    return p


# ----------------------------------------------------------------------------------------------
# encoder


class MusicnnEncoder(Encoder):
    """musicnn tagger as an :class:`Encoder`: one frame per 187-frame (~3 s) log-mel patch.

    ``layer``: "penultimate" (200-d, the back-end's batch-normed dense layer), "pooled" (753-d, temporal
    mean of the mid-end features), "max_pooled" (753-d, their temporal max) or "taggram" (50 sigmoid
    tag probabilities). ``hop_patches``: patch hop in frames (default 187 = non-overlapping).
    ``pad_mode``: STFT edge padding ("constant" = librosa >= 0.10, "reflect" = older librosa).
    ``weights_dir``: the checkpoint directory (default: ``<musicnn package>/<model>``).
    """

    name = "musicnn"
    sample_rate = SR
    min_samples = (PATCH_FRAMES - 1) * HOP  # 47616 samples = 2.976 s -> 1 + T // 256 = 187 frames

    def __init__(
        self,
        model: str = "MTT_musicnn",
        layer: str = "penultimate",
        hop_patches: int | None = None,
        pad_mode: str = "constant",
        weights_dir: str | os.PathLike | None = None,
    ) -> None:
        if model not in MUSICNN_MODELS:
            raise EncoderError(f"unknown musicnn model {model!r}; choose one of {list(MUSICNN_MODELS)}")
        if layer not in MUSICNN_LAYERS:
            raise EncoderError(f"unknown musicnn layer {layer!r}; choose one of {list(MUSICNN_LAYERS)}")
        hop = PATCH_FRAMES if hop_patches is None else hop_patches
        if isinstance(hop, bool) or not isinstance(hop, (int, np.integer)) or hop < 1:
            raise EncoderError(f"musicnn hop_patches must be a positive number of frames, got {hop_patches!r}")
        if pad_mode not in ("constant", "reflect"):
            raise EncoderError(f"musicnn pad_mode must be 'constant' or 'reflect', got {pad_mode!r}")
        self.model = model
        self.layer = layer
        self.hop_patches = int(hop)
        self.pad_mode = pad_mode
        self.dim = MUSICNN_LAYERS[layer]
        self._weights_dir = Path(weights_dir) if weights_dir is not None else None
        self._params: dict[str, torch.Tensor] | None = None
        self._id: str | None = None

    # -- weights ---------------------------------------------------------------------------------
    @property
    def weights_dir(self) -> Path:
        if self._weights_dir is None:
            self._weights_dir = musicnn_package_dir() / self.model
        return self._weights_dir

    def _load(self) -> dict[str, torch.Tensor]:
        if self._params is None:
            self._params = load_musicnn_params(self.weights_dir)
        return self._params

    @property
    def weights_sha256(self) -> str:
        h = hashlib.sha256()
        for f in (".index", ".data-00000-of-00001"):
            path = self.weights_dir / f
            if not path.is_file():
                raise EncoderError(f"musicnn weights file {str(path)!r} is missing; {_INSTALL_HINT}")
            with open(path, "rb") as fh:
                h.update(hashlib.sha256(fh.read()).digest())
        return h.hexdigest()

    @property
    def id(self) -> str:
        if self._id is None:
            self._id = (
                f"musicnn:{self.model}:{self.layer}:sr{SR}:patch{PATCH_FRAMES}:hop{self.hop_patches}:"
                f"pad-{self.pad_mode}:fp32-logmel:weights-sha256-{self.weights_sha256[:16]}"
            )
        return self._id

    @property
    def tag_names(self) -> list[str]:
        """The 50 tags of the model, in taggram order (from ``musicnn/configuration.py``)."""
        return list(_TAGS[self.model])

    # -- audio -----------------------------------------------------------------------------------
    def log_mel_patches(self, audio: torch.Tensor, sample_rate: int) -> list[torch.Tensor]:
        """``audio[B, C, T]`` -> list of B log-mel patch stacks ``[patches, 187, 96]`` (float32)."""
        self.check_input(audio, sample_rate)
        if audio.shape[0] == 0:
            return []
        validate_audio(audio, "audio given to the musicnn encoder")
        self.check_length(audio, sample_rate)
        x = audio.detach().to("cpu", torch.float32)
        x = resample(x, sample_rate, SR).mean(dim=1)  # [B, T16]
        n_frames = 1 + x.shape[-1] // HOP
        if n_frames < PATCH_FRAMES:
            raise EncoderError(
                f"clip of {audio.shape[-1]} samples at {sample_rate} Hz gives {x.shape[-1]} samples at {SR} Hz "
                f"after resampling, fewer than musicnn's minimum of {self.min_samples} samples "
                f"({self.min_samples / SR:.3f} s); pad or generate longer clips"
            )
        starts = range(0, n_frames - PATCH_FRAMES + 1, self.hop_patches)
        out = []
        for b in range(x.shape[0]):
            mel = musicnn_log_mel(x[b], self.pad_mode)
            out.append(torch.stack([mel[s : s + PATCH_FRAMES] for s in starts]))
        return out

    def forward_patches(self, patches: torch.Tensor) -> dict[str, torch.Tensor]:
        """Log-mel patches ``[N, 187, 96]`` -> all outputs (see :func:`musicnn_forward`), no grad."""
        if patches.dim() != 3 or tuple(patches.shape[1:]) != (PATCH_FRAMES, N_MELS):
            raise EncoderError(f"musicnn patches must be [N, {PATCH_FRAMES}, {N_MELS}], got {tuple(patches.shape)}")
        params = self._load()
        with torch.no_grad():
            return musicnn_forward(params, patches.to("cpu", torch.float32))

    def embed_audio(self, audio: torch.Tensor, sample_rate: int) -> list[torch.Tensor]:
        """``audio[B, C, T]`` -> B tensors ``[patches, dim]`` (float32, CPU); each clip run on its own."""
        return [self.forward_patches(p)[self.layer].contiguous() for p in self.log_mel_patches(audio, sample_rate)]

    def tag_probabilities(self, audio: torch.Tensor, sample_rate: int) -> torch.Tensor:
        """``audio[B, C, T]`` -> ``[B, 50]``: the taggram (sigmoid) averaged over each clip's patches."""
        probs = [self.forward_patches(p)["taggram"].mean(dim=0) for p in self.log_mel_patches(audio, sample_rate)]
        return torch.stack(probs) if probs else torch.zeros(0, 50)
