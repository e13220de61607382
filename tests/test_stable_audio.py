"""Bring your own model: a tiny random Stable Audio pipeline (diffusers layout, saved with save_pretrained) through
the model interface, LoRA with the adapters-off reference, the VAE encoder, DRAGON rounds and resume."""

import json
import os
import shutil
import subprocess
import sys

import pytest
import torch

pytest.importorskip("diffusers")
pytest.importorskip("peft")

from dragontune.config import load_config  # noqa: E402
from dragontune.dragon.loop import DragonConfig, finetune  # noqa: E402
from dragontune.errors import CheckpointError, ConfigError, EncoderError  # noqa: E402
from dragontune.generate import SamplerConfig, generate_latents  # noqa: E402
from dragontune.models.loading import load_diffusion_model  # noqa: E402
from dragontune.models.lora import (AdaptersOffReference, LoraSettings, add_lora, load_adapters,  # noqa: E402
                                    merge_adapters, save_adapters)

from tiny import tiny_corpus, write_prompts  # noqa: E402
from tiny_stable_audio import tiny_stable_audio  # noqa: E402

PROMPTS = ["a soft piano melody", "fast drums", "a slow pad", "bright bell tones"]


@pytest.fixture(scope="session")
def sa(tmp_path_factory):
    root = tmp_path_factory.mktemp("stable_audio")
    return {"root": root, "pipe": tiny_stable_audio(root / "pipe"), "corpus": tiny_corpus(root / "corpus", n=8),
            "prompts": write_prompts(root / "prompts.txt", PROMPTS)}


@pytest.fixture(scope="session")
def model(sa):
    return load_diffusion_model(sa["pipe"])


def _x(model, n, seed=0):
    g = torch.Generator().manual_seed(seed)
    C, F = model.latent_shape
    return torch.randn(n, C, F, generator=g), torch.randn(n, C, F, generator=g)


# ---------------------------------------------------------------------------------------------------------------
# the adapter against the pipeline's own code and closed forms


def test_conditioning_is_the_pipelines(sa, model):
    """cond() equals what StableAudioPipeline.encode_prompt / encode_duration build (seconds in both places)."""
    from diffusers import EDMDPMSolverMultistepScheduler, StableAudioPipeline

    pipe = StableAudioPipeline(vae=model.vae, text_encoder=model.text_encoder, projection_model=model.projection,
                               tokenizer=model.tokenizer, transformer=model.transformer,
                               scheduler=EDMDPMSolverMultistepScheduler())
    with torch.no_grad():
        text = pipe.encode_prompt(PROMPTS[:2], "cpu", False)
        start, end = pipe.encode_duration(0.0, model.seconds_total, "cpu", False, 2)
    c = model.cond(PROMPTS[:2])
    torch.testing.assert_close(c["encoder_hidden_states"], torch.cat([text, start, end], 1), rtol=0, atol=0)
    torch.testing.assert_close(c["global_hidden_states"], torch.cat([start, end], 2), rtol=0, atol=0)
    # the null condition is the pipeline's: zeroed cross-attention states, the same global (duration) token
    u = model.null_cond(c)
    assert torch.count_nonzero(u["encoder_hidden_states"]) == 0
    assert torch.equal(u["global_hidden_states"], c["global_hidden_states"])


