"""Embedding-based rewards: per-song FAD, full-set FAD, KAD, Vendi, cosine to the exemplar centroid.

All scores are higher-is-better: distances are negated. Set rewards (``dist_to_dist``) report the set
score ``r(D)`` and leave-one-out credit ``r(D) - r(D minus i)`` for every clip; their per-sample ``scores``
are those credits.

Pooling: a clip's *frames* are its encoder windows; its *clip vector* is the mean of its frames.
``per_song_fad`` fits a Gaussian to one clip's frames and compares it with the exemplar *frame* Gaussian
(fadtk's per-song FAD). ``fad`` (default ``pooling="clip"``) compares the Gaussian of the batch's clip
vectors with the exemplar *clip* Gaussian: every clip weighs the same whatever its length, and leaving one
clip out is a rank-one downdate (fast exact credit). ``pooling="frames"`` pools all frames as fadtk does;
its credits then cost one eigenvalue problem per clip. ``kad``, ``vendi`` and ``centroid`` use clip vectors.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch

from dragontune.audio import validate_audio
from dragontune.encoders.base import Encoder
from dragontune.errors import AudioError, EncoderError, RewardError
from dragontune.metrics import (
    GaussianStats,
    MetricError,
    centroid_similarity,
    fad_from_embeddings,
    fad_leave_one_out,
    frechet_distance,
    gaussian_stats,
    kad_leave_one_out,
    median_bandwidth,
    per_song_fad,
    vendi_leave_one_out,
)
from dragontune.rewards.base import Reward, RewardResult, ScoringBatch
from dragontune.rewards.exemplars import ExemplarStats
from dragontune.utils import log

SILENT_PEAK = 1e-6


class EmbeddingReward(Reward):
    """Common part: validate the batch, embed it, check embeddings against the exemplar statistics."""

    needs_exemplars = True

    def __init__(self, encoder: Encoder, exemplars: ExemplarStats | None = None, device: str | torch.device = "cpu"):
        if self.needs_exemplars and exemplars is None:
            raise RewardError(f"reward {self.name!r} needs exemplars (audio_dir, files, corpus or texts)")
        self.encoder = encoder
        self.device = torch.device(device)
        self.exemplars = exemplars.to(self.device) if exemplars is not None else None
        if self.exemplars is not None and self.exemplars.dim != encoder.dim and encoder.dim:
            raise RewardError(self._dim_message(encoder.dim))

    def _dim_message(self, d: int) -> str:
        ex = self.exemplars
        assert ex is not None
        return (
            f"reward {self.name!r}: embeddings from encoder {self.encoder.name!r} (id {self.encoder.id}) have "
            f"dimension {d}, but the exemplar statistics were computed with encoder {ex.encoder_name!r} "
            f"(id {ex.encoder_id}) and have dimension {ex.dim}; rebuild the exemplar set with the same encoder"
        )

    def __call__(self, batch: ScoringBatch) -> RewardResult:
        return self.score(batch, self.embed(batch))

    def score(self, batch: ScoringBatch, frames: list[torch.Tensor]) -> RewardResult:
        """Score a batch whose frames (from :meth:`embed`) are already computed."""
        raise NotImplementedError

    def embed(self, batch: ScoringBatch, raw: list[torch.Tensor] | None = None) -> list[torch.Tensor]:
        """Frames ``[n_b, d]`` (float64, on ``self.device``) for each clip, checked against the exemplars.
        ``raw``: the encoder's output for this batch if already computed (:meth:`encode`)."""
        frames = self.encode(batch) if raw is None else raw
        out = []
        for i, f in enumerate(frames):
            f = f.detach().to(device=self.device, dtype=torch.float64)
            if f.dim() != 2:
                raise EncoderError(f"encoder {self.encoder.name!r} returned shape {tuple(f.shape)} for clip {i}")
            if not torch.isfinite(f).all():
                raise RewardError(
                    f"reward {self.name!r}: encoder {self.encoder.name!r} produced NaN/Inf embeddings for "
                    f"generated clip {i} (prompt {batch.prompts[i]!r})"
                )
            if self.exemplars is not None and f.shape[1] != self.exemplars.dim:
                raise RewardError(self._dim_message(f.shape[1]))
            out.append(f)
        return out

    def encode(self, batch: ScoringBatch) -> list[torch.Tensor]:
        """Validate the audio and run the encoder: one ``[frames, dim]`` tensor per clip."""
        audio = batch.audio
        if audio.dim() != 3:
            raise AudioError(f"reward {self.name!r} expects audio [N, C, T]; got shape {tuple(audio.shape)}")
        if audio.shape[0] != len(batch.prompts):
            raise RewardError(f"batch has {audio.shape[0]} clips but {len(batch.prompts)} prompts")
        for i in range(audio.shape[0]):
            validate_audio(audio[i], f"generated clip {i}")
        peak = audio.detach().abs().amax(dim=(1, 2))
        silent = (peak < SILENT_PEAK).nonzero().flatten().tolist()
        if silent:
            log.warning("reward %s: generated clip(s) %s are silent; scoring them as they are", self.name, silent[:20])
        self.encoder.check_length(audio, batch.sample_rate)
        with torch.no_grad():
            frames = self.encoder.embed_audio(audio, batch.sample_rate)
        if len(frames) != audio.shape[0]:
            raise EncoderError(f"encoder {self.encoder.name!r} returned {len(frames)} clips for {audio.shape[0]}")
        return list(frames)

    def clip_vectors(self, frames: list[torch.Tensor]) -> torch.Tensor:
        return torch.stack([f.mean(0) for f in frames])


