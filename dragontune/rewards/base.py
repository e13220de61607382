"""The Reward API (DESIGN.md layer 7): one protocol for every reward class.

A reward scores a batch of generated clips held in memory. Scores are always *higher is better*
(distances are negated). The protocol has two halves, so that a batch is embedded **once** and any subset of
it is scored afterwards without embedding again:

* ``features(batch) -> Features``: the expensive part (run the encoder, or the model-based scorer);
* ``score(features) -> RewardResult``: per-sample scores, and for set rewards (class ``dist_to_dist``) the set
  score and a per-sample leave-one-out credit ``credit[i] = r(D) - r(D minus i)``;
* ``set_value(features) -> float``: the score of that set of features as a whole (a set reward's metric, or
  the mean per-sample score); ``features.subset(idx)`` and ``Features.cat([...])`` give any subset or union
  (one clip, the batch, a pool of earlier generations plus a candidate);
* ``pool_credit(pool, candidates) -> [N]``: how the set score changes when each candidate joins the pool.

``reward(batch)`` is ``reward.score(reward.features(batch))``. A third-party reward may implement only
``__call__``; the base class then treats its features as the batch itself (subsets are re-scored) or, for
per-sample rewards, as the per-sample scores.
"""

from __future__ import annotations

import abc
import dataclasses
from typing import Any, Callable, Literal, Sequence

import torch

from dragontune.errors import RewardError

RewardClass = Literal["instance", "instance_to_dist", "dist_to_dist"]


@dataclasses.dataclass
class RewardResult:
    #: per-sample scores, higher is better, float64 ``[N]``; NaN marks a sample that could not be scored.
    #: For set rewards with no per-sample score this is the leave-one-out credit.
    scores: torch.Tensor
    #: set score r(D) for dist_to_dist rewards, else None
    set_score: float | None = None
    #: leave-one-out credit per sample for dist_to_dist rewards, else None
    credit: torch.Tensor | None = None
    #: reward name, for logs
    name: str = ""


class ScoringBatch:
    """What a reward sees: generated clips plus the prompts that produced them.

    Give ``audio[N, C, T]``, or the generator's ``latents[N, C, F]`` with the codec that decodes them: then
    ``audio`` is decoded on first access only, so a reward whose encoder *is* that codec scores the latents
    directly and nothing is decoded. ``embeddings`` holds each encoder's output for this batch (keyed by the
    encoder's id), so rewards sharing an encoder embed the batch once.
    """

    def __init__(self, audio: torch.Tensor | None = None, sample_rate: int | None = None,
                 prompts: Sequence[str] = (), *, latents: torch.Tensor | None = None, codec: Any = None,
                 decode: Callable[[torch.Tensor], torch.Tensor] | None = None):
        if audio is None and latents is None:
            raise RewardError("a ScoringBatch needs audio or latents")
        if latents is not None and codec is None:
            raise RewardError("a ScoringBatch of latents needs the codec that decodes them")
        self._audio = audio
        self.latents = latents
        self.codec = codec
        self._decode = decode or (codec.decode if codec is not None else None)
        self.sample_rate = int(sample_rate if sample_rate is not None else codec.sample_rate)
        self.prompts = list(prompts)
        self.embeddings: dict[str, list[torch.Tensor]] = {}
        #: number of times audio was decoded from latents (0 or 1; for tests and timing)
        self.n_decoded = 0

    @property
    def audio(self) -> torch.Tensor:
        if self._audio is None:
            self._audio = self._decode(self.latents).detach().float().cpu()
            self.n_decoded += 1
        return self._audio

    @property
    def has_audio(self) -> bool:
        return self._audio is not None

    def __len__(self) -> int:
        return len(self.prompts)

    def subset(self, idx: Sequence[int] | torch.Tensor) -> "ScoringBatch":
        """The clips ``idx`` as a new batch (audio if already decoded, else latents)."""
        i = torch.as_tensor(idx, dtype=torch.long).flatten()
        prompts = [self.prompts[int(j)] for j in i]
        if self._audio is not None:
            return ScoringBatch(self._audio[i], self.sample_rate, prompts)
        return ScoringBatch(None, self.sample_rate, prompts, latents=self.latents[i], codec=self.codec,
                            decode=self._decode)


