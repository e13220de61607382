"""Scoring audio files with a reward (`dragontune score`): every clip at its own length.

A clip's score must not depend on the other files in the folder, so clips are never padded to a common
length: clips of equal length are embedded together, every other clip alone, and set rewards then combine
the per-clip embeddings. Files are checked first, each error or warning naming the file: unreadable, truncated
(a WAV header promising more data than the file holds), shorter than the encoder's minimum, or with samples
beyond full scale.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Sequence

import torch

from dragontune.errors import AudioError, DataError, DragontuneError, RewardError
from dragontune.rewards.base import Features, Reward, RewardResult, ScoringBatch
from dragontune.utils import log

MAX_GROUP_SAMPLES = 1 << 24  # clips of one length embedded together, at most this many samples at once


def parse_reward_spec(text: str) -> dict:
    """``--reward``: a registered name, or an inline YAML/JSON mapping ``{name: ..., ...}``."""
    import yaml

    text = text.strip()
    if not text.startswith("{"):
        if not text:
            raise DragontuneError("--reward is empty; give a reward name (e.g. per_song_fad) or a YAML mapping")
        return {"name": text}
    try:
        spec = yaml.safe_load(text)
    except yaml.YAMLError as e:
        msg = str(e).replace("\n", " ")
        raise DragontuneError(f"--reward {text!r} is not valid YAML ({msg}); write it like "
                              "'{name: fad, encoder: codec}'") from None
    if not isinstance(spec, dict) or not str(spec.get("name", "")).strip():
        raise DragontuneError(f"--reward {text!r} must be a mapping with a 'name', e.g. '{{name: fad, encoder: codec}}'")
    return spec


def _min_seconds(reward: Reward) -> float:
    comps = getattr(reward, "components", None) or [(1.0, reward)]
    need = 0.0
    for _, r in comps:
        enc = getattr(r, "encoder", None)
        if enc is not None and getattr(enc, "min_samples", 0):
            need = max(need, enc.min_samples / enc.sample_rate)
    return need


def load_clips(files: Sequence[Path], sample_rate: int, reward: Reward | None = None) -> list[torch.Tensor]:
    """Read every file (mono, resampled); refuse unreadable, truncated or too-short files, naming them; warn
    about samples beyond full scale."""
    from dragontune.audio import load_audio

    need = _min_seconds(reward) if reward is not None else 0.0
    clips = []
    for f in files:
        x = load_audio(f, sample_rate)  # AudioError names the file (missing, corrupt, truncated, NaN)
        secs = x.shape[-1] / sample_rate
        if secs < need:
            raise AudioError(f"audio file {str(f)!r} is {secs:.3f} s long, shorter than the {need:.3f} s the reward's "
                             "encoder needs for one frame; remove it or use longer clips")
        peak = float(x.abs().max())
        if peak > 1.0:
            n = int((x.abs() > 1.0).sum())
            log.warning("audio file %s: %d samples (%.2f %%) beyond full scale (peak %.2f); scored as they are",
                        f, n, 100.0 * n / x.numel(), peak)
        clips.append(x)
    return clips


def _groups(clips: Sequence[torch.Tensor]) -> list[list[int]]:
    """Indices of clips of equal shape, in chunks of at most MAX_GROUP_SAMPLES samples."""
    by_shape: dict[tuple, list[int]] = {}
    for i, c in enumerate(clips):
        by_shape.setdefault(tuple(c.shape), []).append(i)
    out = []
    for shape, idx in by_shape.items():
        per = max(1, MAX_GROUP_SAMPLES // max(1, math.prod(shape)))
        out += [idx[j:j + per] for j in range(0, len(idx), per)]
    return out


@torch.no_grad()
def score_clips(reward: Reward, clips: Sequence[torch.Tensor], sample_rate: int, prompts: Sequence[str],
                labels: Sequence[str] | None = None) -> RewardResult:
    """Score ``clips`` (each ``[C, T_i]``), every one at its own length: clips of equal length are embedded
    together (``reward.features``), the features joined in file order and scored once, so per-sample scores are
    those of each clip alone and set rewards see every clip's own embedding. ``labels`` name clips in errors."""
    if len(clips) != len(prompts):
        raise RewardError(f"{len(clips)} clips but {len(prompts)} prompts")
    labels = list(labels) if labels is not None else [f"clip {i}" for i in range(len(clips))]
    groups = _groups(clips)
    parts, order = [], []
    for g in groups:
        batch = ScoringBatch(torch.stack([clips[i] for i in g]), sample_rate, [prompts[i] for i in g])
        try:
            parts.append(reward.features(batch))
        except RewardError as e:
            if len(g) == 1:  # name the file the reward could not take
                raise RewardError(f"{labels[g[0]]}: {e}") from None
            raise
        order += g
    try:
        feats = Features.cat(parts)
    except RewardError:  # a reward that only implements __call__: per-sample scores per group
        if reward.is_set_reward and len(groups) > 1:
            raise RewardError(f"reward {reward.name!r} scores sets but cannot take clips of different lengths; "
                              "trim the files to one length") from None
        scores = torch.full((len(clips),), float("nan"), dtype=torch.float64)
        for g, f in zip(groups, parts):
            scores[g] = reward.score(f).scores.to(torch.float64)
        return RewardResult(scores=scores, name=reward.name)
    inverse = torch.empty(len(order), dtype=torch.long)
    inverse[torch.tensor(order)] = torch.arange(len(order))
    return reward.score(feats.subset(inverse))


