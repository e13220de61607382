import pytest
import torch

from dragontune.errors import DataError
from dragontune.text import build_text_encoder
from dragontune.text_cache import CachedTextEncoder, write_text_cache


def test_cache_serves_exact_encoder_outputs(tmp_path):
    enc = build_text_encoder("minilm")
    prompts = ["a slow piano melody", "fast drums at 160 BPM", "a slow piano melody", "bell tones"]
    path = write_text_cache(enc, prompts, tmp_path / "tc.safetensors", "minilm")
    cached = CachedTextEncoder(path)
    assert len(cached) == 3 and cached.spec == "minilm" and cached.id == enc.id and cached.dim == enc.dim
    batch = ["bell tones", "a slow piano melody"]
    h1, m1 = enc.encode(batch)
    h2, m2 = cached.encode(batch)
    assert torch.equal(m1, m2) and torch.equal(h1, h2)
    with pytest.raises(DataError, match="'unknown prompt' .* not in the text cache"):
        cached.encode(["unknown prompt"])
    with pytest.raises(DataError, match="does not exist"):
        CachedTextEncoder(tmp_path / "missing.safetensors")