def test_denoiser_and_objective_closed_forms(model):
    """D = c_skip x + c_out F(c_in x, atan(s) 2/pi) (the cosine scheduler's preconditioning, sigma_data 1,
    v-prediction); the v target is cos(phi) n - sin(phi) x0; the error equals lambda(s) |D - x0|^2."""
    from diffusers.models.embeddings import get_1d_rotary_pos_embed

    x0, n = _x(model, 3)
    s = torch.tensor([0.4, 3.0, 40.0])
    c = model.cond(PROMPTS[:3])
    xs = x0 + s[:, None, None] * n
    with torch.no_grad():
        rope = get_1d_rotary_pos_embed(model.transformer.config.attention_head_dim // 2, xs.shape[2] + 1,
                                       use_real=True, repeat_interleave_real=False)
        f = model.transformer(xs / (s ** 2 + 1).sqrt()[:, None, None], torch.atan(s) * 2 / torch.pi,
                              encoder_hidden_states=c["encoder_hidden_states"],
                              global_hidden_states=c["global_hidden_states"], rotary_embedding=rope,
                              return_dict=False)[0]
        d_ref = xs / (s ** 2 + 1)[:, None, None] - (s / (s ** 2 + 1).sqrt())[:, None, None] * f
        d = model.denoiser(xs, s, **c)
        torch.testing.assert_close(d, d_ref, rtol=1e-5, atol=1e-5)
        phi = torch.atan(s)[:, None, None]
        torch.testing.assert_close(model.v_target(x0, n, s), torch.cos(phi) * n - torch.sin(phi) * x0,
                                   rtol=1e-5, atol=1e-5)
        err = model.denoising_error(x0, n, s, c)
        torch.testing.assert_close(err, (s ** 2 + 1) / s ** 2 * (d - x0).pow(2).flatten(1).mean(1),
                                   rtol=1e-4, atol=1e-5)


def test_sampling_schedule_is_the_schedulers(model):
    """The exponential schedule of CosineDPMSolverMultistepScheduler.set_timesteps: exp(linspace(log 0.3, log 500))
    reversed, then 0 (computed here independently)."""
    import math

    from dragontune.generate import schedule_sigmas

    sig = schedule_sigmas(model.sampling_schedule(SamplerConfig(steps=5)), 5)
    ref = [math.exp(math.log(500) + i / 4 * (math.log(0.3) - math.log(500))) for i in range(5)] + [0.0]
    torch.testing.assert_close(sig, torch.tensor(ref), rtol=1e-5, atol=1e-6)
    with pytest.raises(ConfigError, match="sigma_max"):
        model.sampling_schedule(SamplerConfig(steps=5, sigma_max=20.0))


def test_sampler_matches_the_pipelines_own_loop(model):
    """The project's DPM-Solver++(2M) with CFG equals StableAudioPipeline.__call__ (its prompt and duration encoding,
    its CFG on the network output, its denoising loop) run with diffusers' deterministic DPM-Solver++(2M) scheduler
    configured as Stable Audio Open's (sigma_data 1, v-prediction, exponential sigmas in [0.3, 500], the atan
    timestep). The shipped CosineDPMSolverMultistepScheduler is the SDE variant of the same solver (Brownian noise
    from torchsde, not installed here), so it cannot be compared sample for sample."""
    import math

    from diffusers import EDMDPMSolverMultistepScheduler, StableAudioPipeline

    class SAOTimestep(EDMDPMSolverMultistepScheduler):
        def precondition_noise(self, sigma):
            sigma = sigma if isinstance(sigma, torch.Tensor) else torch.tensor([sigma])
            return sigma.atan() / math.pi * 2

    sched = SAOTimestep(sigma_min=0.3, sigma_max=500.0, sigma_data=1.0, sigma_schedule="exponential",
                        prediction_type="v_prediction", algorithm_type="dpmsolver++", solver_order=2,
                        final_sigmas_type="zero")
    pipe = StableAudioPipeline(vae=model.vae, text_encoder=model.text_encoder, projection_model=model.projection,
                               tokenizer=model.tokenizer, transformer=model.transformer, scheduler=sched)
    pipe.set_progress_bar_config(disable=True)
    steps, g = 16, 3.0  # >= 15 steps: diffusers keeps the second-order step before the last, as k-diffusion does
    from dragontune.sampling import seeded_noise

    noise = seeded_noise([5, 6], model.latent_shape, dtype=torch.float32)
    with torch.no_grad():
        theirs = pipe(PROMPTS[:2], num_inference_steps=steps, guidance_scale=g, audio_end_in_s=model.seconds_total,
                      latents=noise * 500.0 / math.sqrt(500.0 ** 2 + 1), output_type="latent").audios
    ours = generate_latents(model, PROMPTS[:2], [5, 6], SamplerConfig(steps=steps, cfg=g, sampler="dpmpp_2m"))
    torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-4)
    assert not torch.allclose(ours, generate_latents(model, PROMPTS[:2], [5, 6], SamplerConfig(steps=steps, cfg=1.0)),
                              atol=1e-3)  # guidance matters here, so the comparison covers it


