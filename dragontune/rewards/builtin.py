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
from dragontune.encoders.codec import CodecEncoder
from dragontune.metrics import (
    GaussianStats,
    LeaveOneOut,
    MetricError,
    centroid_similarity,
    fad_from_embeddings,
    fad_join,
    fad_leave_one_out,
    frechet_distance,
    gaussian_stats,
    kad,
    kad_join,
    kad_leave_one_out,
    median_bandwidth,
    per_song_fad,
    vendi_join,
    vendi_leave_one_out,
    vendi_score,
)
from dragontune.rewards.base import Features, Reward, RewardResult, ScoringBatch, nanmean
from dragontune.rewards.exemplars import ExemplarStats
from dragontune.utils import log

SILENT_PEAK = 1e-6
#: a credit (difference of two set metrics) smaller than this times the metrics' size is rounding, not signal
CREDIT_RTOL = 1e-10


def credit_of(full: torch.Tensor, others: torch.Tensor, sign: float) -> torch.Tensor:
    """``sign * (full - others)`` with differences at rounding level set to exactly 0.

    A set of identical clips (all silent, say) gives every clip the same credit, 0, in exact arithmetic; in
    float64 the differences come out as +-1e-16 x the metric, and a builder would rank clips by that noise. So
    ``|full - others_i| <= CREDIT_RTOL * max(|full|, |others_i|)`` counts as no difference (real credits of sets
    measured on 64 corpus clips, codec and clap-mini encoders: >= 1.4e-4 of the metric). NaN stays NaN: the
    builders drop it with a warning, or refuse a round whose credits are all NaN.
    """
    full = torch.as_tensor(full, dtype=others.dtype, device=others.device)
    delta = full - others
    tol = CREDIT_RTOL * torch.maximum(full.abs().expand_as(others), others.abs())
    delta = torch.where(delta.abs() <= tol, torch.zeros_like(delta), delta)
    return sign * delta


class EmbeddingReward(Reward):
    """Common part: validate the batch, embed it once, check embeddings against the exemplar statistics.

    Features are the clips' frames and clip vectors (float64, on ``self.device``); subclasses score them.
    """

    needs_exemplars = True
    #: what score() reads: "clips" (clip vectors) or "frames" (every clip's frames)
    uses = "clips"

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

    def scores_latents_of(self, codec_id: str) -> bool:
        return isinstance(self.encoder, CodecEncoder) and self.encoder.codec.id == codec_id

    def features(self, batch: ScoringBatch) -> Features:
        frames = self.embed(batch)
        return Features(n=len(frames), clips=torch.stack([f.mean(0) for f in frames]) if frames else None,
                        frames=frames if self.uses == "frames" else None, prompts=list(batch.prompts))

    def embed(self, batch: ScoringBatch) -> list[torch.Tensor]:
        """Frames ``[n_b, d]`` (float64, on ``self.device``) for each clip, checked against the exemplars."""
        out = []
        for i, f in enumerate(self.encode(batch)):
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
        """The encoder's output for the batch, one ``[frames, dim]`` tensor per clip; computed once per batch and
        encoder (kept in ``batch.embeddings``). Latents of the encoder's own codec are pooled without decoding."""
        key = self.encoder.id
        if key in batch.embeddings:
            return batch.embeddings[key]
        if batch.latents is not None and self.scores_latents_of(batch.codec.id):
            frames = self.encoder.embed_latent(batch.latents)
        else:
            frames = self._encode_audio(batch)
        batch.embeddings[key] = list(frames)
        return batch.embeddings[key]

    def _encode_audio(self, batch: ScoringBatch) -> list[torch.Tensor]:
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


class PerSongFADReward(EmbeddingReward):
    """instance_to_dist: ``-FAD(frames of clip i, exemplar frame Gaussian)``."""

    name = "per_song_fad"
    reward_class = "instance_to_dist"
    higher_is_better = False
    uses = "frames"

    def features(self, batch: ScoringBatch) -> Features:
        feats = super().features(batch)
        for i, f in enumerate(feats.frames):
            if f.shape[0] < 2:
                t = batch.audio.shape[-1] if batch.has_audio else None
                length = f"({t} samples = {t / batch.sample_rate:.3f} s at {batch.sample_rate} Hz) " if t else ""
                raise RewardError(
                    f"per-song FAD: clip {i} {length}gives {f.shape[0]} frame(s) with encoder {self.encoder.name!r}; "
                    f"a Gaussian needs at least 2. The encoder's minimum clip is {self.encoder.min_samples} samples "
                    f"({self.encoder.min_samples / self.encoder.sample_rate:.3f} s) for one frame: use longer clips"
                )
        return feats

    def score(self, feats: Features) -> RewardResult:
        assert self.exemplars is not None and feats.frames is not None
        d = per_song_fad(feats.frames, self.exemplars.frames, name="generated clip")
        return RewardResult(scores=-d.cpu(), name=self.name)


