"""Generation with any DiffusionModel (dragontune.models.interface): per-sample seeds, CFG or CFG++ in one batched forward, any solver.

A sample's latent depends only on (prompt, seed, model, sampler settings) — never on the batch it was
generated in or on the process rank — up to floating-point differences of batched matmuls.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Sequence

import torch

from dragontune.errors import ConfigError
from dragontune.sampling import CFGDenoiser, CFGPPDenoiser, exponential_sigmas, get_sampler, karras_sigmas, seeded_noise


@dataclasses.dataclass
class SamplerConfig:
    steps: int = 40
    sampler: str = "dpmpp_2m"         # euler | heun | dpmpp_2m
    cfg: float = 4.0                  # classifier-free guidance scale (1 = conditional only)
    cfg_rescale: float = 0.0          # guidance rescale phi in [0, 1]: guided estimate moved to the conditional's mean/std (0 = off)
    cfgpp: bool = False               # CFG++ (guided x0, unconditional re-noising)
    cfgpp_scale: float = 0.6          # CFG++ lambda, typically in [0, 1]
    cfgpp_steps: list[int] = dataclasses.field(default_factory=list)  # [start, stop) step indices; [] = all
    sigma_min: float = 0.002
    sigma_max: float = 80.0
    rho: float = 7.0
    batch_size: int = 32


def schedule_sigmas(schedule: dict, steps: int, device=None) -> torch.Tensor:
    """The float32 sigmas (steps + 1, last 0) of a model's ``sampling_schedule``."""
    kind, lo, hi = schedule["kind"], schedule["sigma_min"], schedule["sigma_max"]
    if kind == "karras":
        return karras_sigmas(steps, lo, hi, schedule["rho"], device=device, dtype=torch.float32)
    if kind == "exponential":
        return exponential_sigmas(steps, lo, hi, device=device, dtype=torch.float32)
    raise ConfigError(f"unknown sigma schedule {kind!r}: karras or exponential")


def make_guided(model, cond: dict, sc: SamplerConfig):
    uncond = model.null_cond(cond)
    if sc.cfgpp:
        if sc.cfgpp_steps:
            if len(sc.cfgpp_steps) != 2:
                raise ConfigError(f"sampler.cfgpp_steps={sc.cfgpp_steps!r} must be [start, stop] or []")
            return CFGPPDenoiser(model.denoiser, cond, uncond, sc.cfgpp_scale,
                                 steps=(int(sc.cfgpp_steps[0]), int(sc.cfgpp_steps[1])), cfg_scale=sc.cfg)
        return CFGPPDenoiser(model.denoiser, cond, uncond, sc.cfgpp_scale)
    return CFGDenoiser(model.denoiser, cond, uncond, sc.cfg, rescale=sc.cfg_rescale)


@torch.no_grad()
def generate_latents(
    model,
    prompts: Sequence[str],
    seeds: Sequence[int],
    sc: SamplerConfig | None = None,
    *,
    callback: Callable[[dict], None] | None = None,
    disable: bool | None = True,
    autocast_bf16: bool = False,
    bpm: float | None = None,
) -> torch.Tensor:
    """Generate latents ``[N, C, F]`` (float32, CPU) for ``prompts[i]`` with noise seed ``seeds[i]``.

    ``bpm``: a tempo for every clip instead of the one the model reads from the prompt (models with tempo
    conditioning only).
    """
    sc = sc or SamplerConfig()
    if len(prompts) != len(seeds):
        raise ConfigError(f"{len(prompts)} prompts but {len(seeds)} seeds; give one seed per prompt")
    if len(prompts) == 0:
        raise ConfigError("no prompts to generate")
    period = None if bpm is None else model.tempo_frames(bpm)
    solver = get_sampler(sc.sampler)
    device = model.device
    sigmas = schedule_sigmas(model.sampling_schedule(sc), sc.steps, device)
    out = []
    with model.eval_mode():
        for i in range(0, len(prompts), sc.batch_size):
            p = list(prompts[i:i + sc.batch_size])
            s = list(seeds[i:i + sc.batch_size])
            cond = model.cond(p)
            if period is not None:
                cond["tempo_frames"] = torch.full((len(p),), period, device=device)
            x = seeded_noise(s, model.latent_shape, device=device, dtype=torch.float32) * sigmas[0]
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast_bf16):
                lat = solver(make_guided(model, cond, sc), x, sigmas, callback=callback, disable=disable)
            out.append(lat.float().cpu())
    return torch.cat(out)


def generate_latents_cached(model, model_file: str | None, prompts: Sequence[str], seeds: Sequence[int],
                            sc: SamplerConfig, cache_dir=None) -> torch.Tensor:
    """:func:`generate_latents`, kept on disk under ``cache_dir`` when given.

    The key is the model file's content hash (``None``: the committed baseline) with every prompt, seed and
    sampler setting, so a frozen model's generations for the same settings (the baseline of many evaluations,
    the credit pool's warm-up) are made once. Written atomically.
    """
    from dragontune.models.checkpoint import PACKAGE_BASELINE
    from pathlib import Path

    from dragontune.utils import load_safetensors, save_safetensors_atomic, sha256_file, sha256_json

    if cache_dir is None or cache_dir == "":
        return generate_latents(model, prompts, seeds, sc)
    model_file = str(PACKAGE_BASELINE) if model_file is None else str(model_file)
    if Path(model_file).is_dir():
        raise ConfigError(f"a generation cache keys on a model file; {model_file!r} is a pipeline folder: leave the "
                          "cache (pool.cache_dir, --generation-cache) unset for it")
    key = sha256_json({"model": sha256_file(model_file), "prompts": list(prompts), "seeds": [int(s) for s in seeds],
                       "sampler": dataclasses.asdict(sc), "format": 1})[:32]
    path = Path(cache_dir) / f"{key}.safetensors"
    if path.is_file():
        return load_safetensors(path)[0]["latents"]
    lat = generate_latents(model, prompts, seeds, sc)
    save_safetensors_atomic({"latents": lat.contiguous()}, path, {"model": model_file})
    return lat
