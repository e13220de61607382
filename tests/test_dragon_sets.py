"""The set-reward path of the loop: recipes per reward class, the credit pool (in the checkpoint, exact resume),
one embedding pass per round, no decoding in codec space, saturation logging and the stalled-loss warning."""

import json
import logging

import pytest
import torch

from dragontune.config import load_config
from dragontune.dragon.health import LearningMonitor
from dragontune.dragon.loop import DragonConfig, finetune
from dragontune.dragon.recipes import KTO_RECIPE, RECIPES, REWARD_RECIPES, resolve_recipe
from dragontune.errors import ConfigError
from dragontune.models.checkpoint import read_model_file

from test_dragon_loop import FAD, env, overrides  # noqa: F401  (the shared tiny-model fixture)


def cfg_for(env, out, **kw):
    d = {"eval_n_prompts": 0, "pool.size": 12, "pool.warmup": 8, "reward": FAD(env), **kw}
    return load_config(DragonConfig, None, overrides(env, out, **d))


def records(out):
    return [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]


def test_recipe_table():
    assert RECIPES["dist_to_dist"] == ("pool", "dpo") and RECIPES["instance"] == ("paired", "dpo")
    r = resolve_recipe("dist_to_dist", "auto", "auto", 4, {})
    assert (r.builder, r.loss, r.chosen) == ("pool", "dpo", True)
    r = resolve_recipe("instance_to_dist", "auto", "auto", 1, {})  # no pairs with one sample per prompt
    assert (r.builder, r.loss, r.options) == ("unpaired", "kto", {"threshold": "batch_median"})
    assert "k_per_prompt >= 2" in r.warning  # KTO chosen by the table: the user is told DPO moved further
    assert r.settings == KTO_RECIPE and r.lr is None
    assert resolve_recipe("instance_to_dist", "auto", "auto", 1, {}, 2e-5, 1e-5).lr == 1e-5
    assert resolve_recipe("instance_to_dist", "unpaired", "kto", 1, {}, 2e-5, 1e-5).settings == {}  # explicit
    assert resolve_recipe("instance", "unpaired", "auto", 4, {}).loss == "kto"  # the one loss that builder takes
    assert resolve_recipe("instance", "auto", "auto", 4, {}).warning == ""
    assert resolve_recipe("instance", "auto", "auto", 4, {}).settings == {}
    r = resolve_recipe("dist_to_dist", "auto", "auto", 1, {})
    assert (r.builder, r.loss, r.options) == ("pool", "kto", {"threshold": "batch_median"})
    r = resolve_recipe("dist_to_dist", "greedy", "kto", 4, {"size": 3})  # explicit choices stay as given
    assert (r.builder, r.loss, r.options, r.chosen) == ("greedy", "kto", {"size": 3}, False)
    # a reward's own lr (clap_score): with builder auto only, and KTO's lr still wins when KTO is chosen
    own = {"clap_score": {"lr": 2e-5}}
    assert resolve_recipe("instance", "auto", "auto", 4, {}, 2e-5, 1e-5, "clap_score", own).lr == 2e-5
    assert resolve_recipe("instance", "auto", "auto", 4, {}, 2e-5, 1e-5, "aesthetics", own).lr is None
    assert resolve_recipe("instance", "paired", "dpo", 4, {}, 2e-5, 1e-5, "clap_score", own).lr is None
    assert resolve_recipe("instance", "auto", "auto", 1, {}, 2e-5, 1e-5, "clap_score", own).lr == 1e-5
    # a reward's batch and builder options (aesthetics): on its class's row with builder auto only
    aes = {"aesthetics": {"all_pairs": True, "batch_per_update": 32}}
    r = resolve_recipe("instance", "auto", "auto", 4, {}, 2e-5, 1e-5, "aesthetics", aes)
    assert (r.builder, r.loss, r.options, r.settings, r.lr) == ("paired", "dpo", {"all_pairs": True},
                                                                {"batch_per_update": 32}, None)
    r = resolve_recipe("instance", "auto", "auto", 4, {"all_pairs": False}, 2e-5, 1e-5, "aesthetics", aes)
    assert r.options == {"all_pairs": False}  # the user's builder_options win
    r = resolve_recipe("instance", "paired", "dpo", 4, {}, 2e-5, 1e-5, "aesthetics", aes)
    assert (r.options, r.settings) == ({}, {})
    r = resolve_recipe("instance", "auto", "auto", 1, {}, 2e-5, 1e-5, "aesthetics", aes)  # KTO fallback: no pairs
    assert (r.builder, r.options, r.settings) == ("unpaired", {"threshold": "batch_median"}, KTO_RECIPE)
    assert resolve_recipe("instance", "auto", "auto", 4, {}, 2e-5, 1e-5, "clap_score", aes).settings == {}
    assert REWARD_RECIPES["aesthetics"] == aes["aesthetics"] and REWARD_RECIPES["clap_score"] == own["clap_score"]
    r = resolve_recipe("dist_to_dist", "greedy", "kto", 4, {"size": 3})
    assert (r.builder, r.loss, r.options, r.chosen) == ("greedy", "kto", {"size": 3}, False)
    # the set-reward recipe's learning rate applies with an auto builder only
    assert resolve_recipe("dist_to_dist", "auto", "auto", 4, {}, 2e-5).lr == 2e-5
    assert resolve_recipe("dist_to_dist", "loo", "auto", 4, {}, 2e-5).lr is None
    assert resolve_recipe("instance", "auto", "auto", 4, {}, 2e-5).lr is None