def test_generate_per_sample_seeds_and_decode(model):
    sc = SamplerConfig(steps=3, cfg=3.0)
    both = generate_latents(model, PROMPTS[:2], [11, 12], sc)
    one = generate_latents(model, PROMPTS[1:2], [12], sc)
    assert both.shape == (2,) + model.latent_shape and torch.isfinite(both).all()
    torch.testing.assert_close(both[1], one[0], rtol=1e-5, atol=1e-5)  # a sample depends on its seed only
    again = generate_latents(model, PROMPTS[:1], [11], sc)
    assert torch.equal(again[0], both[0]) or torch.allclose(again[0], both[0], atol=1e-5)
    pp = generate_latents(model, PROMPTS[:2], [11, 12], SamplerConfig(steps=3, cfg=3.0, cfgpp=True, cfgpp_scale=0.5))
    assert torch.isfinite(pp).all() and not torch.allclose(pp, both, atol=1e-4)  # CFG++ through the same interface
    audio = model.decode(both)
    sr = model.sample_rate
    assert audio.shape == (2, 2, int(model.seconds_total * sr))


def test_seconds_total_conditions_the_model(sa, model):
    short = load_diffusion_model(sa["pipe"], options={"seconds_total": model.max_seconds / 2})
    c1, c2 = model.cond(PROMPTS[:1]), short.cond(PROMPTS[:1])
    assert not torch.equal(c1["global_hidden_states"], c2["global_hidden_states"])
    x0, n = _x(model, 1)
    s = torch.tensor([2.0])
    with torch.no_grad():
        assert not torch.allclose(model.denoiser(x0 + 2 * n, s, **c1), short.denoiser(x0 + 2 * n, s, **c2))
    assert short.decode(torch.zeros((1,) + model.latent_shape)).shape[-1] == int(model.max_seconds / 2 * sr(model))
    with pytest.raises(ConfigError, match="seconds_total"):
        load_diffusion_model(sa["pipe"], options={"seconds_total": 10 * model.max_seconds})


def sr(model):
    return model.sample_rate


def test_training_objective_direction(model, sa):
    """A few SGD steps on denoising_error lower it (fails if the gradient's sign were reversed)."""
    m = load_diffusion_model(sa["pipe"])
    x0, n = _x(m, 4, seed=3)
    s = torch.tensor([0.5, 1.0, 2.0, 4.0])
    c = m.cond(PROMPTS)
    opt = torch.optim.SGD(list(m.parameters()), lr=0.05)
    before = float(m.denoising_error(x0, n, s, c).mean())
    for _ in range(5):
        opt.zero_grad()
        m.denoising_error(x0, n, s, c).mean().backward()
        opt.step()
    assert float(m.denoising_error(x0, n, s, c).mean()) < before


# ---------------------------------------------------------------------------------------------------------------
# bad input


def test_not_a_pipeline_names_what_is_missing(sa, tmp_path):
    bad = tmp_path / "bad"
    shutil.copytree(sa["pipe"], bad)
    shutil.rmtree(bad / "projection_model")
    with pytest.raises(CheckpointError, match="projection_model/"):
        load_diffusion_model(bad)
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="model_index.json.*transformer/"):
        load_diffusion_model(tmp_path / "empty")


def test_vae_latents_that_do_not_fit_the_transformer(sa, tmp_path):
    other = tiny_stable_audio(tmp_path / "other", vae_latent=8)
    mixed = tmp_path / "mixed"
    shutil.copytree(sa["pipe"], mixed)
    shutil.rmtree(mixed / "vae")
    shutil.copytree(other / "vae", mixed / "vae")
    with pytest.raises(CheckpointError, match="8 channels but the transformer takes 4"):
        load_diffusion_model(mixed)


