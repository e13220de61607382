"""One prompt loader for training, evaluation and the CLI.

A prompt spec is ``corpus:SPLIT`` (or just ``train`` / ``val`` / ``test``): the distinct captions of that split of
a corpus, in corpus order; or the path of a text file with one prompt per line (blank lines ignored).
"""

from __future__ import annotations

import os
from pathlib import Path

from dragontune.errors import ConfigError, DataError

__all__ = ["SPLITS", "corpus_split", "load_prompts"]

SPLITS = ("train", "val", "test")


def corpus_split(spec: str | os.PathLike) -> str | None:
    """The corpus split a spec names (``corpus:SPLIT`` or a bare split name), or None for a prompt file."""
    s = str(spec)
    if s.startswith("corpus:"):
        return s.split(":", 1)[1]
    return s if s in SPLITS else None


def load_prompts(spec: str | os.PathLike, corpus: str | os.PathLike | None = None, limit: int | None = None) -> list[str]:
    """The prompts of ``spec`` (see the module docstring); ``limit`` keeps the first ``limit``.

    A corpus split needs ``corpus`` (the folder). A missing file, an empty result or a limit below 1 raises
    :class:`DataError` / :class:`ConfigError` naming the spec.
    """
    s = str(spec)
    split = corpus_split(s)
    if split is not None:
        if corpus is None:
            raise DataError(f"prompts {s!r} come from a corpus split, but no corpus folder was given")
        from dragontune.data.dataset import filter_rows, load_metadata

        rows = filter_rows(load_metadata(corpus, check_files=False), {"split": [split]})
        prompts = list(dict.fromkeys(r["caption"] for r in rows))
        where = f"split {split!r} of corpus {str(corpus)!r}"
    else:
        p = Path(s)
        if not p.is_file():
            raise DataError(f"prompt file {s!r} does not exist; give corpus:SPLIT (one of {', '.join(SPLITS)}) or a "
                            "text file, one prompt per line")
        prompts = [ln.strip() for ln in p.read_text(encoding="utf-8").splitlines() if ln.strip()]
        where = f"prompt file {s!r}"
    if limit is not None:
        if int(limit) < 1:
            raise ConfigError(f"prompt limit {limit} must be >= 1")
        prompts = prompts[: int(limit)]
    if not prompts:
        raise DataError(f"{where} holds no prompts; it needs at least one non-empty line")
    return prompts