@pytest.mark.slow
@pytest.mark.parametrize("reward", ["fad", "vendi", "per_song_fad", "rms"])
def test_each_reward_class_starts_with_only_the_reward_set(env, tmp_path, reward):
    """builder and loss left at auto: every class runs with its recipe (no refusal)."""
    from dragontune.rewards import registry
    from dragontune.rewards.base import Reward, RewardResult

    class RMS(Reward):
        name, reward_class = "rms", "instance"

        def __call__(self, batch):
            return RewardResult(scores=batch.audio.pow(2).mean(dim=(1, 2)).sqrt().double(), name=self.name)

    registry.register_reward("rms", lambda spec, ctx: RMS(), overwrite=True)
    spec = {"fad": FAD(env), "vendi": {"name": "vendi", "encoder": "codec"}, "rms": {"name": "rms"},
            "per_song_fad": {**FAD(env), "name": "per_song_fad"}}[reward]
    out = tmp_path / reward
    finetune(cfg_for(env, out, reward=spec, rounds=1))
    arith = json.loads((out / "batch_arithmetic.json").read_text())
    want = {"fad": "pool", "vendi": "pool", "per_song_fad": "paired", "rms": "paired"}[reward]
    assert arith["builder"] == want and arith["loss"] == "dpo" and arith["recipe"].startswith("builder=")
    assert arith["lr"] == (2e-5 if want == "pool" else 3e-6)  # DragonConfig's optim.lr default is the paper's
    r = records(out)[1]
    assert "train/loss" in r and "train/saturated" in r and "train/grad_norm" in r and "train/margin" in r
    # rewards in the codec's own space score the latents: nothing is decoded
    assert r["decoded"] is (reward == "rms")


@pytest.mark.slow
def test_one_sample_per_prompt_trains_the_kto_recipe(env, tmp_path):
    """k_per_prompt=1 and loss auto: KTO with the recipe's settings and lr reach the training step."""
    out = tmp_path / "kto"
    finetune(cfg_for(env, out, reward={**FAD(env), "name": "per_song_fad"}, rounds=1, k_per_prompt=1,
                     prompts_per_round=8, batch_per_update=4))
    arith = json.loads((out / "batch_arithmetic.json").read_text())
    assert (arith["builder"], arith["loss"], arith["lr"]) == ("unpaired", "kto", 1e-5)
    assert "kto_noise=shared" in arith["recipe"] and "kto_utility=log_sigmoid" in arith["recipe"]
    r = records(out)[1]
    assert r["train/z"] == r["train/z_raw"]  # the reference point is the plain mean (not clamped at 0)
    assert "kto_utility: sigmoid" in (out / "config.yaml").read_text()  # the stored config is what the user wrote


