"""DRAGON loop end to end on a tiny model: every reward class x loss, resume after SIGKILL, demo files."""

import json
import os
import subprocess
import sys

import pytest
import torch
import yaml

from dragontune.config import load_config
from dragontune.dragon.loop import DragonConfig, finetune, round_prompts
from dragontune.seeds import derived_seed, gen_for
from dragontune.errors import CheckpointError, ConfigError, DataError, RewardError
from dragontune.models.checkpoint import read_model_file
from dragontune.utils import load_safetensors, sha256_tensors

from tiny import tiny_baseline, tiny_corpus, write_prompts

PROMPTS = ["a soft piano melody", "fast drums", "a slow pad", "bright bell tones", "deep bass line"]


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    root = tmp_path_factory.mktemp("dragon")
    corpus = tiny_corpus(root / "corpus")
    base = tiny_baseline(root / "base.safetensors", corpus)
    prompts = write_prompts(root / "prompts.txt", PROMPTS)
    return {"root": root, "corpus": corpus, "base": base, "prompts": prompts}


def overrides(env, out, **kw):
    d = {
        "out_dir": str(out), "baseline": str(env["base"]), "device": "cpu", "rounds": 2,
        "prompts_per_round": 2, "k_per_prompt": 3, "updates_per_round": 2, "batch_per_update": 2,
        "prompts": str(env["prompts"]), "eval_prompts": str(env["prompts"]), "eval_n_prompts": 3,
        "eval_every": 0, "ckpt_every": 1, "lr": None,
        "sampler.steps": 2, "sampler.cfg": 2.0, "sampler.batch_size": 8, "eval_sampler.steps": 2,
        "data.corpus": str(env["corpus"]), "data.duration": 1.0,
        "reward": {"name": "per_song_fad", "encoder": "codec", "exemplars": {"audio_dir": str(env["corpus"] / "audio")}},
    }
    d.pop("lr")
    d.update(kw)
    return [f"{k}={json.dumps(v) if isinstance(v, (dict, list)) else v}" for k, v in d.items()]


def run(env, out, **kw):
    cfg = load_config(DragonConfig, None, overrides(env, out, **kw))
    return finetune(cfg)


FAD = lambda env: {"name": "fad", "encoder": "codec", "exemplars": {"audio_dir": str(env["corpus"] / "audio")}}
VENDI = {"name": "vendi", "encoder": "codec"}


@pytest.mark.slow
@pytest.mark.parametrize("case", [
    ("per_song_fad", "paired", "dpo"),
    ("per_song_fad", "unpaired", "kto"),
    ("centroid", "paired", "dpo"),
    ("fad", "loo", "dpo"),
    ("fad", "loo", "kto"),
    ("vendi", "greedy", "kto"),
    ("vendi", "split", "dpo"),
])
def test_loop_smoke_every_reward_class_and_loss(env, tmp_path, case):
    name, builder, loss = case
    spec = {"per_song_fad": None, "centroid": {"name": "centroid", "encoder": "codec",
                                              "exemplars": {"audio_dir": str(env["corpus"] / "audio")}},
            "fad": FAD(env), "vendi": VENDI}[name]
    kw = {"builder": builder, "loss": loss}
    if spec is not None:
        kw["reward"] = spec
    final = run(env, tmp_path / "run", **kw)
    assert final.is_file()
    recs = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in recs] == [0, 1, 2]
    trained = [r for r in recs[1:] if "train/loss" in r]
    assert trained, recs
    for r in trained:
        assert all(k in r for k in ("train/implicit_acc", "train/grad_norm", "time/generate", "time/score",
                                    "time/train", "ref_unchanged"))
        assert r["ref_unchanged"] is True
    assert any(k.startswith("eval/") for k in recs[0]) and any(k.startswith("eval/") for k in recs[-1])
    # the policy moved, the baseline file did not
    a, _ = read_model_file(final)
    b, _ = read_model_file(env["base"])
    assert sha256_tensors(a) != sha256_tensors(b)


