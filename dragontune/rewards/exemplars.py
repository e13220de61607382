"""Exemplar sets: audio clips or texts reduced to statistics in an encoder's space, cached on disk.

An :class:`ExemplarSet` names its source (an audio folder, an explicit list of files, rows of the embedded
corpus selected by a metadata filter, or a list of texts for cross-modal encoders) and reduces it to
:class:`ExemplarStats`:

* ``frames``: Gaussian of all frames of all clips pooled (the per-song FAD reference, as in fadtk);
* ``clips``: Gaussian of one vector per clip (the frame mean) or per text (the full-set FAD reference);
* ``sample``: up to ``max_sample`` clip vectors (a seeded subsample, for KAD); ``centroid`` = ``clips.mu``.

Statistics are cached under ``<cache_dir>/<key>.safetensors`` with ``key`` a SHA-256 of (cache format, the
encoder's ``id`` -- name, windowing and weights hash --, the loading sample rate, the SHA-256 of every
file's bytes or of the texts, and the subsample size and seed). Any byte change in a file or the weights
gives a new key. Writes are atomic; a cache file that does not load or does not match its key is
recomputed with a warning in the log.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch

from dragontune.audio import AUDIO_EXTENSIONS, load_audio
from dragontune.encoders.base import Encoder
from dragontune.errors import DataError, DragontuneError, EncoderError, RewardError
from dragontune.metrics import GaussianStats, MetricError, check_finite, gaussian_stats, merge_stats
from dragontune.utils import load_safetensors, log, save_safetensors_atomic, sha256_file, sha256_json

CACHE_FORMAT = "dragontune-exemplars-1"
SILENCE_PEAK = 1e-6  # an exemplar file whose peak |x| is below this is treated as silent


def default_cache_dir() -> Path:
    """``$DRAGONTUNE_CACHE/exemplars`` if set, else ``~/.cache/dragontune/exemplars``."""
    root = os.environ.get("DRAGONTUNE_CACHE")
    return (Path(root) if root else Path.home() / ".cache" / "dragontune") / "exemplars"


@dataclasses.dataclass
class ExemplarStats:
    frames: GaussianStats
    clips: GaussianStats
    sample: torch.Tensor  # [k, d] float64 clip vectors
    encoder_id: str
    encoder_name: str
    source: str
    key: str
    n_items: int
    modality: str = "audio"  # or "text"

    @property
    def dim(self) -> int:
        return self.clips.dim

    @property
    def centroid(self) -> torch.Tensor:
        return self.clips.mu

    def to(self, device: torch.device | str) -> "ExemplarStats":
        return dataclasses.replace(
            self, frames=self.frames.to(device), clips=self.clips.to(device), sample=self.sample.to(device)
        )

    # -- (de)serialisation ---------------------------------------------------------------------------
    def tensors(self) -> dict[str, torch.Tensor]:
        out = {"sample": self.sample.cpu()}
        for nm, st in (("frames", self.frames), ("clips", self.clips)):
            out[f"{nm}_mu"] = st.mu.cpu()
            out[f"{nm}_cov"] = st.cov.cpu()
            out[f"{nm}_sqrt"] = st.sqrt().cpu()
            out[f"{nm}_n"] = torch.tensor([st.n], dtype=torch.int64)
        return out

    def metadata(self) -> dict[str, str]:
        return {
            "format": CACHE_FORMAT,
            "key": self.key,
            "encoder_id": self.encoder_id,
            "encoder_name": self.encoder_name,
            "source": self.source,
            "n_items": str(self.n_items),
            "modality": self.modality,
        }

    @classmethod
    def from_tensors(cls, t: Mapping[str, torch.Tensor], meta: Mapping[str, str]) -> "ExemplarStats":
        if meta.get("format") != CACHE_FORMAT:
            raise ValueError(f"format {meta.get('format')!r} is not {CACHE_FORMAT!r}")
        sts = {}
        for nm in ("frames", "clips"):
            mu, cov, sq, n = (t[f"{nm}_{k}"] for k in ("mu", "cov", "sqrt", "n"))
            d = mu.shape[0]
            if mu.dim() != 1 or cov.shape != (d, d) or sq.shape != (d, d) or n.numel() != 1:
                raise ValueError(f"inconsistent shapes for {nm}")
            for x in (mu, cov, sq):
                if x.dtype != torch.float64 or not torch.isfinite(x).all():
                    raise ValueError(f"non-finite or non-float64 {nm} statistics")
            sts[nm] = GaussianStats(mu, cov, int(n.item()), sq)
        if sts["frames"].dim != sts["clips"].dim or t["sample"].shape[-1] != sts["clips"].dim:
            raise ValueError("dimensions of frames, clips and sample differ")
        return cls(
            frames=sts["frames"], clips=sts["clips"], sample=t["sample"], encoder_id=meta["encoder_id"],
            encoder_name=meta.get("encoder_name", ""), source=meta["source"], key=meta["key"],
            n_items=int(meta["n_items"]), modality=meta.get("modality", "audio"),
        )


def _list_audio(folder: Path) -> list[Path]:
    if not folder.is_dir():
        raise DataError(f"exemplar folder {str(folder)!r} does not exist or is not a directory")
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in AUDIO_EXTENSIONS)
    if not files:
        raise DataError(
            f"exemplar folder {str(folder)!r} contains no audio files ({', '.join(AUDIO_EXTENSIONS)}); "
            "point 'audio_dir' at a folder of exemplar clips"
        )
    return files


class ExemplarSet:
    """A source of exemplars; :meth:`stats` reduces it to :class:`ExemplarStats` for one encoder (cached).

    Build with :meth:`from_audio_dir`, :meth:`from_files`, :meth:`from_corpus`, :meth:`from_texts` or
    :meth:`from_spec` (``{"audio_dir": ...}``, ``{"files": [...]}``, ``{"corpus": root, "filter": spec}``,
    ``{"texts": [...]}``).
    """

    def __init__(
        self,
        *,
        files: Sequence[str | os.PathLike] | None = None,
        texts: Sequence[str] | None = None,
        description: str = "",
        max_sample: int = 2000,
        seed: int = 0,
    ) -> None:
        if (files is None) == (texts is None):
            raise RewardError("an exemplar set needs exactly one of: audio files, texts")
        self.files = [Path(f) for f in files] if files is not None else None
        self.texts = list(texts) if texts is not None else None
        if self.files is not None and not self.files:
            raise DataError(f"exemplar set {description or '(files)'} is empty")
        if self.texts is not None:
            if not self.texts:
                raise DataError("exemplar text list is empty; give at least 2 texts")
            bad = [i for i, t in enumerate(self.texts) if not isinstance(t, str) or not t.strip()]
            if bad:
                raise DataError(f"exemplar texts {bad[:5]} are empty or not strings")
        self.description = description or (f"{len(self.files)} audio files" if self.files else f"{len(self.texts)} texts")
        self.max_sample = int(max_sample)
        self.seed = int(seed)
        self._memo: dict[str, ExemplarStats] = {}

    # -- constructors --------------------------------------------------------------------------------
    @classmethod
    def from_audio_dir(cls, folder: str | os.PathLike, **kw: Any) -> "ExemplarSet":
        folder = Path(folder)
        return cls(files=_list_audio(folder), description=f"audio folder {str(folder)!r}", **kw)

    @classmethod
    def from_files(cls, files: Sequence[str | os.PathLike], **kw: Any) -> "ExemplarSet":
        missing = [str(f) for f in files if not Path(f).is_file()]
        if missing:
            raise DataError(f"exemplar file(s) not found: {missing[:5]}")
        return cls(files=sorted(Path(f) for f in files), **kw)

    @classmethod
    def from_texts(cls, texts: Sequence[str], **kw: Any) -> "ExemplarSet":
        return cls(texts=texts, **kw)

    @classmethod
    def from_corpus(cls, root: str | os.PathLike, filter: str | Mapping[str, Any] | None = None, *,
                    split: str | None = None, **kw: Any) -> "ExemplarSet":
        """Rows of the embedded corpus at ``root`` (``load_metadata``) matching ``filter``
        (e.g. ``"instrument=piano,quality=clean"``), optionally restricted to one ``split``."""
        from dragontune.data.dataset import filter_rows, load_metadata  # lazy: layer 'data'

        root = Path(root)
        rows = load_metadata(root)
        if filter:
            rows = filter_rows(rows, filter)
        if split is not None:
            rows = [r for r in rows if r.get("split") == split]
        desc = f"corpus {str(root)!r} filter {filter!r}" + (f" split {split!r}" if split else "")
        if not rows:
            raise DataError(f"{desc} selects no clips; check the filter against the corpus metadata")
        files = [root / r["file"] for r in rows]
        missing = [str(f) for f in files if not f.is_file()]
        if missing:
            raise DataError(f"{desc}: {len(missing)} listed file(s) missing, e.g. {missing[0]!r}")
        return cls(files=sorted(files), description=desc, **kw)

    @classmethod
    def from_spec(cls, spec: Mapping[str, Any], base_dir: str | os.PathLike | None = None) -> "ExemplarSet":
        """From a config dict: exactly one of ``audio_dir``, ``files``, ``corpus`` (+ ``filter``, ``split``),
        ``texts``; optional ``max_sample``, ``seed``. Relative paths resolve against ``base_dir``."""
        spec = dict(spec)
        known = {"audio_dir", "files", "corpus", "filter", "split", "texts", "max_sample", "seed"}
        unknown = sorted(set(spec) - known)
        if unknown:
            raise RewardError(f"unknown exemplar key(s) {unknown}; known keys: {sorted(known)}")
        kinds = [k for k in ("audio_dir", "files", "corpus", "texts") if k in spec]
        if len(kinds) != 1:
            raise RewardError(
                f"exemplars need exactly one source among audio_dir, files, corpus, texts; got {kinds or 'none'}"
            )
        kw = {k: spec[k] for k in ("max_sample", "seed") if k in spec}
        base = Path(base_dir) if base_dir is not None else None

        def rel(p: str | os.PathLike) -> Path:
            p = Path(p).expanduser()
            return p if (base is None or p.is_absolute()) else base / p

        if "audio_dir" in spec:
            return cls.from_audio_dir(rel(spec["audio_dir"]), **kw)
        if "files" in spec:
            return cls.from_files([rel(f) for f in spec["files"]], **kw)
        if "corpus" in spec:
            return cls.from_corpus(rel(spec["corpus"]), spec.get("filter"), split=spec.get("split"), **kw)
        if "filter" in spec or "split" in spec:
            raise RewardError("'filter' and 'split' apply to 'corpus' exemplars only")
        return cls.from_texts(spec["texts"], **kw)

    # -- statistics ----------------------------------------------------------------------------------
    @property
    def modality(self) -> str:
        return "text" if self.texts is not None else "audio"

    def cache_key(self, encoder: Encoder) -> str:
        if self.texts is not None:
            content: Any = sha256_json(self.texts)
        else:
            content = sorted(sha256_file(f) for f in self.files)  # bytes, not names
        return sha256_json({
            "format": CACHE_FORMAT,
            "encoder": encoder.id,
            "modality": self.modality,
            "load": {"sample_rate": encoder.sample_rate, "mono": True},
            "content": content,
            "max_sample": self.max_sample,
            "seed": self.seed,
        })

    def stats(self, encoder: Encoder, cache_dir: str | os.PathLike | None = None,
              use_cache: bool = True) -> ExemplarStats:
        """Statistics for ``encoder``: from memory, else from the disk cache, else computed and cached."""
        if self.texts is not None and not encoder.cross_modal:
            raise EncoderError(
                f"text exemplars need a cross-modal encoder, but encoder {encoder.name!r} is audio-only; "
                "use a cross-modal encoder (e.g. clap) or give audio exemplars (audio_dir, files or corpus)"
            )
        key = self.cache_key(encoder)
        if key in self._memo:
            return self._memo[key]
        path = Path(cache_dir if cache_dir is not None else default_cache_dir()) / f"{key[:40]}.safetensors"
        st = self._load_cache(path, key) if use_cache else None
        if st is None:
            st = self._compute(encoder, key)
            if use_cache:
                save_safetensors_atomic(st.tensors(), path, st.metadata())
                log.info("exemplar statistics for %s cached at %s", self.description, path)
        self._warn_rank(st)
        self._memo[key] = st
        return st

    def _load_cache(self, path: Path, key: str) -> ExemplarStats | None:
        if not path.is_file():
            return None
        try:
            tensors, meta = load_safetensors(path)
            if meta.get("key") != key:
                raise ValueError("stored key does not match")
            return ExemplarStats.from_tensors(tensors, meta)
        except Exception as e:  # any unreadable / inconsistent file is recomputed
            log.warning("exemplar cache file %s is corrupt or stale (%s); recomputing it", path, e)
            return None

    def _compute(self, encoder: Encoder, key: str) -> ExemplarStats:
        clip_vecs: list[torch.Tensor] = []
        frame_stats: GaussianStats | None = None
        if self.texts is not None:
            emb = encoder.embed_text(self.texts).detach().to(torch.float64).cpu()
            if emb.dim() != 2 or emb.shape[0] != len(self.texts):
                raise EncoderError(
                    f"encoder {encoder.name!r} returned text embeddings of shape {tuple(emb.shape)} for "
                    f"{len(self.texts)} texts"
                )
            try:
                check_finite(emb, f"text embeddings from encoder {encoder.name!r}")
            except MetricError as e:
                raise EncoderError(f"{e} (text: {self.texts[_bad_row(emb)]!r})") from None
            clip_vecs = list(emb)
            frame_stats = gaussian_stats(emb)
        else:
            for f in self.files:
                frames = _embed_file(encoder, f)
                clip_vecs.append(frames.mean(0))
                st = gaussian_stats(frames)
                frame_stats = st if frame_stats is None else merge_stats(frame_stats, st)
        clips = torch.stack(clip_vecs)
        if clips.shape[0] < 2:
            raise DataError(
                f"exemplar set {self.description} has {clips.shape[0]} item(s); at least 2 are needed for a covariance"
            )
        assert frame_stats is not None
        clip_stats = gaussian_stats(clips)
        # subsample for KAD: order-independent (sorted by content) and seeded
        order = torch.argsort(torch.tensor([hash_row(v) for v in clips]))
        g = torch.Generator().manual_seed(self.seed)
        pick = order[torch.randperm(len(order), generator=g)[: self.max_sample]].sort().values
        frame_stats.sqrt()
        clip_stats.sqrt()
        return ExemplarStats(
            frames=frame_stats, clips=clip_stats, sample=clips[pick].contiguous(), encoder_id=encoder.id,
            encoder_name=encoder.name, source=self.description, key=key, n_items=clips.shape[0],
            modality=self.modality,
        )

    def _warn_rank(self, st: ExemplarStats) -> None:
        for what, gs in (("frames", st.frames), ("clips" if st.modality == "audio" else "texts", st.clips)):
            if gs.n <= gs.dim and not (st.modality == "text" and what == "frames"):
                log.warning(
                    "exemplar set %s has %d %s for embedding dimension %d: its covariance has rank %d < %d. "
                    "Fréchet distances remain defined but are less reliable; add exemplars for a full-rank estimate",
                    st.source, gs.n, what, gs.dim, gs.rank(), gs.dim,
                )


def exemplar_spec_for_path(path: str | os.PathLike, filter: str | None = None) -> dict:
    """The exemplar spec a path on the command line means: a folder without ``audio/`` its audio files; a ``.txt``
    file its lines as text exemplars; otherwise a corpus folder, its clips matching ``filter`` (all without one).
    A missing path raises :class:`RewardError` naming it."""
    p = Path(path)
    if not p.exists():
        raise RewardError(f"--exemplars {str(path)!r} does not exist; give an audio folder, a corpus folder or a "
                          ".txt file of text exemplars")
    if p.is_dir() and not (p / "audio").is_dir():
        return {"audio_dir": str(path)}
    if p.is_file() and str(path).endswith(".txt"):
        return {"texts": [t.strip() for t in p.read_text().splitlines() if t.strip()]}
    return {"corpus": str(path), **({"filter": filter} if filter else {})}


def hash_row(v: torch.Tensor) -> int:
    """A deterministic 63-bit hash of a vector's bytes (to order exemplars independently of file names)."""
    import hashlib

    return int.from_bytes(hashlib.sha256(v.contiguous().numpy().tobytes()).digest()[:8], "little") >> 1


