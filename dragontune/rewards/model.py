"""Model-based instance rewards: ``clap_score``, ``tag_score`` and ``aesthetics``.

- ``clap_score``: cosine between a clip's audio embedding (mean of its frames, L2-normalised) and its
  prompt's text embedding, for any cross-modal encoder (default ``clap-mini``).
- ``tag_score``: a text-audio score from real pretrained models. The prompt is embedded with MiniLM
  (mean-pooled, normalised) and compared with each musicnn tag name; the weights
  ``softmax(cos(prompt, tag) / temperature)`` (optionally over the ``top_k`` most similar tags only) average
  the clip's musicnn tag probabilities. Negated tags ("no vocals", ...) are left out: their names are
  similar to the very prompts they contradict.
- ``aesthetics``: the predicted 1-5 rating of :mod:`dragontune.aesthetics` (default: the packaged predictor).

A clip that cannot be scored (too short, non-finite audio, empty prompt) gets NaN and a warning; a
configuration problem (audio-only encoder for clap_score, missing weights) raises. A silent clip (peak below
``SILENT_DBFS``) matches no prompt: ``clap_score`` and ``tag_score`` give it the bottom of their range (-1, 0)
with a warning: their encoders map silence to one fixed point that lies close to some prompts (measured on 32
clean corpus clips with their captions: silence's clap-mini cosine reached 0.69, above the lowest clean clip's
0.52; musicnn tags silence "guitar, quiet, classical, piano", and silence out-scored its own clean clip on
tag_score for 21 of the 32 captions). The aesthetics predictor learns silence from its training data instead.
"""

from __future__ import annotations

import os
from typing import Any, Sequence

import torch
import torch.nn.functional as F

from dragontune.audio import validate_audio
from dragontune.encoders.base import Encoder
from dragontune.errors import AudioError, ConfigError, DataError, EncoderError, RewardError
from dragontune.rewards.base import Reward, RewardResult, ScoringBatch
from dragontune.rewards.registry import RewardContext, check_options
from dragontune.utils import log

__all__ = ["ClapScoreReward", "TagScoreReward", "AestheticsReward", "SILENT_DBFS"]

#: a clip whose peak is below this level is silent for the prompt-matching rewards
SILENT_DBFS = -60.0


def _floor_silent(name: str, batch: ScoringBatch, scores: torch.Tensor, ok: Sequence[int], floor: float) -> None:
    """Give the silent clips among ``ok`` the score ``floor`` (in place), with one warning naming them."""
    thr = 10.0 ** (SILENT_DBFS / 20.0)
    silent = [i for i in ok if float(batch.audio[i].abs().max()) < thr]
    if silent:
        scores[silent] = floor
        log.warning("reward %s: clip(s) %s are silent (peak below %g dBFS) and score %g, the bottom of the range",
                    name, silent[:20], SILENT_DBFS, floor)


def _check_batch(name: str, batch: ScoringBatch) -> None:
    audio = batch.audio
    if not isinstance(audio, torch.Tensor) or audio.dim() != 3:
        shape = tuple(audio.shape) if isinstance(audio, torch.Tensor) else type(audio).__name__
        raise AudioError(f"reward {name!r} expects audio [N, C, T]; got {shape}")
    if audio.shape[0] != len(batch.prompts):
        raise RewardError(f"reward {name!r}: batch has {audio.shape[0]} clips but {len(batch.prompts)} prompts")


def _clip_ok(name: str, audio: torch.Tensor, i: int, min_seconds: float, sample_rate: int) -> bool:
    """False (with a warning) when clip ``i`` cannot be scored: non-finite samples or shorter than the minimum."""
    try:
        validate_audio(audio, f"clip {i}")
    except AudioError as e:
        log.warning("reward %s: clip %d cannot be scored (%s); its score is NaN", name, i, e)
        return False
    if audio.shape[-1] < min_seconds * sample_rate:
        log.warning(
            "reward %s: clip %d (%.3f s) is shorter than the encoder's minimum of %.3f s; its score is NaN",
            name, i, audio.shape[-1] / sample_rate, min_seconds,
        )
        return False
    return True