def test_demonstration_files_and_source_mixture(env, tmp_path):
    run(env, tmp_path / "run", p_reference=0.5, rounds=1)
    rows = [json.loads(x) for x in (tmp_path / "run" / "demos" / "round-0001.jsonl").read_text().splitlines()]
    assert len(rows) == 6
    for r in rows:
        assert set(r) >= {"prompt", "seed", "source", "steps", "reward", "credit", "label"}
        assert r["source"] in ("policy", "reference") and r["steps"] == 2
    lat, meta = load_safetensors(tmp_path / "run" / "demos" / "round-0001.safetensors")
    assert lat["latents"].shape[0] == 6 and meta["round"] == "1"
    # labels: per prompt one winner (+1) and one loser (-1) for paired DPO
    assert sorted(r["label"] for r in rows).count(1) == sorted(r["label"] for r in rows).count(-1)
    # arithmetic file
    arith = json.loads((tmp_path / "run" / "batch_arithmetic.json").read_text())
    assert arith["samples_per_round"] == 6 and arith["processes"] == 1
    # the 0.9/0.1 mixture: the source draw is Bernoulli(p_reference), per round
    draws = torch.cat([torch.rand(1000, generator=gen_for(0, "source", r)) < 0.1 for r in range(20)])
    assert 0.09 < draws.float().mean() < 0.11


def test_regenerate_a_demonstration_from_its_record(env, tmp_path):
    """A demo row (prompt, seed, source, steps) regenerates its latent exactly."""
    from dragontune.generate import SamplerConfig, generate_latents
    from dragontune.models.checkpoint import load_model

    run(env, tmp_path / "run", rounds=1, p_reference=1.0)  # all from the (unchanged) reference
    rows = [json.loads(x) for x in (tmp_path / "run" / "demos" / "round-0001.jsonl").read_text().splitlines()]
    lat, _ = load_safetensors(tmp_path / "run" / "demos" / "round-0001.safetensors")
    ref = load_model(env["base"])
    r = rows[4]
    again = generate_latents(ref, [r["prompt"]], [r["seed"]], SamplerConfig(steps=2, cfg=2.0))
    torch.testing.assert_close(again[0], lat["latents"][4], rtol=1e-5, atol=1e-5)


