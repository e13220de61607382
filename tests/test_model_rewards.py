"""Model-based instance rewards: clap_score, tag_score, aesthetics (finite scores, ranking, per-clip NaN)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dragontune.data.synth import clip_row, make_config, render_clip
from dragontune.encoders.clap_mini import ClapMiniEncoder, default_clap_mini_path
from dragontune.errors import ConfigError, RewardError
from dragontune.rewards.base import ScoringBatch
from dragontune.rewards.model import AestheticsReward, ClapScoreReward, TagScoreReward
from dragontune.rewards.registry import build_reward

SR = 16000
HAVE_CLAP = default_clap_mini_path().is_file()


def _clips(instrument: str, n: int, seed: int) -> torch.Tensor:
    cfg = make_config({"instruments": [instrument], "degraded_fraction": 0.0})
    return torch.stack([torch.from_numpy(render_clip(clip_row(i, seed, cfg), SR)).float()[None] for i in range(n)])


@pytest.fixture(scope="module")
def piano_drums() -> torch.Tensor:
    """[piano, piano, drums, drums], 4 s each, from a seed not used for training."""
    return torch.cat([_clips("piano", 2, 777), _clips("drums", 2, 777)])


PIANO, DRUMS = "a gentle piano melody", "an energetic drum beat"


def _matching_margin(reward, audio: torch.Tensor) -> np.ndarray:
    """score(clip, its own instrument's prompt) - score(clip, the other prompt), per clip."""
    n = audio.shape[0] // 2
    right = [PIANO] * n + [DRUMS] * n
    wrong = [DRUMS] * n + [PIANO] * n
    s_right = reward(ScoringBatch(audio, SR, right)).scores.numpy()
    s_wrong = reward(ScoringBatch(audio, SR, wrong)).scores.numpy()
    assert np.isfinite(s_right).all() and np.isfinite(s_wrong).all()
    return s_right - s_wrong


@pytest.mark.skipif(not HAVE_CLAP, reason="packaged clap-mini checkpoint missing")
def test_clap_score_ranks_matching_prompt(piano_drums):
    r = build_reward("clap_score")
    assert isinstance(r, ClapScoreReward) and r.reward_class == "instance"
    res = r(ScoringBatch(piano_drums, SR, [PIANO] * 4))
    assert res.scores.dtype == torch.float64 and ((res.scores >= -1) & (res.scores <= 1)).all()
    margin = _matching_margin(r, piano_drums)
    assert margin.mean() > 0.1 and (margin > 0).all(), margin


@pytest.mark.skipif(not HAVE_CLAP, reason="packaged clap-mini checkpoint missing")
def test_clap_score_nan_for_bad_clips_only(piano_drums):
    r = ClapScoreReward(ClapMiniEncoder())
    audio = piano_drums[:3].clone()
    audio[1, 0, 100] = float("nan")
    res = r(ScoringBatch(audio, SR, [PIANO, PIANO, "  "]))
    assert torch.isfinite(res.scores[0]) and torch.isnan(res.scores[1:]).all()
    short = r(ScoringBatch(piano_drums[:, :, : SR], SR, [PIANO] * 4))
    assert torch.isnan(short.scores).all()
    with pytest.raises(RewardError, match="clips but"):
        r(ScoringBatch(piano_drums, SR, [PIANO]))


def test_clap_score_needs_cross_modal_encoder():
    from dragontune.encoders.musicnn import MusicnnEncoder

    with pytest.raises(RewardError, match="cross-modal"):
        ClapScoreReward(MusicnnEncoder())
    with pytest.raises(RewardError, match="unknown option"):
        build_reward({"name": "clap_score", "encodr": "clap-mini"})


def test_tag_score_ranks_matching_prompt(piano_drums):
    r = build_reward("tag_score")
    assert isinstance(r, TagScoreReward) and r.reward_class == "instance"
    assert not any(t.startswith("no ") for t in r.tags)
    w = r.tag_weights([PIANO, DRUMS])
    assert torch.allclose(w.sum(1), torch.ones(2, dtype=w.dtype))
    assert r.tags[int(w[0].argmax())] == "piano" and r.tags[int(w[1].argmax())] == "drums"
    audio = piano_drums[[0, 2]]  # one piano, one drums clip: 4 musicnn passes
    margin = _matching_margin(r, audio)
    assert (margin > 0).all(), margin


def test_tag_score_options_and_nan():
    with pytest.raises(ConfigError):
        TagScoreReward(temperature=0.0)
    with pytest.raises(ConfigError):
        TagScoreReward(top_k=0)
    r = TagScoreReward(top_k=3)
    w = r.tag_weights([PIANO])
    assert int((w > 0).sum()) == 3
    res = r(ScoringBatch(torch.zeros(2, 1, SR), SR, [PIANO, PIANO]))  # 1 s: shorter than musicnn's 3 s
    assert torch.isnan(res.scores).all()


@pytest.mark.skipif(not HAVE_CLAP, reason="packaged checkpoints missing")
def test_aesthetics_reward_prefers_clean():
    from dragontune.aesthetics import default_aesthetics_path

    if not default_aesthetics_path().is_file():
        pytest.skip("packaged aesthetics predictor missing")
    r = build_reward("aesthetics")
    assert isinstance(r, AestheticsReward) and r.reward_class == "instance"
    cfg = make_config({"instruments": ["pluck"], "degraded_fraction": 0.0})
    row = clip_row(0, 4242, cfg)
    clean = render_clip(row, SR)
    noisy = render_clip(dict(row, quality="noise", quality_strength=0.9), SR)
    audio = torch.from_numpy(np.stack([clean, noisy, clean])).float()[:, None]
    audio[2, 0, 5] = float("inf")
    s = r(ScoringBatch(audio, SR, ["x", "x", "x"])).scores
    assert torch.isfinite(s[:2]).all() and torch.isnan(s[2]) and s[0] > s[1]
    assert torch.isnan(r(ScoringBatch(audio[:2, :, :SR], SR, ["x", "x"])).scores).all()  # 1 s < musicnn's 3 s
    with pytest.raises(RewardError, match="unknown option"):
        build_reward({"name": "aesthetics", "pth": "x"})