def test_finetune_checks_the_folder_and_options_before_any_work(sa, tmp_path):
    from dragontune.checks import check_finetune

    bad = tmp_path / "bad"
    shutil.copytree(sa["pipe"], bad)
    shutil.rmtree(bad / "vae")
    with pytest.raises(CheckpointError, match="vae/"):
        check_finetune(load_config(DragonConfig, None, overrides(sa, tmp_path / "r", baseline=str(bad))))
    with pytest.raises(ConfigError, match="seconds_end"):
        check_finetune(load_config(DragonConfig, None, overrides(sa, tmp_path / "r", model_options={"seconds_end": 1})))
    with pytest.raises(ConfigError, match="pipeline folder only"):
        check_finetune(load_config(DragonConfig, None, overrides(sa, tmp_path / "r", baseline="",
                                                                 model_options={"seconds_total": 1})))


def test_lora_targets_that_match_nothing_list_the_modules(sa):
    m = load_diffusion_model(sa["pipe"])
    with pytest.raises(ConfigError, match=r"\['to_nothing'\] match no linear module.*to_q"):
        add_lora(m, LoraSettings(rank=2, targets=["to_nothing"]), m.family)


def test_vae_encoder_needs_a_vae(sa):
    from dragontune.encoders.registry import get_encoder
    from dragontune.models.checkpoint import load_model

    class Ctx:
        codec = load_model().codec

    with pytest.raises(EncoderError, match="Oobleck VAE"):
        get_encoder("vae", Ctx())
    enc = get_encoder("vae", None, pipeline=str(sa["pipe"]))
    assert enc.name == "vae" and enc.dim == 4


# ---------------------------------------------------------------------------------------------------------------
# VAE-FAD


def test_vae_fad_scores_and_prefers_exemplar_like_audio(sa, model):
    """Per-song VAE-FAD against the corpus: exemplar clips score better (higher reward) than white noise."""
    from dragontune.audio import fit_length, load_audio
    from dragontune.rewards.base import ScoringBatch
    from dragontune.rewards.registry import RewardContext, build_reward

    ctx = RewardContext(codec=model.codec, cache_dir=sa["root"] / "cache")
    ex = {"audio_dir": str(sa["corpus"] / "audio")}
    per_song = build_reward({"name": "per_song_fad", "encoder": "vae", "exemplars": ex}, ctx)
    full = build_reward({"name": "fad", "encoder": "vae", "exemplars": ex}, ctx)
    wavs = sorted((sa["corpus"] / "audio").glob("*.wav"))[:3]
    clips = torch.stack([fit_length(load_audio(w, 16000), 8000) for w in wavs])
    noise = 0.5 * torch.randn(3, 1, 8000, generator=torch.Generator().manual_seed(0))
    good = per_song.score(per_song.features(ScoringBatch(clips, 16000, [""] * 3))).scores
    bad = per_song.score(per_song.features(ScoringBatch(noise, 16000, [""] * 3))).scores
    assert torch.isfinite(good).all() and torch.isfinite(bad).all()
    assert float(good.mean()) > float(bad.mean())
    lat = generate_latents(model, PROMPTS[:3], [1, 2, 3], SamplerConfig(steps=2))
    gen = ScoringBatch(None, model.sample_rate, PROMPTS[:3], latents=lat, codec=model.codec, decode=model.decode)
    assert torch.isfinite(torch.tensor(full.set_score(gen)))


# ---------------------------------------------------------------------------------------------------------------
# LoRA


def _perturb_lora(m, seed=0, scale=0.05):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in m.trainable.named_parameters():
            if "lora_B" in name:
                p.add_(scale * torch.randn(p.shape, generator=g))


