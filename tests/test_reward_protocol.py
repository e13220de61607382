"""One reward protocol: embed once, score any subset; pool credit against brute force; no decoding in codec space."""

import pytest
import torch

from dragontune.codecs import LogMelCodec, fit_scale
from dragontune.dragon.pool import FeaturePool, PoolConfig
from dragontune.encoders.codec import CodecEncoder
from dragontune.errors import ConfigError, RewardError
from dragontune.metrics import (
    fad_from_embeddings,
    fad_infinity,
    fad_join,
    gaussian_stats,
    kad,
    kad_join,
    vendi_join,
    vendi_score,
)
from dragontune.rewards.base import Features, ScoringBatch
from dragontune.rewards.builtin import FADReward, KADReward, VendiReward, WeightedReward
from dragontune.rewards.exemplars import ExemplarSet

from tiny import SR, TINY_CODEC, tiny_corpus


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from dragontune.audio import fit_length, load_audio

    root = tmp_path_factory.mktemp("proto")
    corpus = tiny_corpus(root / "corpus", n=16)
    wavs = sorted((corpus / "audio").glob("*.wav"))
    audio = torch.stack([fit_length(load_audio(w, SR), SR) for w in wavs])
    codec = fit_scale(LogMelCodec(**TINY_CODEC), [audio])
    enc = CodecEncoder(codec)
    stats = ExemplarSet.from_audio_dir(corpus / "audio").stats(enc, cache_dir=root / "cache")
    return {"codec": codec, "enc": enc, "stats": stats, "audio": audio}


def _rewards(s):
    return {
        "fad": FADReward(s["enc"], s["stats"]),
        "fad_frames": FADReward(s["enc"], s["stats"], pooling="frames"),
        "kad": KADReward(s["enc"], s["stats"]),
        "vendi": VendiReward(s["enc"]),
        "vendi_q2": VendiReward(s["enc"], q=2.0),
    }


def test_subset_scores_equal_rescoring_the_sub_batch(setup):
    batch = ScoringBatch(setup["audio"], SR, ["x"] * len(setup["audio"]))
    idx = torch.tensor([0, 2, 3, 5, 7])
    sub = ScoringBatch(setup["audio"][idx], SR, ["x"] * len(idx))
    for name, r in _rewards(setup).items():
        feats = r.features(batch)
        assert feats.n == len(batch)
        got = r.set_value(feats.subset(idx))
        want = r(sub).set_score
        assert got == pytest.approx(want, rel=1e-9, abs=1e-12), name
        assert torch.isfinite(torch.tensor(r.set_value(feats.subset([1])))), name  # one clip: a point mass


def test_pool_credit_equals_brute_force(setup):
    """r(pool + {i}) - r(pool), fast from the pool's statistics, against re-scoring the union from scratch."""
    g = torch.Generator().manual_seed(0)
    d = setup["enc"].dim
    pool_x = torch.randn(40, d, generator=g, dtype=torch.float64) + setup["stats"].clips.mu
    cand_x = torch.randn(6, d, generator=g, dtype=torch.float64) * 2 + setup["stats"].clips.mu
    ex = setup["stats"]
    for name, r in _rewards(setup).items():
        if name == "fad_frames":
            pf = [torch.randn(5, d, generator=g, dtype=torch.float64) for _ in range(12)]
            cf = [torch.randn(5, d, generator=g, dtype=torch.float64) + 1.0 for _ in range(4)]
            pool = Features(n=12, clips=torch.stack([f.mean(0) for f in pf]), frames=pf)
            cand = Features(n=4, clips=torch.stack([f.mean(0) for f in cf]), frames=cf)
        else:
            pool, cand = Features(n=40, clips=pool_x), Features(n=6, clips=cand_x)
        fast = r.pool_credit(pool, cand)
        base = r.set_value(pool)
        brute = torch.tensor([r.set_value(Features.cat([pool, cand.subset([i])])) - base for i in range(cand.n)],
                             dtype=torch.float64)
        assert torch.allclose(fast, brute, rtol=1e-7, atol=1e-10), (name, fast, brute)
    # the metric functions against the closed-form metric of the union (independent of the reward classes)
    joined = fad_join(gaussian_stats(pool_x), cand_x, ex.clips)
    for i in range(cand_x.shape[0]):
        u = torch.cat([pool_x, cand_x[i:i + 1]])
        assert float(joined[i]) == pytest.approx(float(fad_from_embeddings(u, ex.clips)), rel=1e-9)
        assert float(kad_join(pool_x, cand_x, ex.sample)[i]) == pytest.approx(float(kad(u, ex.sample)), rel=1e-9)
        assert float(vendi_join(pool_x, cand_x)[i]) == pytest.approx(float(vendi_score(u)), rel=1e-9)
        assert float(vendi_join(pool_x[:5], cand_x)[i]) == pytest.approx(  # Gram route (n + 1 <= d)
            float(vendi_score(torch.cat([pool_x[:5], cand_x[i:i + 1]]))), rel=1e-9)
    # a candidate at the exemplar mean improves FAD more than one far away
    far = FADReward(setup["enc"], ex).pool_credit(Features(n=40, clips=pool_x),
                                                  Features(n=2, clips=torch.stack([ex.clips.mu, ex.clips.mu + 50])))
    assert far[0] > far[1]


