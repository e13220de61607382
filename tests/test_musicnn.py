"""musicnn port: TF checkpoint reader, front-end vs librosa, network vs the original TensorFlow graph.

Reference values in fixtures/musicnn_ref.npz come from fixtures/make_musicnn_ref.py (TensorFlow 2.21 +
librosa 0.11 in a separate venv; see its docstring).
"""

from __future__ import annotations

import shutil
import struct
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from dragontune.audio import resample
from dragontune.encoders.base import Encoder
from dragontune.encoders.musicnn import (
    MUSICNN_LAYERS,
    MUSICNN_MODELS,
    MusicnnEncoder,
    musicnn_log_mel,
    musicnn_package_dir,
    slaney_mel_filterbank,
)
from dragontune.encoders.tf_bundle import crc32c, list_tf_checkpoint, read_tf_checkpoint
from dragontune.errors import CheckpointError, DragontuneError, EncoderError

FIXTURES = Path(__file__).parent / "fixtures"
sys.path.insert(0, str(FIXTURES))
from make_musicnn_ref import CLIP_NAMES, make_signals, signal_fingerprint  # noqa: E402

try:
    PKG = musicnn_package_dir()
    HAVE_WEIGHTS = (PKG / "MTT_musicnn" / ".index").is_file()
except EncoderError:
    HAVE_WEIGHTS = False
needs_weights = pytest.mark.skipif(not HAVE_WEIGHTS, reason="musicnn package (weights) not installed")


@pytest.fixture(scope="module")
def ref():
    return dict(np.load(FIXTURES / "musicnn_ref.npz"))


@pytest.fixture(scope="module")
def signals(ref):
    s = make_signals()
    for name in CLIP_NAMES:
        np.testing.assert_allclose(signal_fingerprint(s[name]), ref[f"fingerprint/{name}"], rtol=1e-6, atol=1e-7)
    return s


@pytest.fixture(scope="module")
def batch(signals):
    return torch.from_numpy(np.stack([signals[n] for n in CLIP_NAMES]))[:, None, :]  # [3, 1, T]


@pytest.fixture(scope="module")
def encoders():
    return {m: MusicnnEncoder(m, "penultimate") for m in MUSICNN_MODELS}


# ---------------------------------------------------------------------------------------------- tf_bundle


def test_crc32c_known_values():
    assert crc32c(b"123456789") == 0xE3069283
    assert crc32c(b"") == 0
    rng = np.random.default_rng(0)
    big = rng.integers(0, 256, 50_001, dtype=np.uint8).tobytes()
    # the vectorised path (>= 8192 bytes) agrees with chaining the scalar path over two halves
    from dragontune.encoders.tf_bundle import _crc_update_py

    reg = _crc_update_py(_crc_update_py(0xFFFFFFFF, big[:20000]), big[20000:])
    assert crc32c(big) == reg ^ 0xFFFFFFFF


@needs_weights
@pytest.mark.parametrize("model", MUSICNN_MODELS)
def test_checkpoint_listing(model):
    names = list_tf_checkpoint(str(PKG / model) + "/")
    assert len(names) == 150  # 64 model variables + 84 Adam slots + beta1/beta2 powers
    assert names["conv2d/kernel"] == ("float32", (7, 38, 1, 204))
    assert names["conv2d_5/kernel"] == ("float32", (7, 561, 1, 64))
    assert names["dense/kernel"] == ("float32", (1506, 200))
    assert names["dense_1/kernel"] == ("float32", (200, 50))
    w = read_tf_checkpoint(str(PKG / model) + "/", names=["dense_1/kernel", "batch_normalization/moving_variance"])
    assert w["dense_1/kernel"].dtype == np.float32 and w["dense_1/kernel"].shape == (200, 50)
    assert np.isfinite(w["dense_1/kernel"]).all() and (w["batch_normalization/moving_variance"] > 0).all()


