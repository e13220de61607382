"""Encoders by name: ``get_encoder(name, context, **kwargs)``.

Built in: ``codec`` (the generator's own codec latents, needs ``context.codec``), ``vae`` (a Stable Audio
model's Oobleck VAE encoder: the model's codec, or ``pipeline: FOLDER``) and ``musicnn``. The encoders with
heavier modules are explicit entries of ``_LAZY`` (``"module:factory"``): the module is imported on first use
and its factory taken from it; importing a module registers nothing. Plugins add theirs with
:func:`register_encoder`.
"""

from __future__ import annotations

import importlib
from typing import Any, Callable

from dragontune.encoders.base import Encoder
from dragontune.errors import EncoderError

#: factory(context, **kwargs) -> Encoder ; context is any object with optional attributes codec, device
EncoderFactory = Callable[..., Encoder]

_ENCODERS: dict[str, EncoderFactory] = {}
#: name -> "module:factory" of the encoders whose module is imported on first use
_LAZY: dict[str, str] = {
    "aisfx": "dragontune.encoders.aisfx:make_encoder",
    "clap-mini": "dragontune.encoders.clap_mini:make_encoder",
    "clap-hf": "dragontune.encoders.clap_hf:make_encoder",
}


def load_entry(entry: str) -> Callable[..., Any]:
    """The object named by ``"module:attribute"`` (``ImportError`` when the module or the attribute is missing)."""
    module, _, attr = entry.partition(":")
    obj = getattr(importlib.import_module(module), attr or "make", None)
    if obj is None:
        raise ImportError(f"{module} has no {attr or 'make'!r}")
    return obj


def register_encoder(name: str, factory: EncoderFactory, *, overwrite: bool = False) -> None:
    """Register ``factory(context, **kwargs) -> Encoder`` under ``name``."""
    if name in _ENCODERS and not overwrite:
        raise EncoderError(f"encoder {name!r} is already registered")
    _ENCODERS[name] = factory


def known_encoders() -> list[str]:
    return sorted(set(_ENCODERS) | set(_LAZY))


def get_encoder(name: str, context: Any = None, **kwargs: Any) -> Encoder:
    """Build the encoder registered as ``name`` with ``kwargs`` (its constructor options)."""
    if name not in _ENCODERS and name in _LAZY:
        try:
            _ENCODERS[name] = load_entry(_LAZY[name])
        except ImportError as e:
            raise EncoderError(f"encoder {name!r} is not available in this installation ({e})") from None
    if name not in _ENCODERS:
        raise EncoderError(f"unknown encoder {name!r}; known encoders: {', '.join(known_encoders())}")
    return _ENCODERS[name](context, **kwargs)


def _codec_encoder(context: Any, **kwargs: Any) -> Encoder:
    codec = getattr(context, "codec", None)
    if codec is None:
        raise EncoderError(
            "encoder 'codec' embeds audio with the generator's codec, but no codec was given; pass one in the "
            "reward context (RewardContext(codec=...)) or choose another encoder"
        )
    from dragontune.encoders.codec import CodecEncoder

    return CodecEncoder(codec, **kwargs)


def _vae_encoder(context: Any, pipeline: str | None = None, window: int = 4) -> Encoder:
    """The generator's VAE encoder (Oobleck, Stable Audio) as the FAD encoder of the paper's "VAE-FAD"."""
    from dragontune.encoders.codec import CodecEncoder
    from dragontune.oobleck import OobleckCodec

    if pipeline:
        from pathlib import Path

        from diffusers import AutoencoderOobleck

        from dragontune.models.stable_audio import check_pipeline_dir

        check_pipeline_dir(Path(pipeline))
        codec = OobleckCodec(AutoencoderOobleck.from_pretrained(str(pipeline), subfolder="vae",
                                                                local_files_only=True).eval(), str(pipeline))
    else:
        codec = getattr(context, "codec", None)
    if not isinstance(codec, OobleckCodec):
        raise EncoderError(
            "encoder 'vae' embeds audio with a Stable Audio model's Oobleck VAE, but the model here has "
            f"{'no codec' if codec is None else 'a ' + type(codec).__name__}; use a Stable Audio pipeline folder as "
            "the model, give the encoder {name: vae, pipeline: FOLDER}, or use encoder 'codec' for the in-project model")
    enc = CodecEncoder(codec, window=window)
    enc.name = "vae"
    return enc


def _musicnn_encoder(context: Any, **kwargs: Any) -> Encoder:
    from dragontune.encoders.musicnn import MusicnnEncoder

    return MusicnnEncoder(**kwargs)


register_encoder("codec", _codec_encoder)
register_encoder("musicnn", _musicnn_encoder)
register_encoder("vae", _vae_encoder)
