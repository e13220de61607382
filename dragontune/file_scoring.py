"""Scoring audio files with a reward (`dragontune score`): every clip at its own length.

A clip's score must not depend on the other files in the folder, so clips are never padded to a common
length: clips of equal length are embedded together, every other clip alone, and set rewards then combine
the per-clip embeddings. Files are checked first, each error or warning naming the file: unreadable, truncated
(a WAV header promising more data than the file holds), shorter than the encoder's minimum, or with samples
beyond full scale.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

import torch

from dragontune.errors import AudioError, DragontuneError, RewardError
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
