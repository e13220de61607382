"""Evaluation: suite resolution, prompts and seeds, evaluation end to end (the statistics: test_win_rates.py)."""

import json

import pytest
import torch

from dragontune.errors import CheckpointError, DataError, RewardError
from dragontune.data.prompts import load_prompts
from dragontune.evaluate import evaluate_models, format_eval_table
from dragontune.rewards.suite import DEFAULT_SUITE, suite_specs
from dragontune.seeds import eval_seed
from dragontune.win_rates import instance_win_rate

# ---------------------------------------------------------------------------------------------------------
# suite and prompts


def test_default_suite_shape():
    names = [n for n, _ in DEFAULT_SUITE]
    assert len(names) >= 12 and len(set(names)) == len(names)
    for kind in ("per_song_fad", "fad"):
        encs = {n.split("/")[1] for n in names if n.startswith(kind + "/")}
        sets = {n.split("/")[2] for n in names if n.startswith(kind + "/")}
        assert len(encs) >= 2 and len(sets) >= 2
    assert {"aesthetics", "clap_score", "tag_score"} <= set(names)
    assert any(n.startswith("kad/") for n in names) and any(n.startswith("vendi/") for n in names)
    cen = dict(DEFAULT_SUITE)["centroid/clap-mini/text"]
    assert "texts" in cen["exemplars"]


def test_suite_specs_resolution(tmp_path):
    specs = suite_specs(["per_song_fad/codec/piano", "vendi/codec"], corpus=str(tmp_path))
    assert [n for n, _ in specs] == ["per_song_fad/codec/piano", "vendi/codec"]
    assert specs[0][1]["exemplars"]["corpus"] == str(tmp_path)
    assert len(suite_specs("default", corpus="c")) == len(DEFAULT_SUITE)
    # the table itself is not modified by substitution
    assert dict(DEFAULT_SUITE)["per_song_fad/codec/piano"]["exemplars"]["corpus"] != str(tmp_path)
    custom = suite_specs([("mine", {"name": "vendi", "encoder": "codec", "q": 2.0})])
    assert custom == [("mine", {"name": "vendi", "encoder": "codec", "q": 2.0})]
    with pytest.raises(RewardError, match="unknown suite reward 'per_song_fad/codec/pian'.*did you mean") as e:
        suite_specs(["per_song_fad/codec/pian"])
    assert "vendi/codec" in str(e.value)  # lists the known names
    with pytest.raises(RewardError, match="empty"):
        suite_specs([])


def test_load_prompts(tmp_path, corpus):
    f = tmp_path / "p.txt"
    f.write_text("a piano tune\n\n  drums  \n")
    assert load_prompts(f) == ["a piano tune", "drums"]
    assert load_prompts(f, limit=1) == ["a piano tune"]
    test = load_prompts("test", corpus)
    rows = [json.loads(x) for x in (corpus / "metadata.jsonl").read_text().splitlines()]
    assert test == [r["caption"] for r in rows if r["split"] == "test"]
    empty = tmp_path / "empty.txt"
    empty.write_text("\n  \n")
    with pytest.raises(DataError, match="no prompts"):
        load_prompts(empty)
    with pytest.raises(DataError, match="does not exist"):
        load_prompts(tmp_path / "missing.txt")


# ---------------------------------------------------------------------------------------------------------
# end to end with tiny real models

SR = 16000
TINY_CODEC = dict(sample_rate=SR, n_fft=256, hop_length=128, n_mels=16, griffin_lim_iters=2)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    from dragontune.data.synth import synth_corpus

    root = tmp_path_factory.mktemp("corpus")
    synth_corpus(root, n=16, seed=0, options={"duration": 1.0})
    return root