def test_weighted_reward_features_and_pool_credit(setup):
    r = _rewards(setup)
    w = WeightedReward([(1.0, r["fad"]), (0.5, r["vendi"])])
    batch = ScoringBatch(setup["audio"], SR, ["x"] * len(setup["audio"]))
    feats = w.features(batch)
    assert w.set_value(feats) == pytest.approx(r["fad"].set_score(batch) + 0.5 * r["vendi"].set_score(batch))
    pool, cand = feats.subset(range(10)), feats.subset(range(10, 16))
    want = r["fad"].pool_credit(pool.parts[0], cand.parts[0]) + 0.5 * r["vendi"].pool_credit(pool.parts[1], cand.parts[1])
    assert torch.allclose(w.pool_credit(pool, cand), want)
    # stored and restored (the pool travels in checkpoints)
    back = Features.from_tensors(feats.tensors())
    assert w.set_value(back) == pytest.approx(w.set_value(feats))


def test_one_embedding_pass_and_no_decoding_for_codec_rewards(setup, monkeypatch):
    codec, enc = setup["codec"], setup["enc"]
    lat = codec.encode(setup["audio"][:, :1].mean(1, keepdim=True))
    calls = {"latent": 0, "audio": 0, "decode": 0}
    orig_lat, orig_aud = CodecEncoder.embed_latent, CodecEncoder.embed_audio
    monkeypatch.setattr(CodecEncoder, "embed_latent", lambda self, z: (calls.__setitem__("latent", calls["latent"] + 1), orig_lat(self, z))[1])
    monkeypatch.setattr(CodecEncoder, "embed_audio", lambda self, a, sr: (calls.__setitem__("audio", calls["audio"] + 1), orig_aud(self, a, sr))[1])

    def decode(z):
        calls["decode"] += 1
        return codec.decode(z)

    batch = ScoringBatch(None, SR, ["x"] * lat.shape[0], latents=lat, codec=codec, decode=decode)
    rs = _rewards(setup)
    assert all(r.scores_latents_of(codec.id) for r in rs.values())
    for r in rs.values():
        r(batch)
    assert calls == {"latent": 1, "audio": 0, "decode": 0}  # one pass for five rewards, nothing decoded
    assert batch.n_decoded == 0
    # latents pooled directly match the codec encoder on latents (what the exemplar statistics were made of)
    assert torch.allclose(torch.stack([f.mean(0) for f in enc.embed_latent(lat)]),
                          rs["fad"].features(ScoringBatch(None, SR, ["x"] * lat.shape[0], latents=lat, codec=codec)).clips.float())
    # a reward in another encoder's space decodes the batch once, however many such rewards score it
    other = VendiReward(CodecEncoder(fit_scale(LogMelCodec(**{**TINY_CODEC, "hop_length": 64}), [setup["audio"]])))
    assert not other.scores_latents_of(codec.id)
    other(batch)
    VendiReward(other.encoder, q=2.0)(batch)
    assert calls["decode"] == 1 and batch.n_decoded == 1 and calls["audio"] == 1


def test_pool_fifo_checkpoint_and_bad_input():
    pool = FeaturePool(5)
    for k in range(3):
        pool.push(Features(n=2, clips=torch.full((2, 3), float(k), dtype=torch.float64)))
    assert len(pool) == 5 and pool.features.clips[:, 0].tolist() == [0.0, 1.0, 1.0, 2.0, 2.0]
    back = FeaturePool(5)
    back.load_state_tensors(pool.state_tensors(), "x")
    assert torch.equal(back.features.clips, pool.features.clips)
    with pytest.raises(RewardError, match="holds no credit pool"):
        FeaturePool(5).load_state_tensors({"adam.x": torch.zeros(1)}, "state.safetensors")
    with pytest.raises(RewardError, match="at least 2"):
        FeaturePool(5).credit(None, Features(n=1, clips=torch.zeros(1, 3)))
    with pytest.raises(ConfigError, match=r"pool.size=1 must be"):
        PoolConfig(size=1).check()
    with pytest.raises(ConfigError, match=r"needs 1024 MB, over the budget pool.max_mb=100.*at most 12800"):
        PoolConfig(size=131072, max_mb=100).check_budget(8192, "x")


def test_pool_smaller_than_dimension_warns_with_rank(caplog):
    pool = FeaturePool(8)
    pool.push(Features(n=8, clips=torch.randn(8, 16, dtype=torch.float64)))
    r = VendiReward.__new__(VendiReward)
    r.q, r.encoder = 1.0, None
    pool.credit(r, Features(n=2, clips=torch.randn(2, 16, dtype=torch.float64)))
    assert "rank at most 7 < 16" in caplog.text and "raise pool.size" in caplog.text


def test_fad_infinity_removes_the_small_sample_bias():
    """Samples from the reference Gaussian itself: FAD(n) ~ b / n > 0, FAD-inf ~ 0."""
    g = torch.Generator().manual_seed(3)
    d = 8
    ref_x = torch.randn(20000, d, generator=g, dtype=torch.float64)
    ref = gaussian_stats(ref_x)
    x = torch.randn(400, d, generator=g, dtype=torch.float64)
    res = fad_infinity(x, ref, seed=0)
    assert float(fad_from_embeddings(x, ref)) > 0.02
    assert abs(res["fad_inf"]) < 0.5 * float(fad_from_embeddings(x, ref)) and res["slope"] > 0