def _bad_row(x: torch.Tensor) -> int:
    return int((~torch.isfinite(x)).reshape(x.shape[0], -1).any(1).nonzero()[0].item())


def _embed_file(encoder: Encoder, path: Path) -> torch.Tensor:
    x = load_audio(path, sample_rate=encoder.sample_rate, mono=True)
    peak = float(x.abs().max())
    if peak < SILENCE_PEAK:
        raise DataError(
            f"exemplar file {str(path)!r} is silent (peak amplitude {peak:.2g}); remove it from the exemplar set"
        )
    try:
        encoder.check_length(x[None], encoder.sample_rate)
        frames = encoder.embed_audio(x[None], encoder.sample_rate)[0]
    except DragontuneError as e:
        raise DataError(f"exemplar file {str(path)!r}: {e}") from None
    frames = frames.detach().to(torch.float64).cpu()
    if frames.dim() != 2 or frames.shape[0] < 1:
        raise EncoderError(f"encoder {encoder.name!r} returned frames of shape {tuple(frames.shape)} for {str(path)!r}")
    if not torch.isfinite(frames).all():
        raise EncoderError(
            f"encoder {encoder.name!r} produced NaN/Inf embeddings for exemplar file {str(path)!r} "
            f"(frame {_bad_row(frames)}); check the file and the encoder weights"
        )
    return frames
