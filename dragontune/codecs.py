"""Audio codecs (DESIGN.md layer 2): ``encode(audio[B,1,T]) -> latent[B,C,F]`` and back.

The default is :class:`LogMelCodec`, a deterministic log-mel "autoencoder" with no trained weights:
encoding is an STFT, a Slaney-style mel filterbank and a log; decoding inverts the filterbank with
non-negative least squares and recovers phase with fast Griffin-Lim from a fixed initial phase.
Latents are normalised by ``(x - shift) * scale``; :func:`fit_scale` fits both so that latents over a
corpus have mean 0 and standard deviation sigma_data = 0.5 (the EDM convention).
"""

from __future__ import annotations

import abc
import dataclasses
import math
from typing import Any, Iterable, Mapping

import numpy as np
import torch

from dragontune.errors import AudioError, ConfigError

#: target standard deviation of normalised latents (EDM sigma_data)
SIGMA_DATA = 0.5

_INVERSE_METHODS = ("pinv", "nnls")
_INIT_PHASES = ("zero", "random")


class Codec(abc.ABC):
    """Maps mono audio ``[B, 1, T]`` to latents ``[B, C, F]`` and back. Not trained; no gradients."""

    @property
    @abc.abstractmethod
    def sample_rate(self) -> int: ...

    @property
    @abc.abstractmethod
    def latent_channels(self) -> int: ...

    @property
    @abc.abstractmethod
    def hop_length(self) -> int:
        """Audio samples per latent frame."""

    @property
    @abc.abstractmethod
    def id(self) -> str:
        """Stable identity string including every parameter (normalisation included)."""

    @abc.abstractmethod
    def config(self) -> dict[str, Any]:
        """JSON-able dict from which :func:`codec_from_config` rebuilds an identical codec."""

    @abc.abstractmethod
    def encode(self, audio: torch.Tensor) -> torch.Tensor:
        """``audio[B, 1, T]`` float -> ``latent[B, C, F]`` float32 on the input's device."""

    @abc.abstractmethod
    def decode(self, latent: torch.Tensor) -> torch.Tensor:
        """``latent[B, C, F]`` -> ``audio[B, 1, num_samples(F)]`` float32 on the input's device."""

    def latent_frames(self, num_samples: int) -> int:
        """Number of latent frames for a clip of ``num_samples`` samples."""
        return int(num_samples) // self.hop_length

    def num_samples(self, latent_frames: int) -> int:
        """Number of audio samples decoded from ``latent_frames`` frames."""
        return int(latent_frames) * self.hop_length

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.id})"


# ----------------------------------------------------------------------------------------------------------
# mel filterbank (Slaney: linear below 1 kHz, logarithmic above; area-normalised triangles)

_F_SP = 200.0 / 3.0  # Hz per mel in the linear region
_MIN_LOG_HZ = 1000.0
_MIN_LOG_MEL = _MIN_LOG_HZ / _F_SP
_LOGSTEP = math.log(6.4) / 27.0


def hz_to_mel(f: np.ndarray) -> np.ndarray:
    """Slaney mel scale (as in the Auditory Toolbox / librosa ``htk=False``)."""
    f = np.asarray(f, dtype=np.float64)
    lin = f / _F_SP
    log = _MIN_LOG_MEL + np.log(np.maximum(f, 1e-300) / _MIN_LOG_HZ) / _LOGSTEP
    return np.where(f >= _MIN_LOG_HZ, log, lin)


def mel_to_hz(m: np.ndarray) -> np.ndarray:
    m = np.asarray(m, dtype=np.float64)
    lin = m * _F_SP
    log = _MIN_LOG_HZ * np.exp(_LOGSTEP * (m - _MIN_LOG_MEL))
    return np.where(m >= _MIN_LOG_MEL, log, lin)


