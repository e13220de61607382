import logging

import pytest
import torch

from dragontune.errors import ConfigError, DataError, DragontuneError
from dragontune.text import MiniLMTextEncoder, T5TextEncoder, TextEncoder, build_text_encoder

PROMPTS = ["a calm piano melody", "fast techno with a heavy kick and rolling bass", "jazz trio"]


@pytest.fixture(scope="module")
def minilm():
    enc = build_text_encoder("minilm")
    enc.encode(["warm up"])  # load once for the module
    return enc


def count_forwards(enc, monkeypatch):
    calls = []
    orig = enc._forward

    def wrapped(ids):
        calls.append(tuple(ids.shape))
        return orig(ids)

    monkeypatch.setattr(enc, "_forward", wrapped)
    return calls


def test_minilm_shapes_and_mask(minilm):
    assert isinstance(minilm, TextEncoder) and minilm.dim == 384 and minilm.max_length == 64
    h, m = minilm.encode(PROMPTS)
    tok = minilm._tokenizer(PROMPTS)["input_ids"]
    lens = [len(t) for t in tok]
    assert h.shape == (3, max(lens), 384) and h.dtype == torch.float32 and not h.requires_grad
    assert m.dtype == torch.bool and m.sum(1).tolist() == lens
    for b, L in enumerate(lens):
        assert torch.all(h[b, L:] == 0) and torch.all(h[b, :L].abs().sum(-1) > 0)


def test_minilm_matches_plain_transformers(minilm):
    from transformers import AutoModel, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(minilm.path), local_files_only=True)
    model = AutoModel.from_pretrained(str(minilm.path), local_files_only=True).eval()
    x = tok([PROMPTS[1]], return_tensors="pt")
    with torch.no_grad():
        ref = model(**x).last_hidden_state[0]
    h, _ = minilm.encode([PROMPTS[1]])
    torch.testing.assert_close(h[0], ref, atol=1e-5, rtol=1e-5)


def test_deterministic_and_batch_invariant(minilm):
    fresh = MiniLMTextEncoder()
    h1, m1 = minilm.encode(PROMPTS)
    h2, m2 = fresh.encode(PROMPTS[::-1])
    assert torch.equal(m1, m2.flip(0))
    for b in range(3):
        L = int(m1[b].sum())
        torch.testing.assert_close(h1[b, :L], h2[2 - b, :L], atol=1e-5, rtol=1e-5)
    assert fresh.id == minilm.id and minilm.id.startswith("minilm:") and minilm.id.endswith(":max64")


def test_cache_avoids_recomputation(minilm, monkeypatch):
    minilm.clear_cache()
    calls = count_forwards(minilm, monkeypatch)
    h1, m1 = minilm.encode(PROMPTS + [PROMPTS[0]])
    n = len(calls)
    assert 1 <= n <= 3 and sum(c[0] for c in calls) == 3  # each distinct prompt encoded once
    h2, m2 = minilm.encode(PROMPTS)
    h3, _ = minilm.encode([PROMPTS[2], PROMPTS[0]])
    assert len(calls) == n  # all cache hits
    assert torch.equal(h1[:3], h2) and torch.equal(m1[:3], m2) and torch.equal(h1[3], h1[0])
    assert torch.equal(h3[1, : h2.shape[1]], h2[0, : h3.shape[1]])
    minilm.encode(PROMPTS + ["a new prompt"])
    assert len(calls) == n + 1 and calls[-1][0] == 1


def test_output_device_argument(minilm):
    h, m = minilm.encode(PROMPTS[:1], device="cpu")
    assert h.device.type == "cpu" and m.device.type == "cpu"


def test_truncation_warns_once(caplog):
    enc = MiniLMTextEncoder(max_length=8)
    long1 = "a very long prompt about drums and bass and guitars and strings"
    long2 = "another long prompt that surely exceeds eight tokens of text"
    with caplog.at_level(logging.WARNING, logger="dragontune"):
        h, m = enc.encode([long1, "short"])
        enc.encode([long2])
    warnings = [r for r in caplog.records if "max_length=8" in r.getMessage()]
    assert len(warnings) == 1 and "a very long prompt" in warnings[0].getMessage()
    assert h.shape[1] == 8 and m[0].all()
    ids = enc._tokenizer([long1], truncation=True, max_length=8)["input_ids"][0]
    assert ids[-1] == enc._tokenizer.sep_token_id  # truncation keeps the closing special token


