"""clap-mini: windowing, determinism, batch invariance, resampling, errors, retrieval with the packaged weights."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from dragontune.audio import resample
from dragontune.data.synth import SynthConfig, clip_row, render_clip
from dragontune.encoders.clap_mini import (
    ClapMiniConfig,
    ClapMiniEncoder,
    clip_windows,
    default_clap_mini_path,
    load_clap_mini,
)
from dragontune.training.clap_mini import retrieval_metrics, train_clap
from dragontune.errors import CheckpointError, EncoderError

HAVE_WEIGHTS = default_clap_mini_path().is_file()
needs_weights = pytest.mark.skipif(not HAVE_WEIGHTS, reason="packaged clap-mini checkpoint missing")
SR = 16000


@pytest.fixture(scope="module")
def enc() -> ClapMiniEncoder:
    return ClapMiniEncoder()


@pytest.fixture(scope="module")
def held_out() -> tuple[torch.Tensor, list[str], list[str]]:
    """24 clips of an unseen corpus seed (rendered in memory): audio [24, 1, T], captions, instruments."""
    cfg = SynthConfig()
    rows = [clip_row(i, 12345, cfg) for i in range(24)]
    audio = torch.stack([torch.from_numpy(render_clip(r, SR)).float()[None] for r in rows])
    return audio, [r["caption"] for r in rows], [r["instrument"] for r in rows]


def test_retrieval_metrics_closed_form():
    e = torch.eye(4)
    m = retrieval_metrics(e, e, ks=(1,))
    assert m["text_to_audio_r@1"] == 1.0 and m["audio_to_text_r@1"] == 1.0 and m["chance_r@1"] == 0.25
    # text i matches audio (i + 1) % 4 best: the true pair is never first, always among the top 2
    shifted = torch.roll(e, 1, dims=0) * 0.9 + e * 0.5
    m = retrieval_metrics(e, torch.nn.functional.normalize(shifted, dim=1), ks=(1, 2))
    assert m["text_to_audio_r@1"] == 0.0 and m["text_to_audio_r@2"] == 1.0
    # ties count against the query
    m = retrieval_metrics(torch.ones(3, 2), torch.ones(3, 2), ks=(1,))
    assert m["text_to_audio_r@1"] == 0.0


def test_clip_windows():
    cfg = ClapMiniConfig()
    mel = torch.arange(64 * 250, dtype=torch.float32).reshape(64, 250)
    w = clip_windows(mel, cfg)
    assert w.shape == (5, 64, 125)
    assert torch.equal(w[2], mel[:, 62:187])
    with pytest.raises(EncoderError):
        clip_windows(mel[:, :124], cfg)


def test_missing_weights_error(tmp_path):
    e = ClapMiniEncoder(weights=tmp_path / "none.safetensors")
    with pytest.raises(EncoderError, match="none.safetensors.*train-clap"):
        e.embed_audio(torch.zeros(1, 1, SR * 3), SR)
    bad = tmp_path / "bad.safetensors"
    from dragontune.utils import save_safetensors_atomic

    save_safetensors_atomic({"x": torch.zeros(1)}, bad, {"format": "other"})
    with pytest.raises(CheckpointError, match="not a clap-mini checkpoint"):
        load_clap_mini(bad)


@needs_weights
def test_contract_determinism_and_batch_invariance(enc, held_out):
    audio = held_out[0][:3]
    a = enc.embed_audio(audio, SR)
    assert len(a) == 3 and all(f.shape == (5, 256) and f.dtype == torch.float32 for f in a)
    assert torch.allclose(a[0].norm(dim=1), torch.ones(5), atol=1e-5)
    b = enc.embed_audio(audio, SR)
    single = enc.embed_audio(audio[1:2], SR)[0]
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert torch.equal(single, a[1])
    # stereo input is down-mixed; a 10 s clip gives (10 s - 2 s) / 0.496 s + 1 windows
    assert torch.allclose(enc.embed_audio(audio[:1].repeat(1, 2, 1), SR)[0], a[0], atol=1e-6)
    long = torch.cat([audio[0], audio[1], audio[2][:, : SR * 2]], dim=-1)[None]
    assert enc.embed_audio(long, SR)[0].shape == (1 + (625 - 125) // 31, 256)
    t = enc.embed_text(["a calm piano melody", "energetic drum beat"])
    assert t.shape == (2, 256) and torch.allclose(t.norm(dim=1), torch.ones(2), atol=1e-5)
    assert torch.equal(enc.embed_text(["energetic drum beat"])[0], t[1])
    assert enc.cross_modal and enc.dim == 256 and enc.min_samples == 32000
    assert enc.id.startswith("clap-mini:") and enc.id == ClapMiniEncoder().id


@needs_weights
def test_resampling_and_short_clip(enc, held_out):
    audio = held_out[0][:2]
    ref = torch.stack([f.mean(0) for f in enc.embed_audio(audio, SR)])
    up = resample(audio, SR, 44100)
    got = torch.stack([f.mean(0) for f in enc.embed_audio(up, 44100)])
    cos = torch.nn.functional.cosine_similarity(ref, got, dim=1)
    assert (cos > 0.98).all(), cos
    with pytest.raises(EncoderError, match="shorter than encoder 'clap-mini'"):
        enc.embed_audio(torch.zeros(1, 1, 31999), SR)
    with pytest.raises(EncoderError):
        enc.embed_audio(torch.zeros(2, SR * 3), SR)
    with pytest.raises(EncoderError, match="single string"):
        enc.embed_text("piano")


@needs_weights
def test_registry_builds_clap_mini():
    from dragontune.encoders.registry import get_encoder

    e = get_encoder("clap-mini")
    assert isinstance(e, ClapMiniEncoder) and e.cross_modal


@needs_weights
def test_retrieval_on_unseen_clips_beats_chance(enc, held_out):
    audio, captions, instruments = held_out
    a = torch.nn.functional.normalize(torch.stack([f.mean(0) for f in enc.embed_audio(audio, SR)]), dim=1)
    t = enc.embed_text(captions)
    m = retrieval_metrics(a, t, ks=(1, 5))
    # chance: r@1 = 1/24, r@5 = 5/24
    assert m["text_to_audio_r@1"] >= 0.3 and m["audio_to_text_r@1"] >= 0.3, m  # measured 0.67 / 0.67
    assert m["text_to_audio_r@5"] >= 0.75 and m["audio_to_text_r@5"] >= 0.75, m  # measured 0.96 / 1.0
    # the best-matching clip for a caption has the caption's instrument far more often than chance (~1/6)
    best = (t @ a.T).argmax(dim=1)
    inst_acc = np.mean([instruments[int(j)] == instruments[i] for i, j in enumerate(best)])
    assert inst_acc >= 0.8, inst_acc  # measured 1.0


@needs_weights
def test_packaged_checkpoint_metadata():
    _, meta = load_clap_mini()
    metrics = json.loads(meta["metrics"])
    assert metrics["text_to_audio_r@1"] > 5 * metrics["chance_r@1"]
    assert "train-clap" in meta["command"]


def test_train_clap_smoke(tmp_path):
    from dragontune.data.synth import synth_corpus

    corpus = synth_corpus(tmp_path / "c", 20, seed=3, options={"test_fraction": 0.3, "val_fraction": 0.0})
    out = tmp_path / "clap.safetensors"
    m = train_clap(corpus, out, steps=2, batch=4, progress=False)
    assert out.is_file() and 0.0 <= m["text_to_audio_r@1"] <= 1.0 and m["chance_r@1"] == 1 / m["n"]
    e = ClapMiniEncoder(weights=out)
    audio = torch.zeros(1, 1, SR * 3)
    audio[0, 0, ::100] = 0.5
    assert e.embed_audio(audio, SR)[0].shape == (3, 256)
