"""Captioned-audio folders: metadata loading, row filtering and a fixed-length audio dataset.

A corpus folder holds audio files (``.wav``, ``.flac``, ``.ogg``) and one caption table, looked up in
this order:

- ``metadata.jsonl``: one JSON object a line with at least ``file`` (or ``path``) and ``caption``
  (the layout written by :func:`dragontune.data.synth.synth_corpus`);
- ``captions.jsonl``: the same fields, ``file``/``path`` + ``caption`` [+ ``split``];
- ``captions.csv``: a header row with columns ``file`` (or ``path``), ``caption`` [, ``split``, ...].

Paths are relative to the folder (absolute paths are kept). Every row gets ``file`` (as written)
and ``id`` (the file stem unless given).
"""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dragontune.audio import AUDIO_EXTENSIONS, fit_length, load_audio
from dragontune.errors import AudioError, DataError
from dragontune.utils import log

METADATA_FILES = ("metadata.jsonl", "captions.jsonl", "captions.csv")
_MAX_LISTED = 20


def _list_paths(paths: list[str]) -> str:
    shown = "\n  ".join(paths[:_MAX_LISTED])
    more = f"\n  ... and {len(paths) - _MAX_LISTED} more" if len(paths) > _MAX_LISTED else ""
    return f"\n  {shown}{more}"


def find_metadata(root: str | os.PathLike) -> Path:
    """The caption table of ``root`` (first of :data:`METADATA_FILES` that exists)."""
    r = Path(root)
    if not r.is_dir():
        raise DataError(f"dataset folder {str(r)!r} does not exist or is not a directory")
    for name in METADATA_FILES:
        if (r / name).is_file():
            return r / name
    raise DataError(
        f"dataset folder {str(r)!r} has no caption table: add one of {', '.join(METADATA_FILES)} "
        "(fields file + caption [+ split]), or create a demo corpus with `dragontune synth`"
    )


def _normalise_row(raw: Any, where: str) -> dict:
    if not isinstance(raw, dict):
        raise DataError(f"{where}: expected an object with fields file and caption, got {type(raw).__name__}")
    row = dict(raw)
    f = row.get("file")
    if f is None or f == "":
        f = row.get("path")
    if f is None or str(f).strip() == "":
        raise DataError(f"{where}: missing audio path (field 'file' or 'path')")
    row["file"] = str(f).strip()
    if "caption" not in row or row["caption"] is None:
        raise DataError(f"{where}: missing field 'caption' for {row['file']!r}")
    if not isinstance(row["caption"], str):
        raise DataError(f"{where}: caption of {row['file']!r} must be a string, got {row['caption']!r}")
    cap = row["caption"].strip()
    if not cap:
        raise DataError(f"{where}: empty caption for {row['file']!r}; write a description or remove the row")
    row["caption"] = cap
    if "split" in row and row["split"] is not None:
        row["split"] = str(row["split"]).strip()
    row.setdefault("id", Path(row["file"]).stem)
    return row


def resolve_path(root: str | os.PathLike, row: dict) -> Path:
    """Absolute path of a row's audio file."""
    p = Path(row["file"])
    return p if p.is_absolute() else Path(root) / p


def load_metadata(root: str | os.PathLike, check_files: bool = True) -> list[dict]:
    """Read the caption table of ``root`` (see module docstring) into a list of row dicts.

    Raises :class:`DataError` naming the table and line for a malformed row, a missing or empty
    caption, a duplicate file, and (``check_files``) listing every audio path that does not exist.
    """
    table = find_metadata(root)
    rows: list[dict] = []
    if table.suffix == ".jsonl":
        with open(table, encoding="utf-8") as fh:
            for ln, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                where = f"{table}:{ln}"
                try:
                    raw = json.loads(line)
                except json.JSONDecodeError as e:
                    raise DataError(f"{where}: not valid JSON ({e.msg} at column {e.colno})") from None
                rows.append(_normalise_row(raw, where))
    else:
        with open(table, encoding="utf-8", newline="") as fh:
            reader = csv.DictReader(fh)
            cols = [c.strip() for c in (reader.fieldnames or [])]
            if "caption" not in cols or not ({"file", "path"} & set(cols)):
                raise DataError(
                    f"{table}:1: header must name columns file (or path) and caption [, split], got {cols}"
                )
            reader.fieldnames = cols
            for rec in reader:
                where = f"{table}:{reader.line_num}"
                if None in rec:
                    raise DataError(f"{where}: more fields than header columns ({len(cols)}); quote captions that contain commas")
                if any(v is None for v in rec.values()):
                    raise DataError(f"{where}: fewer fields than header columns ({len(cols)})")
                rows.append(_normalise_row(rec, where))
    if not rows:
        raise DataError(f"{table} contains no rows")
    seen: dict[str, int] = {}
    for i, r in enumerate(rows):
        if r["file"] in seen:
            raise DataError(f"{table}: file {r['file']!r} is listed twice (rows {seen[r['file']] + 1} and {i + 1})")
        seen[r["file"]] = i
    if check_files:
        missing = [str(resolve_path(root, r)) for r in rows if not resolve_path(root, r).is_file()]
        if missing:
            raise DataError(f"{table}: {len(missing)} audio file(s) listed but missing:{_list_paths(missing)}")
    return rows


