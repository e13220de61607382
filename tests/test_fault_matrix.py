"""The fault matrix: SIGKILL in each phase of a finetune round (generate, score, train, checkpoint write) and
during pretrain (a training step, a checkpoint write); each run is resumed and compared tensor by tensor with
an uninterrupted one, and its metrics hold every round/step exactly once."""

import json
import os
import subprocess
import sys

import pytest
import torch

from dragontune.cli import main
from dragontune.utils import load_safetensors

from test_dragon_loop import overrides
from tiny import tiny_baseline, tiny_corpus, write_prompts

pytestmark = pytest.mark.slow

ENV = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), "OMP_NUM_THREADS": "1"}


def cli(args, fault=None):
    env = {**ENV, **({"DRAGONTUNE_FAULT": fault} if fault else {})}
    return subprocess.run([sys.executable, "-m", "dragontune", *args], env=env, capture_output=True, text=True)


def same_tensors(a_path, b_path):
    a, _ = load_safetensors(a_path)
    b, _ = load_safetensors(b_path)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def metrics(path):
    return [json.loads(x) for x in path.read_text().splitlines()]


@pytest.fixture(scope="module")
def ft_env(tmp_path_factory):
    root = tmp_path_factory.mktemp("faults")
    corpus = tiny_corpus(root / "corpus")
    env = {"root": root, "corpus": corpus, "base": tiny_baseline(root / "base.safetensors", corpus),
           "prompts": write_prompts(root / "prompts.txt", ["a soft piano melody", "fast drums", "a slow pad"])}
    full = root / "full"
    p = cli(["finetune", *overrides(env, full, rounds=3, ckpt_every=1, eval_n_prompts=2)])
    assert p.returncode == 0, p.stderr[-2000:]
    env["full"] = full
    return env


@pytest.mark.parametrize("phase", ["generate", "score", "train", "checkpoint"])
def test_finetune_sigkill_in_each_phase_then_resume_is_exact(ft_env, tmp_path, phase):
    out = tmp_path / "part"
    args = ["finetune", *overrides(ft_env, out, rounds=3, ckpt_every=1, eval_n_prompts=2)]
    p = cli(args, fault=f"2:{phase}")
    assert p.returncode == -9, p.stderr[-2000:]
    assert json.loads((out / "checkpoints" / "latest.json").read_text())["round"] == 1
    if phase == "checkpoint":  # killed between the model file and the state file: round 2 is incomplete
        assert (out / "checkpoints" / "round-00002.safetensors").is_file()
        assert not (out / "checkpoints" / "round-00002.state.safetensors").exists()
    assert main(args + ["--resume"]) == 0  # resumed in this process (saves an interpreter start)
    same_tensors(ft_env["full"] / "model.safetensors", out / "model.safetensors")
    same_tensors(ft_env["full"] / "checkpoints" / "round-00003.state.safetensors",
                 out / "checkpoints" / "round-00003.state.safetensors")
    a, b = metrics(ft_env["full"] / "metrics.jsonl"), metrics(out / "metrics.jsonl")
    assert [r["round"] for r in b] == [0, 1, 2, 3]
    for k in ("train/loss", "reward", "eval/per_song_fad"):
        assert [r.get(k) for r in a] == [r.get(k) for r in b], k


def pretrain_args(corpus, out):
    return ["pretrain", f"out_dir={out}", f"data.corpus={corpus}", "data.synth_n=16", "data.duration=1.0",
            "steps=6", "batch_size=4", "log_every=1", "val_every=3", "val_samples=4", "ckpt_every=3",
            "sample_every=0", "sample_steps=2", "sample_prompts=[a soft piano melody]", "model.width=32",
            "model.depth=2", "model.heads=2", "model.patch_size=5", "model.noise_freqs=16", "codec.n_mels=16",
            "codec.n_fft=256", "codec.hop_length=128", "model.latent_channels=16", "codec.griffin_lim_iters=2",
            "ema_halflife_steps=2", "device=cpu", "threads=1"]


@pytest.fixture(scope="module")
def pt_env(tmp_path_factory):
    from dragontune.data.synth import synth_corpus

    root = tmp_path_factory.mktemp("pt-faults")
    corpus = synth_corpus(root / "corpus", n=16, seed=0)
    p = cli(pretrain_args(corpus, root / "full"))
    assert p.returncode == 0, p.stderr[-2000:]
    return {"corpus": corpus, "full": root / "full"}


@pytest.mark.parametrize("fault,resumed_from", [("pretrain:5", 3), ("pretrain:6:checkpoint", 3)])
def test_pretrain_sigkill_then_resume_is_exact_without_duplicate_steps(pt_env, tmp_path, fault, resumed_from):
    out = tmp_path / "part"
    args = pretrain_args(pt_env["corpus"], out)
    p = cli(args, fault=fault)
    assert p.returncode == -9, p.stderr[-2000:]
    latest = out / "checkpoints" / "latest.json"
    assert (json.loads(latest.read_text())["step"] if latest.is_file() else None) == resumed_from
    assert main(args + ["--resume"]) == 0
    same_tensors(pt_env["full"] / "model.safetensors", out / "model.safetensors")
    same_tensors(pt_env["full"] / "checkpoints" / "step-0000006.state.safetensors",
                 out / "checkpoints" / "step-0000006.state.safetensors")
    a, b = metrics(pt_env["full"] / "metrics.jsonl"), metrics(out / "metrics.jsonl")
    assert [r["step"] for r in b] == [1, 2, 3, 4, 5, 6]  # each step once
    assert [r["loss"] for r in a] == [r["loss"] for r in b]
