"""Aesthetics predictor: rating formula, metrics, ratings CSV errors, training/saving, packaged predictor."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.stats import pearsonr, spearmanr

from dragontune.aesthetics import default_aesthetics_path, load_aesthetics
from dragontune.training.aesthetics import (
    SEVERITY_WEIGHTS,
    per_prompt_srcc,
    plcc,
    read_ratings_csv,
    severity,
    srcc,
    synthetic_rating,
    train_aesthetics,
)
from dragontune.audio import save_wav
from dragontune.data.synth import QUALITIES, clip_row, make_config, render_clip
from dragontune.errors import CheckpointError, ConfigError, DataError

SR = 16000
HAVE_PREDICTOR = default_aesthetics_path().is_file()


def test_rating_formula():
    assert synthetic_rating("clean", 0.0) == 5.0
    assert synthetic_rating("noise", 1.0) == pytest.approx(1.5)
    assert synthetic_rating("jitter", 0.5) == pytest.approx(5 - 3.5 * 0.7 * 0.5)
    assert severity("clipping", 0.5) == pytest.approx(0.5 * SEVERITY_WEIGHTS["clipping"])
    rng = np.random.default_rng(0)
    r = [synthetic_rating("clean", 0.0, rng, noise_std=1.0) for _ in range(200)]
    assert min(r) >= 1.0 and max(r) == 5.0 and np.mean(r) < 5.0
    with pytest.raises(DataError):
        severity("wobble", 0.5)
    with pytest.raises(DataError):
        severity("noise", 1.5)


def test_metrics_match_scipy():
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=50), rng.normal(size=50)
    b = a + 0.5 * b
    assert plcc(a, b) == pytest.approx(pearsonr(a, b)[0], abs=1e-12)
    b[:5] = b[5]  # ties
    assert srcc(a, b) == pytest.approx(spearmanr(a, b)[0], abs=1e-12)
    groups = [0] * 25 + [1] * 25
    want = np.mean([spearmanr(a[:25], b[:25])[0], spearmanr(a[25:], b[25:])[0]])
    assert per_prompt_srcc(a, b, groups) == pytest.approx(want, abs=1e-12)


def _write_csv(tmp_path, lines: list[str]):
    p = tmp_path / "ratings.csv"
    p.write_text("\n".join(lines) + "\n")
    return p


def test_ratings_csv_errors_name_rows(tmp_path):
    save_wav(tmp_path / "a.wav", torch.zeros(1, SR), SR)
    p = _write_csv(tmp_path, ["path,rating", "a.wav,3", "missing.wav,4", "a.wav,7", "a.wav,good"])
    with pytest.raises(DataError) as e:
        read_ratings_csv(p)
    msg = str(e.value)
    assert "3 bad row(s)" in msg and "row 3: file" in msg and "missing.wav" in msg
    assert "row 4: rating '7' outside [1, 5]" in msg and "row 5: rating 'good' is not a number" in msg
    with pytest.raises(DataError, match="header must name columns path and rating"):
        read_ratings_csv(_write_csv(tmp_path, ["file,score", "a.wav,3"]))
    with pytest.raises(DataError, match="not found"):
        read_ratings_csv(tmp_path / "nope.csv")


def test_train_from_csv_save_load_roundtrip(tmp_path):
    rng = np.random.default_rng(0)
    lines = ["path,rating,prompt"]
    cfg = make_config({"instruments": ["bass"], "duration": 3.0})
    for i in range(16):
        row = clip_row(i, 99, cfg)
        s = float(rng.uniform(0, 1))
        x = render_clip(dict(row, quality="noise", quality_strength=s), SR)
        save_wav(tmp_path / f"c{i}.wav", torch.from_numpy(x).float()[None], SR)
        lines.append(f"c{i}.wav,{synthetic_rating('noise', s):.3f},prompt {i % 8}")
    csv_path = _write_csv(tmp_path, lines)
    out = tmp_path / "aes.safetensors"
    rep = train_aesthetics(ratings_csv=csv_path, out_path=out, encoders=("codec",), heads=("kernel_ridge", "mlp"),
                           val_fraction=0.3)
    assert rep["chosen"].startswith("codec/") and rep["n_train"] + rep["n_validation"] == 16
    p = load_aesthetics(out)
    audio = torch.from_numpy(render_clip(clip_row(50, 99, cfg), SR)).float()[None, None]
    a = p.predict(audio, SR)
    assert torch.isfinite(a).all()
    assert torch.equal(load_aesthetics(out).predict(audio, SR), a)
    with pytest.raises(ConfigError):
        train_aesthetics(ratings_csv=csv_path, out_path=out, encoders=("nope",))
    one_prompt = _write_csv(tmp_path, [ln.rsplit(",", 1)[0] + ",same" if i else ln for i, ln in enumerate(lines)])
    with pytest.raises(DataError, match="each needs at least 2"):
        train_aesthetics(ratings_csv=one_prompt, out_path=out, encoders=("codec",))
    with pytest.raises(CheckpointError, match="not found"):
        load_aesthetics(tmp_path / "none.safetensors")


@pytest.mark.skipif(not HAVE_PREDICTOR, reason="packaged aesthetics predictor missing")
def test_packaged_predictor_prefers_clean_for_every_defect():
    """Four unseen clips (piano, drums, pad, pluck), clean vs each defect at full strength.

    Noise, clipping and distortion must score below the clean clip on every clip; detune and jitter (subtle:
    detuning a drum kit barely changes it) on average over the four clips.
    """
    p = load_aesthetics()
    cfg = make_config({"degraded_fraction": 0.0})
    margins = []
    for i in range(4):
        row = clip_row(i, 2024, cfg)
        versions = [render_clip(row, SR)] + [render_clip(dict(row, quality=q, quality_strength=1.0), SR) for q in QUALITIES]
        pred = p.predict(torch.from_numpy(np.stack(versions)).float()[:, None], SR).numpy()
        assert np.isfinite(pred).all()
        margins.append(pred[0] - pred[1:])
    m = dict(zip(QUALITIES, np.array(margins).T))
    for q in ("noise", "clipping", "distortion"):
        assert (m[q] > 0.5).all(), (q, m[q])
    for q in ("detune", "jitter"):
        assert m[q].mean() > 0.2, (q, m[q])


def test_degenerate_versions_are_what_they_say():
    from dragontune.training.aesthetics import DEGENERATE_KINDS, degenerate_version

    x = torch.from_numpy(render_clip(clip_row(0, 7, make_config({"degraded_fraction": 0.0})), SR)).float()[None]
    for seed in range(6):
        rng = np.random.default_rng(seed)
        s = degenerate_version(x, "silence", rng)
        assert s.shape == x.shape and float(s.abs().max()) <= float(x.abs().max()) * 10 ** (-60 / 20)
        n = degenerate_version(x, "white_noise", np.random.default_rng(seed))
        rms_db = 20 * np.log10(float(n.pow(2).mean().sqrt()))
        assert -40.5 < rms_db < -3 and float(n.abs().max()) <= 1.0
        c = degenerate_version(x, "hard_clipping", np.random.default_rng(seed))
        assert float(c.abs().max()) == 1.0 and float((c.abs() == 1.0).float().mean()) > 0.2  # mostly at the rails
    assert DEGENERATE_KINDS == ("silence", "white_noise", "hard_clipping")
    with pytest.raises(ConfigError, match="unknown degenerate kind"):
        degenerate_version(x, "hum", np.random.default_rng(0))
    with pytest.raises(ConfigError, match="degenerate_every"):
        train_aesthetics("nowhere", degenerate_every=-1)


def test_degenerate_training_clips_teach_silence_a_low_rating(tmp_path):
    """Direction: with degenerate clips (rated 1) in training, silence rates far below clean clips; without them
    kernel ridge rates silence near its training mean."""
    from dragontune.data.synth import synth_corpus

    corpus = tmp_path / "corpus"
    synth_corpus(corpus, n=80, seed=0)
    cfg = make_config({"degraded_fraction": 0.0})
    clean = torch.from_numpy(np.stack([render_clip(clip_row(i, 2024, cfg), SR) for i in range(3)])).float()[:, None]
    silence = torch.zeros(1, 1, clean.shape[-1])
    got = {}
    for every in (0, 2):
        out = tmp_path / f"aes{every}.safetensors"
        rep = train_aesthetics(corpus, out, encoders=("codec",), heads=("kernel_ridge",), eval_clips=2,
                               degenerate_every=every)
        p = load_aesthetics(out)
        got[every] = (float(p.predict(silence, SR)[0]), float(p.predict(clean, SR).min()), rep)
    s0, c0, rep0 = got[0]
    s2, c2, rep2 = got[2]
    assert rep0["n_degenerate"] == {"train": 0, "validation": 0} and "degenerate" not in rep0["results"]["codec/kernel_ridge"]
    assert rep2["n_degenerate"]["train"] + rep2["n_degenerate"]["validation"] == 40
    d = rep2["results"]["codec/kernel_ridge"]["degenerate"]
    assert set(d) >= {"corpus_min", "corpus_mean"} and any(k in d for k in ("silence", "white_noise", "hard_clipping"))
    assert s2 < 2.0 and s2 < c2 - 1.0, (s2, c2)  # learnt: silence at the bottom
    assert s0 > s2 + 1.0, (s0, s2)  # without degenerate clips silence sits near the mean rating
