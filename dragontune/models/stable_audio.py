"""Adapter: a diffusers Stable Audio pipeline folder as a dragontune DiffusionModel.

The folder is the layout ``StableAudioPipeline.save_pretrained`` writes (``transformer/``, ``vae/``,
``text_encoder/``, ``tokenizer/``, ``projection_model/``, ``scheduler/``, ``model_index.json``). Each component is
loaded from that folder only (``local_files_only=True``; nothing is fetched). The scheduler is not instantiated
(Stable Audio Open's ``CosineDPMSolverMultistepScheduler`` needs torchsde): its config is read for the model's
parameterisation, and generation uses dragontune's own solvers.

Parameterisation (Stable Audio Open, ``sigma_data`` = 1, v-prediction): the network ``F`` takes
``c_in x`` with ``c_in = 1 / sqrt(sigma^2 + sd^2)`` and the timestep ``t = atan(sigma) 2 / pi``; the denoiser is
``D = c_skip x + c_out F`` with ``c_skip = sd^2 / (sigma^2 + sd^2)`` and ``c_out = -sigma sd / sqrt(sigma^2 + sd^2)``
(``+`` for epsilon prediction), exactly the scheduler's ``precondition_*``. Training objective: the v-prediction
MSE ``mean((F - v)^2)`` with target ``v = (x0 - c_skip x_sigma) / c_out``, which for ``sd = 1`` is
``cos(phi) n - sin(phi) x0`` with ``phi = atan(sigma)``, and equals the EDM-weighted error
``lambda(sigma) |D - x0|^2``; noise levels for training are ``t ~ U(0, 1)``, ``sigma = tan(pi t / 2)``.

Conditioning: the T5 states projected by the projection model, and the ``seconds_start`` / ``seconds_total``
numbers, which enter both as two extra cross-attention tokens and as the global (prepended) token. The null
condition zeroes the cross-attention states (text and seconds tokens) and keeps the global token, as the pipeline
does for classifier-free guidance without a negative prompt.
"""

from __future__ import annotations

import contextlib
import copy
import json
import math
import os
from pathlib import Path

import torch
from torch import nn

from dragontune.errors import CheckpointError, ConfigError
from dragontune.models.edm import P_MEAN, P_STD
from dragontune.models.interface import DiffusionModel

SUBFOLDERS = {
    "transformer": ["config.json"],
    "vae": ["config.json"],
    "text_encoder": ["config.json"],
    "tokenizer": [],
    "projection_model": ["config.json"],
    "scheduler": ["scheduler_config.json"],
}
SCHEDULERS = ("CosineDPMSolverMultistepScheduler",)
MODEL_OPTIONS = ("seconds_start", "seconds_total")


def check_pipeline_dir(path: Path) -> dict:
    """Refuse a folder that is not a Stable Audio pipeline, naming what is missing; returns the scheduler config."""
    if not path.is_dir():
        raise CheckpointError(f"{str(path)!r} is not a folder; give a folder written by StableAudioPipeline.save_pretrained")
    missing = [] if (path / "model_index.json").is_file() else ["model_index.json"]
    for sub, files in SUBFOLDERS.items():
        if not (path / sub).is_dir():
            missing.append(f"{sub}/")
        else:
            missing += [f"{sub}/{f}" for f in files if not (path / sub / f).is_file()]
    if missing:
        raise CheckpointError(
            f"{str(path)!r} is not a Stable Audio pipeline folder: missing {', '.join(missing)}. A model given as a "
            "folder must be the layout StableAudioPipeline.save_pretrained writes (transformer, vae, text_encoder, "
            "tokenizer, projection_model, scheduler); a dragontune model is a .safetensors file")
    index = json.loads((path / "model_index.json").read_text())
    if index.get("_class_name") != "StableAudioPipeline":
        raise CheckpointError(f"{str(path / 'model_index.json')!r} describes a {index.get('_class_name')!r}, not a "
                              "StableAudioPipeline; this adapter loads Stable Audio pipelines only")
    sched = json.loads((path / "scheduler" / "scheduler_config.json").read_text())
    if sched.get("_class_name") not in SCHEDULERS:
        raise CheckpointError(
            f"{str(path / 'scheduler' / 'scheduler_config.json')!r}: scheduler {sched.get('_class_name')!r} is not "
            f"supported; the Stable Audio parameterisation (atan timestep, sigma_data) is that of {', '.join(SCHEDULERS)}")
    if sched.get("prediction_type", "v_prediction") not in ("v_prediction", "epsilon"):
        raise CheckpointError(f"scheduler prediction_type={sched.get('prediction_type')!r}: v_prediction or epsilon only")
    return sched