def _masked_crc(data: bytes) -> int:
    c = crc32c(data)
    return ((((c >> 15) | (c << 17)) & 0xFFFFFFFF) + 0xA282EAD8) & 0xFFFFFFFF


def _varint_end(buf: bytes, pos: int, n: int) -> int:
    for _ in range(n):
        while buf[pos] & 0x80:
            pos += 1
        pos += 1
    return pos


def _varints(buf: bytes, pos: int, n: int) -> list[int]:
    out = []
    for _ in range(n):
        v = shift = 0
        while True:
            b = buf[pos]
            pos += 1
            v |= (b & 0x7F) << shift
            shift += 7
            if not b & 0x80:
                break
        out.append(v)
    return out


@needs_weights
def test_checkpoint_corruption_is_reported(tmp_path):
    src = PKG / "MTT_musicnn"
    for f in (".index", ".data-00000-of-00001"):
        shutil.copy(src / f, tmp_path / f)
    prefix = str(tmp_path) + "/"
    index = (tmp_path / ".index").read_bytes()
    data_path = tmp_path / ".data-00000-of-00001"
    good = data_path.read_bytes()

    # a flipped byte near the end of the data shard -> tensor checksum error naming the data file
    blob = bytearray(good)
    blob[-100] ^= 0xFF
    data_path.write_bytes(bytes(blob))
    with pytest.raises(CheckpointError, match=r"data-00000-of-00001.*checksum"):
        read_tf_checkpoint(prefix)
    # truncated data file
    data_path.write_bytes(good[: len(good) // 2])
    with pytest.raises(CheckpointError, match="truncated"):
        read_tf_checkpoint(prefix)
    data_path.write_bytes(good)

    # bad magic / truncated index
    (tmp_path / ".index").write_bytes(index[:-1] + b"\x00")
    with pytest.raises(CheckpointError, match=r"\.index.*magic"):
        read_tf_checkpoint(prefix)
    (tmp_path / ".index").write_bytes(index[:10])
    with pytest.raises(CheckpointError, match="too short"):
        read_tf_checkpoint(prefix)
    # a byte flipped inside the first data block -> block checksum error
    bad = bytearray(index)
    bad[20] ^= 0x01
    (tmp_path / ".index").write_bytes(bytes(bad))
    with pytest.raises(CheckpointError, match=r"\.index.*checksum"):
        read_tf_checkpoint(prefix)
    # first data block marked snappy-compressed (with a valid checksum) -> clear "compressed" error
    _meta_off, _meta_size, idx_off, idx_size = _varints(index, len(index) - 48, 4)
    idx_block = index[idx_off : idx_off + idx_size]
    _shared, non_shared, _vlen = _varints(idx_block, 0, 3)
    key_start = _varint_end(idx_block, 0, 3)
    first_off, size = _varints(idx_block, key_start + non_shared, 2)  # handle of the first data block
    assert first_off == 0
    bad = bytearray(index)
    bad[size] = 1
    bad[size + 1 : size + 5] = struct.pack("<I", _masked_crc(bytes(bad[: size + 1])))
    (tmp_path / ".index").write_bytes(bytes(bad))
    with pytest.raises(CheckpointError, match=r"snappy-compressed"):
        read_tf_checkpoint(prefix)

    # missing files
    (tmp_path / ".index").write_bytes(index)
    data_path.unlink()
    with pytest.raises(CheckpointError, match=r"data-00000-of-00001.*does not exist"):
        read_tf_checkpoint(prefix)
    with pytest.raises(CheckpointError, match="does not exist"):
        read_tf_checkpoint(str(tmp_path / "nowhere"))
    with pytest.raises(CheckpointError, match="no variable"):
        read_tf_checkpoint(prefix, names=["not/a/variable"])


# ---------------------------------------------------------------------------------------------- front-end


def test_filterbank_matches_librosa(ref):
    np.testing.assert_allclose(slaney_mel_filterbank(), ref["librosa_mel_fb"], rtol=0, atol=1e-6)


def test_log_mel_matches_librosa(ref, signals):
    mine = musicnn_log_mel(torch.from_numpy(signals["chords"])).numpy()
    theirs = ref["librosa_logmel/chords"]
    assert mine.shape == theirs.shape == (407, 96)
    np.testing.assert_allclose(mine, theirs, rtol=0, atol=1e-5)


# ---------------------------------------------------------------------------------------------- network


@needs_weights
@pytest.mark.parametrize("model", MUSICNN_MODELS)
def test_network_matches_tensorflow_on_librosa_patches(model, ref, encoders):
    logmel = ref["librosa_logmel/chords"]
    patches = torch.from_numpy(np.stack([logmel[0:187], logmel[187:374]]))
    out = encoders[model].forward_patches(patches)
    for k in ("taggram", "logits", "penultimate", "pooled"):
        np.testing.assert_allclose(out[k].numpy(), ref[f"{model}/{k}"][:2], rtol=0, atol=1e-4, err_msg=k)
    mx = ref[f"{model}/max_pooled"][:2]  # values up to ~150: compare relative to the scale
    np.testing.assert_allclose(out["max_pooled"].numpy(), mx, rtol=0, atol=1e-5 * np.abs(mx).max())


@needs_weights
@pytest.mark.parametrize("model", MUSICNN_MODELS)
def test_end_to_end_matches_tensorflow(model, ref, batch, encoders):
    """Our front-end + network on the raw clips vs TF on librosa's log-mel: all layers, all 6 patches."""
    assert ref["patches_per_clip"].tolist() == [2, 2, 2]
    enc = encoders[model]
    frames = enc.embed_audio(batch, 16000)  # layer "penultimate"
    assert [f.shape for f in frames] == [torch.Size([2, 200])] * 3
    assert all(f.dtype == torch.float32 and f.device.type == "cpu" for f in frames)
    per_clip = [enc.forward_patches(p) for p in enc.log_mel_patches(batch, 16000)]  # as embed_audio runs
    out = {k: torch.cat([o[k] for o in per_clip]) for k in per_clip[0]}
    assert torch.equal(torch.cat(frames), out["penultimate"])
    for layer, dim in MUSICNN_LAYERS.items():
        got, want = out[layer].numpy(), ref[f"{model}/{layer}"]
        assert got.shape == want.shape == (6, dim)
        atol = 1e-4 if layer != "max_pooled" else 1e-5 * np.abs(want).max()
        np.testing.assert_allclose(got, want, rtol=0, atol=atol, err_msg=f"{model}/{layer}")


@needs_weights
def test_layer_selection(ref, batch):
    for layer in ("taggram", "pooled"):
        enc = MusicnnEncoder("MSD_musicnn", layer)
        assert enc.dim == MUSICNN_LAYERS[layer]
        got = enc.embed_audio(batch[2:], 16000)[0].numpy()
        np.testing.assert_allclose(got, ref[f"MSD_musicnn/{layer}"][4:], rtol=0, atol=1e-4)


@needs_weights
def test_tag_probabilities_and_names(encoders, batch, ref):
    enc = encoders["MTT_musicnn"]
    names = enc.tag_names
    assert len(names) == 50 and len(set(names)) == 50 and names[0] == "guitar"
    assert encoders["MSD_musicnn"].tag_names[0] == "rock"
    probs = enc.tag_probabilities(batch, 16000)
    assert probs.shape == (3, 50)
    want = ref["MTT_musicnn/taggram"].reshape(3, 2, 50).mean(axis=1)
    np.testing.assert_allclose(probs.numpy(), want, rtol=0, atol=1e-4)


# ---------------------------------------------------------------------------------------------- encoder contract


@needs_weights
def test_deterministic_and_batch_invariant(encoders, batch):
    enc = encoders["MSD_musicnn"]
    a = enc.embed_audio(batch, 16000)
    b = enc.embed_audio(batch, 16000)
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    alone = enc.embed_audio(batch[1:2], 16000)[0]
    assert torch.equal(alone, a[1])
    stereo = batch[1:2].repeat(1, 2, 1)  # identical channels: the down-mix is exact
    assert torch.equal(enc.embed_audio(stereo, 16000)[0], a[1])


@needs_weights
def test_resamples_22050_input(encoders, batch):
    enc = encoders["MTT_musicnn"]
    x22 = resample(batch[:1], 16000, 22050)
    f22 = enc.embed_audio(x22, 22050)[0]
    f16 = enc.embed_audio(batch[:1], 16000)[0]
    assert f22.shape == f16.shape == (2, 200)
    assert (f22 - f16).abs().max() < 1e-3  # measured 4e-5 (soxr HQ round trip)


@needs_weights
def test_min_length_and_windowing(encoders):
    enc = encoders["MTT_musicnn"]
    assert enc.min_samples == 47616 and enc.sample_rate == 16000 and isinstance(enc, Encoder)
    x = torch.zeros(1, 1, 47616)
    assert enc.embed_audio(x, 16000)[0].shape == (1, 200)
    with pytest.raises(EncoderError, match=r"47615 samples.*minimum of 47616 samples"):
        enc.embed_audio(torch.zeros(1, 1, 47615), 16000)
    with pytest.raises(EncoderError, match=r"expects audio\[B, C, T\]"):
        enc.embed_audio(torch.zeros(47616), 16000)
    assert enc.embed_audio(torch.zeros(0, 1, 47616), 16000) == []
    assert enc.tag_probabilities(torch.zeros(0, 1, 47616), 16000).shape == (0, 50)
    overlapping = MusicnnEncoder("MTT_musicnn", hop_patches=50)
    assert overlapping.embed_audio(torch.zeros(1, 1, 104000), 16000)[0].shape == (5, 200)  # (407-187)//50+1


@needs_weights
def test_identity():
    a = MusicnnEncoder("MTT_musicnn", "penultimate")
    b = MusicnnEncoder("MSD_musicnn", "penultimate")
    c = MusicnnEncoder("MTT_musicnn", "pooled")
    assert a.id.startswith("musicnn:MTT_musicnn:penultimate:") and "weights-sha256-" in a.id
    assert len({a.id, b.id, c.id}) == 3
    assert a.name == "musicnn"


def test_bad_arguments():
    with pytest.raises(EncoderError, match="unknown musicnn model"):
        MusicnnEncoder("MTT_vgg")
    with pytest.raises(EncoderError, match="unknown musicnn layer"):
        MusicnnEncoder(layer="cnn9")
    with pytest.raises(EncoderError, match="hop_patches"):
        MusicnnEncoder(hop_patches=0)
    with pytest.raises(EncoderError, match="hop_patches"):
        MusicnnEncoder(hop_patches=93.5)


def test_missing_weights_message(tmp_path):
    enc = MusicnnEncoder(weights_dir=tmp_path / "nope")
    with pytest.raises(EncoderError, match=r"nope.*\.index.*pip install --no-deps musicnn==0\.1\.0"):
        enc.embed_audio(torch.zeros(1, 1, 48000), 16000)
    with pytest.raises(EncoderError, match="pip install --no-deps musicnn"):
        _ = enc.id
    # a corrupt index is reported as an EncoderError naming the file, with the same fix
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / ".index").write_bytes(b"\x00" * 100)
    (tmp_path / "bad" / ".data-00000-of-00001").write_bytes(b"")
    with pytest.raises(EncoderError, match=r"bad.*magic.*pip install"):
        MusicnnEncoder(weights_dir=tmp_path / "bad").embed_audio(torch.zeros(1, 1, 48000), 16000)
    assert issubclass(EncoderError, DragontuneError)


def test_package_not_installed_message(monkeypatch):
    import importlib.util

    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a, **k: None)
    with pytest.raises(EncoderError, match=r"'musicnn' is not installed.*pip install --no-deps musicnn==0\.1\.0"):
        MusicnnEncoder().embed_audio(torch.zeros(1, 1, 48000), 16000)