def _tiny_model(path, corpus, seed=0, fit=True):
    from dragontune.audio import fit_length, load_audio
    from dragontune.codecs import LogMelCodec, fit_scale
    from dragontune.models.checkpoint import ModelSpec, save_model
    from dragontune.models.dit import DiT, DiTConfig

    codec = LogMelCodec(**TINY_CODEC)
    if fit:
        wavs = sorted((corpus / "audio").glob("*.wav"))[:6]
        codec = fit_scale(codec, [torch.stack([fit_length(load_audio(w, SR), SR) for w in wavs])])
    cfg = DiTConfig(latent_channels=16, patch_size=5, width=32, depth=1, heads=2, text_dim=384, noise_freqs=16)
    torch.manual_seed(seed)
    net = DiT(cfg)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.02 * torch.randn_like(p))
    save_model(path, net, ModelSpec(model=cfg, codec=codec.config(), text_encoder="minilm",
                                    latent_frames=codec.latent_frames(SR)))
    return path


@pytest.fixture(scope="module")
def models(tmp_path_factory, corpus):
    d = tmp_path_factory.mktemp("models")
    a = _tiny_model(d / "a.safetensors", corpus, seed=0)
    a2 = _tiny_model(d / "a2.safetensors", corpus, seed=0)  # same weights, another file
    b = _tiny_model(d / "b.safetensors", corpus, seed=1)
    other = _tiny_model(d / "other.safetensors", corpus, seed=0, fit=False)  # another codec scale
    return {"a": a, "a2": a2, "b": b, "other": other}


def _sampler():
    from dragontune.generate import SamplerConfig

    return SamplerConfig(steps=3, sampler="euler", cfg=2.0, batch_size=8)


SUITE = ["per_song_fad/codec/piano", "fad/codec/calm", "kad/codec/piano", "vendi/codec",
         ("centroid/codec/piano", {"name": "centroid", "encoder": "codec",
                                   "exemplars": {"corpus": "${corpus}", "filter": "instrument=piano"}})]
PROMPTS = ["a calm piano melody", "fast drums", "a warm synth pad", "a deep bass groove", "bells ringing",
           "plucked guitar arpeggio"]


def test_identical_models_win_half(tmp_path, corpus, models, monkeypatch):
    from dragontune.encoders.codec import CodecEncoder

    calls = []
    orig = CodecEncoder.embed_latent

    def spy(self, lat):
        calls.append(lat.shape[0])
        return orig(self, lat)

    monkeypatch.setattr(CodecEncoder, "embed_latent", spy)
    out = tmp_path / "eval"
    res = evaluate_models(models["a"], models["a2"], PROMPTS, SUITE, sampler=_sampler(), out_dir=out,
                          corpus=corpus, n_boot=40, n_audio=2, cache_dir=tmp_path / "cache")
    assert [r["name"] for r in res["rewards"]] == [s if isinstance(s, str) else s[0] for s in SUITE]
    for r in res["rewards"]:
        assert "error" not in r, r
        assert r["win_rate"] == pytest.approx(0.5), r["name"]
        if r["method"] == "bootstrap":  # identical sets: the difference is exactly 0 on every resample
            assert r["diff_lo"] == r["diff_hi"] == 0.0 and r["win_rate_kind"] == "bootstrap win share"
        else:
            assert r["lo"] < 0.5 < r["hi"], r["name"]
        assert r["before"] == pytest.approx(r["after"]), r["name"]
    # five rewards share the codec encoder: each model's latents are embedded once, and nothing is decoded
    assert calls == [len(PROMPTS)] * 2 and res["decoded"] is False
    kinds = {r["name"]: r["method"] for r in res["rewards"]}
    assert kinds["per_song_fad/codec/piano"] == "instance" and kinds["vendi/codec"] == "bootstrap"
    assert kinds["fad/codec/calm"] == "bootstrap" and kinds["centroid/codec/piano"] == "instance"
    assert res["seeds"] == [eval_seed(0, i) for i in range(len(PROMPTS))]
    # files: eval.json (valid JSON, same content), eval.md, audio pairs with an index
    saved = json.loads((out / "eval.json").read_text())
    assert saved["n_prompts"] == len(PROMPTS) and len(saved["rewards"]) == len(SUITE)
    md = (out / "eval.md").read_text()
    assert "| per_song_fad/codec/piano |" in md and "50.0%" in md
    idx = json.loads((out / "audio" / "index.json").read_text())
    assert len(idx["pairs"]) == 2
    for p in idx["pairs"]:
        assert p["prompt"] in PROMPTS and isinstance(p["seed"], int)
        assert (out / p["baseline"]).is_file() and (out / p["model"]).is_file()
        # identical models, same seed: identical audio
        assert (out / p["baseline"]).read_bytes() == (out / p["model"]).read_bytes()
    table = format_eval_table(res)
    assert "vendi/codec" in table and "50.0%" in table