class PerSongFADReward(EmbeddingReward):
    """instance_to_dist: ``-FAD(frames of clip i, exemplar frame Gaussian)``."""

    name = "per_song_fad"
    reward_class = "instance_to_dist"
    higher_is_better = False

    def score(self, batch: ScoringBatch, frames: list[torch.Tensor]) -> RewardResult:
        for i, f in enumerate(frames):
            if f.shape[0] < 2:
                t = batch.audio.shape[-1]
                raise RewardError(
                    f"per-song FAD: clip {i} ({t} samples = {t / batch.sample_rate:.3f} s at {batch.sample_rate} Hz) "
                    f"gives {f.shape[0]} frame(s) with encoder {self.encoder.name!r}; a Gaussian needs at least 2. "
                    f"The encoder's minimum clip is {self.encoder.min_samples} samples "
                    f"({self.encoder.min_samples / self.encoder.sample_rate:.3f} s) for one frame: use longer clips"
                )
        assert self.exemplars is not None
        d = per_song_fad(frames, self.exemplars.frames, name="generated clip")
        return RewardResult(scores=-d.cpu(), name=self.name)


class CentroidReward(EmbeddingReward):
    """instance_to_dist: cosine of each clip vector to the exemplar centroid (audio or text exemplars)."""

    name = "centroid"
    reward_class = "instance_to_dist"
    higher_is_better = True

    def score(self, batch: ScoringBatch, frames: list[torch.Tensor]) -> RewardResult:
        assert self.exemplars is not None
        x = self.clip_vectors(frames)
        try:
            s = centroid_similarity(x, self.exemplars.centroid)
        except MetricError as e:
            raise RewardError(f"reward {self.name!r}: {e}".replace("embeddings: sample", "generated clip")) from None
        return RewardResult(scores=s.cpu(), name=self.name)


class _SetReward(EmbeddingReward):
    reward_class = "dist_to_dist"

    def _result(self, full: torch.Tensor, minus: torch.Tensor) -> RewardResult:
        sign = 1.0 if self.higher_is_better else -1.0
        credit = (sign * (full - minus)).cpu()
        return RewardResult(scores=credit, set_score=float(sign * full), credit=credit, name=self.name)

    def _need(self, n: int, k: int) -> None:
        if n < k:
            raise RewardError(f"set reward {self.name!r} needs at least {k} clips per batch for leave-one-out credit; got {n}")


class FADReward(_SetReward):
    """dist_to_dist: ``-FAD(batch, exemplars)`` with leave-one-out credit per clip."""

    name = "fad"
    higher_is_better = False

    def __init__(self, encoder: Encoder, exemplars: ExemplarStats, device: str | torch.device = "cpu",
                 pooling: str = "clip"):
        if pooling not in ("clip", "frames"):
            raise RewardError(f"fad pooling must be 'clip' or 'frames'; got {pooling!r}")
        self.pooling = pooling
        super().__init__(encoder, exemplars, device)

    def score(self, batch: ScoringBatch, frames: list[torch.Tensor]) -> RewardResult:
        assert self.exemplars is not None
        self._need(len(frames), 3)
        if self.pooling == "clip":
            loo = fad_leave_one_out(self.clip_vectors(frames), self.exemplars.clips, name="generated clip vectors")
            return self._result(loo.full, loo.minus)
        return self._result(*_frames_fad_loo(frames, self.exemplars.frames))


def _frames_fad_loo(frames: list[torch.Tensor], ref: GaussianStats) -> tuple[torch.Tensor, torch.Tensor]:
    """FAD of all frames pooled, and with each clip's frames removed (exact statistics downdates, one
    d x d eigenvalue problem per clip)."""
    parts = [gaussian_stats(f) for f in frames]
    total = parts[0]
    for p in parts[1:]:
        total = total.merge(p)
    full = fad_from_embeddings(torch.cat(frames), ref, name="generated frames")
    sq = ref.sqrt()
    minus = []
    for p in parts:
        n = total.n - p.n
        if n < 2:
            raise RewardError("fad (frames pooling): leaving one clip out leaves fewer than 2 frames")
        delta = p.mu - total.mu
        mu = total.mu - delta * (p.n / n)
        # reverse of Chan's merge: M2_rest = M2 - M2_i - d d^T n_i n_rest / n_total with d = mu_i - mu_rest
        d2 = p.mu - mu
        m2 = total.m2() - p.m2() - torch.outer(d2, d2) * (p.n * n / total.n)
        cov = m2 / (n - 1)
        minus.append(frechet_distance(mu, 0.5 * (cov + cov.T), ref.mu, ref.cov, sqrt_cov2=sq))
    return full, torch.stack(minus)


