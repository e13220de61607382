"""`dragontune score`: each clip at its own length (a score never depends on the other files), long clips in
bounded memory, bad files named, all-NaN results an error, strict JSON."""

import json
import logging

import numpy as np
import pytest
import soundfile as sf
import torch

from dragontune.cli import main
from dragontune.metrics import gaussian_stats, per_song_fad

from tiny import tiny_baseline, tiny_corpus

SR = 16000


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    root = tmp_path_factory.mktemp("score")
    corpus = tiny_corpus(root / "corpus")
    return {"root": root, "corpus": corpus, "base": tiny_baseline(root / "base.safetensors", corpus)}


def tone(seconds, f0=220.0, amp=0.3, seed=0):
    t = np.arange(int(seconds * SR)) / SR
    rng = np.random.default_rng(seed)
    return (amp * np.sin(2 * np.pi * f0 * t) + 0.02 * rng.standard_normal(t.size)).astype(np.float32)


def score(env, folder, out, reward="per_song_fad", *extra):
    rc = main(["score", "--reward", reward, "--encoder", "codec", "--exemplars", str(env["corpus"] / "audio"),
               "--audio-dir", str(folder), "--checkpoint", str(env["base"]), "--out", str(out), *extra])
    return rc, (json.loads(out.read_text()) if out.is_file() else None)


@pytest.mark.parametrize("reward", ["per_song_fad", "centroid"])
def test_a_clip_scores_the_same_alone_and_next_to_a_long_clip(env, tmp_path, reward):
    alone, mixed = tmp_path / "alone", tmp_path / "mixed"
    alone.mkdir(), mixed.mkdir()
    sf.write(alone / "a.wav", tone(1.0), SR, subtype="FLOAT")
    sf.write(mixed / "a.wav", tone(1.0), SR, subtype="FLOAT")
    sf.write(mixed / "b_long.wav", tone(6.0, f0=440.0, seed=1), SR, subtype="FLOAT")
    rc1, r1 = score(env, alone, tmp_path / "1.json", reward)
    rc2, r2 = score(env, mixed, tmp_path / "2.json", reward)
    assert rc1 == rc2 == 0
    assert r2["files"][0].endswith("a.wav")
    assert r1["scores"][0] == pytest.approx(r2["scores"][0], rel=1e-9, abs=1e-9)


def test_set_reward_over_clips_of_different_lengths(env, tmp_path):
    d = tmp_path / "d"
    d.mkdir()
    for i, secs in enumerate((1.0, 2.5, 4.0)):
        sf.write(d / f"{i}.wav", tone(secs, f0=200.0 + 50 * i, seed=i), SR, subtype="FLOAT")
    rc, res = score(env, d, tmp_path / "s.json", "fad")
    assert rc == 0 and len(res["credit"]) == 3 and res["set_score"] <= 0


def test_per_song_fad_of_long_clips_uses_the_covariance_and_matches_scipy():
    """Clips with more frames than dimensions take the d x d route: equal to the closed form via SciPy."""
    import scipy.linalg

    g = torch.Generator().manual_seed(0)
    d = 8
    ref_x = torch.randn(400, d, generator=g, dtype=torch.float64) @ torch.randn(d, d, generator=g, dtype=torch.float64)
    ref = gaussian_stats(ref_x)
    clips = [torch.randn(n, d, generator=g, dtype=torch.float64) + 0.3 for n in (5, 3000, 8, 40)]
    got = per_song_fad(clips, ref)
    for c, v in zip(clips, got):
        mu, cov = c.mean(0).numpy(), np.cov(c.numpy(), rowvar=False)
        covsqrt = scipy.linalg.sqrtm(cov @ ref.cov.numpy()).real
        want = ((mu - ref.mu.numpy()) ** 2).sum() + np.trace(cov) + np.trace(ref.cov.numpy()) - 2 * np.trace(covsqrt)
        assert float(v) == pytest.approx(want, rel=1e-7, abs=1e-9)
        assert float(per_song_fad(c, ref)) == pytest.approx(float(v), rel=1e-10, abs=1e-12)  # alone = in a batch


@pytest.mark.slow
def test_a_ten_minute_file_scores_in_bounded_time(env, tmp_path):
    import time

    d = tmp_path / "long"
    d.mkdir()
    sf.write(d / "long.wav", tone(600.0), SR, subtype="PCM_16")
    sf.write(d / "short.wav", tone(1.0, f0=300.0), SR, subtype="PCM_16")
    t0 = time.time()
    rc, res = score(env, d, tmp_path / "s.json")
    assert rc == 0 and all(np.isfinite(res["scores"]))
    assert time.time() - t0 < 120