def _parse_spec(spec: str | dict) -> dict[str, list[str]]:
    if isinstance(spec, dict):
        items = list(spec.items())
    elif isinstance(spec, str):
        items = []
        for part in spec.split(","):
            part = part.strip()
            if not part:
                continue
            if "=" not in part:
                raise DataError(f"filter {spec!r}: term {part!r} must look like field=value (e.g. instrument=piano,quality=clean)")
            k, v = part.split("=", 1)
            items.append((k.strip(), v.strip()))
    else:
        raise DataError(f"filter must be a string like 'instrument=piano' or a dict, got {type(spec).__name__}")
    out: dict[str, list[str]] = {}
    for k, v in items:
        vals = [str(x) for x in v] if isinstance(v, (list, tuple, set)) else [s.strip() for s in str(v).split("|")]
        out.setdefault(k, []).extend(vals)
    return out


def _as_text(v: Any) -> str:
    return str(v).lower() if isinstance(v, bool) else str(v)


def filter_rows(rows: list[dict], spec: str | dict) -> list[dict]:
    """Rows whose fields equal the given values: ``"instrument=piano,quality=clean"`` or a dict.

    ``a|b`` (or a list in a dict) accepts either value. Values are compared as text. An unknown field
    raises :class:`DataError` listing the valid fields; a filter that leaves no rows names the values
    that field does take.
    """
    terms = _parse_spec(spec)
    if not terms:
        return list(rows)
    fields = sorted({k for r in rows for k in r})
    out = list(rows)
    for k, vals in terms.items():
        if k not in fields:
            import difflib

            close = difflib.get_close_matches(k, fields, n=1, cutoff=0.5)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise DataError(f"filter field {k!r} is unknown{hint} (valid fields: {', '.join(fields)})")
        kept = [r for r in out if k in r and _as_text(r[k]) in vals]
        if not kept:
            present = sorted({_as_text(r[k]) for r in out if k in r})
            shown = ", ".join(present[:30]) + (f", ... ({len(present)} values)" if len(present) > 30 else "")
            raise DataError(f"filter {k}={'|'.join(vals)} matches no rows; values of {k!r} here: {shown or '(none)'}")
        out = kept
    return out