class CentroidReward(EmbeddingReward):
    """instance_to_dist: cosine of each clip vector to the exemplar centroid (audio or text exemplars)."""

    name = "centroid"
    reward_class = "instance_to_dist"
    higher_is_better = True

    def score(self, feats: Features) -> RewardResult:
        assert self.exemplars is not None
        try:
            s = centroid_similarity(feats.clips, self.exemplars.centroid)
        except MetricError as e:
            raise RewardError(f"reward {self.name!r}: {e}".replace("embeddings: sample", "generated clip")) from None
        return RewardResult(scores=s.cpu(), name=self.name)


class _SetReward(EmbeddingReward):
    """A metric of the whole set. ``set_value`` scores any non-empty subset; a single clip is a point mass
    (FAD: zero covariance, exact; KAD: the within-set term of one sample is k(x, x) = 1; Vendi: 1)."""

    reward_class = "dist_to_dist"
    #: fewest clips for leave-one-out credit
    min_loo = 3

    def _sign(self) -> float:
        return 1.0 if self.higher_is_better else -1.0

    def score(self, feats: Features) -> RewardResult:
        if feats.n < self.min_loo:
            raise RewardError(f"set reward {self.name!r} needs at least {self.min_loo} clips per batch for "
                              f"leave-one-out credit; got {feats.n}")
        loo = self._loo(feats)
        credit = credit_of(loo.full, loo.minus, self._sign()).cpu()
        return RewardResult(scores=credit, set_score=float(self._sign() * loo.full), credit=credit, name=self.name)

    def set_value(self, feats: Features) -> float:
        if feats.n < 1:
            raise RewardError(f"set reward {self.name!r}: cannot score an empty set")
        return self._sign() * float(self._metric(feats))

    def pool_credit(self, pool: Features, candidates: Features) -> torch.Tensor:
        if pool.n < 2:
            raise RewardError(f"set reward {self.name!r}: pool credit needs a pool of at least 2 clips; got {pool.n}")
        return (-credit_of(self._metric(pool), self._joined(pool, candidates), self._sign())).cpu()

    def _loo(self, feats: Features):
        raise NotImplementedError

    def _metric(self, feats: Features) -> torch.Tensor:
        raise NotImplementedError

    def _joined(self, pool: Features, candidates: Features) -> torch.Tensor:
        """Metric of ``pool + {candidate i}`` for every candidate (exact, from the pool's statistics)."""
        raise NotImplementedError


class FADReward(_SetReward):
    """dist_to_dist: ``-FAD(batch, exemplars)`` with leave-one-out credit per clip."""

    name = "fad"
    higher_is_better = False

    def __init__(self, encoder: Encoder, exemplars: ExemplarStats, device: str | torch.device = "cpu",
                 pooling: str = "clip"):
        if pooling not in ("clip", "frames"):
            raise RewardError(f"fad pooling must be 'clip' or 'frames'; got {pooling!r}")
        self.pooling = pooling
        self.uses = "frames" if pooling == "frames" else "clips"
        super().__init__(encoder, exemplars, device)

    @property
    def _ref(self) -> GaussianStats:
        assert self.exemplars is not None
        return self.exemplars.frames if self.pooling == "frames" else self.exemplars.clips

    def _rows(self, feats: Features) -> torch.Tensor:
        return torch.cat(feats.frames) if self.pooling == "frames" else feats.clips

    def _loo(self, feats: Features):
        if self.pooling == "clip":
            return fad_leave_one_out(feats.clips, self._ref, name="generated clip vectors")
        return LeaveOneOut(*_frames_fad_loo(feats.frames, self._ref))

    def _metric(self, feats: Features) -> torch.Tensor:
        pts = self._rows(feats)
        if pts.shape[0] >= 2:
            return fad_from_embeddings(pts, self._ref, name="generated clip vectors")
        mu = pts[0]
        zero = torch.zeros(mu.numel(), mu.numel(), dtype=mu.dtype, device=mu.device)
        return frechet_distance(mu, zero, self._ref.mu, self._ref.cov, sqrt_cov2=self._ref.sqrt())

    def _joined(self, pool: Features, candidates: Features) -> torch.Tensor:
        if self.pooling == "frames":
            adds = [gaussian_stats(f) for f in candidates.frames]
        else:
            adds = candidates.clips
        return fad_join(gaussian_stats(self._rows(pool)), adds, self._ref)


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

    def _loo(self, feats: Features):
        return kad_leave_one_out(feats.clips, self.exemplars.sample, bandwidth=self.bandwidth)

    def _metric(self, feats: Features) -> torch.Tensor:
        return kad(feats.clips, self.exemplars.sample, bandwidth=self.bandwidth, single_ok=True)

    def _joined(self, pool: Features, candidates: Features) -> torch.Tensor:
        return kad_join(pool.clips, candidates.clips, self.exemplars.sample, bandwidth=self.bandwidth)


