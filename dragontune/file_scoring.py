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
from dragontune.rewards.base import Reward, RewardResult, ScoringBatch
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


def _stub(clips: Sequence[torch.Tensor], sample_rate: int, prompts: Sequence[str]) -> ScoringBatch:
    """A batch of the right shape for messages only: the audio is a zero-cost expanded view, never read."""
    T = max(c.shape[-1] for c in clips)
    return ScoringBatch(torch.zeros(1, 1, 1).expand(len(clips), clips[0].shape[0], T), sample_rate, list(prompts))


def _component(r: Reward, clips, sample_rate, prompts, encoded: dict, labels: Sequence[str]) -> RewardResult:
    from dragontune.rewards.builtin import EmbeddingReward, PerSongFADReward

    n = len(clips)
    groups = _groups(clips)
    if isinstance(r, EmbeddingReward):
        key = id(r.encoder)
        if key not in encoded:  # one encoder pass per encoder object, per group of equal-length clips
            raw: list[torch.Tensor | None] = [None] * n
            for g in groups:
                batch = ScoringBatch(torch.stack([clips[i] for i in g]), sample_rate, [prompts[i] for i in g])
                for i, f in zip(g, r.encode(batch)):
                    raw[i] = f
            encoded[key] = raw
        if isinstance(r, PerSongFADReward):  # a Gaussian of one clip's frames needs two of them
            for i, f in enumerate(encoded[key]):
                if f.shape[0] < 2:
                    raise AudioError(f"audio file {labels[i]!r} ({clips[i].shape[-1] / sample_rate:.3f} s) gives "
                                     f"{f.shape[0]} frame(s) with encoder {r.encoder.name!r}; per-song FAD needs at "
                                     "least 2: remove it or use longer clips")
        stub = _stub(clips, sample_rate, prompts)
        return r.score(stub, r.embed(stub, encoded[key]))
    if r.reward_class == "dist_to_dist":
        raise RewardError(f"reward {r.name!r} scores sets but cannot take clips of different lengths; trim the "
                          "files to one length")
    scores = torch.full((n,), float("nan"), dtype=torch.float64)
    for g in groups:
        res = r(ScoringBatch(torch.stack([clips[i] for i in g]), sample_rate, [prompts[i] for i in g]))
        scores[g] = res.scores.to(torch.float64)
    return RewardResult(scores=scores, name=r.name)


@torch.no_grad()
def score_clips(reward: Reward, clips: Sequence[torch.Tensor], sample_rate: int, prompts: Sequence[str],
                labels: Sequence[str] | None = None) -> RewardResult:
    """Score ``clips`` (each ``[C, T_i]``), every one at its own length; same result as scoring each alone for
    per-sample rewards, and set rewards see every clip's own embedding. ``labels`` name the clips in errors."""
    from dragontune.rewards.builtin import WeightedReward

    if len(clips) != len(prompts):
        raise RewardError(f"{len(clips)} clips but {len(prompts)} prompts")
    labels = list(labels) if labels is not None else [f"clip {i}" for i in range(len(clips))]
    encoded: dict = {}
    if not isinstance(reward, WeightedReward):
        return _component(reward, clips, sample_rate, prompts, encoded, labels)
    scores, set_score, any_set = None, 0.0, False  # the weighted sum, as WeightedReward forms it
    for w, r in reward.components:
        res = _component(r, clips, sample_rate, prompts, encoded, labels)
        s = res.scores.to(torch.float64) * w
        scores = s if scores is None else scores + s
        if res.set_score is not None:
            any_set = True
            set_score += w * float(res.set_score)
        else:
            fin = res.scores[torch.isfinite(res.scores)]
            set_score += w * (float(fin.mean()) if fin.numel() else float("nan"))
    return RewardResult(scores=scores, set_score=set_score if any_set else None,
                        credit=scores.clone() if any_set else None, name=reward.name)
