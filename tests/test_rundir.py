"""The run folder: lock, identity check on --resume, fresh-run refusal, --overwrite, torn metrics, disk full,
non-finite checkpoints. Each case checks the exit code and that the message names the key, folder or file."""

import errno
import json
import logging
import os
import subprocess
import sys
import time

import pytest
import torch

from dragontune.cli import main
from dragontune.errors import CheckpointError
from dragontune.models.checkpoint import read_model_file
from dragontune.rundir import RunDir, RunDirError, config_diff
from dragontune.utils import load_safetensors, save_safetensors_atomic

from test_dragon_loop import overrides
from tiny import Notes, tiny_baseline, tiny_corpus, write_prompts

PROMPTS = ["a soft piano melody", "fast drums", "a slow pad"]


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    root = tmp_path_factory.mktemp("rundir")
    corpus = tiny_corpus(root / "corpus")
    return {"root": root, "corpus": corpus, "base": tiny_baseline(root / "base.safetensors", corpus),
            "prompts": write_prompts(root / "prompts.txt", PROMPTS)}


def ft(env, out, *extra, **kw):
    """`dragontune finetune` on the tiny model, 1 round unless told; returns the exit code."""
    kw.setdefault("rounds", 1)
    kw.setdefault("eval_n_prompts", 0)
    return main(["finetune"] + overrides(env, out, **kw) + list(extra))




@pytest.fixture
def notes():
    h = Notes()
    logging.getLogger("dragontune").addHandler(h)
    yield h
    logging.getLogger("dragontune").removeHandler(h)


def test_second_process_is_refused_naming_the_holder(env, tmp_path, capsys):
    out = tmp_path / "run"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from dragontune.rundir import RunDir; "
         "RunDir.open(sys.argv[1], {'a': 1}, kind='t'); print('locked', flush=True); time.sleep(60)", str(out)],
        stdout=subprocess.PIPE, env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    try:
        assert holder.stdout.readline().strip() == b"locked"
        assert ft(env, out, "--resume") == 2
        err = capsys.readouterr().err
        assert f"is in use by another process (pid {holder.pid})" in err and str(out) in err
        assert main(["pretrain", f"out_dir={out}", "steps=1"]) == 2
        assert f"pid {holder.pid}" in capsys.readouterr().err
    finally:
        holder.kill()
        holder.wait()
    # the kernel drops the lock with its process: the folder is usable at once
    run = RunDir.open(out, {"a": 1}, kind="t", resume=True)
    run.close()


def test_fresh_run_into_a_used_folder_is_refused_then_overwritten(env, tmp_path, capsys):
    out = tmp_path / "run"
    assert ft(env, out) == 0
    stale = out / "demos" / "round-0099.jsonl"
    stale.write_text("{}\n")
    assert ft(env, out) == 2
    err = capsys.readouterr().err
    assert "is not empty" in err and str(out) in err and "--overwrite" in err and "--resume" in err
    assert ft(env, out, "--overwrite") == 0
    assert not stale.exists()
    recs = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in recs] == [0, 1]  # one run's lines only
    # --overwrite never removes what a run did not write
    other = tmp_path / "mine"
    other.mkdir()
    (other / "thesis.tex").write_text("precious")
    assert ft(env, other, "--overwrite") == 2
    assert "does not look like a dragontune run folder" in capsys.readouterr().err
    assert (other / "thesis.tex").read_text() == "precious"


def test_resume_refuses_a_changed_config_and_allows_more_rounds(env, tmp_path, capsys):
    out = tmp_path / "run"
    assert ft(env, out) == 0
    stored = (out / "config.yaml").read_text()
    for key, value, shown in (("seed", 1, "seed: 0 -> 1"), ("builder", "unpaired", "builder: 'auto' -> 'unpaired'"),
                              ("optim.lr", 1e-3, "optim.lr: 3e-06 -> 0.001")):
        assert ft(env, out, "--resume", **{key: value}) == 2
        err = capsys.readouterr().err
        assert shown in err and "only rounds" in err, err
        assert (out / "config.yaml").read_text() == stored  # not overwritten
    assert ft(env, out, "--resume", reward={"name": "vendi", "encoder": "codec"}) == 2
    assert "reward:" in capsys.readouterr().err
    assert ft(env, out, "--resume", rounds=2) == 0
    recs = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in recs] == [0, 1, 2]
    assert "rounds: 2" in (out / "config.yaml").read_text()


def test_resume_without_a_run(env, tmp_path, capsys):
    assert ft(env, tmp_path / "none", "--resume") == 2
    assert "holds no run to resume" in capsys.readouterr().err


def test_torn_last_metrics_line_is_dropped_with_a_note(env, tmp_path, notes):
    out = tmp_path / "run"
    assert ft(env, out) == 0
    with open(out / "metrics.jsonl", "a") as f:
        f.write('{"round": 2, "reward": -12.')  # a writer killed mid-line
    assert ft(env, out, "--resume", rounds=2) == 0
    assert any("dropped a torn last line" in n for n in notes.lines), notes.lines
    recs = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in recs] == [0, 1, 2]