@pytest.mark.slow
def test_pool_is_in_the_checkpoint_and_resume_is_exact(env, tmp_path):
    full, part = tmp_path / "full", tmp_path / "part"
    finetune(cfg_for(env, full, rounds=3))
    finetune(cfg_for(env, part, rounds=3), stop_after_round=1)
    finetune(cfg_for(env, part, rounds=3), resume=True)
    a, _ = read_model_file(full / "model.safetensors")
    b, _ = read_model_file(part / "model.safetensors")
    for k in a:
        assert torch.equal(a[k], b[k]), k
    ra, rb = records(full), records(part)
    assert [r.get("pool/set_reward") for r in ra] == [r.get("pool/set_reward") for r in rb]
    assert ra[1]["pool/size"] == 8 and ra[2]["pool/size"] == 12  # warm-up 8, then first in first out at 12
    # a run without builder=pool cannot resume into one
    other = tmp_path / "other"
    finetune(cfg_for(env, other, rounds=2, builder="loo"), stop_after_round=1)
    with pytest.raises(Exception, match="builder: 'loo' -> 'pool'"):  # the run folder's identity check
        finetune(cfg_for(env, other, rounds=2, builder="pool"), resume=True)


@pytest.mark.slow
@pytest.mark.parametrize("builder", ["pool", "greedy", "split", "loo"])
def test_set_rewards_embed_each_round_once(env, tmp_path, monkeypatch, builder):
    from dragontune.encoders.codec import CodecEncoder

    calls = []
    orig_l, orig_a = CodecEncoder.embed_latent, CodecEncoder.embed_audio
    monkeypatch.setattr(CodecEncoder, "embed_latent", lambda self, z: (calls.append(("latent", z.shape[0])), orig_l(self, z))[1])
    monkeypatch.setattr(CodecEncoder, "embed_audio", lambda self, a, sr: (calls.append(("audio", a.shape[0])), orig_a(self, a, sr))[1])
    kw = {"builder": builder, "loss": "kto" if builder in ("greedy", "split") else "dpo", "rounds": 2,
          "reward": {"name": "vendi", "encoder": "codec"}}
    finetune(cfg_for(env, tmp_path / "run", **kw))
    warm = [("latent", 8)] if builder == "pool" else []
    assert calls == warm + [("latent", 6), ("latent", 6)]  # one pass per round, on latents, whatever the builder


def test_monitor_warns_once_naming_the_knob(caplog):
    m = LearningMonitor("kto", patience=3)
    with caplog.at_level(logging.WARNING, logger="dragontune"):
        for rnd, (gn, sat) in enumerate([(100.0, 0.2), (50.0, 0.99), (0.01, 0.99), (0.0, 1.0), (0.0, 1.0)], 1):
            out = m.update(rnd, {"train/grad_norm": gn, "train/saturated": sat})
    assert out["health/stalled_rounds"] == 4
    warnings = [r for r in caplog.records if "stopped learning" in r.getMessage()]
    assert len(warnings) == 1 and "kto_reference=mean" in warnings[0].getMessage() and "round 4" in warnings[0].getMessage()
    assert LearningMonitor("dpo").update(1, {"train/grad_norm": 1.0, "train/saturated": 0.1})["health/stalled_rounds"] == 0


