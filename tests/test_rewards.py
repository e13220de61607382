"""Exemplar sets, the reward registry and the embedding rewards, with a small real test encoder."""

from __future__ import annotations

import hashlib
import logging
import math
import sys
import types
from pathlib import Path

import pytest
import torch

from dragontune.audio import resample, save_wav
from dragontune.encoders.base import Encoder
from dragontune.encoders.registry import get_encoder, register_encoder
from dragontune.errors import DataError, DragontuneError, EncoderError, RewardError
from dragontune.metrics import fad_from_embeddings, kad, per_song_fad, vendi_score
from dragontune.rewards.builtin import FADReward, KADReward, PerSongFADReward, VendiReward, WeightedReward
from dragontune.rewards.exemplars import ExemplarSet, default_cache_dir
from dragontune.rewards.registry import (
    RewardContext,
    build_reward,
    format_result_table,
    known_rewards,
    score_audio,
)
from dragontune.rewards.base import ScoringBatch

SR = 8000


class ProjEncoder(Encoder):
    """Deterministic test encoder: log-magnitude STFT (n_fft 256, hop 128), averaged over windows of 8
    STFT frames (hop 4), projected by a fixed seeded random matrix. Text (cross-modal variant): a fixed
    hashing of characters into the same space."""

    name = "test-proj"
    sample_rate = SR
    n_fft, hop, win, win_hop = 256, 128, 8, 4
    min_samples = n_fft + (win - 1) * hop

    def __init__(self, dim: int = 12, seed: int = 0, cross_modal: bool = False):
        g = torch.Generator().manual_seed(seed)
        self.dim = dim
        self.cross_modal = cross_modal
        self.proj = torch.randn(self.n_fft // 2 + 1, dim, generator=g) / math.sqrt(self.n_fft // 2 + 1)
        self.char_table = torch.randn(97, dim, generator=g)
        self.calls = 0

    @property
    def id(self) -> str:
        h = hashlib.sha256(self.proj.numpy().tobytes() + self.char_table.numpy().tobytes()).hexdigest()[:16]
        return f"{self.name}:nfft{self.n_fft}:hop{self.hop}:win{self.win}/{self.win_hop}:dim{self.dim}:{h}"

    def embed_audio(self, audio: torch.Tensor, sample_rate: int) -> list[torch.Tensor]:
        self.calls += 1
        x = resample(audio.float(), sample_rate, SR).mean(dim=1)  # [B, T] mono
        spec = torch.stft(x, self.n_fft, self.hop, window=torch.hann_window(self.n_fft), center=False,
                          return_complex=True).abs()  # [B, F, Tf]
        feats = torch.log1p(10 * spec).unfold(-1, self.win, self.win_hop).mean(-1)  # [B, F, n]
        return [(f.T @ self.proj).contiguous() for f in feats]

    def embed_text(self, texts):
        if not self.cross_modal:
            return super().embed_text(texts)
        out = []
        for t in texts:
            idx = torch.tensor([ord(c) % 97 for c in t])
            out.append(self.char_table[idx].mean(0))
        return torch.stack(out)


def _tone(freq: float, seconds: float = 1.0, seed: int = 0, noise: float = 0.05, sr: int = SR) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    t = torch.arange(int(seconds * sr)) / sr
    x = 0.4 * torch.sin(2 * math.pi * freq * t) + 0.2 * torch.sin(2 * math.pi * 2.01 * freq * t)
    return (x + noise * torch.randn(t.shape, generator=g))[None].float()


def _make_folder(path: Path, freqs, seconds: float = 1.0, sr: int = SR) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    for i, f in enumerate(freqs):
        save_wav(path / f"clip_{i:03d}.wav", _tone(f, seconds, seed=i, sr=sr), sr)
    return path


@pytest.fixture()
def enc() -> ProjEncoder:
    return ProjEncoder()


@pytest.fixture()
def exdir(tmp_path) -> Path:
    return _make_folder(tmp_path / "ex", [200 + 37 * i for i in range(16)])


def _batch(freqs, seconds: float = 1.0, sr: int = SR) -> ScoringBatch:
    audio = torch.stack([_tone(f, seconds, seed=100 + i, sr=sr) for i, f in enumerate(freqs)])
    return ScoringBatch(audio=audio, sample_rate=sr, prompts=[f"tone {f}" for f in freqs])


def _subset(b: ScoringBatch, i: int) -> ScoringBatch:
    keep = [j for j in range(b.audio.shape[0]) if j != i]
    return ScoringBatch(b.audio[keep], b.sample_rate, [b.prompts[j] for j in keep])


# ------------------------------------------------------------------------------- encoder sanity


def test_test_encoder_is_deterministic_and_discriminative(enc):
    a = enc.embed_audio(_tone(300)[None], SR)[0]
    assert a.shape == (14, 12)
    torch.testing.assert_close(a, ProjEncoder().embed_audio(_tone(300)[None], SR)[0])
    b = enc.embed_audio(_tone(900)[None], SR)[0]
    assert (a.mean(0) - b.mean(0)).norm() > 0.1 * a.mean(0).norm()


# ------------------------------------------------------------------------------- exemplar sets and cache


def test_exemplar_stats_and_cache_roundtrip(enc, exdir, tmp_path, monkeypatch):
    es = ExemplarSet.from_audio_dir(exdir)
    st = es.stats(enc, cache_dir=tmp_path / "cache")
    assert st.n_items == 16 and st.frames.n == 16 * 14 and st.clips.n == 16 and st.dim == 12
    frames = [enc.embed_audio(_tone(200 + 37 * i, seed=i)[None], SR)[0].double() for i in range(16)]
    # save_wav quantises to 16 bits: compare with the file contents, not the float tones
    assert st.sample.shape == (16, 12)
    assert torch.allclose(st.clips.mu, torch.stack([f.mean(0) for f in frames]).mean(0), atol=1e-3)
    files = list((tmp_path / "cache").glob("*.safetensors"))
    assert len(files) == 1
    # a fresh set object loads from disk without embedding anything
    calls = enc.calls
    st2 = ExemplarSet.from_audio_dir(exdir).stats(enc, cache_dir=tmp_path / "cache")
    assert enc.calls == calls
    torch.testing.assert_close(st2.frames.cov, st.frames.cov, rtol=0, atol=0)
    torch.testing.assert_close(st2.clips.sqrt(), st.clips.sqrt(), rtol=0, atol=0)
    assert st2.key == st.key and st2.encoder_id == enc.id


def test_cache_key_changes_with_bytes_and_encoder(enc, exdir, tmp_path):
    k1 = ExemplarSet.from_audio_dir(exdir).cache_key(enc)
    assert ExemplarSet.from_audio_dir(exdir).cache_key(ProjEncoder(seed=1)) != k1
    assert ExemplarSet.from_audio_dir(exdir).cache_key(ProjEncoder(dim=8)) != k1
    f = exdir / "clip_003.wav"
    data = bytearray(f.read_bytes())
    data[-1] ^= 1  # one bit of one sample
    f.write_bytes(bytes(data))
    assert ExemplarSet.from_audio_dir(exdir).cache_key(enc) != k1


def test_cache_key_ignores_file_names(enc, exdir):
    k1 = ExemplarSet.from_audio_dir(exdir).cache_key(enc)
    (exdir / "clip_000.wav").rename(exdir / "zzz_renamed.wav")
    assert ExemplarSet.from_audio_dir(exdir).cache_key(enc) == k1


def test_corrupt_cache_is_recomputed(enc, exdir, tmp_path, caplog):
    cache = tmp_path / "cache"
    st = ExemplarSet.from_audio_dir(exdir).stats(enc, cache_dir=cache)
    (f,) = cache.glob("*.safetensors")
    f.write_bytes(b"not a safetensors file")
    with caplog.at_level(logging.WARNING, logger="dragontune"):
        st2 = ExemplarSet.from_audio_dir(exdir).stats(enc, cache_dir=cache)
    assert "corrupt" in caplog.text and str(f) in caplog.text
    torch.testing.assert_close(st2.clips.cov, st.clips.cov)
    # and the file was rewritten: a third load is silent
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="dragontune"):
        ExemplarSet.from_audio_dir(exdir).stats(enc, cache_dir=cache)
    assert "corrupt" not in caplog.text