def test_metrics_are_strict_json(tmp_path):
    run = RunDir.open(tmp_path / "r", {"a": 1}, kind="t")
    run.append_metrics({"round": 0, "x": float("nan"), "y": [float("inf"), 1.0]})
    run.close()
    line = (tmp_path / "r" / "metrics.jsonl").read_text()
    json.loads(line, parse_constant=lambda c: pytest.fail(f"non-strict JSON token {c}"))
    assert json.loads(line) == {"round": 0, "x": None, "y": [None, 1.0]}


def test_config_diff():
    old = {"rounds": 2, "optim": {"lr": 1e-4, "grad_clip": 1.0}, "reward": {"name": "fad"}}
    new = {"rounds": 3, "optim": {"lr": 1e-4, "grad_clip": 1}, "reward": {"name": "kad"}, "added": 1}
    assert config_diff(old, new) == [("added", "<absent>", 1), ("reward", {"name": "fad"}, {"name": "kad"}),
                                      ("rounds", 2, 3)]


def test_disk_full_at_a_checkpoint_leaves_a_resumable_run(env, tmp_path, capsys, monkeypatch):
    import dragontune.utils as utils

    real = utils.atomic_write_bytes

    def full_disk(path, data):  # the filesystem fills up while the round-2 checkpoint is written
        if "round-00002" in str(path):
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return real(path, data)

    monkeypatch.setattr(utils, "atomic_write_bytes", full_disk)
    out = tmp_path / "run"
    assert ft(env, out, rounds=3) == 2
    full = capsys.readouterr().err
    err = [ln for ln in full.splitlines() if ln.startswith("error")]
    assert "Traceback" not in full and len(err) == 1 and err[0].startswith("error: disk full while writing") and "round-00002" in err[0]
    assert "resumable from its last complete checkpoint (round 1)" in err[0] and "--resume" in err[0]
    assert json.loads((out / "checkpoints" / "latest.json").read_text())["round"] == 1
    assert not list((out / "checkpoints").glob(".*.tmp"))  # no partial file left behind
    monkeypatch.setattr(utils, "atomic_write_bytes", real)  # space freed
    assert ft(env, out, "--resume", rounds=3) == 0
    assert ft(env, tmp_path / "full", rounds=3) == 0
    a, _ = read_model_file(out / "model.safetensors")
    b, _ = read_model_file(tmp_path / "full" / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_non_finite_weights_are_refused_at_load_naming_checkpoint_and_tensor(env, tmp_path, capsys):
    tensors, meta = load_safetensors(env["base"])
    name = sorted(k for k in tensors if tensors[k].is_floating_point())[3]
    tensors[name] = tensors[name].clone()
    tensors[name].view(-1)[0] = float("nan")
    bad = tmp_path / "diverged.safetensors"
    save_safetensors_atomic(tensors, bad, meta)
    with pytest.raises(CheckpointError, match=f"{bad.name}.*tensor '{name}' has 1 non-finite"):
        read_model_file(bad)
    assert main(["sample", "--checkpoint", str(bad), "--prompt", "drums", "--steps", "2",
                 "--out", str(tmp_path / "s")]) == 2
    err = capsys.readouterr().err
    assert str(bad) in err and name in err and "non-finite" in err
    # the same for a run's optimiser state on --resume
    out = tmp_path / "run"
    assert ft(env, out) == 0
    st = out / "checkpoints" / "round-00001.state.safetensors"
    t, m = load_safetensors(st)
    k = next(iter(t))
    t[k] = torch.full_like(t[k], float("inf"))
    save_safetensors_atomic(t, st, m)
    assert ft(env, out, "--resume", rounds=2) == 2
    err = capsys.readouterr().err
    assert "round-00001.state.safetensors" in err and k in err


def test_pretrain_run_folder(tmp_path, capsys):
    """pretrain uses the same run folder rules (checked before the corpus is read or synthesised)."""
    from dragontune.config import dump_yaml, load_config
    from dragontune.training.pretrain import PretrainConfig

    out = tmp_path / "p"
    out.mkdir()
    corpus = tmp_path / "never-made"
    stored = load_config(PretrainConfig, None, [f"out_dir={out}", f"data.corpus={corpus}", "steps=3"])
    (out / "config.yaml").write_text(dump_yaml(stored))
    (out / "metrics.jsonl").write_text('{"step": 1}\n')
    assert main(["pretrain", f"out_dir={out}", f"data.corpus={corpus}", "steps=3"]) == 2
    assert "is not empty" in capsys.readouterr().err
    assert main(["pretrain", f"out_dir={out}", f"data.corpus={corpus}", "steps=3", "seed=5", "--resume"]) == 2
    assert "seed: 0 -> 5" in capsys.readouterr().err
    assert not corpus.exists()