class KADReward(_SetReward):
    """dist_to_dist: ``-KAD(batch clip vectors, exemplar sample)``; bandwidth from the exemplars (median)."""

    name = "kad"
    higher_is_better = False

    def __init__(self, encoder: Encoder, exemplars: ExemplarStats, device: str | torch.device = "cpu",
                 bandwidth: float | None = None):
        super().__init__(encoder, exemplars, device)
        assert self.exemplars is not None
        if self.exemplars.sample.shape[0] < 2:
            raise RewardError("kad needs at least 2 exemplar clips")
        self.bandwidth = torch.as_tensor(
            bandwidth if bandwidth is not None else median_bandwidth(self.exemplars.sample), dtype=torch.float64
        ).to(self.device)

    def score(self, batch: ScoringBatch, frames: list[torch.Tensor]) -> RewardResult:
        assert self.exemplars is not None
        x = self.clip_vectors(frames)
        self._need(x.shape[0], 3)
        loo = kad_leave_one_out(x, self.exemplars.sample, bandwidth=self.bandwidth)
        return self._result(loo.full, loo.minus)


class VendiReward(_SetReward):
    """dist_to_dist: Vendi score (order ``q``) of the batch's clip vectors, cosine kernel; no exemplars."""

    name = "vendi"
    higher_is_better = True
    needs_exemplars = False

    def __init__(self, encoder: Encoder, exemplars: ExemplarStats | None = None,
                 device: str | torch.device = "cpu", q: float = 1.0):
        if exemplars is not None:
            raise RewardError("vendi measures the diversity of the generated set and takes no exemplars")
        if not q >= 0:
            raise RewardError(f"vendi q must be >= 0; got {q}")
        self.q = float(q)
        super().__init__(encoder, None, device)

    def score(self, batch: ScoringBatch, frames: list[torch.Tensor]) -> RewardResult:
        x = self.clip_vectors(frames)
        self._need(x.shape[0], 2)
        try:
            loo = vendi_leave_one_out(x, q=self.q)
        except MetricError as e:
            raise RewardError(f"reward 'vendi': {e}".replace("embeddings: sample", "generated clip")) from None
        return self._result(loo.full, loo.minus)


class WeightedReward(Reward):
    """``sum_k w_k r_k``: per-sample scores (credits for set rewards) and set scores are weighted sums.

    The class is the widest of the components (``dist_to_dist`` > ``instance_to_dist`` > ``instance``);
    ``credit`` is present when any component is a set reward (instance components contribute their scores).
    Components sharing one encoder object embed the batch once. Scales differ between rewards: choose weights accordingly (no normalisation is applied).
    """

    name = "weighted"

    def __init__(self, components: Sequence[tuple[float, Reward]]):
        if not components:
            raise RewardError("WeightedReward needs at least one (weight, reward) pair")
        for w, r in components:
            if not isinstance(r, Reward) or not math.isfinite(float(w)):
                raise RewardError(f"bad weighted component ({w!r}, {r!r}): need (finite float, Reward)")
        self.components = [(float(w), r) for w, r in components]
        order = ["instance", "instance_to_dist", "dist_to_dist"]
        self.reward_class = max((r.reward_class for _, r in self.components), key=order.index)  # type: ignore[assignment]
        self.higher_is_better = True
        self.name = " + ".join(f"{w:g}*{r.name}" for w, r in self.components)

    def __call__(self, batch: ScoringBatch) -> RewardResult:
        scores = None
        set_score = 0.0
        any_set = False
        encoded: dict[int, list[torch.Tensor]] = {}  # one encoder pass per distinct encoder object
        for w, r in self.components:
            if isinstance(r, EmbeddingReward):
                key = id(r.encoder)
                if key not in encoded:
                    encoded[key] = r.encode(batch)
                res = r.score(batch, r.embed(batch, encoded[key]))
            else:
                res = r(batch)
            s = res.scores.to(torch.float64) * w
            scores = s if scores is None else scores + s
            if res.set_score is not None:
                any_set = True
                set_score += w * float(res.set_score)
            else:
                fin = res.scores[torch.isfinite(res.scores)]
                set_score += w * (float(fin.mean()) if fin.numel() else float("nan"))
        assert scores is not None
        return RewardResult(
            scores=scores, set_score=set_score if any_set else None, credit=scores.clone() if any_set else None,
            name=self.name,
        )
