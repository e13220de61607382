"""A run folder owned by one run: its config, metrics, checkpoints and demonstration records, and a lock.

Used by `pretrain` and `finetune` alike:

- a lock (``.lock``, an exclusive ``flock`` holding the owner's pid): a second process writing into the same
  folder is refused, naming the holder. The kernel drops the lock when its process dies, so a run killed by
  SIGKILL can be resumed at once.
- a fresh run into a folder that already holds a run is refused unless asked to overwrite; ``--resume``
  compares the new config with the stored ``config.yaml`` and refuses any change outside a short list of keys
  that cannot change the result of the steps already taken (more rounds, checkpoint cadence...), printing the
  difference.
- ``metrics.jsonl``: strict JSON lines (NaN/Inf written as null); on resume a torn last line left by a killed
  process is dropped with a note and lines after the checkpoint are removed, so no step appears twice.
- checkpoints: any number of named safetensors parts (``model``, ``state``, more), written atomically, then
  ``checkpoints/latest.json`` last: an interrupted or failed write (disk full) leaves the previous checkpoint
  as the one to resume from. Non-finite tensors are refused at load, naming the file and the tensor.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterable, Mapping

import torch
import yaml

from dragontune.errors import CheckpointError, DragontuneError
from dragontune.utils import (atomic_write_json, atomic_write_text, dumps_strict, ensure_writable_dir,
                              load_safetensors, log, strict_json)

# Keys whose change on --resume cannot alter what was already computed (dotted, as in config.yaml).
SAFE_TO_CHANGE = ("rounds", "steps", "threads", "ckpt_every", "eval_every", "log_every", "val_every",
                  "sample_every", "keep_checkpoints")
# Files and folders a run writes; --overwrite removes exactly these.
RUN_ARTEFACTS = ("config.yaml", "metrics.jsonl", "checkpoints", "demos", "samples", "eval", "model.safetensors",
                 "batch_arithmetic.json", "report.html",
                 "adapter", "transformer")  # a LoRA run's adapters; a Stable Audio run's trained transformer
LOCK = ".lock"

_HELD: dict[str, int] = {}  # lock files this process holds: real path -> fd


class RunDirError(DragontuneError):
    """The run folder is in use, belongs to another run, or cannot be resumed."""


class DiskFullError(DragontuneError):
    """No space left while writing a run's files; the last complete checkpoint stays resumable."""


def _is_disk_full(e: OSError) -> bool:
    return e.errno in (errno.ENOSPC, getattr(errno, "EDQUOT", -1))


@contextmanager
def disk_full_guard(what: str, resumable: str = ""):
    """Turn ENOSPC/EDQUOT while writing ``what`` into a one-line :class:`DiskFullError`."""
    try:
        yield
    except OSError as e:
        if not _is_disk_full(e):
            raise
        raise DiskFullError(f"disk full while writing {what}; {resumable or 'nothing was lost'} — free some space "
                            "and run the same command again with --resume") from None


