"""Training direction: a few steps on fixed demonstrations must make the policy prefer D+ over D- (relative to
the frozen reference), for DPO and KTO and for every D+/D- builder. Each check also runs with D+ and D- swapped
and must then move the other way, so a reversed direction anywhere (builder, loop, loss) fails here."""

import pytest
import torch

from dragontune.dragon.builders import build_demonstrations
from dragontune.dragon.loop import DragonConfig, RoundData, Training, _train_round
from dragontune.dragon.objectives import objective_for
from dragontune.dragon.pool import FeaturePool
from dragontune.models.checkpoint import load_model
from dragontune.models.edm import denoising_loss
from dragontune.rewards.base import ScoringBatch
from dragontune.rewards.builtin import FADReward, PerSongFADReward
from dragontune.rewards.exemplars import ExemplarSet
from dragontune.encoders.codec import CodecEncoder

from tiny import tiny_baseline, tiny_corpus

P, K = 4, 4


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    root = tmp_path_factory.mktemp("direction")
    corpus = tiny_corpus(root / "corpus", n=16)
    base = tiny_baseline(root / "base.safetensors", corpus)
    model = load_model(base)
    enc = CodecEncoder(model.codec)
    stats = ExemplarSet.from_audio_dir(corpus / "audio").stats(enc, cache_dir=root / "cache")
    # fixed demonstrations: per prompt, K/2 "good" latents (exemplar-like) and K/2 "bad" ones (shifted away)
    g = torch.Generator().manual_seed(0)
    shape = model.latent_shape
    mu = stats.clips.mu.float()[:, None]
    good = mu + 0.3 * torch.randn((P * K // 2,) + shape, generator=g)
    bad = mu + 2.0 + 0.3 * torch.randn((P * K // 2,) + shape, generator=g)
    lat = torch.empty((P * K,) + shape)
    is_good = torch.zeros(P * K, dtype=torch.bool)
    for p in range(P):
        for k in range(K):
            j = p * K + k
            src = good if k % 2 == 0 else bad
            lat[j] = src[p * (K // 2) + k // 2]
            is_good[j] = k % 2 == 0
    prompts = [f"prompt {p}" for p in range(P) for _ in range(K)]
    return {"base": base, "enc": enc, "stats": stats, "lat": lat, "good": is_good, "prompts": prompts,
            "codec": model.codec}


def _preference(policy, reference, lat, prompts, good) -> float:
    """mean A(good) - mean A(bad), A = err_policy - err_reference, on fixed sigma/noise shared by both models."""
    g = torch.Generator().manual_seed(123)
    vals = []
    with torch.no_grad():
        for _ in range(4):
            sigma = torch.exp(-1.2 + 1.2 * torch.randn(lat.shape[0], generator=g))
            noise = torch.randn(lat.shape, generator=g)
            cond = policy.cond(prompts)
            a = denoising_loss(policy.denoiser, lat, noise, sigma, cond) - \
                denoising_loss(reference.denoiser, lat, noise, sigma, cond)
            vals.append(float(a[good].mean() - a[~good].mean()))
    return sum(vals) / len(vals)


def _cfg(loss, tmp_path, extra=()):
    from dragontune.config import load_config

    return load_config(DragonConfig, None, [f"out_dir={tmp_path}", "updates_per_round=6", "batch_per_update=4",
                                            "optim.lr=2e-3", "optim.grad_clip=0", "cond_dropout=0", "beta=500",
                                            f"loss={loss}", "kto_reference=mean", *extra])


def _demos(env, builder, loss, swap=False):
    groups = torch.arange(P).repeat_interleave(K)
    batch = ScoringBatch(None, env["codec"].sample_rate, env["prompts"], latents=env["lat"], codec=env["codec"])
    if builder in ("paired", "unpaired"):
        r = PerSongFADReward(env["enc"], env["stats"])
        scores = r(batch).scores
        credit, set_score = None, None
        rc = "instance_to_dist"
    else:
        r = FADReward(env["enc"], env["stats"])
        feats = r.features(batch)
        res = r.score(feats)
        scores, credit = res.scores, res.credit
        if builder == "pool":
            pool = FeaturePool(64)
            pool.push(feats)  # the pool: both kinds of clips
            credit = pool.credit(r, feats)
        set_score = lambda idx: r.set_value(feats.subset(idx))  # noqa: E731
        rc = "dist_to_dist"
    if swap:  # a reversed reward: every builder must then prefer the bad clips
        scores = -scores
        credit = -credit if credit is not None else None
        if set_score is not None:
            f = set_score
            set_score = lambda idx: -f(idx)  # noqa: E731
    opts = {"threshold": "batch_median"} if loss == "kto" and builder in ("unpaired", "loo", "pool") else {}
    return build_demonstrations(rc, builder, loss, scores, groups, credit=credit, set_score=set_score,
                                generator=torch.Generator().manual_seed(0), **opts)


def _dplus_share_good(d, good) -> float:
    if d.pairs is not None:
        return float(good[d.pairs[:, 0]].double().mean() - good[d.pairs[:, 1]].double().mean())
    pos, neg = d.labels > 0, d.labels < 0
    return float(good[pos].double().mean() - good[neg].double().mean())


CASES = [("paired", "dpo"), ("unpaired", "kto"), ("pool", "dpo"), ("pool", "kto"), ("loo", "dpo"),
         ("loo", "kto"), ("greedy", "dpo"), ("greedy", "kto"), ("split", "kto")]


@pytest.mark.parametrize("builder,loss", CASES)
def test_builder_puts_better_clips_in_d_plus(env, builder, loss):
    d = _demos(env, builder, loss)
    assert not d.is_empty()
    # split compares two random halves: its D+ is the half with more good clips, not only good clips
    need = 0.0 if builder == "split" else 0.5
    assert _dplus_share_good(d, env["good"]) > need, (builder, loss, d.info)
    assert _dplus_share_good(_demos(env, builder, loss, swap=True), env["good"]) < -need


@pytest.mark.slow
@pytest.mark.parametrize("builder,loss", [("paired", "dpo"), ("unpaired", "kto"), ("pool", "dpo"), ("pool", "kto")])
def test_training_lowers_a_on_d_plus_relative_to_d_minus(env, tmp_path, builder, loss):
    """The loop's training step on the builder's demonstrations: A(D+) - A(D-) drops below zero; with the
    reward reversed it rises above zero."""
    _check_training_direction(env, tmp_path, builder, loss)


@pytest.mark.slow
@pytest.mark.parametrize("extra", [("kto_noise=paired",), ("kto_noise=shared", "kto_utility=log_sigmoid"),
                                   ("kto_reference=clamped_mean", "kto_utility=log_sigmoid")])
def test_kto_options_keep_the_direction(env, tmp_path, extra):
    _check_training_direction(env, tmp_path, "unpaired", "kto", extra)


def _check_training_direction(env, tmp_path, builder, loss, extra=()):
    for swap, sign in ((False, -1.0), (True, 1.0)):
        policy = load_model(env["base"])
        reference = policy.copy_frozen()
        before = _preference(policy, reference, env["lat"], env["prompts"], env["good"])
        assert before == 0.0
        cfg = _cfg(loss, tmp_path / f"{builder}-{loss}-{swap}", extra)
        opt = torch.optim.Adam(policy.net.parameters(), lr=cfg.optim.lr)
        d = _demos(env, builder, loss, swap=swap)
        training = Training(policy, reference, opt, objective_for(loss, cfg), cfg.optim.lr, bf16=False)
        n = len(env["prompts"])
        for rnd in (1, 2):
            data = RoundData(rnd, env["prompts"], list(range(n)), torch.zeros(n, dtype=torch.bool), env["lat"], demos=d)
            stats = _train_round(cfg, training, data)
        after = _preference(policy, reference, env["lat"], env["prompts"], env["good"])
        assert sign * after > 0, (builder, loss, swap, after, stats)
        assert 0.0 <= stats["train/saturated"] <= 1.0 and stats["train/grad_norm"] >= 0
