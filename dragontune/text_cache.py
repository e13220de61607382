"""Precomputed text-encoder outputs in one file, usable in place of the text encoder.

For machines that have the training data but not the text model (or to skip the encoder's start-up):
``write_text_cache(encoder, prompts, path)`` stores each prompt's unpadded token states (float32, exact)
with the encoder's spec and id; ``CachedTextEncoder(path)`` serves them through the TextEncoder
``encode`` API and reports the original encoder's spec and id, so a model trained from the cache is
indistinguishable from one trained with the encoder itself. A prompt missing from the cache is an error.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Sequence

import torch

from dragontune.errors import DataError
from dragontune.text import pad_states
from dragontune.utils import load_safetensors, save_safetensors_atomic

FORMAT = "dragontune-text-cache-1"


def write_text_cache(encoder, prompts: Sequence[str], path: str | os.PathLike, spec: str) -> Path:
    """Encode ``prompts`` (deduplicated, in order) with ``encoder`` and save them to ``path``."""
    uniq = list(dict.fromkeys(prompts))
    tensors = {}
    for i in range(0, len(uniq), 64):
        h, m = encoder.encode(uniq[i:i + 64])
        for j in range(h.shape[0]):
            tensors[f"h.{i + j}"] = h[j, : int(m[j].sum())].contiguous()
    meta = {"format": FORMAT, "encoder_spec": spec, "encoder_id": encoder.id, "dim": str(encoder.dim),
            "max_length": str(encoder.max_length), "prompts": json.dumps(uniq)}
    save_safetensors_atomic(tensors, path, meta)
    return Path(path)


class CachedTextEncoder:
    """Serves prompts from a text cache file with the TextEncoder ``encode`` API."""

    def __init__(self, path: str | os.PathLike):
        p = Path(path)
        if not p.is_file():
            raise DataError(f"text cache {str(p)!r} does not exist; write it with `dragontune text-cache`")
        tensors, meta = load_safetensors(p)
        if meta.get("format") != FORMAT:
            raise DataError(f"{str(p)!r} is not a dragontune text cache (format {meta.get('format')!r})")
        prompts = json.loads(meta["prompts"])
        self.path = p
        self.spec = meta["encoder_spec"]
        self.id = meta["encoder_id"]
        self.dim = int(meta["dim"])
        self.max_length = int(meta["max_length"])
        self._states = {t: tensors[f"h.{i}"].float() for i, t in enumerate(prompts)}

    def __len__(self) -> int:
        return len(self._states)

    def encode(self, texts: Sequence[str], device=None) -> tuple[torch.Tensor, torch.Tensor]:
        texts = list(texts)
        missing = [t for t in texts if t not in self._states]
        if missing:
            raise DataError(
                f"prompt {missing[0]!r} (and {len(missing) - 1} more) is not in the text cache {str(self.path)!r}; "
                "rebuild the cache with these prompts or use the text encoder itself"
            )
        return pad_states([self._states[t] for t in texts], self.dim, device)