def flatten(d: Mapping, prefix: str = "") -> dict[str, Any]:
    """Nested mapping -> ``{"a.b.c": value}`` (lists and scalars are leaves)."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping) and v and not _is_opaque(key):
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def _is_opaque(key: str) -> bool:
    # a reward spec is one value: a changed reward is reported as one change
    return key in ("reward", "builder_options")


def config_diff(old: Mapping, new: Mapping) -> list[tuple[str, Any, Any]]:
    """``(key, old, new)`` for every key whose value differs; keys missing on one side use ``"<absent>"``."""
    a, b = flatten(old), flatten(new)
    out = []
    for k in sorted(set(a) | set(b)):
        va, vb = a.get(k, "<absent>"), b.get(k, "<absent>")
        if va != vb and not (_num(va) and _num(vb) and float(va) == float(vb)):
            out.append((k, va, vb))
    return out


def _num(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


class RunDir:
    """One run folder. Open it with :meth:`open`; only the main process (rank 0) should open it for writing."""

    def __init__(self, path: Path, kind: str):
        self.path = Path(path)
        self.kind = kind
        self.ckpt_dir = self.path / "checkpoints"
        self.metrics_path = self.path / "metrics.jsonl"
        self._lock_fd: int | None = None
        self._metrics_f = None

    # -- opening: lock, identity, fresh vs resume

    @classmethod
    def open(cls, path: str | os.PathLike, config: Mapping, *, kind: str, resume: bool = False,
             overwrite: bool = False, safe_keys: Iterable[str] = SAFE_TO_CHANGE) -> "RunDir":
        """Lock the folder and check it fits this run; then write ``config.yaml``.

        Fresh (``resume=False``): the folder must be empty (or hold only a run's files and ``overwrite``).
        Resume: the stored config must equal ``config`` except for ``safe_keys``.
        """
        if resume and overwrite:
            raise RunDirError("--resume and --overwrite contradict each other; pass one of them")
        run = cls(ensure_writable_dir(path), kind)
        run._lock()
        try:
            if resume:
                run._check_identity(config, tuple(safe_keys))
            else:
                run._check_fresh(overwrite)
            with disk_full_guard(str(run.path / "config.yaml")):
                atomic_write_text(run.path / "config.yaml", yaml.safe_dump(dict(config), sort_keys=False))
        except BaseException:
            run.close()
            raise
        return run

    def _lock(self) -> None:
        import fcntl

        lock_path = self.path / LOCK
        key = os.path.realpath(lock_path)
        if key in _HELD:  # an earlier run in this process ended by an exception without closing: take it over
            _release(key)
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise RunDirError(f"run folder {str(self.path)!r} is in use by another process (pid {holder}); wait for "
                              "it to finish, stop it, or choose another out_dir") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        _HELD[key] = fd
        self._lock_fd = fd

    def close(self) -> None:
        """Close the metrics file and release the lock."""
        if self._metrics_f is not None:
            self._metrics_f.close()
            self._metrics_f = None
        if self._lock_fd is not None:
            key = os.path.realpath(self.path / LOCK)
            if _HELD.get(key) == self._lock_fd:
                _release(key)
            self._lock_fd = None

    def _contents(self) -> list[str]:
        return sorted(p.name for p in self.path.iterdir() if p.name != LOCK and not p.name.startswith(".write-test-"))

    def _check_fresh(self, overwrite: bool) -> None:
        present = self._contents()
        if set(present) <= {"config.yaml", "batch_arithmetic.json"}:  # a run that stopped before any work
            return
        shown = ", ".join(present[:6]) + (f" (+{len(present) - 6} more)" if len(present) > 6 else "")
        if not overwrite:
            raise RunDirError(f"run folder {str(self.path)!r} is not empty ({shown}); pass --resume to continue "
                              "the run in it, --overwrite to replace it, or choose another out_dir")
        foreign = [n for n in present if n not in RUN_ARTEFACTS]
        if foreign or "config.yaml" not in present:
            raise RunDirError(f"--overwrite: {str(self.path)!r} does not look like a dragontune run folder "
                              f"(it holds {', '.join((foreign or present)[:6])}); nothing was removed — choose an "
                              "empty out_dir")
        for name in present:
            p = self.path / name
            shutil.rmtree(p) if p.is_dir() and not p.is_symlink() else p.unlink()
        log.info("--overwrite: removed the previous run's files from %s", self.path)

    def _check_identity(self, config: Mapping, safe_keys: tuple[str, ...]) -> None:
        stored_path = self.path / "config.yaml"
        if not stored_path.is_file():
            raise RunDirError(f"--resume: {str(stored_path)!r} not found, so {str(self.path)!r} holds no run to "
                              "resume; run without --resume to start one")
        try:
            stored = yaml.safe_load(stored_path.read_text()) or {}
        except yaml.YAMLError as e:
            raise RunDirError(f"--resume: {str(stored_path)!r} is not valid YAML ({e}); restore it or start a new "
                              "run with --overwrite") from None
        diff = [d for d in config_diff(stored, config) if d[0] != "out_dir"]
        new_keys = [k for k, a, _ in diff if a == "<absent>"]
        if new_keys:
            log.info("--resume: keys not in the stored config (added since; their values are used): %s",
                     ", ".join(new_keys))
        refused = [(k, a, b) for k, a, b in diff if a != "<absent>" and k not in safe_keys]
        if refused:
            lines = "\n".join(f"  {k}: {a!r} -> {b!r}" for k, a, b in refused)
            raise RunDirError(f"--resume: the config differs from the one {str(self.path)!r} was started with:\n"
                              f"{lines}\nonly {', '.join(safe_keys)} may change on resume; undo the change, or start "
                              "a new run in another out_dir")
        for k, a, b in diff:
            if k in safe_keys:
                log.info("--resume: %s changed %r -> %r", k, a, b)

    # -- metrics

    def read_metrics(self) -> list[dict]:
        """Records of ``metrics.jsonl``; a torn last line (a killed writer) is dropped with a note."""
        if not self.metrics_path.is_file():
            return []
        text = self.metrics_path.read_text()
        lines = text.split("\n")
        recs = []
        for i, ln in enumerate(lines):
            if not ln.strip():
                continue
            try:
                recs.append(json.loads(ln))
            except json.JSONDecodeError:
                last = all(not x.strip() for x in lines[i + 1:])
                if not last:
                    raise RunDirError(f"{str(self.metrics_path)!r} line {i + 1} is not valid JSON and is not the "
                                      "last line; repair or remove that line, then resume") from None
                log.warning("%s: dropped a torn last line (%d bytes) left by an interrupted run",
                            self.metrics_path, len(ln))
        return recs

    def truncate_metrics(self, key: str, keep_upto: int) -> None:
        """Keep only records with ``rec[key] <= keep_upto`` (those after the checkpoint will be recomputed)."""
        recs = [r for r in self.read_metrics() if r.get(key, 0) <= keep_upto]
        with disk_full_guard(str(self.metrics_path)):
            atomic_write_text(self.metrics_path, "".join(dumps_strict(r) + "\n" for r in recs))

    def append_metrics(self, rec: Mapping) -> None:
        with disk_full_guard(str(self.metrics_path), self._resumable()):
            if self._metrics_f is None:
                self._metrics_f = open(self.metrics_path, "a")
            self._metrics_f.write(dumps_strict(dict(rec)) + "\n")
            self._metrics_f.flush()

    # -- checkpoints

    def save_checkpoint(self, name: str, parts: Mapping[str, tuple[Mapping[str, torch.Tensor], Mapping[str, str]]],
                        info: Mapping[str, Any], keep: int = 0, fault_tag: str = "") -> Path:
        """Write ``checkpoints/NAME.safetensors`` (part ``model``) and ``NAME.PART.safetensors`` (every other part),
        each ``(tensors, metadata)``, then ``latest.json`` = ``info`` plus the part file names.

        ``keep > 0`` removes all but the newest ``keep`` checkpoints afterwards. ``fault_tag``: the testing hook
        ``DRAGONTUNE_FAULT=TAG:checkpoint`` kills the process after the first part is written.
        """
        from dragontune.utils import save_safetensors_atomic

        files = {}
        for part, (tensors, meta) in parts.items():
            fname = f"{name}.safetensors" if part == "model" else f"{name}.{part}.safetensors"
            with disk_full_guard(str(self.ckpt_dir / fname), self._resumable()):
                save_safetensors_atomic(tensors, self.ckpt_dir / fname, meta)
            files[part] = fname
            if fault_tag:
                fault_point(f"{fault_tag}:checkpoint")
        with disk_full_guard(str(self.ckpt_dir / "latest.json"), self._resumable()):
            atomic_write_json(self.ckpt_dir / "latest.json", {**info, **files, "parts": sorted(files)})
        if keep > 0:
            self._prune(keep)
        return self.ckpt_dir / files.get("model", next(iter(files.values())))

    def _resumable(self) -> str:
        info = self.latest()
        if info is None:
            return "no checkpoint was complete yet, so the run starts from the beginning on --resume"
        where = ", ".join(f"{k} {info[k]}" for k in ("round", "step") if k in info)
        return f"the run stays resumable from its last complete checkpoint ({where or info.get('model')})"

    def _prune(self, keep: int) -> None:
        names = sorted({p.name.split(".")[0] for p in self.ckpt_dir.glob("*.safetensors")})
        for old in names[:-keep]:
            for p in self.ckpt_dir.glob(f"{old}.*safetensors"):
                p.unlink(missing_ok=True)

    def latest(self) -> dict | None:
        p = self.ckpt_dir / "latest.json"
        if not p.is_file():
            return None
        try:
            return json.loads(p.read_text())
        except json.JSONDecodeError as e:
            raise CheckpointError(f"{str(p)!r} is corrupt ({e}); restore it or start again with --overwrite") from None

    def load_checkpoint(self) -> tuple[dict, dict[str, tuple[dict[str, torch.Tensor], dict[str, str]]]] | None:
        """``(info, {part: (tensors, metadata)})`` of the latest checkpoint, or None if there is none yet."""
        info = self.latest()
        if info is None:
            return None
        parts = {}
        for part in info.get("parts", [k for k in ("model", "state") if k in info]):
            f = self.ckpt_dir / info[part]
            if not f.is_file():
                raise CheckpointError(f"checkpoint file {str(f)!r} named by latest.json is missing; restore it or "
                                      "start again with --overwrite")
            try:
                tensors, meta = load_safetensors(f)
            except Exception as e:
                raise CheckpointError(f"checkpoint file {str(f)!r} could not be read ({e}); it is corrupt") from None
            check_finite(tensors, str(f))
            parts[part] = (tensors, meta)
        return info, parts


def write_demo_record(folder: Path, name: str, tensors: Mapping[str, torch.Tensor], meta: Mapping[str, str],
                      rows: list[dict]) -> None:
    """``NAME.safetensors`` (what was generated) and ``NAME.jsonl`` (how it was labelled, strict JSON), atomically."""
    from dragontune.utils import save_safetensors_atomic

    with disk_full_guard(str(Path(folder) / name) + ".*"):
        save_safetensors_atomic(tensors, Path(folder) / f"{name}.safetensors", meta)
        atomic_write_text(Path(folder) / f"{name}.jsonl", "".join(dumps_strict(r) + "\n" for r in rows))


def fault_point(tag: str) -> None:
    """Testing hook: ``DRAGONTUNE_FAULT=TAG`` sends SIGKILL to this process here (fault-injection tests)."""
    if os.environ.get("DRAGONTUNE_FAULT") == tag:
        import signal

        os.kill(os.getpid(), signal.SIGKILL)


def check_finite(tensors: Mapping[str, torch.Tensor], source: str) -> None:
    """Refuse a checkpoint with NaN or Inf in a floating tensor, naming the file and the tensor."""
    for k, v in tensors.items():
        if v.is_floating_point() and not bool(torch.isfinite(v).all()):
            n = int((~torch.isfinite(v)).sum())
            raise CheckpointError(f"checkpoint {source!r}: tensor {k!r} has {n} non-finite values (NaN/Inf); the "
                                  "training that wrote it diverged — use an earlier checkpoint")


def _release(key: str) -> None:
    import fcntl

    fd = _HELD.pop(key)
    try:
        fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)