@dataclasses.dataclass
class Features:
    """A batch as one reward sees it after the expensive step: one row per clip.

    Exactly the fields the reward needs are set: ``clips[N, d]`` (clip vectors, float64), ``frames`` (one
    ``[n_i, d]`` tensor per clip), ``scores[N]`` (per-sample scores of instance-type rewards), ``batch`` (a
    third-party reward that re-scores sub-batches), ``parts`` (one Features per component of a weighted
    reward). ``prompts`` travel along for rewards that read them.
    """

    n: int
    clips: torch.Tensor | None = None
    frames: list[torch.Tensor] | None = None
    scores: torch.Tensor | None = None
    batch: ScoringBatch | None = None
    parts: tuple["Features", ...] | None = None
    prompts: list[str] | None = None

    def __len__(self) -> int:
        return self.n

    def subset(self, idx: Sequence[int] | torch.Tensor) -> "Features":
        i = torch.as_tensor(idx, dtype=torch.long).flatten()
        il = i.tolist()
        return Features(
            n=len(il),
            clips=self.clips[i] if self.clips is not None else None,
            frames=[self.frames[j] for j in il] if self.frames is not None else None,
            scores=self.scores[i] if self.scores is not None else None,
            batch=self.batch.subset(i) if self.batch is not None else None,
            parts=tuple(p.subset(i) for p in self.parts) if self.parts is not None else None,
            prompts=[self.prompts[j] for j in il] if self.prompts is not None else None,
        )

    @staticmethod
    def cat(items: Sequence["Features"]) -> "Features":
        """The union of feature sets (in order). Third-party batch features cannot be concatenated."""
        items = [f for f in items if f.n > 0] or list(items[:1])
        if not items:
            raise RewardError("Features.cat needs at least one feature set")
        if len(items) == 1:
            return items[0]
        first = items[0]
        if first.batch is not None:
            raise RewardError("features of a reward that only implements __call__ cannot be pooled; "
                              "implement features()/score() (see dragontune.rewards.base)")

        def join(name):
            vals = [getattr(f, name) for f in items]
            if any(v is None for v in vals):
                return None
            return torch.cat(vals) if isinstance(vals[0], torch.Tensor) else sum(vals, [])

        parts = None
        if first.parts is not None:
            parts = tuple(Features.cat([f.parts[k] for f in items]) for k in range(len(first.parts)))
        return Features(n=sum(f.n for f in items), clips=join("clips"), frames=join("frames"),
                        scores=join("scores"), parts=parts, prompts=join("prompts"))

    # -- storage (the pool is part of a checkpoint) ---------------------------------------------------------

    def tensors(self, prefix: str = "") -> dict[str, torch.Tensor]:
        """Flat name -> tensor map (frames as one concatenated tensor plus their lengths)."""
        out: dict[str, torch.Tensor] = {f"{prefix}n": torch.tensor([self.n], dtype=torch.int64)}
        if self.clips is not None:
            out[f"{prefix}clips"] = self.clips.detach().cpu().contiguous()
        if self.frames is not None:
            out[f"{prefix}frames"] = (torch.cat(self.frames).detach().cpu().contiguous() if self.frames
                                      else torch.zeros(0, 0, dtype=torch.float64))
            out[f"{prefix}frame_counts"] = torch.tensor([f.shape[0] for f in self.frames], dtype=torch.int64)
        if self.scores is not None:
            out[f"{prefix}scores"] = self.scores.detach().cpu().contiguous()
        if self.batch is not None:
            raise RewardError("features of a reward that only implements __call__ cannot be stored")
        if self.parts is not None:
            out[f"{prefix}n_parts"] = torch.tensor([len(self.parts)], dtype=torch.int64)
            for k, p in enumerate(self.parts):
                out.update(p.tensors(f"{prefix}part{k}."))
        return out

    @staticmethod
    def from_tensors(t: dict[str, torch.Tensor], prefix: str = "") -> "Features":
        n = int(t[f"{prefix}n"][0])
        frames = None
        if f"{prefix}frame_counts" in t:
            counts = t[f"{prefix}frame_counts"].tolist()
            frames = list(torch.split(t[f"{prefix}frames"], counts)) if counts else []
        parts = None
        if f"{prefix}n_parts" in t:
            parts = tuple(Features.from_tensors(t, f"{prefix}part{k}.") for k in range(int(t[f"{prefix}n_parts"][0])))
        return Features(n=n, clips=t.get(f"{prefix}clips"), frames=frames, scores=t.get(f"{prefix}scores"),
                        parts=parts)

    def nbytes(self) -> int:
        return sum(v.numel() * v.element_size() for v in self.tensors().values())


def nanmean(x: torch.Tensor) -> float:
    x = x[torch.isfinite(x)]
    return float(x.mean()) if x.numel() else float("nan")


class Reward(abc.ABC):
    name: str = "reward"
    reward_class: RewardClass = "instance"
    #: True if larger raw metric is better; scores are always reported higher-is-better
    higher_is_better: bool = True

    @property
    def is_set_reward(self) -> bool:
        return self.reward_class == "dist_to_dist"

    def __call__(self, batch: ScoringBatch) -> RewardResult:
        if type(self).features is Reward.features:
            raise TypeError(f"reward {type(self).__name__} must implement __call__ or features() and score()")
        return self.score(self.features(batch))

    # -- the protocol ----------------------------------------------------------------------------------------

    def features(self, batch: ScoringBatch) -> Features:
        """Embed (or score) the batch once. Default for a reward that implements only ``__call__``."""
        if self.is_set_reward:
            return Features(n=len(batch), batch=batch, prompts=list(batch.prompts))
        return Features(n=len(batch), scores=self(batch).scores.to(torch.float64), prompts=list(batch.prompts))

    def score(self, feats: Features) -> RewardResult:
        """Per-sample scores (and set score + leave-one-out credit for set rewards) from features."""
        if feats.batch is not None:
            return type(self).__call__(self, feats.batch)
        if feats.scores is None:
            raise RewardError(f"reward {self.name!r}: these features carry no scores")
        return RewardResult(scores=feats.scores, name=self.name)

    def set_value(self, feats: Features) -> float:
        """Score of this set of features as a whole: the set metric, or the mean per-sample score."""
        if self.is_set_reward:
            r = self.score(feats)
            return float(r.set_score) if r.set_score is not None else float("nan")
        return nanmean(self.score(feats).scores)

    def pool_credit(self, pool: Features, candidates: Features) -> torch.Tensor:
        """``r(pool + {i}) - r(pool)`` for every candidate i (float64 ``[N]``). Brute force here; the built-in
        set rewards override it with exact fast updates of the pool's statistics."""
        base = self.set_value(pool)
        return torch.tensor([self.set_value(Features.cat([pool, candidates.subset([i])])) - base
                             for i in range(candidates.n)], dtype=torch.float64)

    def set_score(self, batch: ScoringBatch) -> float:
        """Score of the whole batch (dist_to_dist) or the mean per-sample score (others)."""
        return self.set_value(self.features(batch))

    def scores_latents_of(self, codec_id: str) -> bool:
        """True when this reward scores latents of codec ``codec_id`` without decoding them to audio."""
        return False
