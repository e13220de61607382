import math

import pytest
import torch

from dragontune.audio import resample
from dragontune.codecs import LogMelCodec
from dragontune.encoders.base import Encoder
from dragontune.encoders.codec import CodecEncoder
from dragontune.errors import ConfigError, EncoderError


def tones(n=3, seconds=1.0, sr=16000, stereo=False):
    t = torch.arange(int(seconds * sr)) / sr
    x = torch.stack([0.3 * torch.sin(2 * math.pi * (220 * (i + 1)) * t) * (1 + 0.5 * torch.sin(2 * math.pi * 3 * t)) for i in range(n)])
    x = x[:, None]
    if stereo:
        x = torch.cat([x, 0.5 * x], dim=1)
    return x


@pytest.fixture(scope="module")
def enc():
    return CodecEncoder(LogMelCodec(shift=-5.0, scale=0.2), window=4)


def test_interface(enc):
    assert isinstance(enc, Encoder)
    assert enc.name == "codec" and enc.sample_rate == 16000 and enc.dim == 64 and not enc.cross_modal
    assert enc.min_samples == 2 * 4 * 256
    assert enc.id == "codec:" + enc.codec.id + ":window=4"
    assert CodecEncoder(enc.codec, window=8).id != enc.id


def test_frames_are_window_means_of_latents(enc):
    x = tones(2, 1.0)
    out = enc.embed_audio(x, 16000)
    z = enc.codec.encode(x)
    F = z.shape[-1]  # 62 frames -> 15 windows, the 2 trailing frames dropped
    assert len(out) == 2 and all(o.shape == (F // 4, 64) and o.dtype == torch.float32 for o in out)
    for b in range(2):
        for k in range(F // 4):
            torch.testing.assert_close(out[b][k], z[b, :, 4 * k : 4 * k + 4].mean(-1))
    lat = enc.embed_latent(z)
    assert all(torch.equal(a, b) for a, b in zip(lat, out))


def test_deterministic_and_batch_invariant(enc):
    x = tones(3, 1.0)
    a = enc.embed_audio(x, 16000)
    b = enc.embed_audio(x, 16000)
    assert all(torch.equal(p, q) for p, q in zip(a, b))
    for i in range(3):
        torch.testing.assert_close(enc.embed_audio(x[i : i + 1], 16000)[0], a[i], atol=1e-5, rtol=1e-5)


def test_downmix_and_resample(enc):
    mono = tones(1, 1.0)
    stereo = tones(1, 1.0, stereo=True)
    a = enc.embed_audio(0.75 * mono, 16000)[0]
    b = enc.embed_audio(stereo, 16000)[0]
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    x44 = resample(mono, 16000, 44100)
    c = enc.embed_audio(x44, 44100)[0]
    ref = enc.embed_audio(mono, 16000)[0]
    assert c.shape == ref.shape
    # resampled round trip: the frame embeddings agree up to resampling error (latent std here ~0.6)
    assert (c - ref).abs().mean() < 0.05


def test_short_clip_error_names_length_and_minimum(enc):
    with pytest.raises(EncoderError, match=r"2000 samples.*minimum of 2048 samples"):
        enc.embed_audio(torch.zeros(1, 1, 2000), 16000)
    with pytest.raises(EncoderError, match=r"5000 samples.*44100 Hz.*minimum of 2048"):
        enc.embed_audio(torch.zeros(1, 2, 5000), 44100)
    assert len(enc.embed_audio(torch.zeros(1, 1, 2048) + 0.01, 16000)[0]) == 2


def test_embed_latent_errors(enc):
    with pytest.raises(EncoderError, match=r"\[B, 64, F\]"):
        enc.embed_latent(torch.zeros(1, 32, 20))
    with pytest.raises(EncoderError, match="at least 8 latent frames"):
        enc.embed_latent(torch.zeros(1, 64, 7))
    with pytest.raises(EncoderError, match=r"\[B, C, T\]"):
        enc.embed_audio(torch.zeros(16000), 16000)


def test_config_errors():
    with pytest.raises(ConfigError, match="window"):
        CodecEncoder(LogMelCodec(), window=0)
    with pytest.raises(ConfigError, match="Codec"):
        CodecEncoder("logmel")
