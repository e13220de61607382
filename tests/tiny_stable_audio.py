"""A tiny random Stable Audio pipeline (diffusers layout) built from small configs, saved with save_pretrained."""

from __future__ import annotations

from pathlib import Path

import torch

WORDS = ["piano", "soft", "fast", "drums", "slow", "pad", "bright", "bell", "tones", "deep", "bass", "line",
         "a", "melody", "warm", "loud", "quiet", "guitar", "strings", "noise"]


def tiny_stable_audio(path: Path, seed: int = 0, width_heads: int = 2, layers: int = 2, head_dim: int = 16,
                      sample_size: int = 32, vae_hidden: int = 8, vae_latent: int = 4) -> Path:
    """Write a Stable Audio pipeline of random weights to ``path`` (16 kHz stereo, 4-channel latents, 8x hop).

    ``vae_latent`` != 4 gives a VAE whose latents do not fit the transformer (a bad-input case)."""
    import json

    from diffusers import AutoencoderOobleck, EDMDPMSolverMultistepScheduler, StableAudioDiTModel, StableAudioPipeline
    from diffusers.pipelines.stable_audio import StableAudioProjectionModel
    from transformers import T5Config, T5EncoderModel, T5TokenizerFast

    if (path / "model_index.json").is_file():
        return path
    torch.manual_seed(seed)
    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)] + [("\u2581" + w, -float(i + 1)) for i, w in enumerate(WORDS)]
    tok = T5TokenizerFast(vocab=vocab, extra_ids=0, model_max_length=16)
    t5 = T5EncoderModel(T5Config(vocab_size=len(vocab), d_model=16, d_ff=32, d_kv=8, num_layers=1, num_heads=2,
                                 pad_token_id=0, eos_token_id=1))
    cond_dim = 16
    proj = StableAudioProjectionModel(text_encoder_dim=16, conditioning_dim=cond_dim, min_value=0, max_value=512)
    vae = AutoencoderOobleck(encoder_hidden_size=vae_hidden, downsampling_ratios=[2, 4], channel_multiples=[1, 2],
                             decoder_channels=vae_hidden, decoder_input_channels=vae_latent, audio_channels=2,
                             sampling_rate=16000)
    dit = StableAudioDiTModel(sample_size=sample_size, in_channels=4, num_layers=layers, attention_head_dim=head_dim,
                              num_attention_heads=width_heads, num_key_value_attention_heads=1, out_channels=4,
                              cross_attention_dim=32, time_proj_dim=16, global_states_input_dim=2 * cond_dim,
                              cross_attention_input_dim=cond_dim)
    # Stable Audio Open ships CosineDPMSolverMultistepScheduler, which needs torchsde to be constructed (not
    # installed here): save with a stand-in scheduler, then write the cosine scheduler's config as SAO has it
    pipe = StableAudioPipeline(vae=vae, text_encoder=t5, projection_model=proj, tokenizer=tok, transformer=dit,
                               scheduler=EDMDPMSolverMultistepScheduler())
    pipe.save_pretrained(str(path))
    (path / "scheduler" / "scheduler_config.json").write_text(json.dumps(COSINE_SCHEDULER, indent=1))
    index = json.loads((path / "model_index.json").read_text())
    index["scheduler"] = ["diffusers", "CosineDPMSolverMultistepScheduler"]
    (path / "model_index.json").write_text(json.dumps(index, indent=1))
    return path


#: the scheduler config of Stable Audio Open 1.0 (diffusers layout)
COSINE_SCHEDULER = {"_class_name": "CosineDPMSolverMultistepScheduler", "_diffusers_version": "0.30.0.dev0",
                    "euler_at_final": False, "final_sigmas_type": "zero", "lower_order_final": True,
                    "num_train_timesteps": 1000, "prediction_type": "v_prediction", "rho": 7.0,
                    "sigma_data": 1.0, "sigma_max": 500.0, "sigma_min": 0.3, "sigma_schedule": "exponential",
                    "solver_order": 2, "solver_type": "midpoint"}