def _scorable(name: str, batch: ScoringBatch, encoder: Encoder, need_prompt: bool) -> tuple[torch.Tensor, list[int]]:
    """Check the batch; return NaN-filled scores ``[N]`` and the indices of clips (and prompts) that can be scored."""
    _check_batch(name, batch)
    n = batch.audio.shape[0]
    min_s = encoder.min_samples / encoder.sample_rate
    ok = [i for i in range(n) if (not need_prompt or _prompt_ok(name, batch.prompts[i], i))
          and _clip_ok(name, batch.audio[i], i, min_s, batch.sample_rate)]
    return torch.full((n,), float("nan"), dtype=torch.float64), ok


def _prompt_ok(name: str, prompt: Any, i: int) -> bool:
    if isinstance(prompt, str) and prompt.strip():
        return True
    log.warning("reward %s: clip %d has an empty or non-text prompt (%r); its score is NaN", name, i, prompt)
    return False


class ClapScoreReward(Reward):
    """instance: ``cos(normalise(mean of audio frames), text embedding of the prompt)``, in [-1, 1]."""

    name = "clap_score"
    reward_class = "instance"
    higher_is_better = True

    def __init__(self, encoder: Encoder):
        if not getattr(encoder, "cross_modal", False):
            raise RewardError(
                f"reward 'clap_score' needs a cross-modal encoder (e.g. 'clap-mini'); {encoder.name!r} embeds audio only"
            )
        self.encoder = encoder

    def __call__(self, batch: ScoringBatch) -> RewardResult:
        scores, ok = _scorable(self.name, batch, self.encoder, need_prompt=True)
        if not ok:
            return RewardResult(scores=scores, name=self.name)
        text = self.encoder.embed_text([batch.prompts[i] for i in ok]).to(torch.float64)
        shared = batch.embeddings.get(self.encoder.id) if len(ok) == len(batch) else None
        if shared is None and len(ok) == len(batch):
            try:  # the whole batch at once, kept for other rewards with this encoder
                shared = batch.embeddings[self.encoder.id] = list(self.encoder.embed_audio(batch.audio, batch.sample_rate))
            except (EncoderError, AudioError):
                shared = None  # fall back to one clip at a time, which names the clip that fails
        for j, i in enumerate(ok):
            try:
                frames = shared[i] if shared is not None else \
                    self.encoder.embed_audio(batch.audio[i : i + 1], batch.sample_rate)[0]
            except (EncoderError, AudioError) as e:
                log.warning("reward %s: clip %d cannot be embedded (%s); its score is NaN", self.name, i, e)
                continue
            a = F.normalize(frames.to(torch.float64).mean(dim=0), dim=0)
            scores[i] = float(a @ F.normalize(text[j], dim=0))
        _floor_silent(self.name, batch, scores, [i for i in ok if scores[i] == scores[i]], -1.0)
        return RewardResult(scores=scores, name=self.name)