def test_adapters_off_reference_is_the_base_exactly(sa, model):
    m = load_diffusion_model(sa["pipe"])
    add_lora(m, LoraSettings(rank=2), m.family)
    _perturb_lora(m)
    ref = AdaptersOffReference(m)
    x0, n = _x(m, 2)
    s = torch.tensor([0.7, 5.0])
    c = m.cond(PROMPTS[:2])
    with torch.no_grad():
        base = model.denoising_error(x0, n, s, c)
        assert torch.equal(ref.denoising_error(x0, n, s, c), base)
        assert not torch.allclose(m.denoising_error(x0, n, s, c), base)  # the adapters do act
    # no second copy: every base parameter of the reference is the policy's own tensor
    assert {id(p) for p in ref.trainable.parameters()} == {id(p) for p in m.trainable.parameters()}
    assert sum(p.numel() for p in m.parameters()) < sum(p.numel() for p in model.trainable.parameters()) / 4


def test_lora_save_load_same_outputs_and_refuses_other_base(sa, tmp_path):
    m = load_diffusion_model(sa["pipe"])
    add_lora(m, LoraSettings(rank=2, alpha=4), m.family)
    _perturb_lora(m, 1)
    out = save_adapters(m, tmp_path / "adapter", str(sa["pipe"]))
    assert (out / "adapter_model.safetensors").is_file() and (out / "adapter_config.json").is_file()
    # the peft format: peft itself loads it
    from peft import PeftModel

    fresh = load_diffusion_model(sa["pipe"])
    x0, n = _x(m, 2)
    s = torch.tensor([0.7, 5.0])
    c = m.cond(PROMPTS[:2])
    with torch.no_grad():
        want = m.denoising_error(x0, n, s, c)
        plain = PeftModel.from_pretrained(load_diffusion_model(sa["pipe"]).transformer, str(out))
        f1 = m.denoiser.network(x0 + n, s, **c)
        fresh_copy = load_diffusion_model(sa["pipe"])
        fresh_copy.set_net(plain)
        assert torch.equal(fresh_copy.denoiser.network(x0 + n, s, **c), f1)
        load_adapters(fresh, out)
        assert torch.equal(fresh.denoising_error(x0, n, s, c), want)
        # merged into the base weights: the same outputs up to float error
        merge_adapters(fresh)
        assert not hasattr(fresh.trainable, "disable_adapter")
        torch.testing.assert_close(fresh.denoising_error(x0, n, s, c), want, rtol=1e-4, atol=1e-5)
    other = load_diffusion_model(sa["pipe"])
    with torch.no_grad():
        next(other.transformer.parameters()).add_(1e-3)
    with pytest.raises(CheckpointError, match="trained on base"):
        load_adapters(other, out)


def test_lora_on_the_in_project_dit(tmp_path):
    from dragontune.models.checkpoint import load_model
    from tiny import tiny_baseline

    corpus = tiny_corpus(tmp_path / "c", n=8)
    base_file = tiny_baseline(tmp_path / "b.safetensors", corpus)
    base = load_model(base_file)
    m = load_model(base_file)
    add_lora(m, LoraSettings(rank=2), m.family)
    _perturb_lora(m, scale=5.0)  # the tiny DiT's adaLN gates are small: a large change to be visible
    x0 = torch.randn((2,) + m.latent_shape)
    n = torch.randn_like(x0)
    s = torch.tensor([0.5, 3.0])
    c = m.cond(["soft piano", "drums"])
    with torch.no_grad():
        assert torch.equal(AdaptersOffReference(m).denoising_error(x0, n, s, c), base.denoising_error(x0, n, s, c))
        assert (m.denoising_error(x0, n, s, c) - base.denoising_error(x0, n, s, c)).abs().max() > 1e-4
    out = save_adapters(m, tmp_path / "adapter", str(base_file))
    from dragontune.cli import main

    assert main(["merge-lora", "--base", str(base_file), "--adapter", str(out), "--out", str(tmp_path / "m.safetensors")]) == 0
    merged = load_model(tmp_path / "m.safetensors")
    with torch.no_grad():
        torch.testing.assert_close(merged.denoising_error(x0, n, s, c), m.denoising_error(x0, n, s, c),
                                   rtol=1e-4, atol=1e-5)


