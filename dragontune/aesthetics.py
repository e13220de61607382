"""Aesthetics predictor: an encoder's clip embedding -> a 1-5 quality rating (the paper's aesthetics reward).

A predictor = (encoder spec, feature standardisation, regression head). Heads:

- ``nadaraya_watson``: kernel-weighted mean of the training ratings, RBF kernel on standardised,
  L2-normalised clip embeddings, bandwidth chosen on an inner validation split;
- ``kernel_ridge``: kernel ridge regression with the same kernel (bandwidth and ridge chosen likewise);
- ``mlp``: two hidden layers of 64 (GELU), MSE, Adam, epochs chosen on the inner validation split.

This module is what runs at scoring time (the predictor, its heads' prediction, loading and saving); the ratings,
metrics and head fitting are in :mod:`dragontune.training.aesthetics`. Predictions are not clipped to [1, 5] (a
reward keeps its ranking below 1 and above 5).
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from dragontune.errors import AudioError, CheckpointError, ConfigError, EncoderError
from dragontune.metrics import rbf_kernel, squared_distances
from dragontune.utils import dumps_strict, load_safetensors, log, save_safetensors_atomic

__all__ = ["AestheticsPredictor", "EncoderSpec", "MLPHead", "nadaraya_watson_predict", "load_aesthetics", "default_aesthetics_path", "HEADS",
           "TRAIN_COMMAND"]

HEADS = ("nadaraya_watson", "kernel_ridge", "mlp")
TRAIN_COMMAND = "dragontune train-aesthetics --corpus data/corpus --out dragontune/assets/aesthetics.safetensors"
_FORMAT = "dragontune-aesthetics-v1"


def default_aesthetics_path() -> Path:
    """``dragontune/assets/aesthetics.safetensors`` inside the installed package."""
    return Path(__file__).resolve().parent / "assets" / "aesthetics.safetensors"


# ----------------------------------------------------------------------------------------------------------
# heads


def nadaraya_watson_predict(zq: torch.Tensor, z: torch.Tensor, y: torch.Tensor, bandwidth: float) -> torch.Tensor:
    """The ``nadaraya_watson`` head: RBF-weighted mean of the training ratings ``y`` at the queries ``zq``."""
    d2 = squared_distances(zq, z)
    w = torch.softmax(-d2 / (2 * bandwidth**2), dim=1)  # stable normalised RBF weights
    return w @ y


class MLPHead(nn.Module):
    """The ``mlp`` head: two hidden layers (GELU) -> one rating."""

    def __init__(self, dim: int, hidden: int = 64):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, hidden), nn.GELU(), nn.Linear(hidden, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).squeeze(-1)


# ----------------------------------------------------------------------------------------------------------
# predictor


@dataclasses.dataclass
class EncoderSpec:
    """The encoder a predictor was trained on: registry name, options, and the codec config for ``codec``."""

    name: str
    options: dict
    codec: dict | None = None  # codec config for the "codec" encoder

    def build(self) -> Any:
        from dragontune.encoders.registry import get_encoder

        from dragontune.rewards.registry import RewardContext

        ctx = RewardContext(device="cpu")
        if self.name == "codec":
            from dragontune.codecs import LogMelCodec, codec_from_config

            codec = codec_from_config(self.codec) if self.codec else LogMelCodec()
            self.codec = codec.config()
            ctx = RewardContext(codec=codec, device="cpu")
        return get_encoder(self.name, ctx, **self.options)


class AestheticsPredictor:
    """Clip embedding -> rating. Build with :func:`dragontune.training.aesthetics.train_aesthetics` or
    :func:`load_aesthetics`."""

    def __init__(self, encoder_spec: EncoderSpec, head: str, feat_mean: torch.Tensor, feat_std: torch.Tensor,
                 params: dict[str, torch.Tensor], hyper: dict, encoder_id: str | None = None, meta: dict | None = None):
        if head not in HEADS:
            raise ConfigError(f"unknown aesthetics head {head!r}; choose one of {list(HEADS)}")
        self.encoder_spec = encoder_spec
        self.head = head
        self.feat_mean = feat_mean.to(torch.float64)
        self.feat_std = feat_std.to(torch.float64)
        self.params = params
        self.hyper = dict(hyper)
        self.encoder_id = encoder_id
        self.meta = dict(meta or {})
        self._encoder: Any = None
        self._mlp: MLPHead | None = None

    # -- features ----------------------------------------------------------------------------------------
    @property
    def encoder(self) -> Any:
        if self._encoder is None:
            enc = self.encoder_spec.build()
            if self.encoder_id is not None and enc.id != self.encoder_id:
                raise CheckpointError(
                    f"aesthetics predictor was trained on encoder {self.encoder_id!r} but {enc.id!r} is installed; "
                    f"retrain it with `{TRAIN_COMMAND}`"
                )
            self._encoder = enc
        return self._encoder

    def standardise(self, emb: torch.Tensor) -> torch.Tensor:
        """Clip embeddings ``[N, d]`` -> standardised, L2-normalised features (float64)."""
        z = (emb.to(torch.float64) - self.feat_mean) / self.feat_std
        return z / z.norm(dim=1, keepdim=True).clamp(min=1e-12)

    # -- prediction --------------------------------------------------------------------------------------
    def predict_embeddings(self, emb: torch.Tensor) -> torch.Tensor:
        """Clip embeddings ``[N, d]`` (this predictor's encoder) -> ratings ``[N]`` float64."""
        if emb.dim() != 2 or emb.shape[1] != self.feat_mean.shape[0]:
            raise ConfigError(
                f"aesthetics head expects clip embeddings [N, {self.feat_mean.shape[0]}], got {tuple(emb.shape)}"
            )
        z = self.standardise(emb)
        with torch.no_grad():
            if self.head == "nadaraya_watson":
                zt, yt = self.params["train_z"].to(torch.float64), self.params["train_y"].to(torch.float64)
                return nadaraya_watson_predict(z, zt, yt, self.hyper["bandwidth"])
            if self.head == "kernel_ridge":
                k = rbf_kernel(z, self.params["train_z"].to(torch.float64), self.hyper["bandwidth"])
                return k @ self.params["alpha"].to(torch.float64) + self.hyper["y_mean"]
            if self._mlp is None:
                m = MLPHead(z.shape[1], int(self.hyper.get("hidden", 64)))
                m.load_state_dict({k[4:]: v for k, v in self.params.items() if k.startswith("mlp.")}, strict=True)
                m.eval()
                self._mlp = m
            return self._mlp(z.float()).to(torch.float64)

    def predict(self, audio: torch.Tensor, sample_rate: int) -> torch.Tensor:
        """``audio[N, C, T]`` -> ratings ``[N]`` float64; NaN (with a warning) for a clip that cannot be embedded."""
        if not isinstance(audio, torch.Tensor) or audio.dim() != 3:
            shape = tuple(audio.shape) if isinstance(audio, torch.Tensor) else type(audio).__name__
            raise AudioError(f"aesthetics predictor expects audio [N, C, T], got {shape}")
        enc = self.encoder
        out = torch.full((audio.shape[0],), float("nan"), dtype=torch.float64)
        for i in range(audio.shape[0]):
            try:
                frames = enc.embed_audio(audio[i : i + 1], sample_rate)[0]
            except (EncoderError, AudioError) as e:
                log.warning("aesthetics: clip %d cannot be scored (%s); its score is NaN", i, e)
                continue
            if not torch.isfinite(frames).all():
                log.warning("aesthetics: clip %d gave non-finite embeddings; its score is NaN", i)
                continue
            out[i] = self.predict_embeddings(frames.mean(dim=0, keepdim=True))[0]
        return out

    # -- persistence -------------------------------------------------------------------------------------
    def save(self, path: str | os.PathLike) -> None:
        meta = {
            "format": _FORMAT,
            "encoder": json.dumps(dataclasses.asdict(self.encoder_spec), sort_keys=True),
            "encoder_id": self.encoder_id or "",
            "head": self.head,
            "hyper": json.dumps(self.hyper, sort_keys=True),
        }
        meta.update({k: v if isinstance(v, str) else dumps_strict(v, sort_keys=True) for k, v in self.meta.items()})
        tensors = {"feat_mean": self.feat_mean, "feat_std": self.feat_std}
        # training embeddings are stored in float32 (kernels are evaluated in float64 after loading)
        tensors.update({f"head.{k}": v.to(torch.float32) if k == "train_z" else v for k, v in self.params.items()})
        save_safetensors_atomic({k: v.detach().contiguous() for k, v in tensors.items()}, path, meta)


def load_aesthetics(path: str | os.PathLike | None = None) -> AestheticsPredictor:
    """Load a predictor (default: the packaged ``dragontune/assets/aesthetics.safetensors``)."""
    p = Path(path) if path is not None else default_aesthetics_path()
    if not p.is_file():
        raise CheckpointError(f"aesthetics predictor {str(p)!r} not found; train one with `{TRAIN_COMMAND}`")
    tensors, meta = load_safetensors(p)
    if meta.get("format") != _FORMAT:
        raise CheckpointError(f"{str(p)!r} is not an aesthetics predictor (format {meta.get('format')!r})")
    from dragontune.rundir import check_finite

    check_finite(tensors, str(p))  # a diverged training: refuse here, not as NaN scores later
    try:
        spec = EncoderSpec(**json.loads(meta["encoder"]))
        hyper = json.loads(meta["hyper"])
        head = meta["head"]
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"{str(p)!r}: malformed metadata ({e}); retrain with `{TRAIN_COMMAND}`") from None
    need = {"nadaraya_watson": {"train_z", "train_y"}, "kernel_ridge": {"train_z", "alpha"}}.get(head, set())
    params = {k[5:]: v for k, v in tensors.items() if k.startswith("head.")}
    if not {"feat_mean", "feat_std"} <= set(tensors) or not need <= set(params):
        raise CheckpointError(f"{str(p)!r} lacks tensors for head {head!r}; retrain with `{TRAIN_COMMAND}`")
    extra = {k: meta[k] for k in meta if k not in ("format", "encoder", "encoder_id", "head", "hyper")}
    return AestheticsPredictor(spec, head, tensors["feat_mean"], tensors["feat_std"], params, hyper,
                               encoder_id=meta.get("encoder_id") or None, meta=extra)


