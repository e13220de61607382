"""Pre-training end to end on a tiny corpus and model: checkpoints, resume equivalence, dry run."""

import json

import pytest
import torch

from dragontune.cli import main
from dragontune.config import load_config
from dragontune.errors import ConfigError
from dragontune.training.pretrain import PretrainConfig, pretrain
from dragontune.utils import load_safetensors


def tiny_cfg(tmp_path, corpus, out, steps=6, extra=()):
    return load_config(PretrainConfig, None, [
        f"out_dir={out}", f"data.corpus={corpus}", "data.synth_n=16", "data.duration=1.0",
        f"steps={steps}", "batch_size=4", "log_every=2", "val_every=3", "val_samples=4", "ckpt_every=3",
        "sample_every=0", "sample_steps=2", "sample_prompts=[a soft piano melody]",
        "model.width=32", "model.depth=2", "model.heads=2", "model.patch_size=5", "model.noise_freqs=16",
        "codec.n_mels=16", "codec.n_fft=256", "codec.hop_length=128", "model.latent_channels=16",
        "codec.griffin_lim_iters=2", "ema_halflife_steps=2", "device=cpu", *extra,
    ])


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    from dragontune.data.synth import synth_corpus

    root = tmp_path_factory.mktemp("corpus")
    synth_corpus(root, n=16, seed=0)
    return root


def _weights(path):
    t, _ = load_safetensors(path)
    return t


@pytest.mark.slow
def test_resume_gives_identical_weights(tmp_path, corpus):
    full = pretrain(tiny_cfg(tmp_path, corpus, tmp_path / "full"))
    # interrupted run: stop after the step-3 checkpoint, then resume to the end
    cfg = tiny_cfg(tmp_path, corpus, tmp_path / "part", steps=3)
    pretrain(cfg)
    cfg2 = tiny_cfg(tmp_path, corpus, tmp_path / "part", steps=6)
    resumed = pretrain(cfg2, resume=True)
    a, b = _weights(full), _weights(resumed)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    st_full = _weights(tmp_path / "full" / "checkpoints" / "step-0000006.state.safetensors")
    st_res = _weights(tmp_path / "part" / "checkpoints" / "step-0000006.state.safetensors")
    for k in st_full:
        assert torch.equal(st_full[k], st_res[k]), k
    lines = [json.loads(x) for x in (tmp_path / "full" / "metrics.jsonl").read_text().splitlines()]
    assert any("val_loss" in r for r in lines) and all("step" in r for r in lines)
    assert (tmp_path / "full" / "samples" / "final" / "00.wav").is_file()


def test_dry_run_prints_resolved_config(capsys, tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("steps: 7\n")
    assert main(["pretrain", str(cfg), "optim.lr=0.5", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "steps: 7" in out and "lr: 0.5" in out


def test_typo_in_cli_override_is_an_error(capsys, tmp_path):
    assert main(["pretrain", "optim.lrr=0.5", "--dry-run"]) == 2
    assert "did you mean 'lr'" in capsys.readouterr().err


def test_unwritable_output_dir(tmp_path, corpus):
    import os

    ro = tmp_path / "ro"
    ro.mkdir()
    os.chmod(ro, 0o500)
    try:
        if os.access(ro, os.W_OK):  # running as root: permissions do not bind, use a file as parent
            (tmp_path / "afile").write_text("x")
            target = tmp_path / "afile" / "out"
        else:
            target = ro / "out"
        from dragontune.errors import DragontuneError

        with pytest.raises(DragontuneError, match="not writable"):
            pretrain(tiny_cfg(tmp_path, corpus, target))
    finally:
        os.chmod(ro, 0o700)


def test_pretrain_with_tempo_conditioning(tmp_path, corpus):
    from dragontune.models.checkpoint import load_model

    tempo = ["model.tempo_bins=8", "model.tempo_period_min=40", "model.tempo_period_max=130"]  # 125 frames/s
    cfg = tiny_cfg(tmp_path, corpus, tmp_path / "t", extra=tempo)
    final = pretrain(cfg)
    lines = [json.loads(x) for x in (tmp_path / "t" / "metrics.jsonl").read_text().splitlines()]
    assert any("tempo_loss" in r and r["tempo_loss"] > 0 for r in lines)
    model = load_model(final)
    period = model.net.predict_tempo_frames(**model.cond(["a fast drum kit groove"]))
    assert 40.0 <= float(period) <= 130.0
    # a corpus whose metadata has no tempo cannot train the tempo head: clear error, nothing written
    bare = tmp_path / "bare"
    (bare / "audio").mkdir(parents=True)
    rows = [json.loads(x) for x in (corpus / "metadata.jsonl").read_text().splitlines()]
    for r in rows:
        (bare / r["file"]).write_bytes((corpus / r["file"]).read_bytes())
        r.pop("tempo")
    (bare / "metadata.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg.data.corpus, cfg.out_dir = str(bare), str(tmp_path / "t2")
    with pytest.raises(ConfigError, match="no training clip .* has a 'tempo'"):
        pretrain(cfg)
    assert not (tmp_path / "t2" / "checkpoints").exists()



def test_tempo_labels_from_metadata():
    from dragontune.errors import DataError
    from dragontune.training.pretrain import tempo_frames_of

    got = tempo_frames_of([{"tempo": 120.0}, {"bpm": "60"}, {"file": "a.wav"}, {"tempo": ""}], 62.5)
    torch.testing.assert_close(got[:2], torch.tensor([31.25, 62.5]))
    assert torch.isnan(got[2:]).all()
    for bad in ("fast", -90, float("inf")):
        with pytest.raises(DataError, match=r"clip 'audio/x.wav': tempo .* is not a positive number"):
            tempo_frames_of([{"file": "audio/x.wav", "tempo": bad}], 62.5)