def test_dit_activation_checkpointing_gives_the_same_gradients(tmp_path):
    from dragontune.models.checkpoint import load_model
    from tiny import tiny_baseline

    m = load_model(tiny_baseline(tmp_path / "b.safetensors", tiny_corpus(tmp_path / "c", n=8)))
    x0 = torch.randn((3,) + m.latent_shape, generator=torch.Generator().manual_seed(0))
    n = torch.randn(x0.shape, generator=torch.Generator().manual_seed(1))
    s = torch.tensor([0.3, 1.0, 4.0])
    c = m.cond(["soft piano", "drums", "pad"])

    def grads(on):
        m.set_grad_checkpointing(on)
        m.net.zero_grad(set_to_none=True)
        m.denoising_error(x0, n, s, c).mean().backward()
        return [p.grad.clone() for p in m.parameters()]

    for a, b in zip(grads(False), grads(True)):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-8)


def test_lora_dpo_step_direction(sa):
    """One DPO step on the LoRA adapters moves the implicit margin toward the winner (fails if reversed)."""
    from dragontune.dragon.accumulate import step_gradient
    from dragontune.dragon.losses import diffusion_dpo_loss

    m = load_diffusion_model(sa["pipe"])
    add_lora(m, LoraSettings(rank=4), m.family)
    ref = AdaptersOffReference(m)
    xw, xl = _x(m, 2, seed=5)
    x0 = torch.cat([xw, xl])
    noise = torch.randn(2, *m.latent_shape, generator=torch.Generator().manual_seed(9)).repeat(2, 1, 1)
    sigma = torch.tensor([1.0, 2.0]).repeat(2)
    cond = m.cond(PROMPTS[:2] * 2)

    def loss_fn(ep, er):
        return diffusion_dpo_loss(ep[:2], ep[2:], er[:2], er[2:], beta=50.0)

    def margin():
        with torch.no_grad():
            a = m.denoising_error(x0, noise, sigma, cond) - ref.denoising_error(x0, noise, sigma, cond)
        return float((a[:2] - a[2:]).mean())  # A(x+) - A(x-): DPO lowers it

    opt = torch.optim.Adam(list(m.parameters()), lr=1e-3)
    before = margin()
    for _ in range(3):
        opt.zero_grad()
        step_gradient(m, ref, x0, noise, sigma, cond, loss_fn)
        opt.step()
    assert margin() < before - 1e-6


# ---------------------------------------------------------------------------------------------------------------
# memory-lean training


@pytest.mark.parametrize("loss", ["dpo", "kto"])
def test_gradient_accumulation_equals_the_large_batch(sa, loss):
    from dragontune.dragon.accumulate import step_gradient
    from dragontune.dragon.losses import diffusion_dpo_loss, diffusion_kto_loss

    m = load_diffusion_model(sa["pipe"])
    ref = m.copy_frozen()
    with torch.no_grad():
        for p in m.parameters():
            p.add_(0.01 * torch.randn_like(p))
    x0, noise = _x(m, 6, seed=2)
    sigma = torch.tensor([0.5, 1.0, 2.0, 0.5, 1.0, 2.0])
    cond = m.cond(PROMPTS[:3] * 2)
    des = torch.tensor([True, False, True, False, True, False])
    if loss == "dpo":
        def fn(ep, er):
            return diffusion_dpo_loss(ep[:3], ep[3:], er[:3], er[3:], beta=100.0)
    else:
        def fn(ep, er):
            return diffusion_kto_loss(ep, er, des, beta=100.0)

    def grads(mb):
        for p in m.parameters():
            p.grad = None
        lo, _ = step_gradient(m, ref, x0, noise, sigma, cond, fn, micro_batch=mb)
        return float(lo), [p.grad.clone() for p in m.parameters()]

    l_all, g_all = grads(0)
    m.set_grad_checkpointing(True)
    for mb in (1, 4):
        l_mb, g_mb = grads(mb)
        assert abs(l_mb - l_all) < 2e-5  # beta = 100 times the float error of the errors
        for a, b in zip(g_all, g_mb):  # float error of other batch shapes: relative to the gradient's scale
            torch.testing.assert_close(b, a, rtol=1e-3, atol=1e-4 * float(a.abs().max()) + 1e-9)
    m.set_grad_checkpointing(False)
    assert max(float(g.abs().max()) for g in g_all) > 0


