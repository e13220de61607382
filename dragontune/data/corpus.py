"""Where the training corpus comes from: a folder, synthesised on first use if it is missing."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from dragontune.utils import log


@dataclasses.dataclass
class DataConfig:
    corpus: str = "data/corpus"       # folder with audio/ + metadata.jsonl (synthesised if missing)
    synth_n: int = 2000               # clips to synthesise when the corpus folder is missing
    synth_seed: int = 0
    duration: float = 4.0             # seconds per clip (crop / pad)
    train_split: str = "train"
    val_split: str = "val"
    filter: str = ""                  # optional metadata filter, e.g. "quality=clean"


def ensure_corpus(data: DataConfig) -> Path:
    root = Path(data.corpus)
    if not (root / "metadata.jsonl").is_file() and not any(
        (root / n).is_file() for n in ("captions.jsonl", "captions.csv")
    ):
        from dragontune.data.synth import synth_corpus

        log.info("corpus %s missing: synthesising %d clips (seed %d)", root, data.synth_n, data.synth_seed)
        synth_corpus(root, n=data.synth_n, seed=data.synth_seed)
    return root
