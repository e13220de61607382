"""The encoder listing behind ``dragontune encoders``: what each encoder is and whether its weights are here.

:func:`list_encoders` never loads weights (it only checks files), so it is fast and works offline
without any optional package imported.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from dragontune.errors import DragontuneError

__all__ = ["list_encoders", "format_encoder_table"]


def _row(name: str, options: dict, dim: int | None, sample_rate: int | None, min_samples: int | None,
         cross_modal: bool, available: bool, weights: str, status: str | None = None) -> dict[str, Any]:
    return {
        "name": name,
        "options": options,
        "dim": dim,
        "sample_rate": sample_rate,
        "min_seconds": None if min_samples is None or not sample_rate else round(min_samples / sample_rate, 4),
        "cross_modal": cross_modal,
        "available": available,
        "status": status or ("available" if available else "missing"),
        "weights": weights,
    }


def _codec_rows(codec: Any) -> list[dict]:
    from dragontune.codecs import LogMelCodec
    from dragontune.encoders.codec import CodecEncoder

    c = codec if codec is not None else LogMelCodec()
    e = CodecEncoder(c)
    what = "the generator's codec" + (" (default LogMelCodec shown)" if codec is None else f" ({c.id})")
    return [_row("codec", {"window": e.window}, e.dim, e.sample_rate, e.min_samples, False, True,
                 f"no weights: {what}; needs the codec in the reward context")]


def _musicnn_rows() -> list[dict]:
    from dragontune.encoders.musicnn import HOP, MUSICNN_LAYERS, MUSICNN_MODELS, PATCH_FRAMES, SR, _INSTALL_HINT, musicnn_package_dir

    rows = []
    try:
        pkg: Path | None = musicnn_package_dir()
    except DragontuneError:
        pkg = None
    for model in MUSICNN_MODELS:
        if pkg is None:
            ok, where = False, f"package 'musicnn' not installed; {_INSTALL_HINT}"
        else:
            d = pkg / model
            missing = [f for f in (".index", ".data-00000-of-00001") if not (d / f).is_file()]
            ok = not missing
            where = str(d) if ok else f"{d}: missing {', '.join(missing)}; {_INSTALL_HINT}"
        for layer, dim in MUSICNN_LAYERS.items():
            rows.append(_row("musicnn", {"model": model, "layer": layer}, dim, SR, (PATCH_FRAMES - 1) * HOP, False, ok, where))
    return rows


def _aisfx_rows() -> list[dict]:
    from dragontune.encoders.aisfx import EMBED_DIM, INSTALL_HINT, SR, AisfxEncoder, default_aisfx_weights

    try:
        path = default_aisfx_weights()
        ok = path.is_file()
        where = str(path) if ok else f"{path} missing; {INSTALL_HINT}"
    except DragontuneError:
        ok, where = False, f"package 'aisfx' not installed; {INSTALL_HINT}"
    return [_row("aisfx", {"hop": 0.5}, EMBED_DIM, SR, AisfxEncoder.min_samples, False, ok, where)]


def _clap_mini_rows() -> list[dict]:
    try:
        from dragontune.encoders.clap_mini import TRAIN_COMMAND, ClapMiniConfig, default_clap_mini_path
    except ImportError as e:
        return [_row("clap-mini", {}, None, None, None, True, False, f"module dragontune.encoders.clap_mini unavailable ({e})")]
    cfg = ClapMiniConfig()
    path = default_clap_mini_path()
    ok = path.is_file()
    where = str(path) if ok else f"{path} missing; train it with `{TRAIN_COMMAND}`"
    return [_row("clap-mini", {}, cfg.embed_dim, cfg.sample_rate, cfg.window_samples, True, ok, where)]


def _clap_hf_rows(path: str | os.PathLike | None) -> list[dict]:
    if path is None:
        return [_row("clap-hf", {"path": None}, None, None, None, True, False,
                     "a local LAION-CLAP checkpoint directory (transformers layout: config.json, model.safetensors, "
                     "preprocessor_config.json, tokenizer); pass it with --path", status="needs --path")]
    from dragontune.encoders.clap_hf import ClapHFEncoder

    try:
        e = ClapHFEncoder(path)
        files = e.weight_files()
    except DragontuneError as err:
        return [_row("clap-hf", {"path": str(path)}, None, None, None, True, False, str(err))]
    return [_row("clap-hf", {"path": str(path)}, e.dim, e.sample_rate, e.min_samples, True, True,
                 ", ".join(str(f) for f in files))]


def list_encoders(codec: Any = None, clap_hf_path: str | os.PathLike | None = None) -> list[dict[str, Any]]:
    """One dict per encoder configuration.

    Keys: ``name``, ``options`` (constructor options that select this row), ``dim``, ``sample_rate``,
    ``min_seconds`` (shortest clip), ``cross_modal``, ``available`` (bool), ``status``
    ("available", "missing" or "needs --path") and ``weights`` (the weights path when available,
    otherwise the reason and the step that fixes it). ``codec``: the generator's codec for the ``codec``
    row (default: a default :class:`~dragontune.codecs.LogMelCodec`). ``clap_hf_path``: a checkpoint
    directory to describe under ``clap-hf``. ``dim``/``sample_rate`` are None where unknown.
    """
    rows: list[dict[str, Any]] = []
    rows += _codec_rows(codec)
    rows += _musicnn_rows()
    rows += _aisfx_rows()
    rows += _clap_mini_rows()
    rows += _clap_hf_rows(clap_hf_path)
    return rows


def format_encoder_table(rows: list[dict[str, Any]]) -> str:
    """Plain-text table of :func:`list_encoders` rows (one line each; the weights column last, unabridged)."""
    head = ("encoder", "options", "dim", "rate/Hz", "min/s", "text", "status", "weights / how to get them")
    body = []
    for r in rows:
        opts = " ".join(f"{k}={v}" for k, v in r["options"].items() if v is not None)
        body.append((
            r["name"],
            opts or "-",
            "?" if r["dim"] is None else str(r["dim"]),
            "?" if r["sample_rate"] is None else str(r["sample_rate"]),
            "?" if r["min_seconds"] is None else f"{r['min_seconds']:.3g}",
            "yes" if r["cross_modal"] else "no",
            r["status"],
            r["weights"],
        ))
    widths = [max(len(head[i]), *(len(b[i]) for b in body)) if body else len(head[i]) for i in range(len(head) - 1)]
    lines = []
    for cells in [head, *body]:
        lines.append("  ".join(c.ljust(w) for c, w in zip(cells[:-1], widths)) + "  " + cells[-1])
    lines.insert(1, "  ".join("-" * w for w in widths) + "  " + "-" * len(head[-1]))
    return "\n".join(lines)