# ---------------------------------------------------------------------------------------------------------------
# DRAGON end to end


def overrides(sa, out, **kw):
    d = {
        "out_dir": str(out), "baseline": str(sa["pipe"]), "device": "cpu", "rounds": 2,
        "prompts_per_round": 2, "k_per_prompt": 2, "updates_per_round": 1, "batch_per_update": 2,
        "prompts": str(sa["prompts"]), "eval_prompts": str(sa["prompts"]), "eval_n_prompts": 2,
        "eval_every": 0, "ckpt_every": 1, "optim.lr": 1e-3, "beta": 50.0,
        "sampler.steps": 2, "sampler.cfg": 2.0, "eval_sampler.steps": 2, "write_demos": False,
        "data.corpus": str(sa["corpus"]), "data.duration": 1.0,
        "reward": {"name": "per_song_fad", "encoder": "vae", "exemplars": {"audio_dir": str(sa["corpus"] / "audio")}},
    }
    d.update(kw)
    return [f"{k}={json.dumps(v) if isinstance(v, (dict, list)) else v}" for k, v in d.items()]


@pytest.mark.slow
@pytest.mark.parametrize("loss,lora", [("dpo", 0), ("kto", 0), ("dpo", 2), ("kto", 2)])
def test_two_dragon_rounds(sa, tmp_path, loss, lora):
    kw = {"loss": loss, "builder": "paired" if loss == "dpo" else "unpaired", "lora.rank": lora}
    if loss == "kto":
        kw["k_per_prompt"] = 3
    final = finetune(load_config(DragonConfig, None, overrides(sa, tmp_path / "run", **kw)))
    recs = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in recs] == [0, 1, 2]
    trained = [r for r in recs[1:] if "train/loss" in r]
    assert trained and all(r["ref_unchanged"] is True for r in recs[1:])
    assert all(r["train/grad_norm"] > 0 for r in trained)
    if lora:
        assert final.name == "adapter" and (final / "adapter_model.safetensors").is_file()
        m = load_diffusion_model(sa["pipe"])
        load_adapters(m, final)
        lora_b = [p for k, p in m.trainable.named_parameters() if "lora_B" in k]
        assert any(float(p.abs().max()) > 0 for p in lora_b)  # trained away from the zero init
    else:
        from diffusers import StableAudioDiTModel

        assert final.name == "transformer" and (final / "config.json").is_file()
        trained = StableAudioDiTModel.from_pretrained(str(final), local_files_only=True).state_dict()
        base = StableAudioDiTModel.from_pretrained(str(sa["pipe"]), subfolder="transformer",
                                                   local_files_only=True).state_dict()
        assert set(trained) == set(base) and any(not torch.equal(trained[k], base[k]) for k in base)