def mel_filterbank(sample_rate: int, n_fft: int, n_mels: int, fmin: float = 0.0, fmax: float | None = None) -> np.ndarray:
    """Triangular mel filters ``[n_mels, n_fft // 2 + 1]`` (float64), Slaney area normalisation."""
    fmax = sample_rate / 2.0 if fmax is None else float(fmax)
    fft_freqs = np.linspace(0.0, sample_rate / 2.0, n_fft // 2 + 1)
    edges = mel_to_hz(np.linspace(hz_to_mel(fmin), hz_to_mel(fmax), n_mels + 2))
    lower, centre, upper = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    rising = (fft_freqs[None] - lower) / (centre - lower)
    falling = (upper - fft_freqs[None]) / (upper - centre)
    fb = np.maximum(0.0, np.minimum(rising, falling))
    fb *= (2.0 / (upper - lower))
    return fb


# ----------------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _Consts:
    window: torch.Tensor  # [n_fft]
    fb: torch.Tensor  # [n_mels, n_freq]
    fb_pinv: torch.Tensor  # [n_freq, n_mels]
    fb_t: torch.Tensor  # [n_freq, n_mels]
    init_phase: torch.Tensor | None  # [n_freq, max_frames] complex unit, or None for zero phase
    max_log_mel: float  # log of the largest mel energy audio in [-1, 1] can have (window sum x largest filter sum)


class LogMelCodec(Codec):
    """Deterministic log-mel codec.

    encode: Hann STFT (``center=True``), magnitude, mel filterbank, ``log(mel + log_floor)``,
    ``(x - shift) * scale``; exactly ``T // hop_length`` frames.
    decode: undo the normalisation, ``exp``, invert the filterbank (``inverse="nnls"``: non-negative least
    squares by ``inverse_iters`` multiplicative updates started from the clamped pseudo-inverse;
    ``"pinv"``: the clamped pseudo-inverse alone), then ``griffin_lim_iters`` iterations of fast
    Griffin-Lim (Perraudin et al. 2013, momentum ``gl_momentum``) from a fixed phase (``init_phase``:
    ``"random"`` = uniform phases from a fixed seed, the same for every clip; ``"zero"``), and an
    inverse STFT of length ``F * hop_length``. Same latent -> same audio, bit for bit, on a given device.
    """

    type_name = "logmel"

    def __init__(
        self,
        sample_rate: int = 16000,
        n_fft: int = 1024,
        hop_length: int = 256,
        n_mels: int = 64,
        fmin: float = 0.0,
        fmax: float | None = None,
        log_floor: float = 1e-5,
        shift: float = 0.0,
        scale: float = 1.0,
        griffin_lim_iters: int = 32,
        inverse: str = "nnls",
        inverse_iters: int = 32,
        gl_momentum: float = 0.99,
        init_phase: str = "random",
    ):
        def bad(msg: str) -> ConfigError:
            return ConfigError(f"LogMelCodec: {msg}")

        if int(sample_rate) <= 0:
            raise bad(f"sample_rate must be positive, got {sample_rate}")
        if int(n_fft) < 4 or int(n_fft) % 2:
            raise bad(f"n_fft must be an even integer >= 4, got {n_fft}")
        if not 0 < int(hop_length) <= int(n_fft):
            raise bad(f"hop_length must be in (0, n_fft={n_fft}], got {hop_length}")
        if int(n_mels) < 1:
            raise bad(f"n_mels must be >= 1, got {n_mels}")
        nyq = sample_rate / 2.0
        fmax_v = nyq if fmax is None else float(fmax)
        if not 0.0 <= float(fmin) < fmax_v <= nyq:
            raise bad(f"need 0 <= fmin < fmax <= sample_rate/2 = {nyq}, got fmin={fmin}, fmax={fmax}")
        if not float(log_floor) > 0:
            raise bad(f"log_floor must be > 0, got {log_floor}")
        if not (math.isfinite(float(shift)) and math.isfinite(float(scale)) and float(scale) > 0):
            raise bad(f"shift must be finite and scale finite and > 0, got shift={shift}, scale={scale}")
        if int(griffin_lim_iters) < 0 or int(inverse_iters) < 0:
            raise bad("griffin_lim_iters and inverse_iters must be >= 0")
        if inverse not in _INVERSE_METHODS:
            raise bad(f"inverse must be one of {_INVERSE_METHODS}, got {inverse!r}")
        if init_phase not in _INIT_PHASES:
            raise bad(f"init_phase must be one of {_INIT_PHASES}, got {init_phase!r}")
        if not 0.0 <= float(gl_momentum) < 1.0:
            raise bad(f"gl_momentum must be in [0, 1), got {gl_momentum}")

        self._sr = int(sample_rate)
        self.n_fft = int(n_fft)
        self._hop = int(hop_length)
        self.n_mels = int(n_mels)
        self.fmin = float(fmin)
        self.fmax = float(fmax_v)
        self.log_floor = float(log_floor)
        self.shift = float(shift)
        self.scale = float(scale)
        self.griffin_lim_iters = int(griffin_lim_iters)
        self.inverse = str(inverse)
        self.inverse_iters = int(inverse_iters)
        self.gl_momentum = float(gl_momentum)
        self.init_phase = str(init_phase)

        fb = mel_filterbank(self._sr, self.n_fft, self.n_mels, self.fmin, self.fmax)
        empty = np.flatnonzero(fb.sum(axis=1) == 0)
        if empty.size:
            raise bad(
                f"{empty.size} of {self.n_mels} mel bands contain no FFT bin (n_fft={self.n_fft} is too small "
                f"for n_mels={self.n_mels} between {self.fmin} and {self.fmax} Hz); raise n_fft or lower n_mels"
            )
        self._fb64 = fb
        self._consts: dict[str, _Consts] = {}

    # -- properties ---------------------------------------------------------------------------------------
    @property
    def sample_rate(self) -> int:
        return self._sr

    @property
    def latent_channels(self) -> int:
        return self.n_mels

    @property
    def hop_length(self) -> int:
        return self._hop

    @property
    def n_freq(self) -> int:
        return self.n_fft // 2 + 1

    @property
    def min_samples(self) -> int:
        """Shortest encodable clip: one latent frame and enough samples for the reflect padding."""
        return max(self._hop, self.n_fft // 2 + 1)

    def config(self) -> dict[str, Any]:
        return {
            "type": self.type_name,
            "sample_rate": self._sr,
            "n_fft": self.n_fft,
            "hop_length": self._hop,
            "n_mels": self.n_mels,
            "fmin": self.fmin,
            "fmax": self.fmax,
            "log_floor": self.log_floor,
            "shift": self.shift,
            "scale": self.scale,
            "griffin_lim_iters": self.griffin_lim_iters,
            "inverse": self.inverse,
            "inverse_iters": self.inverse_iters,
            "gl_momentum": self.gl_momentum,
            "init_phase": self.init_phase,
        }

    @property
    def id(self) -> str:
        c = self.config()
        del c["type"]
        # repr() of a float round-trips exactly, so the id pins shift/scale bit for bit
        return "logmel-v1(" + ",".join(f"{k}={c[k]!r}" for k in sorted(c)) + ")"

    def replace(self, **changes: Any) -> "LogMelCodec":
        """A copy with some parameters changed."""
        c = self.config()
        del c["type"]
        c.update(changes)
        return LogMelCodec(**c)

    # -- cached constants -----------------------------------------------------------------------------------
    _PHASE_FRAMES = 1024  # fixed initial phase table (16 s at hop 256); longer latents tile it

    def _get(self, device: torch.device) -> _Consts:
        key = str(device)
        c = self._consts.get(key)
        if c is None:
            fb64 = torch.from_numpy(self._fb64)
            pinv = torch.linalg.pinv(fb64)
            window = torch.hann_window(self.n_fft, periodic=True, dtype=torch.float64)
            phase = None
            if self.init_phase == "random":
                g = torch.Generator().manual_seed(0)
                ang = torch.rand(self.n_freq, self._PHASE_FRAMES, generator=g, dtype=torch.float64) * (2 * math.pi)
                phase = torch.polar(torch.ones_like(ang), ang).to(torch.complex64).to(device)
            c = _Consts(
                window=window.to(torch.float32).to(device),
                fb=fb64.to(torch.float32).to(device),
                fb_pinv=pinv.to(torch.float32).to(device),
                fb_t=fb64.T.contiguous().to(torch.float32).to(device),
                init_phase=phase,
                max_log_mel=math.log(float(window.sum()) * float(fb64.sum(dim=1).max()) + self.log_floor),
            )
            self._consts[key] = c
        return c

    # -- encode ---------------------------------------------------------------------------------------------
    def _check_audio(self, audio: torch.Tensor) -> None:
        if not isinstance(audio, torch.Tensor) or audio.dim() != 3 or audio.shape[1] != 1:
            shape = tuple(audio.shape) if isinstance(audio, torch.Tensor) else type(audio).__name__
            raise AudioError(f"LogMelCodec.encode expects mono audio [B, 1, T], got {shape}; down-mix first")
        if audio.shape[-1] < self.min_samples:
            raise AudioError(
                f"LogMelCodec.encode: clip of {audio.shape[-1]} samples is shorter than the minimum of "
                f"{self.min_samples} samples ({self.min_samples / self._sr:.4f} s at {self._sr} Hz); pad it"
            )

    def _stft(self, x: torch.Tensor, c: _Consts) -> torch.Tensor:
        # reflect padding as in encode; clips too short to reflect (only tiny decoded latents) pad with zeros
        pad_mode = "reflect" if x.shape[-1] > self.n_fft // 2 else "constant"
        return torch.stft(
            x, self.n_fft, self._hop, self.n_fft, c.window, center=True, pad_mode=pad_mode, return_complex=True
        )

    def _istft(self, spec: torch.Tensor, c: _Consts, length: int) -> torch.Tensor:
        return torch.istft(spec, self.n_fft, self._hop, self.n_fft, c.window, center=True, length=length)

    def log_mel(self, audio: torch.Tensor) -> torch.Tensor:
        """Unnormalised ``log(mel + log_floor)`` ``[B, n_mels, T // hop]`` (float32)."""
        self._check_audio(audio)
        x = audio[:, 0].to(torch.float32)
        c = self._get(x.device)
        with torch.no_grad():
            n = x.shape[-1] // self._hop
            mag = self._stft(x, c)[..., :n].abs()
            mel = torch.matmul(c.fb, mag)
            return torch.log(mel + self.log_floor)

    def encode(self, audio: torch.Tensor) -> torch.Tensor:
        lm = self.log_mel(audio)
        if self.shift == 0.0 and self.scale == 1.0:
            return lm
        return (lm - self.shift) * self.scale

    # -- decode ---------------------------------------------------------------------------------------------
    def mel_to_linear(self, mel: torch.Tensor) -> torch.Tensor:
        """Non-negative linear magnitude ``[B, n_freq, F]`` whose mel projection approximates ``mel``."""
        c = self._get(mel.device)
        s = torch.matmul(c.fb_pinv, mel).clamp_(min=0.0)
        if self.inverse == "nnls" and self.inverse_iters:
            # Lee-Seung multiplicative updates for min ||fb s - mel||^2, s >= 0; a zero entry stays zero,
            # so start from a strictly positive point.
            s.add_(1e-6 * mel.mean(dim=(1, 2), keepdim=True) + 1e-12)
            num = torch.matmul(c.fb_t, mel)
            for _ in range(self.inverse_iters):
                den = torch.matmul(c.fb_t, torch.matmul(c.fb, s)).add_(1e-12)
                s.mul_(num).div_(den)
        return s

    def griffin_lim(self, mag: torch.Tensor, length: int) -> torch.Tensor:
        """Fast Griffin-Lim: ``mag[B, n_freq, frames]`` -> ``audio[B, length]`` from the fixed initial phase."""
        c = self._get(mag.device)
        B, nf, n = mag.shape
        if c.init_phase is None:
            angles = torch.ones(B, nf, n, dtype=torch.complex64, device=mag.device)
        else:
            reps = -(-n // self._PHASE_FRAMES)
            table = c.init_phase if reps == 1 else c.init_phase.repeat(1, reps)
            angles = table[:, :n].unsqueeze(0).expand(B, nf, n).clone()
        alpha = self.gl_momentum / (1.0 + self.gl_momentum)
        prev = None
        for _ in range(self.griffin_lim_iters):
            rebuilt = self._stft(self._istft(mag * angles, c, length), c)
            if prev is None or alpha == 0.0:
                angles = rebuilt.clone()
            else:
                angles = rebuilt - alpha * prev
            angles.mul_(angles.abs().add_(1e-16).reciprocal_())
            prev = rebuilt
        return self._istft(mag * angles, c, length)

    def decode(self, latent: torch.Tensor) -> torch.Tensor:
        if not isinstance(latent, torch.Tensor) or latent.dim() != 3 or latent.shape[1] != self.n_mels:
            shape = tuple(latent.shape) if isinstance(latent, torch.Tensor) else type(latent).__name__
            raise AudioError(f"LogMelCodec.decode expects latents [B, {self.n_mels}, F], got {shape}")
        B, _, F = latent.shape
        if F < 1:
            raise AudioError("LogMelCodec.decode: latent has 0 frames; need at least 1")
        with torch.no_grad():
            z = latent.to(torch.float32)
            logmel = z / self.scale + self.shift if (self.shift != 0.0 or self.scale != 1.0) else z
            # No audio in [-1, 1] has a mel energy above max_log_mel: cap there, so that a latent far outside the
            # data range (e.g. from a high guidance scale) decodes to loud audio, not Inf.
            top = self._get(z.device).max_log_mel
            mel = (torch.exp(logmel.clamp(max=top)) - self.log_floor).clamp_(min=0.0)
            mag = self.mel_to_linear(mel)
            # The STFT of F*hop samples with center=True has F+1 frames; repeat the last magnitude frame.
            mag = torch.cat([mag, mag[..., -1:]], dim=-1)
            audio = self.griffin_lim(mag, F * self._hop)
        return audio.unsqueeze(1)


# ----------------------------------------------------------------------------------------------------------

_CODEC_TYPES: dict[str, type] = {"logmel": LogMelCodec}


def codec_from_config(d: Mapping[str, Any]) -> Codec:
    """Rebuild a codec from :meth:`Codec.config` output. Raises :class:`ConfigError` on unknown types/keys."""
    if not isinstance(d, Mapping) or "type" not in d:
        raise ConfigError(f"codec config must be a mapping with a 'type' key (one of {sorted(_CODEC_TYPES)}), got {d!r}")
    kind = d["type"]
    cls = _CODEC_TYPES.get(kind)
    if cls is None:
        raise ConfigError(f"unknown codec type {kind!r}; known: {sorted(_CODEC_TYPES)}")
    kwargs = {k: v for k, v in d.items() if k != "type"}
    import inspect

    params = set(inspect.signature(cls.__init__).parameters) - {"self"}
    unknown = sorted(set(kwargs) - params)
    if unknown:
        raise ConfigError(f"codec config for {kind!r} has unknown keys {unknown}; allowed: {sorted(params)}")
    return cls(**kwargs)


def fit_scale(codec: LogMelCodec, audio_batches: Iterable[torch.Tensor]) -> LogMelCodec:
    """Copy of ``codec`` whose shift/scale make latents over the corpus mean 0, std ``SIGMA_DATA``.

    ``audio_batches`` yields ``[B, 1, T]`` tensors. Moments accumulate in float64 over every latent element;
    std is the population standard deviation.
    """
    if not isinstance(codec, LogMelCodec):
        raise ConfigError(f"fit_scale supports LogMelCodec, got {type(codec).__name__}")
    raw = codec.replace(shift=0.0, scale=1.0)
    # per-batch mean-centred moments merged in float64 (Chan et al.'s parallel update)
    n = 0
    mean = 0.0
    m2 = 0.0
    for batch in audio_batches:
        x = raw.log_mel(batch).to(torch.float64)
        k = x.numel()
        if k == 0:
            continue
        bm = x.mean().item()
        bm2 = ((x - bm) ** 2).sum().item()
        tot = n + k
        delta = bm - mean
        mean += delta * k / tot
        m2 += bm2 + delta * delta * n * k / tot
        n = tot
    if n == 0:
        raise AudioError("fit_scale: the corpus yielded no audio; pass at least one non-empty [B, 1, T] batch")
    std = math.sqrt(m2 / n)
    if not std > 0:
        raise AudioError("fit_scale: the corpus log-mel has zero variance (silent or constant audio); use real clips")
    return codec.replace(shift=float(mean), scale=float(SIGMA_DATA / std))


# ----------------------------------------------------------------------------------------------------------
# round-trip quality measures (used by tests and benchmarks/codec_roundtrip.py)


def _match(ref: torch.Tensor, est: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    ref = ref.reshape(-1, ref.shape[-1]).to(torch.float64)
    est = est.reshape(-1, est.shape[-1]).to(torch.float64)
    if ref.shape[0] != est.shape[0]:
        raise AudioError(f"reference has {ref.shape[0]} clips but estimate has {est.shape[0]}")
    n = min(ref.shape[-1], est.shape[-1])
    return ref[:, :n], est[:, :n]


def log_spectral_distance(
    ref: torch.Tensor, est: torch.Tensor, n_fft: int = 1024, hop_length: int = 256, dynamic_range_db: float = 80.0
) -> torch.Tensor:
    """Per-clip log-spectral distance in dB on a linear-frequency Hann STFT power spectrum.

    ``sqrt(mean_f (10 log10 (P_ref + e) / (P_est + e))^2)`` averaged over frames, with the floor ``e`` set
    ``dynamic_range_db`` below the clip's reference peak power. Clips ``[..., T]`` are cropped to the
    shorter length. Returns ``[B]`` float64.
    """
    r, e = _match(ref, est)
    w = torch.hann_window(n_fft, periodic=True, dtype=torch.float64, device=r.device)
    pr = torch.stft(r, n_fft, hop_length, n_fft, w, center=True, return_complex=True).abs().square()
    pe = torch.stft(e, n_fft, hop_length, n_fft, w, center=True, return_complex=True).abs().square()
    floor = pr.amax(dim=(1, 2), keepdim=True).clamp(min=1e-30) * 10 ** (-dynamic_range_db / 10)
    d = 10 * torch.log10((pr + floor) / (pe + floor))
    return d.square().mean(dim=1).sqrt().mean(dim=1)


def mel_distance(codec: LogMelCodec, ref: torch.Tensor, est: torch.Tensor) -> torch.Tensor:
    """Per-clip mean absolute difference of the codec's (unnormalised) log-mel magnitudes, in dB. ``[B]``."""
    r, e = _match(ref, est)
    lr = codec.log_mel(r.to(torch.float32)[:, None]).to(torch.float64)
    le = codec.log_mel(e.to(torch.float32)[:, None]).to(torch.float64)
    return (lr - le).abs().mean(dim=(1, 2)) * (20 / math.log(10))


def snr_db(ref: torch.Tensor, est: torch.Tensor) -> torch.Tensor:
    """Per-clip waveform signal-to-noise ratio in dB (phase-sensitive, so low for Griffin-Lim). ``[B]``."""
    r, e = _match(ref, est)
    return 10 * torch.log10(r.square().sum(-1).clamp(min=1e-30) / (r - e).square().sum(-1).clamp(min=1e-30))