def test_cache_dir_env_override(monkeypatch, tmp_path):
    monkeypatch.setenv("DRAGONTUNE_CACHE", str(tmp_path / "dc"))
    assert default_cache_dir() == tmp_path / "dc" / "exemplars"


def test_empty_exemplar_folder(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("no audio here")
    with pytest.raises(DataError, match=r"contains no audio files \(\.wav"):
        ExemplarSet.from_audio_dir(tmp_path / "empty")
    with pytest.raises(DataError, match="does not exist"):
        ExemplarSet.from_audio_dir(tmp_path / "missing")


def test_small_exemplar_set_works_and_warns_with_rank(enc, tmp_path, caplog):
    d = _make_folder(tmp_path / "few", [250, 500, 750, 1000, 1250])
    with caplog.at_level(logging.WARNING, logger="dragontune"):
        st = ExemplarSet.from_audio_dir(d).stats(enc, cache_dir=tmp_path / "c")
    assert "5 clips for embedding dimension 12" in caplog.text and "rank 4 < 12" in caplog.text
    r = PerSongFADReward(enc, st)
    out = r(_batch([300, 600]))
    assert torch.isfinite(out.scores).all()


def test_text_exemplars_need_cross_modal_encoder(enc, tmp_path):
    es = ExemplarSet.from_texts(["a warm piano", "a bright piano"])
    with pytest.raises(EncoderError, match="audio-only"):
        es.stats(enc, cache_dir=tmp_path)
    xenc = ProjEncoder(cross_modal=True)
    st = es.stats(xenc, cache_dir=tmp_path)
    assert st.modality == "text" and st.n_items == 2
    r = build_reward({"name": "centroid", "encoder": xenc, "exemplars": {"texts": ["a warm piano", "soft keys"]}},
                     RewardContext(cache_dir=tmp_path))
    res = r(_batch([300, 400, 500]))
    assert res.scores.shape == (3,) and (res.scores.abs() <= 1).all()


def test_silent_exemplar_file_is_an_error(enc, exdir, tmp_path):
    save_wav(exdir / "silence.wav", torch.zeros(1, SR), SR)
    with pytest.raises(DataError, match=r"silence\.wav.*is silent"):
        ExemplarSet.from_audio_dir(exdir).stats(enc, cache_dir=tmp_path / "c")


def test_silent_generated_clip_is_scored_with_a_warning(enc, exdir, tmp_path, caplog):
    st = ExemplarSet.from_audio_dir(exdir).stats(enc, cache_dir=tmp_path / "c")
    b = _batch([300, 400, 500])
    b.audio[1] = 0
    with caplog.at_level(logging.WARNING, logger="dragontune"):
        res = PerSongFADReward(enc, st)(b)
    assert "clip(s) [1] are silent" in caplog.text
    assert torch.isfinite(res.scores).all()
    assert res.scores[1] < res.scores[0]


def test_short_exemplar_file_names_file(enc, exdir, tmp_path):
    save_wav(exdir / "short.wav", _tone(300, seconds=0.05), SR)
    with pytest.raises(DataError, match=r"short\.wav.*shorter than encoder 'test-proj'"):
        ExemplarSet.from_audio_dir(exdir).stats(enc, cache_dir=tmp_path / "c")


def test_resampled_exemplars(enc, tmp_path):
    d = _make_folder(tmp_path / "sr16", [300 + 50 * i for i in range(6)], sr=16000)
    st = ExemplarSet.from_audio_dir(d).stats(enc, cache_dir=tmp_path / "c")
    assert st.frames.n == 6 * 14


def test_corpus_filter_source(enc, tmp_path, monkeypatch):
    root = tmp_path / "corpus"
    _make_folder(root / "audio", [300, 320, 340, 900, 950, 1000])
    rows = [
        {"file": f"audio/clip_{i:03d}.wav", "caption": "c", "split": "train",
         "instrument": "piano" if i < 3 else "guitar", "quality": "clean"}
        for i in range(6)
    ]
    # stand-in with the agreed signatures of dragontune.data.dataset (its own layout is tested there)
    mod = types.ModuleType("dragontune.data.dataset")

    def filter_rows(rs, spec):
        conds = dict(kv.split("=") for kv in spec.split(",")) if isinstance(spec, str) else dict(spec)
        return [r for r in rs if all(str(r.get(k)) == v for k, v in conds.items())]

    mod.load_metadata = lambda r: rows if Path(r) == root else []
    mod.filter_rows = filter_rows
    monkeypatch.setitem(sys.modules, "dragontune.data.dataset", mod)
    es = ExemplarSet.from_spec({"corpus": str(root), "filter": "instrument=piano,quality=clean"})
    assert [f.name for f in es.files] == ["clip_000.wav", "clip_001.wav", "clip_002.wav"]
    with pytest.raises(DataError, match="selects no clips"):
        ExemplarSet.from_spec({"corpus": str(root), "filter": "instrument=harp"})


# ------------------------------------------------------------------------------- rewards


@pytest.fixture()
def stats(enc, exdir, tmp_path):
    return ExemplarSet.from_audio_dir(exdir).stats(enc, cache_dir=tmp_path / "cache")


def test_per_song_fad_reward_matches_metric(enc, stats):
    b = _batch([260, 420, 1500, 3000])
    res = PerSongFADReward(enc, stats)(b)
    frames = [f.double() for f in enc.embed_audio(b.audio, SR)]
    torch.testing.assert_close(res.scores, -per_song_fad(frames, stats.frames))
    assert res.set_score is None and res.credit is None
    assert (res.scores <= 0).all() and torch.isfinite(res.scores).all()


@pytest.mark.parametrize("pooling", ["clip", "frames"])
def test_fad_reward_set_score_and_credit_brute_force(enc, stats, pooling):
    b = _batch([260, 330, 420, 520, 2500])
    r = FADReward(enc, stats, pooling=pooling)
    res = r(b)
    frames = [f.double() for f in enc.embed_audio(b.audio, SR)]
    if pooling == "clip":
        want = -float(fad_from_embeddings(torch.stack([f.mean(0) for f in frames]), stats.clips))
    else:
        want = -float(fad_from_embeddings(torch.cat(frames), stats.frames))
    assert res.set_score == pytest.approx(want, rel=1e-9)
    brute = torch.tensor([res.set_score - r(_subset(b, i)).set_score for i in range(5)], dtype=torch.float64)
    torch.testing.assert_close(res.credit, brute, rtol=1e-6, atol=1e-6 * abs(res.set_score))
    torch.testing.assert_close(res.scores, res.credit)
    assert int(res.credit.argmin()) == 4  # the outlier clip hurts the set most


def test_kad_and_vendi_rewards_credit_brute_force(enc, stats):
    b = _batch([260, 330, 420, 520, 2500, 2600])
    for r in (KADReward(enc, stats), VendiReward(enc, q=1.0), VendiReward(enc, q=2.0)):
        res = r(b)
        brute = torch.tensor([res.set_score - r(_subset(b, i)).set_score for i in range(6)], dtype=torch.float64)
        torch.testing.assert_close(res.credit, brute, rtol=1e-6, atol=1e-9)
    x = torch.stack([f.double().mean(0) for f in enc.embed_audio(b.audio, SR)])
    assert VendiReward(enc)(b).set_score == pytest.approx(float(vendi_score(x)), rel=1e-12)
    kr = KADReward(enc, stats)
    assert kr(b).set_score == pytest.approx(-float(kad(x, stats.sample, kr.bandwidth)), rel=1e-12)


def test_set_reward_needs_three_clips(enc, stats):
    with pytest.raises(RewardError, match="at least 3 clips"):
        FADReward(enc, stats)(_batch([300, 400]))


def test_nan_embedding_names_sample(stats):
    class NaNEncoder(ProjEncoder):
        def embed_audio(self, audio, sample_rate):
            out = super().embed_audio(audio, sample_rate)
            out[2][3, 1] = float("nan")
            return out

    with pytest.raises(RewardError, match=r"NaN/Inf embeddings for generated clip 2 \(prompt 'tone 500'\)"):
        PerSongFADReward(NaNEncoder(), stats)(_batch([300, 400, 500]))


def test_nan_audio_names_clip(enc, stats):
    b = _batch([300, 400, 500])
    b.audio[1, 0, 17] = float("inf")
    with pytest.raises(DragontuneError, match="generated clip 1 contains Inf"):
        PerSongFADReward(enc, stats)(b)


def test_short_clips(enc, stats):
    with pytest.raises(EncoderError, match="shorter than encoder 'test-proj'.s minimum of 1152 samples"):
        PerSongFADReward(enc, stats)(_batch([300, 400], seconds=0.1))
    # long enough for one frame, not for two: per-song FAD names the clip length and the minimum
    with pytest.raises(RewardError, match=r"clip 0 \(1200 samples.*1 frame.*minimum clip is 1152 samples"):
        PerSongFADReward(enc, stats)(_batch([300, 400], seconds=0.15))


def test_dimension_mismatch_names_both_encoders(stats):
    other = ProjEncoder(dim=8, seed=3)
    with pytest.raises(RewardError, match=r"encoder 'test-proj' \(id test-proj:.*dim8.*dimension 8.*"
                                          r"computed with encoder 'test-proj' \(id test-proj:.*dim12.*dimension 12"):
        PerSongFADReward(other, stats)


def test_weighted_reward(enc, stats):
    b = _batch([260, 330, 420, 2500])
    a, f = PerSongFADReward(enc, stats), FADReward(enc, stats)
    w = WeightedReward([(1.0, a), (0.5, f)])
    calls = enc.calls
    res = w(b)
    assert enc.calls == calls + 1  # one encoder pass shared by both components
    ra, rf = a(b), f(b)
    torch.testing.assert_close(res.scores, ra.scores + 0.5 * rf.scores)
    assert res.set_score == pytest.approx(float(ra.scores.mean()) + 0.5 * rf.set_score)
    assert w.reward_class == "dist_to_dist" and res.credit is not None


# ------------------------------------------------------------------------------- registry


def test_registry_builds_by_name(enc, exdir, tmp_path):
    register_encoder("test-proj", lambda ctx, **kw: ProjEncoder(**kw), overwrite=True)
    ctx = RewardContext(cache_dir=tmp_path / "cache", base_dir=exdir.parent)
    r = build_reward({"name": "per_song_fad", "encoder": "test-proj", "exemplars": {"audio_dir": "ex"}}, ctx)
    assert isinstance(r, PerSongFADReward) and r.reward_class == "instance_to_dist" and not r.higher_is_better
    assert r.encoder is ctx.encoder("test-proj")  # shared encoder instance
    v = build_reward({"name": "vendi", "encoder": {"name": "test-proj", "dim": 8}, "q": 2}, ctx)
    assert isinstance(v, VendiReward) and v.q == 2.0 and v.encoder.dim == 8 and v.reward_class == "dist_to_dist"
    w = build_reward({"name": "weighted", "components": [
        {"weight": 2.0, "name": "fad", "encoder": "test-proj", "exemplars": {"audio_dir": "ex"}, "pooling": "frames"},
        {"weight": 0.1, "name": "vendi", "encoder": "test-proj"},
    ]}, ctx)
    res = score_audio(w, _batch([300, 400, 500]).audio, SR, ["a", "b", "c"])
    assert res.scores.shape == (3,) and res.set_score is not None
    table = format_result_table(res, ["a", "b", "c"])
    assert "set score" in table and "credit" in table and len(table.splitlines()) == 8


def test_registry_errors(tmp_path, monkeypatch):
    with pytest.raises(RewardError, match=r"unknown reward 'fid'; known rewards: .*centroid.*per_song_fad.*vendi"):
        build_reward({"name": "fid"})
    import dragontune.rewards.registry as reg

    monkeypatch.setitem(reg._LAZY, "fancy_model", "dragontune.rewards.no_such_module")
    with pytest.raises(RewardError, match="'fancy_model' is model-based.*importing it failed"):
        build_reward("fancy_model")
    with pytest.raises(RewardError, match=r"unknown option\(s\) 'exemplar' \(did you mean 'exemplars'\?\)"):
        build_reward({"name": "per_song_fad", "encoder": "codec", "exemplar": {}})
    with pytest.raises(EncoderError, match="no codec was given"):
        build_reward({"name": "vendi", "encoder": "codec"})
    with pytest.raises(EncoderError, match="unknown encoder 'nope'; known encoders: .*codec"):
        get_encoder("nope")
    with pytest.raises(RewardError, match="exactly one source"):
        build_reward({"name": "centroid", "encoder": ProjEncoder(), "exemplars": {}})
    for n in ("per_song_fad", "fad", "kad", "vendi", "centroid", "aesthetics", "clap_score", "weighted"):
        assert n in known_rewards()


def test_integration_codec_encoder_and_real_corpus_filter(tmp_path):
    """build_reward with the real 'codec' encoder (LogMelCodec) and the real corpus metadata reader."""
    import json

    from dragontune.codecs import LogMelCodec

    root = tmp_path / "corpus"
    _make_folder(root / "audio", [300, 320, 340, 360, 900, 950], sr=16000)
    with open(root / "metadata.jsonl", "w") as fh:
        for i in range(6):
            fh.write(json.dumps({"file": f"audio/clip_{i:03d}.wav", "caption": f"tone {i}", "split": "train",
                                 "instrument": "piano" if i < 4 else "guitar", "quality": "clean"}) + "\n")
    ctx = RewardContext(codec=LogMelCodec(n_mels=16), cache_dir=tmp_path / "cache")
    spec = {"encoder": "codec", "exemplars": {"corpus": str(root), "filter": "instrument=piano,quality=clean"}}
    r = build_reward({"name": "per_song_fad", **spec}, ctx)
    assert r.exemplars.n_items == 4 and r.exemplars.dim == 16
    b = _batch([310, 330, 920], sr=16000)
    res = r(b)
    assert res.scores.shape == (3,) and torch.isfinite(res.scores).all()
    f = build_reward({"name": "fad", **spec}, ctx)(b)
    assert f.credit.shape == (3,) and math.isfinite(f.set_score)
