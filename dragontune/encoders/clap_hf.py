"""``clap-hf``: a LAION-CLAP checkpoint in the Hugging Face ``transformers`` layout, from a local directory.

The directory is what ``save_pretrained`` writes for the public LAION-CLAP models (e.g.
``laion/clap-htsat-unfused``, ``laion/larger_clap_music``): ``config.json`` (a ``ClapConfig``),
``model.safetensors`` (or ``pytorch_model.bin``), ``preprocessor_config.json`` (a
``ClapFeatureExtractor``) and the tokenizer files. Everything loads with ``local_files_only=True``;
nothing is downloaded.

Audio (deterministic; the feature extractor's random paths are never taken): down-mix, resample to the
extractor's ``sampling_rate`` (48 kHz for LAION-CLAP), cut into windows of the extractor's
``max_length_s`` (10 s) starting at 0 with a fixed hop (default: the window, i.e. no overlap); a
trailing partial window is dropped, and a clip shorter than one window is a single window padded by the
extractor's ``padding`` mode ("repeatpad" for LAION-CLAP: the clip repeated, then zero-padded). Every
window therefore has exactly the model's input length, so ``rand_trunc`` never crops; for fusion
models the extractor's random ``is_longer`` flag is overwritten with False (each window is one
chunk). One frame per window: ``get_audio_features(...).pooler_output``, the projected, L2-normalised
embedding. Each clip's windows run as one batch, independent of the other clips.

Text: the directory's tokenizer (truncation to ``max_text_tokens``, no padding; texts of equal token
length run together) -> ``get_text_features(...).pooler_output`` (projected, L2-normalised).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from dragontune.audio import resample, validate_audio
from dragontune.encoders.base import Encoder
from dragontune.errors import EncoderError
from dragontune.utils import sha256_file, sha256_json

__all__ = ["ClapHFEncoder", "CLAP_HF_WEIGHT_FILES"]

#: files that hold the weights, in the order they are looked for
CLAP_HF_WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin")
_LAYOUT = (
    "a local LAION-CLAP checkpoint directory in the transformers layout (config.json, model.safetensors or "
    "pytorch_model.bin, preprocessor_config.json, tokenizer files), e.g. written by "
    "`ClapModel.save_pretrained(d)`, `ClapProcessor.save_pretrained(d)` or `huggingface-cli download "
    "laion/clap-htsat-unfused --local-dir d` on a machine with network access"
)
_INSTALL_HINT = "install it with `pip install 'transformers>=5'`"


def _import_transformers() -> Any:
    try:
        import transformers
    except ImportError as e:
        raise EncoderError(f"encoder 'clap-hf' needs the Python package 'transformers' ({e}); {_INSTALL_HINT}") from None
    return transformers


def _read_json(path: Path, what: str) -> dict:
    if not path.is_file():
        raise EncoderError(f"clap-hf: {what} {str(path)!r} is missing; the path must be {_LAYOUT}")
    try:
        obj = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise EncoderError(f"clap-hf: {what} {str(path)!r} is not valid JSON ({e})") from None
    if not isinstance(obj, dict):
        raise EncoderError(f"clap-hf: {what} {str(path)!r} does not hold a JSON object")
    return obj


class ClapHFEncoder(Encoder):
    """A transformers ``ClapModel`` from ``path`` as a cross-modal :class:`Encoder`.

    ``hop_seconds``: window hop (default: the window length, ``max_length_s`` of the processor config).
    ``min_seconds``: shortest clip accepted (default 1 s; shorter clips would be mostly repetition).
    ``max_text_tokens``: token limit for texts (77, as LAION-CLAP's training). Configs are read at
    construction (so ``sample_rate``/``dim`` are known); weights and tokenizer load on first use.
    """

    name = "clap-hf"
    cross_modal = True

    def __init__(
        self,
        path: str | os.PathLike,
        hop_seconds: float | None = None,
        min_seconds: float = 1.0,
        max_text_tokens: int = 77,
        device: str | torch.device = "cpu",
    ) -> None:
        if path is None or str(path) == "":
            raise EncoderError(f"encoder 'clap-hf' needs a path: {_LAYOUT}")
        self.path = Path(path)
        if not self.path.is_dir():
            raise EncoderError(f"clap-hf checkpoint directory {str(self.path)!r} does not exist; it must be {_LAYOUT}")
        self._config = _read_json(self.path / "config.json", "model config")
        self._pre = _read_json(self.path / "preprocessor_config.json", "processor config (preprocessor_config.json)")
        audio_cfg = self._config.get("audio_config") or {}
        self.fusion = bool(audio_cfg.get("enable_fusion", False))
        try:
            self.sample_rate = int(self._pre.get("sampling_rate", 48000))
            self.window_samples = int(round(float(self._pre.get("max_length_s", 10)) * self.sample_rate))
            self.dim = int(self._config.get("projection_dim", 512))
        except (TypeError, ValueError) as e:
            raise EncoderError(f"clap-hf: unreadable sampling_rate/max_length_s/projection_dim in {str(self.path)!r} ({e})") from None
        self.padding = str(self._pre.get("padding", "repeatpad"))
        if self.padding not in ("repeatpad", "repeat", "pad"):
            raise EncoderError(f"clap-hf: processor padding {self.padding!r} in {str(self.path)!r} is not repeatpad/repeat/pad")
        hop = self.window_samples if hop_seconds is None else int(round(float(hop_seconds) * self.sample_rate))
        if not 1 <= hop <= self.window_samples:
            raise EncoderError(f"clap-hf hop_seconds must be in (0, {self.window_samples / self.sample_rate:g}] s, got {hop_seconds!r}")
        self.hop_samples = hop
        self.min_samples = int(round(float(min_seconds) * self.sample_rate))
        if not 1 <= self.min_samples <= self.window_samples:
            raise EncoderError(f"clap-hf min_seconds must be in (0, {self.window_samples / self.sample_rate:g}] s, got {min_seconds!r}")
        if int(max_text_tokens) < 2:
            raise EncoderError(f"clap-hf max_text_tokens must be >= 2, got {max_text_tokens!r}")
        self.max_text_tokens = int(max_text_tokens)
        self.device = torch.device(device)
        self._model: Any = None
        self._fe: Any = None
        self._tok: Any = None
        self._id: str | None = None

    # -- loading -------------------------------------------------------------------------------
    def weight_files(self) -> list[Path]:
        """The weight files of the checkpoint (raises naming the directory if there are none)."""
        for name in CLAP_HF_WEIGHT_FILES:
            p = self.path / name
            if p.is_file():
                if name.endswith(".index.json"):
                    shards = sorted(set(_read_json(p, "weights index").get("weight_map", {}).values()))
                    return [p] + [self.path / s for s in shards]
                return [p]
        raise EncoderError(
            f"clap-hf checkpoint directory {str(self.path)!r} has no weights (looked for {', '.join(CLAP_HF_WEIGHT_FILES)}); "
            f"it must be {_LAYOUT}"
        )

    def _load_audio_side(self) -> tuple[Any, Any]:
        if self._model is None:
            tf = _import_transformers()
            self.weight_files()
            try:
                fe = tf.ClapFeatureExtractor.from_pretrained(str(self.path), local_files_only=True)
                model = tf.ClapModel.from_pretrained(str(self.path), local_files_only=True)
            except (OSError, ValueError, RuntimeError, KeyError) as e:
                raise EncoderError(f"clap-hf: cannot load the CLAP model from {str(self.path)!r} ({type(e).__name__}: "
                                   f"{str(e)[:400]}); it must be {_LAYOUT}") from None
            if int(model.config.projection_dim) != self.dim:
                raise EncoderError(f"clap-hf: {str(self.path)!r} projection_dim {model.config.projection_dim} != {self.dim}")
            self._fe = fe
            self._model = model.eval().to(self.device)
        return self._model, self._fe

    def _load_tokenizer(self) -> Any:
        if self._tok is None:
            tf = _import_transformers()
            try:
                self._tok = tf.AutoTokenizer.from_pretrained(str(self.path), local_files_only=True)
            except (OSError, ValueError, KeyError) as e:
                raise EncoderError(f"clap-hf: cannot load the tokenizer from {str(self.path)!r} ({type(e).__name__}: "
                                   f"{str(e)[:300]}); it must be {_LAYOUT}") from None
        return self._tok

    @property
    def id(self) -> str:
        if self._id is None:
            h = sha256_json([sha256_file(p) for p in self.weight_files()])
            cfg = sha256_json({"config": self._config, "preprocessor": self._pre})
            self._id = (
                f"clap-hf:{self.path.name}:sr{self.sample_rate}:win{self.window_samples}:hop{self.hop_samples}:"
                f"pad-{self.padding}:{'fusion' if self.fusion else 'unfused'}:cfg-{cfg[:12]}:weights-sha256-{h[:16]}"
            )
        return self._id

    # -- audio -----------------------------------------------------------------------------------
    def windows(self, audio: torch.Tensor, sample_rate: int) -> list[list[np.ndarray]]:
        """``audio[B, C, T]`` -> per clip, its windows (float64 mono at ``sample_rate``, unpadded)."""
        self.check_input(audio, sample_rate)
        if audio.shape[0] == 0:
            return []
        self.check_length(audio, int(sample_rate))
        validate_audio(audio, "audio given to the clap-hf encoder")
        x = audio.detach().to("cpu", torch.float64).mean(dim=1)
        x = resample(x, int(sample_rate), self.sample_rate)
        if x.shape[-1] < self.min_samples:
            self.check_length(x[:, None], self.sample_rate)
        T, W = x.shape[-1], self.window_samples
        starts = [0] if T <= W else list(range(0, T - W + 1, self.hop_samples))
        xs = x.numpy()
        return [[xs[b, s : s + W] for s in starts] for b in range(xs.shape[0])]

    def features(self, windows: list[np.ndarray]) -> dict[str, torch.Tensor]:
        """Windows of one clip -> the model inputs ``input_features`` and ``is_longer`` (deterministic)."""
        _, fe = self._load_audio_side()
        trunc = "fusion" if self.fusion else "rand_trunc"  # neither crops: no window exceeds max_length
        state = np.random.get_state()  # "fusion" draws a random is_longer flag from NumPy's global RNG
        try:
            out = fe(windows, sampling_rate=self.sample_rate, max_length=self.window_samples, truncation=trunc,
                     padding=self.padding, return_tensors="pt")
        finally:
            np.random.set_state(state)
        is_longer = torch.zeros(len(windows), 1, dtype=torch.bool)  # each window is one chunk
        return {"input_features": out["input_features"].to(torch.float32), "is_longer": is_longer}

    def embed_audio(self, audio: torch.Tensor, sample_rate: int) -> list[torch.Tensor]:
        """``audio[B, C, T]`` -> B tensors ``[windows, dim]`` (float32, CPU, unit norm)."""
        per_clip = self.windows(audio, sample_rate)
        if not per_clip:
            return []
        model, _ = self._load_audio_side()
        out = []
        with torch.no_grad():
            for wins in per_clip:
                f = self.features(wins)
                emb = model.get_audio_features(
                    input_features=f["input_features"].to(self.device), is_longer=f["is_longer"].to(self.device)
                ).pooler_output
                out.append(emb.float().cpu().contiguous())
        return out

    # -- text ------------------------------------------------------------------------------------
    def embed_text(self, texts: Sequence[str]) -> torch.Tensor:
        """Texts -> ``[N, dim]`` (float32, CPU, unit norm). Equal-length token sequences run together, unpadded."""
        if isinstance(texts, str) or not all(isinstance(t, str) for t in texts):
            raise EncoderError("clap-hf embed_text expects a list of strings")
        texts = list(texts)
        if not texts:
            return torch.zeros(0, self.dim)
        model, _ = self._load_audio_side()
        tok = self._load_tokenizer()
        ids = tok(texts, truncation=True, max_length=self.max_text_tokens, padding=False)["input_ids"]
        groups: dict[int, list[int]] = {}
        for i, seq in enumerate(ids):
            groups.setdefault(len(seq), []).append(i)
        out = torch.zeros(len(texts), self.dim)
        with torch.no_grad():
            for idx in groups.values():
                input_ids = torch.tensor([ids[i] for i in idx], dtype=torch.long, device=self.device)
                emb = model.get_text_features(input_ids=input_ids, attention_mask=torch.ones_like(input_ids)).pooler_output
                out[idx] = emb.float().cpu()
        return out


def make_encoder(context: Any, **kwargs: Any) -> Encoder:
    """The registry's factory (entry ``clap_hf:make_encoder``): the context's device unless one is given."""
    if "path" not in kwargs:
        raise EncoderError(f"encoder 'clap-hf' needs a path option: {_LAYOUT}")
    if "device" not in kwargs and getattr(context, "device", None) is not None:
        kwargs["device"] = context.device
    return ClapHFEncoder(**kwargs)
