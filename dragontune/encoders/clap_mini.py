"""``clap-mini``: a small contrastive text-audio model (CLAP-style) trained on the embedded corpus.

Audio tower: mono 16 kHz -> log-mel (64 Slaney bands, n_fft 1024, hop 256; :class:`LogMelCodec`'s
``log_mel`` of the whole clip) -> per-band standardisation (train-set statistics stored with the weights) -> four 1-D
convolutions over time (mel bands as channels, stride 2 each) -> one transformer layer over the
16 remaining steps -> mean and max over time -> linear -> 256-d, L2-normalised.
Text tower: frozen all-MiniLM-L6-v2 (:func:`dragontune.text.build_text_encoder`), mean of the token
states, L2-normalised -> trainable 2-layer projection -> 256-d, L2-normalised.
Training: symmetric InfoNCE with a learnable temperature (:func:`dragontune.training.clap_mini.train_clap`).

Windowing (:class:`ClapMiniEncoder`): the clip's log-mel is cut into windows of the training crop
length (125 frames = 2.0 s) with a hop of 31 frames (0.496 s), starting at frame 0; a trailing partial
window is dropped; one 256-d frame per window (a 4 s clip gives 5). Clips shorter than one window
(32000 samples at 16 kHz) raise :class:`EncoderError`.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from pathlib import Path
from typing import Any, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from dragontune.audio import resample, validate_audio
from dragontune.codecs import LogMelCodec
from dragontune.encoders.base import Encoder
from dragontune.errors import CheckpointError, DataError, EncoderError
from dragontune.utils import load_safetensors, sha256_file

__all__ = [
    "ClapMiniConfig",
    "ClapMiniModel",
    "ClapMiniEncoder",
    "default_clap_mini_path",
    "load_clap_mini",
    "TRAIN_COMMAND",
]

#: how the committed checkpoint is (re)built
TRAIN_COMMAND = "dragontune train-clap --corpus data/corpus --out dragontune/assets/clap_mini.safetensors"


def default_clap_mini_path() -> Path:
    """``dragontune/assets/clap_mini.safetensors`` inside the installed package."""
    return Path(__file__).resolve().parent.parent / "assets" / "clap_mini.safetensors"


@dataclasses.dataclass
class ClapMiniConfig:
    """Architecture and front-end of clap-mini (stored in the checkpoint metadata)."""

    sample_rate: int = 16000
    n_fft: int = 1024
    hop_length: int = 256
    n_mels: int = 64
    #: window length in log-mel frames (125 x 256 samples = 2.0 s at 16 kHz); training crops this length
    window_frames: int = 125
    #: encoder window hop in frames (31 x 256 samples = 0.496 s): a 4 s clip gives 5 windows
    hop_frames: int = 31
    channels: int = 96
    embed_dim: int = 256
    text_dim: int = 384
    text_hidden: int = 512
    heads: int = 4
    dropout: float = 0.1

    @property
    def window_samples(self) -> int:
        return self.window_frames * self.hop_length

    @property
    def hop_samples(self) -> int:
        return self.hop_frames * self.hop_length

    def codec(self) -> LogMelCodec:
        return LogMelCodec(sample_rate=self.sample_rate, n_fft=self.n_fft, hop_length=self.hop_length, n_mels=self.n_mels)


def _conv_out(n: int) -> int:
    """Length after a stride-2, kernel-5, padding-2 convolution."""
    return (n + 4 - 5) // 2 + 1


class AudioTower(nn.Module):
    """Standardised log-mel ``[B, n_mels, frames]`` -> ``[B, embed_dim]`` (not normalised)."""

    def __init__(self, cfg: ClapMiniConfig):
        super().__init__()
        c = cfg.channels
        self.convs = nn.ModuleList(
            [
                nn.Conv1d(cfg.n_mels, c, 5, stride=2, padding=2),
                nn.Conv1d(c, c, 5, stride=2, padding=2),
                nn.Conv1d(c, 2 * c, 5, stride=2, padding=2),
                nn.Conv1d(2 * c, 2 * c, 5, stride=2, padding=2),
            ]
        )
        self.norms = nn.ModuleList([nn.BatchNorm1d(c), nn.BatchNorm1d(c), nn.BatchNorm1d(2 * c), nn.BatchNorm1d(2 * c)])
        steps = _conv_out(_conv_out(_conv_out(_conv_out(cfg.window_frames))))
        self.pos = nn.Parameter(torch.zeros(1, steps, 2 * c))
        self.attn = nn.TransformerEncoderLayer(
            d_model=2 * c, nhead=cfg.heads, dim_feedforward=4 * c, dropout=cfg.dropout, batch_first=True, norm_first=True
        )
        self.out = nn.Linear(4 * c, cfg.embed_dim)

    def forward(self, mel: torch.Tensor) -> torch.Tensor:
        x = mel
        for conv, bn in zip(self.convs, self.norms):
            x = F.gelu(bn(conv(x)))
        x = x.transpose(1, 2) + self.pos  # [B, steps, 2c]
        x = self.attn(x)
        return self.out(torch.cat([x.mean(dim=1), x.amax(dim=1)], dim=1))


class TextProjection(nn.Module):
    """Normalised mean-pooled MiniLM states ``[B, text_dim]`` -> ``[B, embed_dim]`` (not normalised)."""

    def __init__(self, cfg: ClapMiniConfig):
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(cfg.text_dim, cfg.text_hidden), nn.GELU(), nn.Dropout(cfg.dropout), nn.Linear(cfg.text_hidden, cfg.embed_dim)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class ClapMiniModel(nn.Module):
    """Both towers, the mel standardisation buffers and the learnable log inverse temperature."""

    def __init__(self, cfg: ClapMiniConfig):
        super().__init__()
        self.cfg = cfg
        self.audio = AudioTower(cfg)
        self.text = TextProjection(cfg)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))
        self.register_buffer("mel_mean", torch.zeros(cfg.n_mels))
        self.register_buffer("mel_std", torch.ones(cfg.n_mels))

    def audio_embed(self, log_mel: torch.Tensor) -> torch.Tensor:
        """Unnormalised log-mel windows ``[B, n_mels, window_frames]`` -> unit vectors ``[B, embed_dim]``."""
        x = (log_mel - self.mel_mean[:, None]) / self.mel_std[:, None]
        return F.normalize(self.audio(x), dim=-1)

    def text_embed(self, pooled: torch.Tensor) -> torch.Tensor:
        """Mean-pooled MiniLM states ``[B, text_dim]`` -> unit vectors ``[B, embed_dim]``."""
        return F.normalize(self.text(F.normalize(pooled, dim=-1)), dim=-1)


def clip_windows(mel: torch.Tensor, cfg: ClapMiniConfig) -> torch.Tensor:
    """One clip's log-mel ``[n_mels, frames]`` -> windows ``[n, n_mels, window_frames]`` starting at
    ``0, hop_frames, 2 hop_frames, ...`` (a trailing partial window is dropped)."""
    n = (mel.shape[-1] - cfg.window_frames) // cfg.hop_frames + 1
    if n < 1:
        raise EncoderError(f"log-mel of {mel.shape[-1]} frames is shorter than clap-mini's window of {cfg.window_frames} frames")
    return torch.stack([mel[:, i * cfg.hop_frames : i * cfg.hop_frames + cfg.window_frames] for i in range(n)])


def mean_pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Masked mean of token states: ``[B, L, D]``, ``[B, L]`` -> ``[B, D]``."""
    m = mask.to(hidden.dtype)[..., None]
    return (hidden * m).sum(dim=1) / m.sum(dim=1).clamp(min=1.0)