def test_saturation_share_of_the_losses():
    from dragontune.dragon.losses import SATURATION, diffusion_dpo_loss, diffusion_kto_loss

    beta = 100.0
    # DPO: pairs ordered by margins below / above SATURATION / beta
    a_w = torch.tensor([0.0, 0.0, 0.0, 0.0], requires_grad=True)
    a_l = torch.tensor([0.01, 0.2, 0.3, -0.2])  # beta * (A_l - A_w) = 1, 20, 30, -20
    _, st = diffusion_dpo_loss(a_w, a_l, torch.zeros(4), torch.zeros(4), beta=beta)
    assert st["saturated"] == pytest.approx(0.5)
    # KTO: |beta (g - z)| > SATURATION on either side counts; the clamped reference saturates every term at
    # once when the policy is worse than the reference everywhere, the plain mean keeps them centred
    err_pol = torch.tensor([0.30, 0.31, 0.32, 0.33], requires_grad=True)
    err_ref = torch.zeros(4)
    lab = torch.tensor([True, True, False, False])
    _, clamped = diffusion_kto_loss(err_pol, err_ref, lab, beta=beta, reduce_reference=False)
    _, mean = diffusion_kto_loss(err_pol, err_ref, lab, beta=beta, reduce_reference=False, reference="mean")
    assert clamped["z"] == 0.0 and clamped["saturated"] == 1.0
    assert mean["z"] == pytest.approx(-0.315) and mean["saturated"] == 0.0
    assert SATURATION == 5.0
    with pytest.raises(ValueError, match="reference"):
        diffusion_kto_loss(err_pol, err_ref, lab, reference="median")
    # the loss-averse utility keeps a gradient for samples on the wrong side of z (here every D+ sample, as the
    # policy is worse than the reference), where the sigmoid utility has none; closed form -w log sigmoid(s)
    for utility, wrong_side_grad in (("sigmoid", False), ("log_sigmoid", True)):
        e = err_pol.detach().clone().requires_grad_(True)
        loss, st = diffusion_kto_loss(e, err_ref, lab, beta=beta, reduce_reference=False, utility=utility)
        loss.backward()
        assert (e.grad[:2].abs() > 1e-3).all() == wrong_side_grad, utility
    loss, st = diffusion_kto_loss(err_pol, err_ref, lab, beta=beta, reduce_reference=False, utility="log_sigmoid")
    g = -(err_pol.detach().double() - err_ref.double())
    s_ = torch.where(lab, beta * g, -beta * g)  # z = 0 (clamped)
    assert float(loss.detach()) == pytest.approx(float((-torch.nn.functional.logsigmoid(s_)).mean()), rel=1e-6)
    assert st["saturated"] == 0.5  # D- samples are far on their side (flat), D+ far on the wrong side (not flat)


def test_bad_pool_and_kto_settings_fail_before_work(env, tmp_path):
    with pytest.raises(ConfigError, match="pool.size=1"):
        finetune(cfg_for(env, tmp_path / "a", **{"pool.size": 1}))
    with pytest.raises(ConfigError, match="kto_reference='median'"):
        finetune(cfg_for(env, tmp_path / "b", kto_reference="median"))
    with pytest.raises(ConfigError, match="pool.max_mb"):
        finetune(cfg_for(env, tmp_path / "c", **{"pool.size": 100000, "pool.max_mb": 1}))
    assert not (tmp_path / "c" / "metrics.jsonl").exists()


def _torchrun_worker(rank, world, init_file, cfg_args, counts_dir):
    """One rank of a two-process gloo run of the loop, counting reward scoring calls per rank."""
    import os

    import torch.distributed as tdist

    from dragontune.rewards.builtin import FADReward

    os.environ.update(WORLD_SIZE=str(world), RANK=str(rank), OMP_NUM_THREADS="1")
    tdist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    calls = []
    orig = FADReward.features
    FADReward.features = lambda self, batch: (calls.append(len(batch)), orig(self, batch))[1]
    torch.set_num_threads(1)
    finetune(load_config(DragonConfig, None, cfg_args))
    (counts_dir / f"rank{rank}.json").write_text(json.dumps(calls))
    tdist.destroy_process_group()


@pytest.mark.slow
def test_two_gloo_processes_score_once_and_log_global_statistics(env, tmp_path):
    """Under torchrun: rank 0 alone scores the gathered set (and the pool warm-up), both ranks train on its
    demonstrations, and the logged pair count is the global one (batch_per_update), not rank 0's share."""
    import torch.multiprocessing as mp

    out = tmp_path / "run"
    args = overrides(env, out, **{"eval_n_prompts": 2, "eval_every": 1, "rounds": 1, "batch_per_update": 2,
                                  "pool.size": 12, "pool.warmup": 8, "reward": FAD(env)})
    mp.spawn(_torchrun_worker, args=(2, str(tmp_path / "init"), args, tmp_path), nprocs=2, join=True)
    c0 = json.loads((tmp_path / "rank0.json").read_text())
    c1 = json.loads((tmp_path / "rank1.json").read_text())
    # rank 0: in-loop evaluation of round 0 (2 prompts), pool warm-up (8), round 1 (6), evaluation of round 1
    assert c1 == [] and c0 == [2, 8, 6, 2]
    recs = records(out)
    assert [r["round"] for r in recs] == [0, 1]
    for r in recs[1:]:
        assert r["train/n_pairs"] == 2.0 and "eval/fad" in r  # the global count; evaluated once, on rank 0
    assert (out / "model.safetensors").is_file()
