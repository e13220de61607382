"""Generated level: guidance rescale (closed form, direction) and saving that never clips without saying so."""

import logging

import pytest
import torch

from dragontune.audio import load_audio, save_wav
from dragontune.sampling import CFGDenoiser, rescale_to

from tiny import Notes


def toy(x, sigma, k):  # a denoiser whose conditional and unconditional estimates differ by k
    return 0.5 * x + k


def guided(scale, rescale, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(3, 4, 20, generator=g)
    k = torch.randn(3, 4, 20, generator=g) * 0.3 + 0.2
    den = CFGDenoiser(toy, {"k": k}, {"k": torch.zeros_like(k)}, scale, rescale=rescale)
    return den(x, torch.ones(3)), toy(x, None, k)


def test_rescale_zero_is_plain_cfg():
    a, _ = guided(4.0, 0.0)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 4, 20, generator=g)
    k = torch.randn(3, 4, 20, generator=g) * 0.3 + 0.2
    assert torch.equal(a, toy(x, None, 0 * k) + 4.0 * (toy(x, None, k) - toy(x, None, 0 * k)))


def test_full_rescale_has_the_conditional_mean_and_std():
    out, cond = guided(4.0, 1.0)
    dims = (1, 2)
    torch.testing.assert_close(out.mean(dim=dims), cond.mean(dim=dims), rtol=0, atol=1e-5)
    torch.testing.assert_close(out.std(dim=dims), cond.std(dim=dims), rtol=1e-5, atol=1e-6)
    # the shape of the guided estimate is kept: it is an affine map of it per sample
    plain, _ = guided(4.0, 0.0)
    for i in range(3):
        c = torch.corrcoef(torch.stack([out[i].flatten(), plain[i].flatten()]))[0, 1]
        assert float(c) == pytest.approx(1.0, abs=1e-6)


def test_rescale_pulls_the_overshoot_back_monotonically():
    _, cond = guided(4.0, 0.0)
    dev = [float((guided(4.0, phi)[0].std(dim=(1, 2)) - cond.std(dim=(1, 2))).abs().mean()) for phi in (0, 0.5, 1)]
    assert dev[0] > dev[1] > dev[2] and dev[2] < 1e-5
    assert torch.equal(rescale_to(cond, cond, 0.0), cond)


def test_rescale_out_of_range_is_refused(capsys):
    from dragontune.cli import main
    from dragontune.errors import ConfigError

    with pytest.raises(ConfigError, match="rescale"):
        CFGDenoiser(toy, {"k": torch.zeros(1)}, {"k": torch.zeros(1)}, 4.0, rescale=1.5)
    assert main(["finetune", "sampler.cfg_rescale=1.5", "--dry-run"]) == 2
    assert "sampler.cfg_rescale=1.5" in capsys.readouterr().err




def test_saving_says_how_much_it_clipped(tmp_path):
    h = Notes()
    logging.getLogger("dragontune").addHandler(h)
    try:
        a = torch.linspace(-2, 2, 1000)[None]  # half of it beyond full scale
        n = save_wav(tmp_path / "x.wav", a, 16000)
        assert n == int((a.abs() > 1).sum()) and n > 0
        assert any("x.wav" in ln and f"{n} of 1000 samples" in ln and "clipped" in ln for ln in h.lines), h.lines
        assert float(load_audio(tmp_path / "x.wav").abs().max()) <= 1.0
        h.lines.clear()
        assert save_wav(tmp_path / "y.wav", 0.5 * a, 16000) == 0 and not h.lines
    finally:
        logging.getLogger("dragontune").removeHandler(h)


@pytest.fixture(scope="module")
def loud(tmp_path_factory):
    """A tiny real model whose codec decodes e^4 (about 55x) louder than it was fitted: its clips clip when saved."""
    import dataclasses

    from dragontune.models.checkpoint import build_net, read_model_file, save_model
    from tiny import tiny_baseline, tiny_corpus, write_prompts

    root = tmp_path_factory.mktemp("loud")
    base = tiny_baseline(root / "base.safetensors", tiny_corpus(root / "corpus"))
    state, spec = read_model_file(base)
    spec = dataclasses.replace(spec, codec=dict(spec.codec, shift=float(spec.codec["shift"]) + 4.0))
    save_model(root / "loud.safetensors", build_net(spec, state, str(base)), spec)
    return {"root": root, "model": root / "loud.safetensors", "corpus": root / "corpus",
            "prompts": write_prompts(root / "prompts.txt", ["a calm piano", "fast drums"])}


def test_sample_says_how_much_it_clipped_and_records_it_per_clip(loud, tmp_path, capsys):
    import json

    from dragontune.cli import main

    out = tmp_path / "s"
    assert main(["sample", "--checkpoint", str(loud["model"]), "--prompts", str(loud["prompts"]), "--steps", "2",
                 "--out", str(out)]) == 0
    err = capsys.readouterr().err
    assert "were beyond full scale" in err and "clipped when saving" in err, err
    rows = [json.loads(x) for x in (out / "samples.jsonl").read_text().splitlines()]
    assert all(r["clipped_samples"] > 0 for r in rows), rows
    import re

    assert sum(r["clipped_samples"] for r in rows) == int(re.search(r"warning: (\d+) of \d+ samples", err).group(1))


def test_eval_audio_report_and_listening_test_say_how_much_was_clipped(loud, tmp_path, capsys):
    import json

    from dragontune import listen
    from dragontune.cli import main
    from dragontune.report import write_report

    run = tmp_path / "run"
    h = Notes()
    logging.getLogger("dragontune").addHandler(h)
    try:
        assert main(["eval", "--baseline", str(loud["model"]), "--model", str(loud["model"]), "--prompts",
                     str(loud["prompts"]), "--suite", "vendi/codec", "--steps", "2", "--corpus", str(loud["corpus"]),
                     "--n-audio", "2", "--out", str(run / "eval")]) == 0
        pairs = json.loads((run / "eval" / "audio" / "index.json").read_text())["pairs"]
        assert len(pairs) == 2 and all(p["clipped_baseline"] > 0 and p["clipped_model"] > 0 for p in pairs), pairs
        assert any("000-model.wav" in ln and "clipped" in ln for ln in h.lines), h.lines  # each file, with its count
        assert any("evaluation audio:" in ln and "clipped" in ln for ln in h.lines), h.lines  # and the total
        html = write_report(run).read_text()
        assert html.count("samples were beyond full scale and clipped when saved") == 4
        h.lines.clear()
        listen.load_eval_clips(run)
        assert any("2 of 2 pairs were clipped" in ln and f"{pairs[0]['clipped_model']} model samples" in ln
                   for ln in h.lines), h.lines
    finally:
        logging.getLogger("dragontune").removeHandler(h)
