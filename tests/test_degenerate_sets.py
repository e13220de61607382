"""Set rewards on degenerate sets (all silent, all identical clips): credits are finite and exactly zero, no
builder makes demonstrations out of rounding noise, and a credit builder never trains on a NaN credit."""

from __future__ import annotations

import logging
import math

import pytest
import torch

from dragontune.audio import save_wav
from dragontune.codecs import LogMelCodec
from dragontune.dragon.builders import build_demonstrations
from dragontune.errors import RewardError
from dragontune.metrics import GaussianStats, fad_from_embeddings, fad_leave_one_out, frechet_distance, gaussian_stats
from dragontune.rewards.base import ScoringBatch
from dragontune.rewards.registry import RewardContext, build_reward
from tiny import TINY_CODEC, Notes

SR = TINY_CODEC["sample_rate"]
N = 6
GROUPS = torch.arange(N) // 2  # 3 prompts x 2 samples


def _brute_minus(x: torch.Tensor, ref: GaussianStats) -> torch.Tensor:
    """FAD of x without row i, each from scratch (a point mass when one row is left)."""
    out = []
    for i in range(x.shape[0]):
        rest = torch.cat([x[:i], x[i + 1:]])
        if torch.all(rest == rest[0]):  # zero covariance: the Gaussian fit is a point mass, exactly
            z = torch.zeros(x.shape[1], x.shape[1], dtype=torch.float64)
            out.append(frechet_distance(rest[0], z, ref.mu, ref.cov))
        else:
            out.append(fad_from_embeddings(rest, ref))
    return torch.stack(out)


@pytest.mark.parametrize("kind", ["zeros", "constant", "spread_1e-160", "normal"])
def test_fad_leave_one_out_of_degenerate_rows_is_finite_and_matches_brute_force(kind):
    g = torch.Generator().manual_seed(0)
    d = 5
    ref = gaussian_stats(torch.randn(40, d, generator=g, dtype=torch.float64))
    base = torch.randn(1, d, generator=g, dtype=torch.float64)
    x = {
        "zeros": torch.zeros(N, d, dtype=torch.float64),
        "constant": base.expand(N, d).clone(),
        # scatter ~1e-320: the old quadrature grid underflowed (s^2 = 0) and gave 0 * inf = NaN
        "spread_1e-160": base + 1e-160 * torch.randn(N, d, generator=g, dtype=torch.float64),
        "normal": torch.randn(N, d, generator=g, dtype=torch.float64),
    }[kind]
    loo = fad_leave_one_out(x, ref)
    assert torch.isfinite(loo.full) and torch.isfinite(loo.minus).all(), (loo.full, loo.minus)
    torch.testing.assert_close(loo.minus, _brute_minus(x, ref), rtol=1e-6, atol=1e-9)  # as test_metrics


@pytest.fixture(scope="module")
def ctx(tmp_path_factory):
    """The real log-mel codec as encoder, exemplars = a folder of noisy tones."""
    root = tmp_path_factory.mktemp("degenerate")
    ex = root / "exemplars"
    ex.mkdir()
    g = torch.Generator().manual_seed(1)
    t = torch.arange(SR) / SR
    for i in range(8):
        x = 0.3 * torch.sin(2 * math.pi * (220 + 40 * i) * t) + 0.05 * torch.randn(SR, generator=g)
        save_wav(ex / f"{i}.wav", x[None], SR)
    return RewardContext(codec=LogMelCodec(**TINY_CODEC), cache_dir=root / "cache"), ex


SPECS = {
    "fad": {"name": "fad", "encoder": "codec"},
    "fad_frames": {"name": "fad", "encoder": "codec", "pooling": "frames"},
    "kad": {"name": "kad", "encoder": "codec"},
    "vendi": {"name": "vendi", "encoder": "codec"},
}


def _reward(ctx, key):
    c, ex = ctx
    spec = dict(SPECS[key])
    if key != "vendi":
        spec["exemplars"] = {"audio_dir": str(ex)}
    return build_reward(spec, c)