# ----------------------------------------------------------------------------------------------------------
# checkpoint


def _config_from_meta(meta: dict, path: Path) -> ClapMiniConfig:
    raw = meta.get("config")
    if raw is None:
        raise CheckpointError(f"{str(path)!r} has no 'config' in its metadata; it is not a clap-mini checkpoint")
    try:
        cfg_dict = json.loads(raw) if isinstance(raw, str) else dict(raw)
        return ClapMiniConfig(**cfg_dict)
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{str(path)!r}: clap-mini config in metadata is invalid ({e}); retrain with `{TRAIN_COMMAND}`") from None


def load_clap_mini(path: str | os.PathLike | None = None) -> tuple[ClapMiniModel, dict]:
    """Load a clap-mini checkpoint (default: the packaged one) -> (model in eval mode, metadata dict)."""
    p = Path(path) if path is not None else default_clap_mini_path()
    if not p.is_file():
        raise EncoderError(
            f"clap-mini weights {str(p)!r} not found; train them with `{TRAIN_COMMAND}` "
            "(or dragontune.training.clap_mini.train_clap) or pass weights=<path to a clap-mini .safetensors>"
        )
    tensors, meta = load_safetensors(p)
    meta = dict(meta or {})
    if meta.get("format") != "dragontune-clap-mini-v1":
        raise CheckpointError(f"{str(p)!r} is not a clap-mini checkpoint (format {meta.get('format')!r})")
    from dragontune.rundir import check_finite

    check_finite(tensors, str(p))
    cfg = _config_from_meta(meta, p)
    model = ClapMiniModel(cfg)
    own = model.state_dict()
    missing = sorted(set(own) - set(tensors))
    unexpected = sorted(set(tensors) - set(own))
    if missing or unexpected:
        raise CheckpointError(
            f"{str(p)!r} does not match the clap-mini architecture in its config: missing {missing[:5]}, "
            f"unexpected {unexpected[:5]}; retrain with `{TRAIN_COMMAND}`"
        )
    for k, v in tensors.items():
        if tuple(v.shape) != tuple(own[k].shape):
            raise CheckpointError(f"{str(p)!r}: tensor {k!r} has shape {tuple(v.shape)}, expected {tuple(own[k].shape)}")
    model.load_state_dict(tensors, strict=True)
    model.eval()
    for prm in model.parameters():
        prm.requires_grad_(False)
    return model, meta