def test_different_models_and_bootstrap_determinism(tmp_path, corpus, models):
    kw = dict(sampler=_sampler(), corpus=corpus, n_boot=30, cache_dir=tmp_path / "cache")
    suite = ["per_song_fad/codec/piano", "fad/codec/calm"]
    r1 = evaluate_models(models["a"], models["b"], PROMPTS, suite, **kw)
    r2 = evaluate_models(models["a"], models["b"], PROMPTS, suite, **kw)
    for x, y in zip(r1["rewards"], r2["rewards"]):
        assert x["win_rate"] == y["win_rate"] and x["lo"] == y["lo"] and x["hi"] == y["hi"]
        if x["method"] == "bootstrap":
            assert x["diff_lo"] == y["diff_lo"] and x["diff_lo"] <= x["diff_mean"] <= x["diff_hi"]
        else:
            assert 0 <= x["lo"] <= x["win_rate"] <= x["hi"] <= 1
    inst = r1["rewards"][0]
    assert inst["n"] == len(PROMPTS) and inst["wins"] + inst["ties"] + inst["losses"] == len(PROMPTS)
    # the instance win rate is exactly the per-prompt comparison of the stored scores
    direct = instance_win_rate(inst["scores_before"], inst["scores_after"])
    assert direct["win_rate"] == inst["win_rate"]


def test_error_cases(tmp_path, corpus, models):
    with pytest.raises(CheckpointError, match="different codecs") as e:
        evaluate_models(models["a"], models["other"], PROMPTS, ["vendi/codec"], sampler=_sampler(), corpus=corpus)
    assert "a.safetensors" in str(e.value) and "other.safetensors" in str(e.value)
    with pytest.raises(DataError, match="prompt"):
        evaluate_models(models["a"], models["a2"], [], ["vendi/codec"], corpus=corpus)
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    with pytest.raises(DataError, match="no prompts"):
        evaluate_models(models["a"], models["a2"], load_prompts(empty), ["vendi/codec"], corpus=corpus)
    with pytest.raises(RewardError, match="unknown suite reward 'vendy/codec'"):
        evaluate_models(models["a"], models["a2"], PROMPTS, ["vendy/codec"], corpus=corpus)


def test_unavailable_rewards_skipped_or_raised(tmp_path, corpus, models):
    from dragontune.rewards.suite import build_suite
    from dragontune.rewards.registry import RewardContext

    specs = [("bogus", {"name": "no_such_reward"}), ("vendi", {"name": "vendi", "encoder": "codec"})]
    with pytest.raises(RewardError, match="suite reward 'bogus'"):
        build_suite(specs, RewardContext(codec=None), skip_unavailable=False)
    from dragontune.codecs import LogMelCodec

    rewards, skipped = build_suite(specs, RewardContext(codec=LogMelCodec(**TINY_CODEC)), skip_unavailable=True)
    assert [n for n, _ in rewards] == ["vendi"] and skipped[0][0] == "bogus"
    res = evaluate_models(models["a"], models["a2"], PROMPTS[:4],
                          [("bogus", {"name": "no_such_reward"}), "vendi/codec"], sampler=_sampler(),
                          corpus=corpus, n_boot=10, skip_unavailable=True)
    assert res["skipped"][0]["name"] == "bogus" and "skipped" in format_eval_table(res)