class VendiReward(_SetReward):
    """dist_to_dist: Vendi score (order ``q``) of the batch's clip vectors, cosine kernel; no exemplars."""

    name = "vendi"
    higher_is_better = True
    needs_exemplars = False
    min_loo = 2

    def __init__(self, encoder: Encoder, exemplars: ExemplarStats | None = None,
                 device: str | torch.device = "cpu", q: float = 1.0):
        if exemplars is not None:
            raise RewardError("vendi measures the diversity of the generated set and takes no exemplars")
        if not q >= 0:
            raise RewardError(f"vendi q must be >= 0; got {q}")
        self.q = float(q)
        super().__init__(encoder, None, device)

    def _wrap(self, fn, *a):
        try:
            return fn(*a)
        except MetricError as e:
            raise RewardError(f"reward 'vendi': {e}".replace("embeddings: sample", "generated clip")) from None

    def _loo(self, feats: Features):
        return self._wrap(vendi_leave_one_out, feats.clips, self.q)

    def _metric(self, feats: Features) -> torch.Tensor:
        return self._wrap(vendi_score, feats.clips, self.q)

    def _joined(self, pool: Features, candidates: Features) -> torch.Tensor:
        return self._wrap(vendi_join, pool.clips, candidates.clips, self.q)


class WeightedReward(Reward):
    """``sum_k w_k r_k``: per-sample scores (credits for set rewards) and set scores are weighted sums.

    The class is the widest of the components (``dist_to_dist`` > ``instance_to_dist`` > ``instance``);
    ``credit`` is present when any component is a set reward (instance components contribute their scores).
    Components sharing an encoder embed the batch once (through ``ScoringBatch.embeddings``). Scales differ
    between rewards: choose weights accordingly (no normalisation is applied).
    """

    name = "weighted"
    #: a sum is of the most distributional class among its components
    CLASS_ORDER = ("instance", "instance_to_dist", "dist_to_dist")

    def __init__(self, components: Sequence[tuple[float, Reward]]):
        if not components:
            raise RewardError("WeightedReward needs at least one (weight, reward) pair")
        for w, r in components:
            if not isinstance(r, Reward) or not math.isfinite(float(w)):
                raise RewardError(f"bad weighted component ({w!r}, {r!r}): need (finite float, Reward)")
        self.components = [(float(w), r) for w, r in components]
        self.reward_class = max((r.reward_class for _, r in self.components),  # type: ignore[assignment]
                                key=self.CLASS_ORDER.index)
        self.higher_is_better = True
        self.name = " + ".join(f"{w:g}*{r.name}" for w, r in self.components)

    def scores_latents_of(self, codec_id: str) -> bool:
        return all(r.scores_latents_of(codec_id) for _, r in self.components)

    def features(self, batch: ScoringBatch) -> Features:
        return Features(n=len(batch), parts=tuple(r.features(batch) for _, r in self.components),
                        prompts=list(batch.prompts))

    def score(self, feats: Features) -> RewardResult:
        assert feats.parts is not None
        scores = torch.zeros(feats.n, dtype=torch.float64)
        set_score, any_set = 0.0, False
        for (w, r), f in zip(self.components, feats.parts):
            res = r.score(f)
            scores = scores + w * res.scores.to(torch.float64)
            if res.set_score is not None:
                any_set = True
                set_score += w * float(res.set_score)
            else:
                set_score += w * nanmean(res.scores)
        return RewardResult(scores=scores, set_score=set_score if any_set else None,
                            credit=scores.clone() if any_set else None, name=self.name)

    def set_value(self, feats: Features) -> float:
        assert feats.parts is not None
        return sum(w * r.set_value(f) for (w, r), f in zip(self.components, feats.parts))

    def pool_credit(self, pool: Features, candidates: Features) -> torch.Tensor:
        """Set components: their pool credit; per-sample components: the candidate's score (what it adds)."""
        assert pool.parts is not None and candidates.parts is not None
        out = torch.zeros(candidates.n, dtype=torch.float64)
        for (w, r), fp, fc in zip(self.components, pool.parts, candidates.parts):
            out += w * (r.pool_credit(fp, fc) if r.is_set_reward else r.score(fc).scores.to(torch.float64))
        return out