@pytest.mark.slow
def test_resume_after_sigkill_equals_uninterrupted_lora(sa, tmp_path):
    import yaml

    def write(path, out):
        d = {}
        for ov in overrides(sa, out, rounds=3, **{"lora.rank": 2}):
            k, v = ov.split("=", 1)
            node = d
            for p_ in k.split(".")[:-1]:
                node = node.setdefault(p_, {})
            node[k.split(".")[-1]] = yaml.safe_load(v)
        path.write_text(yaml.safe_dump(d))

    write(tmp_path / "full.yaml", tmp_path / "full")
    write(tmp_path / "part.yaml", tmp_path / "part")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "dragontune", "finetune"]
    r = subprocess.run(cmd + [str(tmp_path / "full.yaml")], env=env, capture_output=True)
    assert r.returncode == 0, r.stderr.decode()[-2000:]
    p = subprocess.run(cmd + [str(tmp_path / "part.yaml")], env={**env, "DRAGONTUNE_FAULT": "2:train"},
                       capture_output=True)
    assert p.returncode == -9, p.stderr.decode()[-2000:]
    # a changed LoRA setting is refused on resume, naming the key
    bad = subprocess.run(cmd + [str(tmp_path / "part.yaml"), "--resume", "lora.rank=4"], env=env, capture_output=True)
    assert bad.returncode == 2 and b"lora.rank" in bad.stderr
    r = subprocess.run(cmd + [str(tmp_path / "part.yaml"), "--resume"], env=env, capture_output=True)
    assert r.returncode == 0, r.stderr.decode()[-2000:]
    from dragontune.utils import load_safetensors

    a, _ = load_safetensors(tmp_path / "full" / "adapter" / "adapter_model.safetensors")
    b, _ = load_safetensors(tmp_path / "part" / "adapter" / "adapter_model.safetensors")
    assert set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)
    la = [json.loads(x).get("train/loss") for x in (tmp_path / "full" / "metrics.jsonl").read_text().splitlines()]
    lb = [json.loads(x).get("train/loss") for x in (tmp_path / "part" / "metrics.jsonl").read_text().splitlines()]
    assert la == lb


def test_sample_command_takes_a_pipeline_folder(sa, tmp_path):
    from dragontune.cli import main

    assert main(["sample", "--checkpoint", str(sa["pipe"]), "--prompt", "soft piano", "--n-per-prompt", "2",
                 "--steps", "2", "--device", "cpu", "--out", str(tmp_path / "s")]) == 0
    rows = [json.loads(x) for x in (tmp_path / "s" / "samples.jsonl").read_text().splitlines()]
    assert len(rows) == 2 and all((tmp_path / "s" / r["file"]).is_file() for r in rows)
    # ... and the clips score with per-song VAE-FAD from the command line (the pipeline's VAE as the encoder)
    assert main(["score", "--reward", "per_song_fad", "--encoder", "vae", "--exemplars", str(sa["corpus"] / "audio"),
                 "--run", str(tmp_path / "s"), "--checkpoint", str(sa["pipe"]), "--out", str(tmp_path / "sc.json")]) == 0
    scores = json.loads((tmp_path / "sc.json").read_text())["scores"]
    assert len(scores) == 2 and all(isinstance(x, float) for x in scores)
    assert main(["sample", "--checkpoint", str(tmp_path), "--prompt", "x", "--out", str(tmp_path / "t")]) == 2


def test_merge_command_writes_a_pipeline_that_equals_base_plus_adapters(sa, tmp_path):
    from dragontune.cli import main

    m = load_diffusion_model(sa["pipe"])
    add_lora(m, LoraSettings(rank=2), m.family)
    _perturb_lora(m, 2)
    adapter = save_adapters(m, tmp_path / "adapter", str(sa["pipe"]))
    out = tmp_path / "merged"
    assert main(["merge-lora", "--base", str(sa["pipe"]), "--adapter", str(adapter), "--out", str(out)]) == 0
    merged = load_diffusion_model(out)  # a complete pipeline folder again
    x0, n = _x(m, 2)
    s = torch.tensor([0.7, 5.0])
    c = m.cond(PROMPTS[:2])
    with torch.no_grad():
        torch.testing.assert_close(merged.denoising_error(x0, n, s, c), m.denoising_error(x0, n, s, c),
                                   rtol=1e-4, atol=1e-5)
    assert main(["merge-lora", "--base", str(sa["pipe"]), "--adapter", str(adapter), "--out", str(out)]) == 2
    assert main(["sample", "--checkpoint", str(sa["pipe"]), "--adapter", str(adapter), "--prompt", "soft piano",
                 "--steps", "2", "--device", "cpu", "--out", str(tmp_path / "s")]) == 0
    assert main(["sample", "--checkpoint", str(sa["pipe"]), "--adapter", str(tmp_path / "nope"), "--prompt", "x",
                 "--out", str(tmp_path / "t")]) == 2