class StableAudioDenoiser(nn.Module):
    """``D(x, sigma, encoder_hidden_states, global_hidden_states)`` from the transformer's raw output."""

    def __init__(self, transformer: nn.Module, sigma_data: float, prediction: str, rotary_dim: int):
        super().__init__()
        self.transformer = transformer
        self.sigma_data = float(sigma_data)
        self.prediction = prediction
        self.rotary_dim = rotary_dim

    def coefficients(self, sigma: torch.Tensor):
        sd = self.sigma_data
        s2 = sigma * sigma + sd * sd
        c_skip = sd * sd / s2
        c_out = sigma * sd / s2.sqrt() * (-1.0 if self.prediction == "v_prediction" else 1.0)
        return c_skip, c_out, 1.0 / s2.sqrt(), sigma.atan() / math.pi * 2

    def network(self, x: torch.Tensor, sigma: torch.Tensor, encoder_hidden_states, global_hidden_states):
        """The raw network output ``F`` at ``x`` (v or epsilon), per-sample ``sigma[B]``."""
        from diffusers.models.embeddings import get_1d_rotary_pos_embed

        _, _, c_in, t = self.coefficients(sigma.float())
        rope = get_1d_rotary_pos_embed(self.rotary_dim, x.shape[2] + global_hidden_states.shape[1], use_real=True,
                                       repeat_interleave_real=False)
        rope = tuple(r.to(x.device) for r in rope)
        dtype = next(self.transformer.parameters()).dtype
        return self.transformer((c_in[:, None, None] * x).to(dtype), t.to(dtype),
                                encoder_hidden_states=encoder_hidden_states.to(dtype),
                                global_hidden_states=global_hidden_states.to(dtype), rotary_embedding=rope,
                                return_dict=False)[0]

    def forward(self, x: torch.Tensor, sigma: torch.Tensor, **cond) -> torch.Tensor:
        sigma = sigma.to(x.dtype).reshape(-1)
        if sigma.numel() == 1 and x.shape[0] != 1:
            sigma = sigma.expand(x.shape[0])
        c_skip, c_out, _, _ = self.coefficients(sigma)
        f = self.network(x, sigma, **cond)
        return c_skip[:, None, None] * x + c_out[:, None, None] * f.to(x.dtype)