class TagScoreReward(Reward):
    """instance: musicnn tag probabilities weighted by the prompt's MiniLM similarity to each tag name.

    ``score = sum_t w_t p_t(clip)`` with ``w = softmax(cos(prompt, tag_t) / temperature)`` over the kept
    tags (the ``top_k`` most similar when given). Scores lie in [0, 1].
    """

    name = "tag_score"
    reward_class = "instance"
    higher_is_better = True

    def __init__(self, model: str = "MTT_musicnn", temperature: float = 0.05, top_k: int | None = None,
                 text_encoder: str = "minilm", tagger: Any = None, text: Any = None):
        if not (isinstance(temperature, (int, float)) and temperature > 0):
            raise ConfigError(f"tag_score temperature must be > 0, got {temperature!r}")
        if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1):
            raise ConfigError(f"tag_score top_k must be a positive int or None, got {top_k!r}")
        if tagger is None:
            from dragontune.encoders.musicnn import MusicnnEncoder

            tagger = MusicnnEncoder(model=model, layer="taggram")
        if text is None:
            from dragontune.text import build_text_encoder

            text = build_text_encoder(text_encoder)
        self.tagger = tagger
        self.text = text
        self.temperature = float(temperature)
        self.top_k = top_k
        names = list(tagger.tag_names)
        self.kept = [i for i, t in enumerate(names) if not t.lower().startswith("no ")]
        self.tags = [names[i] for i in self.kept]
        if top_k is not None and top_k > len(self.tags):
            raise ConfigError(f"tag_score top_k={top_k} exceeds the {len(self.tags)} usable tags")
        self._tag_emb: torch.Tensor | None = None

    def _embed_texts(self, texts: Sequence[str]) -> torch.Tensor:
        hidden, mask = self.text.encode(list(texts))
        m = mask.to(hidden.dtype)[..., None]
        pooled = (hidden * m).sum(1) / m.sum(1).clamp(min=1.0)
        return F.normalize(pooled.to(torch.float64), dim=-1)

    def tag_weights(self, prompts: Sequence[str]) -> torch.Tensor:
        """``[B, kept tags]`` weights (rows sum to 1) for non-empty prompts."""
        if self._tag_emb is None:
            self._tag_emb = self._embed_texts(self.tags)
        sim = self._embed_texts(prompts) @ self._tag_emb.T
        if self.top_k is not None:
            thr = sim.topk(self.top_k, dim=1).values[:, -1:]
            sim = sim.masked_fill(sim < thr, float("-inf"))
        return torch.softmax(sim / self.temperature, dim=1)

    def __call__(self, batch: ScoringBatch) -> RewardResult:
        scores, ok = _scorable(self.name, batch, self.tagger, need_prompt=True)
        if not ok:
            return RewardResult(scores=scores, name=self.name)
        w = self.tag_weights([batch.prompts[i] for i in ok])
        for j, i in enumerate(ok):
            try:
                probs = self.tagger.tag_probabilities(batch.audio[i : i + 1], batch.sample_rate)[0]
            except (EncoderError, AudioError) as e:
                log.warning("reward %s: clip %d cannot be tagged (%s); its score is NaN", self.name, i, e)
                continue
            scores[i] = float(w[j] @ probs.to(torch.float64)[self.kept])
        _floor_silent(self.name, batch, scores, [i for i in ok if scores[i] == scores[i]], 0.0)
        return RewardResult(scores=scores, name=self.name)


class AestheticsReward(Reward):
    """instance: the aesthetics predictor's rating (about 1-5, not clipped)."""

    name = "aesthetics"
    reward_class = "instance"
    higher_is_better = True

    def __init__(self, predictor: Any = None, path: str | os.PathLike | None = None):
        if predictor is None:
            from dragontune.aesthetics import load_aesthetics

            predictor = load_aesthetics(path)
        self.predictor = predictor
        _ = predictor.encoder  # load (and id-check) the encoder now: a configuration error raises here

    def __call__(self, batch: ScoringBatch) -> RewardResult:
        scores, ok = _scorable(self.name, batch, self.predictor.encoder, need_prompt=False)
        if ok:
            scores[ok] = self.predictor.predict(batch.audio[ok], batch.sample_rate)
        return RewardResult(scores=scores, name=self.name)


# -- registry factories -------------------------------------------------------------------------------------


def clap_score_factory(spec: dict, ctx: RewardContext) -> Reward:
    """The registry's factory of ``clap_score`` (entry ``rewards.model:clap_score_factory``)."""
    check_options(spec, {"encoder"}, "clap_score")
    enc_spec = spec.get("encoder", "clap-mini")
    return ClapScoreReward(ctx.encoder(enc_spec))


def tag_score_factory(spec: dict, ctx: RewardContext) -> Reward:
    """The registry's factory of ``tag_score`` (entry ``rewards.model:tag_score_factory``)."""
    check_options(spec, {"model", "temperature", "top_k", "text_encoder"}, "tag_score")
    return TagScoreReward(**spec)


def aesthetics_factory(spec: dict, ctx: RewardContext) -> Reward:
    """The registry's factory of ``aesthetics`` (entry ``rewards.model:aesthetics_factory``)."""
    check_options(spec, {"path"}, "aesthetics")
    path = spec.get("path")
    if path is not None and ctx.base_dir is not None and not os.path.isabs(path):
        path = os.path.join(ctx.base_dir, path)
    try:
        return AestheticsReward(path=path)
    except DataError as e:
        raise RewardError(f"reward 'aesthetics': {e}") from None