@pytest.mark.slow
def test_resume_after_sigkill_mid_round_is_exact(env, tmp_path):
    cfg_full = tmp_path / "full.yaml"
    cfg_part = tmp_path / "part.yaml"

    def write(path, out):
        d = {}
        for ov in overrides(env, out, rounds=3, ckpt_every=1):
            k, v = ov.split("=", 1)
            node = d
            parts = k.split(".")
            for p_ in parts[:-1]:
                node = node.setdefault(p_, {})
            node[parts[-1]] = yaml.safe_load(v)
        path.write_text(yaml.safe_dump(d))

    write(cfg_full, tmp_path / "full")
    write(cfg_part, tmp_path / "part")
    envv = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "dragontune", "finetune"]
    subprocess.run(cmd + [str(cfg_full)], check=True, env=envv, capture_output=True)
    p = subprocess.run(cmd + [str(cfg_part)], env={**envv, "DRAGONTUNE_FAULT": "2:train"}, capture_output=True)
    assert p.returncode == -9, p.stderr.decode()[-2000:]
    assert json.loads((tmp_path / "part" / "checkpoints" / "latest.json").read_text())["round"] == 1
    subprocess.run(cmd + [str(cfg_part), "--resume"], check=True, env=envv, capture_output=True)
    a, _ = read_model_file(tmp_path / "full" / "model.safetensors")
    b, _ = read_model_file(tmp_path / "part" / "model.safetensors")
    for k in a:
        assert torch.equal(a[k], b[k]), k
    ra = [json.loads(x) for x in (tmp_path / "full" / "metrics.jsonl").read_text().splitlines()]
    rb = [json.loads(x) for x in (tmp_path / "part" / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in rb] == [0, 1, 2, 3]
    assert [r.get("train/loss") for r in ra] == [r.get("train/loss") for r in rb]


def test_frozen_reference_never_updated(env, tmp_path, monkeypatch):
    """After training, the reference's weights are the baseline's, tensor by tensor; and the loop's guard fires
    when something does write into the reference (a forward hook that nudges one weight in place)."""
    from dragontune.models.checkpoint import T2AModel, load_model

    base = load_model(env["base"]).net.state_dict()
    made = []
    real_copy = T2AModel.copy_frozen

    def recording_copy(self):
        ref = real_copy(self)
        made.append(ref)
        return ref

    monkeypatch.setattr(T2AModel, "copy_frozen", recording_copy)
    run(env, tmp_path / "run", rounds=1)
    assert len(made) == 1
    after = made[0].net.state_dict()
    assert after.keys() == base.keys()
    for k in base:
        assert torch.equal(after[k], base[k]), k
    assert sha256_tensors(load_model(env["base"]).net.state_dict()) == sha256_tensors(base)

    def corrupting_copy(self):
        ref = real_copy(self)
        w = next(ref.net.parameters())

        def nudge(*_):  # a bug that writes into the reference (returns None: the output is left alone)
            w.data.add_(1e-3)

        ref.net.register_forward_hook(nudge)
        return ref

    monkeypatch.setattr(T2AModel, "copy_frozen", corrupting_copy)
    with pytest.raises(RuntimeError, match="frozen reference model changed"):
        run(env, tmp_path / "run_corrupt", rounds=1)


def test_round_prompts_and_seeds_are_deterministic():
    pool = [f"p{i}" for i in range(7)]
    a = [round_prompts(pool, 0, r, 3) for r in range(1, 6)]
    b = [round_prompts(pool, 0, r, 3) for r in range(1, 6)]
    assert a == b
    flat = [p for r in range(0, 7) for p in round_prompts(pool, 0, r, 3)]
    assert sorted(flat[:7]) == sorted(pool)  # each epoch visits every prompt once
    assert derived_seed(0, "sample", 1, 2) == derived_seed(0, "sample", 1, 2) != derived_seed(0, "sample", 1, 3)


def test_bad_inputs(env, tmp_path):
    with pytest.raises(RewardError, match="unknown reward 'nope'; known rewards: .*per_song_fad"):
        run(env, tmp_path / "a", reward={"name": "nope"})
    with pytest.raises(ConfigError, match="valid"):
        run(env, tmp_path / "b", builder="loo", loss="dpo")  # loo is for set rewards
    with pytest.raises(ConfigError, match="at least 2 samples per prompt"):
        run(env, tmp_path / "c", k_per_prompt=1, loss="dpo")  # pairs asked for explicitly
    with pytest.raises(ConfigError, match="at least 2 samples per prompt"):  # a set reward where pairs are needed
        run(env, tmp_path / "c2", k_per_prompt=1, builder="pool", loss="dpo", reward=FAD(env))
    empty = write_prompts(tmp_path / "empty.txt", [])
    with pytest.raises(DataError, match="empty"):
        run(env, tmp_path / "d", prompts=str(empty))
    with pytest.raises(CheckpointError, match="does not exist"):
        run(env, tmp_path / "e", baseline=str(tmp_path / "missing.safetensors"))


def test_nan_rewards_are_dropped_and_all_nan_rounds_skipped(env, tmp_path, monkeypatch):
    from dragontune.rewards import registry
    from dragontune.rewards.base import Reward, RewardResult

    class Flaky(Reward):
        """Loudness (RMS) of each clip; NaN for every third sample, or for all when all_nan."""
        name = "flaky_rms"
        reward_class = "instance"

        def __init__(self, all_nan):
            self.all_nan = all_nan

        def __call__(self, batch):
            s = batch.audio.pow(2).mean(dim=(1, 2)).sqrt().double()
            s[::3] = float("nan")
            if self.all_nan:
                s[:] = float("nan")
            return RewardResult(scores=s, name=self.name)

    registry.register_reward("flaky_rms", lambda spec, ctx: Flaky(bool(spec.get("all_nan"))), overwrite=True)
    run(env, tmp_path / "a", reward={"name": "flaky_rms"}, rounds=1)
    r = [json.loads(x) for x in (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()][1]
    assert r["n_nan_dropped"] == 2 and "train/loss" in r
    run(env, tmp_path / "b", reward={"name": "flaky_rms", "all_nan": True}, rounds=2)
    recs = [json.loads(x) for x in (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()]
    assert recs[-1]["skipped_rounds"] == 2 and all("train/loss" not in r for r in recs)
