"""aisfx encoder: front-end vs the package's librosa front-end, network vs the package's module, contract."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from dragontune.audio import resample
from dragontune.encoders import aisfx as aisfx_mod
from dragontune.encoders.aisfx import (
    BLOCK_FRAMES,
    SPEC_MAX,
    AisfxEncoder,
    AisfxNet,
    aisfx_blocks,
    aisfx_log_mel,
    htk_mel_filterbank,
    load_aisfx_checkpoint,
)
from dragontune.errors import EncoderError

FIXTURES = Path(__file__).resolve().parent / "fixtures"
sys.path.insert(0, str(FIXTURES))
from make_aisfx_ref import make_signals  # noqa: E402

pytestmark = pytest.mark.skipif(importlib.util.find_spec("aisfx") is None, reason="aisfx weights not installed")


@pytest.fixture(scope="module")
def enc() -> AisfxEncoder:
    return AisfxEncoder()


def _tone(f: float, sr: int, seconds: float = 4.0, harmonics: int = 4) -> torch.Tensor:
    t = torch.arange(int(seconds * sr), dtype=torch.float64) / sr
    x = sum(torch.sin(2 * torch.pi * f * k * t) / k for k in range(1, harmonics + 1))
    return (0.3 * x * torch.exp(-0.3 * t)).float()


def _noise(seed: int, sr: int, seconds: float = 4.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return 0.2 * torch.randn(int(seconds * sr), generator=g)


# ---------------------------------------------------------------------------------------------- front-end


def test_filterbank_unit_sum_htk():
    fb = htk_mel_filterbank()
    assert fb.shape == (96, 1025)
    np.testing.assert_allclose(fb.sum(axis=1), 1.0, rtol=1e-12)
    peaks = fb.argmax(axis=1)
    assert np.all(np.diff(peaks) >= 0) and peaks[-1] > 900  # ordered, spanning up to Nyquist


def test_frontend_matches_package_librosa_frontend():
    """Torch front-end == aisfx/spectrogram/spectrogram_librosa.py (librosa 0.11) on stored signals.

    Measured max |diff| of the un-normalised log-mel (values up to ~9): 5.3e-6 at 44.1 kHz (float32 vs
    float64 arithmetic), 1.8e-5 for a 16 kHz file (librosa resamples float32 with soxr, we float64).
    """
    ref = np.load(FIXTURES / "aisfx_ref.npz")
    for name, (sr, x) in make_signals().items():
        w = torch.from_numpy(x)
        if sr != 44100:
            w = resample(w[None], sr, 44100)[0]
        ours = aisfx_log_mel(w).numpy() * SPEC_MAX
        expected = ref[name].T  # the package returns [mels, frames]
        assert ours.shape == expected.shape, name
        tol = 2e-5 if sr == 44100 else 1e-4
        np.testing.assert_allclose(ours, expected, rtol=0, atol=tol, err_msg=name)


def test_peak_normalisation_makes_gain_irrelevant():
    x = _tone(330.0, 44100, 2.5)
    a = aisfx_log_mel(x)
    b = aisfx_log_mel(0.01 * x)
    torch.testing.assert_close(a, b, rtol=0, atol=1e-5)
    assert not torch.allclose(aisfx_log_mel(0.01 * x, peak_normalize=False), a, atol=1e-2)
    silent = aisfx_log_mel(torch.zeros(44100 * 3))
    assert torch.equal(silent, torch.zeros_like(silent))


@pytest.mark.parametrize("n_frames", [100, 149, 150, 151, 173, 251])
@pytest.mark.parametrize("hop", [0.5, 0.25, 1.0])
def test_blocks_match_package_blocking(n_frames, hop):
    from aisfx.preprocessing import blocking

    spec = np.random.default_rng(n_frames).random((n_frames, 96))
    hop_frames = AisfxEncoder(hop=hop).hop_frames
    assert hop_frames == int(np.round(BLOCK_FRAMES * hop))  # the package's compute_hopSize
    expected = blocking(spec, block_size=BLOCK_FRAMES, hop_size=hop_frames, drop_partial_block=True)
    ours = aisfx_blocks(torch.from_numpy(spec), hop_frames)
    np.testing.assert_array_equal(ours.numpy(), expected)


# ---------------------------------------------------------------------------------------------- network


def test_network_matches_package_module(enc):
    cnn2d = pytest.importorskip("aisfx.models.cnn2d")
    state, heads = load_aisfx_checkpoint(enc.weights)
    ref = cnn2d.CrossNet(cnn2d.EmbeddingNet("max", 3, 1, 64), heads, "cpu")
    ref.load_state_dict(state)
    ref.eval()
    x = torch.rand(3, BLOCK_FRAMES, 96, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = ref.get_embedding(x)
        ours = enc._load().embed(x)
        assert torch.equal(ours, expected)
        torch.testing.assert_close(enc._load().head_logits(ours, 2), ref.fc[2](expected), rtol=0, atol=0)
    assert len(enc.head_names) == 9 and enc.head_names[0] == "prosfx"


def test_end_to_end_matches_package_pipeline(enc):
    """Encoder on the raw signals == the package's pipeline (librosa front-end from the fixture, transposed to
    [frames, mels]; its spectrogram_normalize, blocking and CrossNet). Measured max |diff| 3.8e-6 (values to ~11)."""
    cnn2d = pytest.importorskip("aisfx.models.cnn2d")
    from aisfx.preprocessing import blocking, compute_hopSize, spectrogram_normalize

    state, heads = load_aisfx_checkpoint(enc.weights)
    ref_net = cnn2d.CrossNet(cnn2d.EmbeddingNet("max", 3, 1, 64), heads, "cpu")
    ref_net.load_state_dict(state)
    ref_net.eval()
    ref = np.load(FIXTURES / "aisfx_ref.npz")
    for name, (sr, x) in make_signals().items():
        spec = spectrogram_normalize(ref[name].T.astype(np.float64), spec_norm="original")
        blocks = blocking(spec, BLOCK_FRAMES, compute_hopSize(BLOCK_FRAMES, 0.5, spec), True)
        with torch.no_grad():
            expected = ref_net.get_embedding(torch.tensor(blocks, dtype=torch.float32))
        ours = enc.embed_audio(torch.from_numpy(x)[None, None], sr)[0]
        torch.testing.assert_close(ours, expected, rtol=0, atol=2e-5, msg=name)


def test_checkpoint_loads_with_weights_only_and_strict_keys(enc):
    state, heads = load_aisfx_checkpoint(enc.weights)
    net = AisfxNet([n for _, n in sorted(heads.values())])
    assert set(net.state_dict()) == set(state)
    assert sum(v.numel() for k, v in state.items() if k.startswith("embedding_net")) > 4_000_000


# ---------------------------------------------------------------------------------------------- encoder contract


def test_shapes_determinism_and_batch_invariance(enc):
    sr = 16000
    clips = torch.stack([_tone(220.0, sr), _noise(1, sr), _tone(523.0, sr, harmonics=1)])[:, None]  # [3, 1, 64000]
    out = enc.embed_audio(clips, sr)
    # 4 s at 16 kHz -> 176400 samples at 44.1 kHz -> 173 frames -> blocks at 0, 50 (100 + 50 > 173 drops the third)
    assert [tuple(f.shape) for f in out] == [(2, 512)] * 3
    assert all(f.dtype == torch.float32 and f.device.type == "cpu" for f in out)
    again = enc.embed_audio(clips, sr)
    assert all(torch.equal(a, b) for a, b in zip(out, again))
    alone = enc.embed_audio(clips[1:2], sr)[0]
    assert torch.equal(alone, out[1])
    stereo = enc.embed_audio(clips[:1].repeat(1, 2, 1), sr)[0]  # down-mix of identical channels
    torch.testing.assert_close(stereo, out[0], rtol=0, atol=1e-5)
    assert enc.embed_clip(clips, sr).shape == (3, 512)
    assert enc.embed_audio(clips[:0], sr) == []


def test_resamples_other_rates(enc):
    x48 = _tone(440.0, 48000, 3.0)
    x44 = resample(x48[None], 48000, 44100)[0]
    a = enc.embed_audio(x48[None, None], 48000)[0]
    b = enc.embed_audio(x44[None, None], 44100)[0]
    assert torch.equal(a, b)  # the encoder resamples to 44.1 kHz exactly as audio.resample does
    c = enc.embed_audio(_tone(440.0, 22050, 3.0)[None, None], 22050)[0]
    cos = torch.nn.functional.cosine_similarity(a, c, dim=-1)
    assert a.shape == c.shape and cos.min() > 0.98, cos


def test_similar_clips_are_closer_than_dissimilar(enc):
    sr = 16000
    clips = torch.stack([_noise(1, sr), _noise(2, sr), _tone(220.0, sr), _tone(233.0, sr)])[:, None]
    e = torch.nn.functional.normalize(enc.embed_clip(clips, sr), dim=-1)
    cos = e @ e.T
    assert cos[0, 1] > cos[0, 2] and cos[0, 1] > cos[0, 3]
    assert cos[2, 3] > cos[2, 0] and cos[2, 3] > cos[2, 1]


def test_rejects_short_clips(enc):
    sr = 16000
    short = torch.zeros(1, 1, int(2.2 * sr))
    with pytest.raises(EncoderError, match="shorter than encoder 'aisfx'"):
        enc.embed_audio(short, sr)
    just = torch.randn(1, 1, enc.min_samples, generator=torch.Generator().manual_seed(3)) * 0.1
    assert enc.embed_audio(just, 44100)[0].shape == (1, 512)
    with pytest.raises(EncoderError, match="expects audio"):
        enc.embed_audio(torch.zeros(16000 * 3), sr)


def test_id_names_windowing_and_weights_hash(enc):
    assert enc.id.startswith("aisfx:sr44100:") and "hop50" in enc.id and "weights-sha256-" in enc.id
    assert AisfxEncoder(hop=1.0).id != enc.id
    with pytest.raises(EncoderError, match="hop"):
        AisfxEncoder(hop=0)


def test_missing_weights_names_path_and_install_step(tmp_path):
    missing = tmp_path / "nowhere" / "checkpoint.pth"
    e = AisfxEncoder(weights=missing)
    with pytest.raises(EncoderError, match="pip install --no-deps aisfx") as info:
        e.embed_audio(torch.zeros(1, 1, 48000 * 3), 48000)
    assert str(missing) in str(info.value)
    with pytest.raises(EncoderError, match=str(missing).replace("\\", "\\\\")):
        _ = e.id
    bad = tmp_path / "checkpoint.pth"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(EncoderError, match="cannot be read"):
        AisfxEncoder(weights=bad).embed_audio(torch.zeros(1, 1, 48000 * 3), 48000)


def test_package_missing_says_how_to_install(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "aisfx" else real(name, *a))
    with pytest.raises(EncoderError, match="not installed.*pip install --no-deps aisfx==0.1.2"):
        AisfxEncoder().embed_audio(torch.zeros(1, 1, 48000 * 3), 48000)


def test_registry_builds_aisfx():
    from dragontune.encoders.registry import get_encoder

    e = get_encoder("aisfx", None, hop=1.0)
    assert isinstance(e, AisfxEncoder) and e.hop_frames == 100 and aisfx_mod.AisfxEncoder is AisfxEncoder