def _audio(kind: str) -> torch.Tensor:
    t = torch.arange(SR) / SR
    if kind == "silent":
        return torch.zeros(N, 1, SR)
    return (0.3 * torch.sin(2 * math.pi * 330 * t)).expand(N, 1, SR).clone()  # identical clips


@pytest.mark.parametrize("kind", ["silent", "identical"])
@pytest.mark.parametrize("key", sorted(SPECS))
def test_degenerate_set_credits_are_zero_and_no_builder_makes_demonstrations(ctx, key, kind):
    r = _reward(ctx, key)
    feats = r.features(ScoringBatch(audio=_audio(kind), sample_rate=SR, prompts=["p"] * N))
    res = r.score(feats)
    assert math.isfinite(res.set_score)
    pool = r.pool_credit(feats.subset([0, 1, 2]), feats)
    for c in (res.credit, pool):
        assert torch.isfinite(c).all(), c
        if key == "fad_frames":
            # pooled frames: adding or removing any one of N identical clips changes the frame covariance's
            # n - 1 divisor alike for every clip, so the credits are one small common value: no clip preferred
            assert torch.equal(c, c[:1].expand(N)), c
        else:
            assert torch.equal(c.abs(), torch.zeros(N, dtype=torch.float64)), c  # exactly 0, not NaN or noise
    for builder in ("loo", "pool", "greedy", "split"):
        for loss in ("kto", "dpo"):
            d = build_demonstrations("dist_to_dist", builder, loss, res.scores, GROUPS,
                                     credit=pool if builder == "pool" else res.credit,
                                     set_score=lambda idx: r.set_value(feats.subset(idx)),
                                     generator=torch.Generator().manual_seed(0))
            assert d.n == 0 and d.n_dropped_nan == 0, (builder, loss, d.info)


@pytest.mark.parametrize("key", sorted(SPECS))
def test_one_different_clip_among_identical_ones_still_gets_credit(ctx, key):
    # the rounding floor must not swallow a real difference: clip 5 differs, so it (and only its credit sign
    # against the others) carries signal
    r = _reward(ctx, key)
    a = _audio("identical")
    t = torch.arange(SR) / SR
    a[5, 0] = 0.3 * torch.sin(2 * math.pi * 500 * t) + 0.05 * torch.randn(SR, generator=torch.Generator().manual_seed(3))
    feats = r.features(ScoringBatch(audio=a, sample_rate=SR, prompts=["p"] * N))
    res = r.score(feats)
    assert torch.isfinite(res.credit).all() and res.credit[5] != 0
    d = build_demonstrations("dist_to_dist", "loo", "dpo", res.scores, GROUPS, credit=res.credit)
    assert d.n == 1 and 5 in d.pairs[0].tolist()  # only prompt 2 (clips 4, 5) has a difference


@pytest.mark.parametrize("builder", ["loo", "pool"])
def test_credit_builders_refuse_all_nan_and_name_the_nan_samples(builder):
    nan = float("nan")
    with pytest.raises(RewardError, match=rf"builder '{builder}'.*every one of the 6 samples is NaN"):
        build_demonstrations("dist_to_dist", builder, "kto", None, GROUPS, credit=torch.full((N,), nan))
    notes = Notes()
    logging.getLogger("dragontune").addHandler(notes)
    try:
        c = torch.tensor([0.3, nan, 0.1, 0.2, nan, -0.4], dtype=torch.float64)
        d = build_demonstrations("dist_to_dist", builder, "dpo", None, GROUPS, credit=c)
    finally:
        logging.getLogger("dragontune").removeHandler(notes)
    assert any("2 of 6 credits are NaN (samples [1, 4]" in m for m in notes.lines), notes.lines
    assert d.n_dropped_nan == 2 and d.pairs.tolist() == [[3, 2]]  # prompts 0 and 2 have one usable sample
    with pytest.raises(RewardError, match="inf"):
        build_demonstrations("dist_to_dist", builder, "kto", None, GROUPS,
                             credit=torch.tensor([0.1, float("inf"), 0, 0, 0, 0], dtype=torch.float64))