def test_truncated_short_and_out_of_range_files_are_named(env, tmp_path, capsys):
    d = tmp_path / "trunc"
    d.mkdir()
    sf.write(d / "ok.wav", tone(1.0), SR, subtype="PCM_16")
    full = (d / "ok.wav").read_bytes()
    (d / "cut.wav").write_bytes(full[: len(full) // 2])  # header promises 1 s, file holds 0.5 s
    rc, _ = score(env, d, tmp_path / "s.json")
    err = capsys.readouterr().err
    assert rc == 2 and "cut.wav" in err and "truncated" in err and "declares 16000 samples" in err
    d2 = tmp_path / "short"
    d2.mkdir()
    sf.write(d2 / "ok.wav", tone(1.0), SR, subtype="PCM_16")
    sf.write(d2 / "blip.wav", tone(0.01), SR, subtype="PCM_16")  # 160 samples: at most one codec frame
    rc, _ = score(env, d2, tmp_path / "s2.json")
    err = capsys.readouterr().err
    assert rc == 2 and "blip.wav" in err and ("shorter than" in err or "frame(s)" in err), err
    d3 = tmp_path / "loud"
    d3.mkdir()
    sf.write(d3 / "ok.wav", tone(1.0), SR, subtype="FLOAT")
    sf.write(d3 / "hot.wav", tone(1.0, amp=2.0), SR, subtype="FLOAT")  # float WAV beyond full scale
    rc, res = score(env, d3, tmp_path / "s3.json")
    err = capsys.readouterr().err
    assert rc == 0 and "hot.wav" in err and "beyond full scale" in err


def test_all_nan_scores_exit_nonzero_and_json_is_strict(env, tmp_path, capsys):
    d = tmp_path / "noprompt"
    d.mkdir()
    for i in range(2):
        sf.write(d / f"{i}.wav", tone(2.0, seed=i), SR, subtype="PCM_16")
    out = tmp_path / "s.json"
    rc = main(["score", "--reward", "clap_score", "--audio-dir", str(d), "--checkpoint", str(env["base"]),
               "--out", str(out)])
    err = capsys.readouterr().err
    assert rc == 2 and "every score is NaN" in err and "--prompt" in err
    res = json.loads(out.read_text(), parse_constant=lambda c: pytest.fail(f"non-strict JSON token {c}"))
    assert res["scores"] == [None, None]
    # with a prompt the same files score
    rc = main(["score", "--reward", "clap_score", "--audio-dir", str(d), "--prompt", "a piano", "--checkpoint",
               str(env["base"]), "--out", str(out)])
    assert rc == 0 and all(isinstance(x, float) for x in json.loads(out.read_text())["scores"])


@pytest.mark.parametrize("name,text,named", [
    ("samples.jsonl", '{"file": "0.wav", "prompt": "a"}\n{"file": "1.wav"\n', "samples.jsonl line 2 is not valid JSON"),
    ("samples.jsonl", '{"file": "0.wav"}\n', "record 1 lacks file or prompt"),
    ("eval/audio/index.json", '{"pairs": [', "index.json line 1 is not valid JSON"),
    ("eval/audio/index.json", '{"pairs": []}', "lists no clips"),
])
def test_score_run_with_a_malformed_record_file_names_it(env, tmp_path, capsys, name, text, named):
    run = tmp_path / "run"
    (run / name).parent.mkdir(parents=True, exist_ok=True)
    (run / name).write_text(text)
    out = tmp_path / "s.json"
    rc = main(["score", "--reward", "vendi", "--encoder", "codec", "--run", str(run), "--checkpoint", str(env["base"]),
               "--out", str(out)])
    err = capsys.readouterr().err
    assert rc == 2 and named in err and "--audio-dir" in err and "Traceback" not in err, err
    assert not out.exists()


def test_eval_negative_n_audio_is_refused_before_any_work(tmp_path, capsys):
    rc = main(["eval", "--model", str(tmp_path / "missing.safetensors"), "--n-audio", "-1", "--out", str(tmp_path / "e")])
    err = capsys.readouterr().err
    assert rc == 2 and "--n-audio=-1" in err and ">= 0" in err and "missing.safetensors" not in err, err