# ----------------------------------------------------------------------------------------------------------
# encoder


class ClapMiniEncoder(Encoder):
    """clap-mini as a cross-modal :class:`Encoder`: one 256-d frame per 4 s window (hop 2 s); text too.

    ``weights``: a clap-mini ``.safetensors`` (default: ``dragontune/assets/clap_mini.safetensors``).
    ``text_encoder``: the frozen text encoder spec the checkpoint was trained with (default ``"minilm"``).
    Weights and the text encoder load on first use.
    """

    name = "clap-mini"
    cross_modal = True

    def __init__(self, weights: str | os.PathLike | None = None, text_encoder: str = "minilm", device: str | torch.device = "cpu"):
        self.weights = Path(weights) if weights is not None else default_clap_mini_path()
        self.text_spec = str(text_encoder)
        self.device = torch.device(device)
        cfg = ClapMiniConfig()
        self.sample_rate = cfg.sample_rate
        self.dim = cfg.embed_dim
        self.min_samples = cfg.window_samples
        self._model: ClapMiniModel | None = None
        self._meta: dict | None = None
        self._codec: LogMelCodec | None = None
        self._text: Any = None
        self._id: str | None = None

    def _load(self) -> ClapMiniModel:
        if self._model is None:
            model, meta = load_clap_mini(self.weights)
            cfg = model.cfg
            self.sample_rate, self.dim, self.min_samples = cfg.sample_rate, cfg.embed_dim, cfg.window_samples
            self._codec = cfg.codec()
            self._meta = meta
            self._model = model.to(self.device)
        return self._model

    @property
    def config(self) -> ClapMiniConfig:
        return self._load().cfg

    @property
    def metadata(self) -> dict:
        self._load()
        assert self._meta is not None
        return self._meta

    @property
    def id(self) -> str:
        if self._id is None:
            if not self.weights.is_file():
                self._load()  # raises the EncoderError naming the path and the training command
            cfg = self.config
            self._id = (
                f"clap-mini:sr{cfg.sample_rate}:win{cfg.window_samples}:hop{cfg.hop_samples}:text-{self.text_spec}:"
                f"weights-sha256-{sha256_file(self.weights)[:16]}"
            )
        return self._id

    def log_mel_windows(self, audio: torch.Tensor, sample_rate: int) -> list[torch.Tensor]:
        """``audio[B, C, T]`` -> B stacks of log-mel windows ``[windows, n_mels, window_frames]``."""
        self.check_input(audio, sample_rate)
        model = self._load()
        cfg = model.cfg
        if audio.shape[0] == 0:
            return []
        self.check_length(audio, sample_rate)
        validate_audio(audio, f"audio given to the {self.name} encoder")
        x = audio.detach().to("cpu", torch.float32).mean(dim=1, keepdim=True)
        x = resample(x, int(sample_rate), cfg.sample_rate)
        if x.shape[-1] < cfg.window_samples:  # resampling rounded a borderline clip below one window
            self.check_length(x, cfg.sample_rate)
        assert self._codec is not None
        return [clip_windows(self._codec.log_mel(x[b : b + 1])[0], cfg) for b in range(x.shape[0])]

    def embed_audio(self, audio: torch.Tensor, sample_rate: int) -> list[torch.Tensor]:
        """``audio[B, C, T]`` -> B tensors ``[windows, 256]`` (unit norm, float32, CPU); clips run one by one."""
        wins = self.log_mel_windows(audio, sample_rate)
        model = self._load()
        with torch.no_grad():
            return [model.audio_embed(w.to(self.device)).cpu().contiguous() for w in wins]

    def pooled_text(self, texts: Sequence[str]) -> torch.Tensor:
        """Mean-pooled frozen text-encoder states ``[B, text_dim]`` (cached per prompt by the text encoder)."""
        if self._text is None:
            from dragontune.text import build_text_encoder

            self._text = build_text_encoder(self.text_spec)
        hidden, mask = self._text.encode(list(texts))
        return mean_pool(hidden, mask)

    def embed_text(self, texts: Sequence[str]) -> torch.Tensor:
        """Prompts -> ``[B, 256]`` unit vectors (float32, CPU); each prompt projected on its own."""
        model = self._load()
        if isinstance(texts, str):
            raise EncoderError("embed_text expects a sequence of prompts, got a single string; wrap it in a list")
        try:
            pooled = self.pooled_text(texts)
        except DataError as e:
            raise EncoderError(f"clap-mini cannot embed these texts: {e}") from None
        with torch.no_grad():
            rows = [model.text_embed(pooled[i : i + 1].to(self.device)) for i in range(pooled.shape[0])]
        return torch.cat(rows).cpu()


def make_encoder(context: Any, **kwargs: Any) -> Encoder:
    """The registry's factory (entry ``clap_mini:make_encoder``): the context's device unless one is given."""
    if "device" not in kwargs and getattr(context, "device", None) is not None:
        kwargs["device"] = context.device
    return ClapMiniEncoder(**kwargs)