class AudioCaptionDataset(torch.utils.data.Dataset):
    """Fixed-length mono clips with captions from a corpus folder.

    ``__getitem__`` returns ``{"audio": float32 [1, T], "caption": str, "meta": dict}`` with
    ``T = round(duration * sample_rate)`` (cropped from the start or zero-padded). Files at another
    sample rate or channel count are resampled (soxr) and down-mixed; one info line per dataset says so.

    ``on_error="raise"`` raises a :class:`DataError` listing every broken file (missing, undecodable,
    empty, NaN/Inf); ``"skip"`` logs them once and drops them. Files are validated up front by
    :meth:`check` unless ``check_on_init=False``.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        sample_rate: int = 16000,
        duration: float = 4.0,
        split: str | None = None,
        filter: str | dict | None = None,  # noqa: A002 - public keyword
        on_error: str = "raise",
        check_on_init: bool = True,
    ) -> None:
        if on_error not in ("raise", "skip"):
            raise DataError(f"on_error={on_error!r} must be 'raise' or 'skip'")
        if sample_rate <= 0 or duration <= 0:
            raise DataError(f"sample_rate={sample_rate} and duration={duration} must be positive")
        self.root = Path(root)
        self.sample_rate = int(sample_rate)
        self.duration = float(duration)
        self.num_samples = int(round(self.duration * self.sample_rate))
        self.on_error = on_error
        rows = load_metadata(self.root, check_files=False)
        if split is not None:
            if not any("split" in r for r in rows):
                raise DataError(f"split={split!r} requested but {find_metadata(self.root)} has no 'split' field")
            rows = filter_rows(rows, {"split": [split]})
        if filter:
            rows = filter_rows(rows, filter)
        self.rows = rows
        self._conversion_logged = False
        self._checked = False
        if check_on_init:
            self.check()

    # -- validation ----------------------------------------------------------------------------------
    def _problem(self, row: dict) -> tuple[str | None, tuple[int, int] | None]:
        """(reason it is broken or None, (sample rate, channels) when readable)."""
        import soundfile as sf

        p = resolve_path(self.root, row)
        if not p.is_file():
            return "missing", None
        if p.suffix.lower() not in AUDIO_EXTENSIONS:
            return f"unsupported extension {p.suffix!r} (use {', '.join(AUDIO_EXTENSIONS)})", None
        try:
            data, sr = sf.read(str(p), dtype="float32", always_2d=True)
        except Exception as e:  # soundfile raises several types for corrupt data
            return f"undecodable ({e})", None
        if data.shape[0] == 0:
            return "empty (0 samples)", (sr, data.shape[1])
        if not np.isfinite(data).all():
            return "contains NaN or Inf", (sr, data.shape[1])
        return None, (sr, data.shape[1])

    def check(self) -> list[str]:
        """Decode every file once. Returns the broken paths (after raising or dropping per ``on_error``)."""
        broken: list[tuple[str, str]] = []
        good: list[dict] = []
        formats: dict[tuple[int, int], int] = {}
        for r in self.rows:
            why, fmt = self._problem(r)
            if why is None:
                good.append(r)
                formats[fmt] = formats.get(fmt, 0) + 1
            else:
                broken.append((str(resolve_path(self.root, r)), why))
        if broken:
            listing = _list_paths([f"{p}: {w}" for p, w in broken])
            if self.on_error == "raise":
                raise DataError(
                    f"{len(broken)} of {len(self.rows)} audio files in {str(self.root)!r} are broken:{listing}\n"
                    "fix or remove them, or pass on_error='skip' to drop them"
                )
            log.warning("dropping %d broken audio file(s) of %d in %s:%s", len(broken), len(self.rows), self.root, listing)
            self.rows = good
        if not self.rows:
            raise DataError(f"no usable audio files left in {str(self.root)!r}")
        other = {f: c for f, c in formats.items() if f != (self.sample_rate, 1)}
        if other and not self._conversion_logged:
            desc = ", ".join(f"{c} at {sr} Hz/{ch} ch" for (sr, ch), c in sorted(other.items()))
            log.info("%s: converting %s to %d Hz mono", self.root, desc, self.sample_rate)
            self._conversion_logged = True
        self._checked = True
        return [p for p, _ in broken]

    # -- access --------------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.rows)

    @property
    def captions(self) -> list[str]:
        return [r["caption"] for r in self.rows]

    def _load(self, row: dict) -> torch.Tensor:
        import soundfile as sf

        p = resolve_path(self.root, row)
        if not self._conversion_logged and not self._checked:
            try:
                info = sf.info(str(p))
                if info.samplerate != self.sample_rate or info.channels != 1:
                    log.info("%s: converting files such as %s (%d Hz/%d ch) to %d Hz mono", self.root, p, info.samplerate, info.channels, self.sample_rate)
                    self._conversion_logged = True
            except Exception:  # decoding errors are reported by load_audio below
                pass
        try:
            x = load_audio(p, self.sample_rate, mono=True)
        except AudioError as e:
            raise DataError(f"{e} (row {row.get('id')!r} of {str(self.root)!r}); run check() to list all broken files") from None
        return fit_length(x, self.num_samples).to(torch.float32)

    def __getitem__(self, i: int) -> dict:
        row = self.rows[i]
        return {"audio": self._load(row), "caption": row["caption"], "meta": dict(row)}

    def load_all(self) -> tuple[torch.Tensor, list[str]]:
        """Every clip as ``[N, 1, T]`` float32 and the captions (for small corpora)."""
        audio = torch.stack([self._load(r) for r in self.rows]) if self.rows else torch.zeros(0, 1, self.num_samples)
        return audio, self.captions