@pytest.mark.parametrize("bad", ["", "   ", "\n\t"])
def test_empty_prompt_error(minilm, bad):
    with pytest.raises(DataError, match="non-empty"):
        minilm.encode(["ok", bad])


def test_non_string_errors(minilm):
    with pytest.raises(DataError, match="not a string"):
        minilm.encode(["ok", 3])
    with pytest.raises(DataError, match="single string"):
        minilm.encode("just one")
    with pytest.raises(DataError, match="no prompts"):
        minilm.encode([])


def test_missing_or_invalid_path(tmp_path):
    missing = tmp_path / "nope"
    with pytest.raises(DragontuneError, match="nope.*config.json"):
        build_text_encoder(f"t5:{missing}")
    with pytest.raises(DragontuneError, match="nope"):
        build_text_encoder(f"minilm:{missing}")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="lacks config.json"):
        build_text_encoder(f"t5:{tmp_path / 'empty'}")
    with pytest.raises(ConfigError, match="t5:/path"):
        build_text_encoder("t5")
    with pytest.raises(ConfigError, match="unknown text encoder"):
        build_text_encoder("clip:/x")


def test_broken_weights_error(tmp_path):
    d = tmp_path / "broken"
    d.mkdir()
    (d / "config.json").write_text('{"model_type": "t5", "d_model": 8}')
    (d / "model.safetensors").write_bytes(b"not a safetensors file")
    (d / "tokenizer.json").write_text("{}")
    enc = build_text_encoder(f"t5:{d}")
    with pytest.raises(ConfigError, match="could not load the t5 text encoder"):
        enc.encode(["x"])


# --- a tiny random T5 saved offline ------------------------------------------------------------------------


def save_tiny_t5(path):
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast, T5Config, T5EncoderModel

    words = "a the calm piano melody fast techno with heavy kick and bass jazz trio drums guitar loud quiet".split()
    vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2, **{w: i + 3 for i, w in enumerate(words)}}
    tk = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    tk.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    fast = PreTrainedTokenizerFast(tokenizer_object=tk, pad_token="<pad>", eos_token="</s>", unk_token="<unk>")
    fast.save_pretrained(path)
    torch.manual_seed(0)
    cfg = T5Config(
        vocab_size=len(vocab), d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4, pad_token_id=0, eos_token_id=1
    )
    T5EncoderModel(cfg).eval().save_pretrained(path)
    return path


def test_t5_tiny_from_directory(tmp_path, monkeypatch):
    path = save_tiny_t5(tmp_path / "t5")
    enc = build_text_encoder(f"t5:{path}")
    assert isinstance(enc, T5TextEncoder) and enc.dim == 32 and enc.id.startswith("t5:")
    h, m = enc.encode(["a calm piano melody", "jazz trio"])
    assert h.shape == (2, 5, 32) and m.sum(1).tolist() == [5, 3]
    assert torch.all(h[1, 3:] == 0) and torch.isfinite(h).all()
    from transformers import T5EncoderModel

    ref_model = T5EncoderModel.from_pretrained(str(path), local_files_only=True).eval()
    with torch.no_grad():
        ref = ref_model(input_ids=torch.tensor([[3, 5, 6, 7, 1]])).last_hidden_state[0]  # a calm piano melody </s>
    torch.testing.assert_close(h[0], ref, atol=1e-5, rtol=1e-5)
    assert all(not p.requires_grad for p in enc._model.parameters()) and not enc._model.training
    # the id hashes the weights: a different model in another folder has another id
    other = save_tiny_t5(tmp_path / "t5b")
    torch.manual_seed(1)
    from transformers import T5Config

    T5EncoderModel(T5Config.from_pretrained(str(other))).save_pretrained(other)
    assert build_text_encoder(f"t5:{other}").id != enc.id