class StableAudioModel(DiffusionModel):
    family = "stable_audio"
    full_artifact = "transformer"

    def __init__(self, path: Path, transformer, vae, text_encoder, tokenizer, projection, scheduler_config: dict,
                 device="cpu", seconds_start: float = 0.0, seconds_total: float | None = None):
        from dragontune.oobleck import OobleckCodec

        self.path = Path(path)
        self.source = str(path)
        self.device = torch.device(device)
        self.transformer = transformer.to(self.device)
        self.vae = vae.to(self.device).eval()
        self.text_encoder = text_encoder.to(self.device).eval()
        self.tokenizer = tokenizer
        self.projection = projection.to(self.device).eval()
        for m in (self.vae, self.text_encoder, self.projection):
            m.requires_grad_(False)
        self.scheduler_config = dict(scheduler_config)
        self.codec = OobleckCodec(self.vae, str(path))
        self.lora = None
        tc = transformer.config
        self.max_seconds = tc.sample_size * self.codec.hop_length / self.codec.sample_rate
        self.seconds_start = float(seconds_start)
        self.seconds_total = float(self.max_seconds if seconds_total is None else seconds_total)
        if not (0 <= self.seconds_start < self.seconds_total <= self.max_seconds + 1e-9):
            raise ConfigError(
                f"model_options seconds_start={self.seconds_start:g}, seconds_total={self.seconds_total:g}: need "
                f"0 <= seconds_start < seconds_total <= {self.max_seconds:g} s (the longest audio this pipeline makes: "
                f"sample_size {tc.sample_size} x hop {self.codec.hop_length} / {self.codec.sample_rate} Hz)")
        self._set_denoiser()

    # -- loading
    @classmethod
    def load(cls, path, device="cpu", seconds_start: float = 0.0, seconds_total: float | None = None,
             **unknown) -> "StableAudioModel":
        if unknown:
            raise ConfigError(f"unknown model_options {sorted(unknown)} for a Stable Audio pipeline; valid: "
                              "seconds_start, seconds_total")
        from diffusers import AutoencoderOobleck, StableAudioDiTModel
        from diffusers.pipelines.stable_audio import StableAudioProjectionModel
        from transformers import AutoTokenizer, T5EncoderModel

        path = Path(path)
        sched = check_pipeline_dir(path)
        p = str(path)
        kw = {"local_files_only": True}
        try:
            transformer = StableAudioDiTModel.from_pretrained(p, subfolder="transformer", **kw)
            vae = AutoencoderOobleck.from_pretrained(p, subfolder="vae", **kw)
            text_encoder = T5EncoderModel.from_pretrained(p, subfolder="text_encoder", **kw)
            tokenizer = AutoTokenizer.from_pretrained(p, subfolder="tokenizer", **kw)
            projection = StableAudioProjectionModel.from_pretrained(p, subfolder="projection_model", **kw)
        except (OSError, ValueError, EnvironmentError) as e:
            raise CheckpointError(f"Stable Audio pipeline {p!r} could not be loaded: {e}") from None
        tc, vc, pc = transformer.config, vae.config, projection.config
        problems = []
        if vc.decoder_input_channels != tc.in_channels or tc.out_channels != tc.in_channels:
            problems.append(f"the VAE's latents have {vc.decoder_input_channels} channels but the transformer takes "
                            f"{tc.in_channels} and returns {tc.out_channels}")
        if tc.global_states_input_dim != 2 * pc.conditioning_dim:
            problems.append(f"transformer global_states_input_dim={tc.global_states_input_dim} is not 2 x the projection "
                            f"model's conditioning_dim={pc.conditioning_dim} (seconds_start and seconds_total)")
        if tc.cross_attention_input_dim != pc.conditioning_dim:
            problems.append(f"transformer cross_attention_input_dim={tc.cross_attention_input_dim} != projection "
                            f"conditioning_dim={pc.conditioning_dim}")
        if pc.text_encoder_dim != text_encoder.config.d_model:
            problems.append(f"projection text_encoder_dim={pc.text_encoder_dim} != the text encoder's width "
                            f"{text_encoder.config.d_model}")
        if problems:
            raise CheckpointError(f"Stable Audio pipeline {p!r} is inconsistent: " + "; ".join(problems)
                                  + ". Its components do not belong together; re-export the pipeline")
        return cls(path, transformer, vae, text_encoder, tokenizer, projection, sched, device, seconds_start,
                   seconds_total)

    def _set_denoiser(self) -> None:
        tc = self.base_transformer().config
        self._denoiser = StableAudioDenoiser(self.transformer, self.scheduler_config.get("sigma_data", 1.0),
                                             self.scheduler_config.get("prediction_type", "v_prediction"),
                                             tc.attention_head_dim // 2)

    def base_transformer(self) -> nn.Module:
        t = self.transformer
        return t.get_base_model() if hasattr(t, "get_base_model") else t

    # -- conditioning
    @torch.no_grad()
    def cond(self, prompts) -> dict[str, torch.Tensor]:
        prompts = list(prompts)
        tok = self.tokenizer(prompts, padding="max_length", max_length=self.tokenizer.model_max_length,
                             truncation=True, return_tensors="pt")
        ids, mask = tok.input_ids.to(self.device), tok.attention_mask.to(self.device)
        hidden = self.text_encoder(ids, attention_mask=mask)[0]
        text = self.projection(text_hidden_states=hidden).text_hidden_states
        text = text * mask[..., None].to(text.dtype)
        n = len(prompts)
        out = self.projection(start_seconds=torch.full((n,), self.seconds_start, device=self.device),
                              end_seconds=torch.full((n,), self.seconds_total, device=self.device))
        start, end = out.seconds_start_hidden_states, out.seconds_end_hidden_states  # [B, 1, D] each
        return {"encoder_hidden_states": torch.cat([text, start, end], dim=1),
                "global_hidden_states": torch.cat([start, end], dim=2)}

    def null_cond(self, cond):
        return {**cond, "encoder_hidden_states": torch.zeros_like(cond["encoder_hidden_states"])}

    def drop_condition(self, cond, drop):
        keep = (~drop.to(self.device)).to(cond["encoder_hidden_states"].dtype)[:, None, None]
        return {**cond, "encoder_hidden_states": cond["encoder_hidden_states"] * keep}

    # -- prediction and objective
    @property
    def denoiser(self) -> StableAudioDenoiser:
        return self._denoiser

    def v_target(self, x0, noise, sigma):
        c_skip, c_out, _, _ = self._denoiser.coefficients(sigma.float())
        xs = x0 + sigma[:, None, None] * noise
        return (x0 - c_skip[:, None, None] * xs) / c_out[:, None, None]

    def denoising_error(self, x0, noise, sigma, cond) -> torch.Tensor:
        """The model's own objective: per-sample mean of ``(F(x_sigma) - v)^2`` (v- or epsilon-MSE)."""
        sigma = sigma.to(x0.dtype)
        xs = x0 + sigma[:, None, None] * noise
        f = self._denoiser.network(xs, sigma, **cond).float()
        return (f - self.v_target(x0.float(), noise.float(), sigma.float())).pow(2).flatten(1).mean(1)

    def train_sigma(self, n, generator, p_mean, p_std) -> torch.Tensor:
        if (p_mean, p_std) != (P_MEAN, P_STD):
            raise ConfigError(f"p_mean={p_mean}, p_std={p_std} set the EDM log-normal noise levels of the in-project "
                              "model; a Stable Audio model trains on its own t ~ U(0, 1): leave p_mean and p_std at "
                              f"their defaults ({P_MEAN}, {P_STD})")
        t = torch.rand(n, generator=generator, dtype=torch.float32)
        return torch.tan(t * (math.pi / 2)).clamp(1e-4, 1e4)

    def sampling_schedule(self, sc) -> dict:
        """The scheduler's schedule (exponential or Karras between its sigma_min and sigma_max)."""
        cfg = self.scheduler_config
        lo, hi = float(cfg.get("sigma_min", 0.3)), float(cfg.get("sigma_max", 500.0))
        default = type(sc)()
        for key, mine in (("sigma_min", lo), ("sigma_max", hi)):
            v = getattr(sc, key)
            if v != getattr(default, key) and not math.isclose(v, mine):
                raise ConfigError(f"sampler.{key}={v} differs from this pipeline's scheduler ({key}={mine}); a "
                                  "Stable Audio model samples over its scheduler's range: leave it at the default")
        kind = cfg.get("sigma_schedule", "exponential")
        if kind not in ("exponential", "karras"):
            raise ConfigError(f"scheduler sigma_schedule={kind!r}: exponential or karras only")
        return {"kind": kind, "sigma_min": lo, "sigma_max": hi, "rho": float(cfg.get("rho", 7.0))}

    # -- latents and audio
    @property
    def latent_shape(self) -> tuple[int, int]:
        tc = self.base_transformer().config
        return (int(tc.in_channels), int(tc.sample_size))

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Audio of the requested window [seconds_start, seconds_total), all of the VAE's channels."""
        sr = self.codec.sample_rate
        audio = self.codec.decode_channels(latents.float())
        return audio[..., int(self.seconds_start * sr):int(self.seconds_total * sr)]

    # -- training
    @property
    def trainable(self) -> nn.Module:
        return self.transformer

    def lora_target_module(self) -> nn.Module:
        return self.transformer

    def set_net(self, net: nn.Module) -> None:
        self.transformer = net.to(self.device)
        self._set_denoiser()

    def set_grad_checkpointing(self, on: bool) -> None:
        base = self.base_transformer()
        base.enable_gradient_checkpointing() if on else base.disable_gradient_checkpointing()

    def copy_frozen(self) -> "StableAudioModel":
        """A frozen deep copy of the transformer sharing the VAE, the text encoder and the tokenizer."""
        ref = copy.copy(self)
        ref.transformer = copy.deepcopy(self.transformer).eval().requires_grad_(False)
        ref.lora = None
        ref._set_denoiser()
        return ref

    def full_state(self):
        return ({f"transformer.{k}": v for k, v in self.transformer.state_dict().items()},
                {"format": "dragontune-stable-audio-transformer-1", "pipeline": self.source})

    def load_full_state(self, tensors, meta, source):
        from dragontune.models.checkpoint import load_state_strict

        load_state_strict(self.transformer, {k[12:]: v for k, v in tensors.items() if k.startswith("transformer.")},
                          source)

    def save_full(self, path) -> None:
        """The trained transformer in diffusers' layout (``save_pretrained``): a pipeline's ``transformer/``."""
        import shutil
        import tempfile

        out = Path(path)
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
        try:
            self.base_transformer().save_pretrained(str(tmp), safe_serialization=True)
            if out.exists():
                shutil.rmtree(out)
            os.replace(tmp, out)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    @contextlib.contextmanager
    def eval_mode(self):
        was = self.transformer.training
        self.transformer.eval()
        try:
            yield
        finally:
            self.transformer.train(was)