# ----------------------------------------------------------------------------------------------------------
# which files, and the whole command


def _read_records(path: Path, keys: tuple[str, ...]) -> list[dict]:
    """Rows of ``samples.jsonl`` (one JSON object a line) or the ``pairs`` of an ``index.json``, each with
    ``keys``; a malformed file is named with its line and the fix instead of a traceback."""
    fix = "regenerate it (dragontune sample / eval) or score the folder with --audio-dir"
    text = path.read_text(encoding="utf-8", errors="replace")
    lines = list(enumerate(text.splitlines(), 1)) if path.suffix == ".jsonl" else [(1, text)]
    docs = []
    for ln, x in lines:
        if not x.strip():
            continue
        try:
            docs.append(json.loads(x))
        except json.JSONDecodeError as e:
            raise DataError(f"{path} line {ln if path.suffix == '.jsonl' else e.lineno} is not valid JSON "
                                  f"({e.msg}); {fix}") from None
    rows = docs if path.suffix == ".jsonl" else (docs[0].get("pairs") if docs and isinstance(docs[0], dict) else None)
    if not rows or not isinstance(rows, list):
        raise DataError(f"{path} lists no clips; {fix}")
    for i, r in enumerate(rows):
        if not isinstance(r, dict) or any(k not in r for k in keys):
            raise DataError(f"{path}: record {i + 1} lacks {' or '.join(keys)} ({str(r)[:80]}); {fix}")
    return rows


def clips_to_score(run: str | os.PathLike | None = None, audio_dir: str | os.PathLike | None = None,
                   prompt: str | None = None) -> tuple[list[Path], list[str]]:
    """The files to score and their prompts: the records of a ``run`` folder (``samples.jsonl`` of ``dragontune
    sample``, else a DRAGON run's ``eval/audio/index.json``: the fine-tuned model's clips, else its ``*.wav``), or
    every ``.wav``/``.flac`` of ``audio_dir``; ``prompt`` for every clip without one of its own."""
    if run:
        run = Path(run)
        if not run.is_dir():
            raise DataError(f"--run {str(run)!r} is not a directory")
        idx = run / "eval" / "audio" / "index.json"
        if (run / "samples.jsonl").is_file():  # written by `dragontune sample`
            rows = _read_records(run / "samples.jsonl", ("file", "prompt"))
            files, prompts = [run / r["file"] for r in rows], [r["prompt"] for r in rows]
        elif idx.is_file():  # a DRAGON run directory: the fine-tuned model's evaluation clips
            pairs = _read_records(idx, ("model", "prompt"))
            files, prompts = [idx.parent / p["model"] for p in pairs], [p["prompt"] for p in pairs]
        else:
            files = sorted(run.glob("*.wav"))
            prompts = [prompt or ""] * len(files)
    else:
        d = Path(audio_dir)
        if not d.is_dir():
            raise DataError(f"--audio-dir {str(d)!r} is not a directory")
        files = sorted(p for p in d.iterdir() if p.suffix.lower() in (".wav", ".flac"))
        prompts = [prompt or ""] * len(files)
    if not files:
        raise DataError("no audio files to score (.wav or .flac)")
    return files, prompts


def score_files(spec: dict, files: Sequence[Path], prompts: Sequence[str], out_path: str | os.PathLike,
                checkpoint: str | None = None) -> tuple[str, str | None]:
    """Score ``files`` with the reward ``spec`` and write ``out_path`` (strict JSON: NaN as null).

    The generator ``checkpoint`` (default: the committed baseline; a Stable Audio pipeline folder gives its VAE to
    encoder ``vae``) supplies the codec and the sample rate. Returns ``(table, failure)``: the printable table, and
    why no clip could be scored (every score NaN), or None.
    """
    from dragontune.models.loading import load_diffusion_model
    from dragontune.rewards.registry import RewardContext, build_reward, format_result_table
    from dragontune.utils import atomic_write_json

    model = load_diffusion_model(checkpoint)
    reward = build_reward(spec, RewardContext(codec=model.codec))
    sr = model.sample_rate
    clips = load_clips(files, sr, reward)
    result = score_clips(reward, clips, sr, prompts, [str(f) for f in files])
    out = {"reward": spec, "name": result.name, "files": [str(f) for f in files],
           "scores": [float(x) for x in result.scores], "set_score": result.set_score,
           "credit": None if result.credit is None else [float(x) for x in result.credit]}
    atomic_write_json(out_path, out)
    failure = None
    if not any(math.isfinite(x) for x in out["scores"]) and (result.set_score is None
                                                             or not math.isfinite(result.set_score)):
        missing = " (it needs a prompt per clip: pass --prompt or score a --run with prompts)" \
            if all(not p for p in prompts) else ""
        failure = (f"reward {result.name!r} could not score any of the {len(files)} clips: every score is "
                   f"NaN{missing}; see the warnings above")
    return format_result_table(result, [f.name for f in files]), failure
