"""EDM preconditioning (Karras et al. 2022), sigma sampling and the per-sample denoising loss.

``D(x; sigma, c) = c_skip x + c_out F(c_in x; c_noise, c)`` with
``c_skip = sd^2/(s^2+sd^2)``, ``c_out = s sd/sqrt(s^2+sd^2)``, ``c_in = 1/sqrt(s^2+sd^2)``,
``c_noise = log(s)/4``. Loss weight ``lambda(s) = (s^2+sd^2)/(s sd)^2`` makes the effective target of F
unit-variance at every noise level.
"""

from __future__ import annotations


import torch
from torch import nn

SIGMA_DATA = 0.5
P_MEAN = 0.4
P_STD = 1.0


def precondition(sigma: torch.Tensor, sigma_data: float = SIGMA_DATA):
    """Return ``(c_skip, c_out, c_in, c_noise)`` for a sigma tensor (any shape)."""
    s2, sd2 = sigma * sigma, sigma_data * sigma_data
    c_skip = sd2 / (s2 + sd2)
    c_out = sigma * sigma_data / (s2 + sd2).sqrt()
    c_in = 1.0 / (s2 + sd2).sqrt()
    c_noise = sigma.log() / 4
    return c_skip, c_out, c_in, c_noise


def loss_weight(sigma: torch.Tensor, sigma_data: float = SIGMA_DATA) -> torch.Tensor:
    return (sigma * sigma + sigma_data * sigma_data) / (sigma * sigma_data) ** 2


def sample_sigma(
    n: int, generator: torch.Generator | None = None, p_mean: float = P_MEAN, p_std: float = P_STD,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """sigma ~ LogNormal(p_mean, p_std), drawn on CPU from ``generator`` (reproducible), moved to ``device``."""
    z = torch.randn(n, generator=generator, dtype=torch.float32)
    return torch.exp(p_mean + p_std * z).to(device)


class EDMDenoiser(nn.Module):
    """Wraps a raw network ``F(x, c_noise, **cond)`` into the denoiser ``D(x, sigma, **cond)``.

    The network runs in float32 (or under autocast); the skip path is computed in the dtype of ``x``,
    so float64 inputs give float64 outputs.
    """

    def __init__(self, net: nn.Module, sigma_data: float = SIGMA_DATA):
        super().__init__()
        self.net = net
        self.sigma_data = sigma_data

    def forward(self, x: torch.Tensor, sigma: torch.Tensor, **cond) -> torch.Tensor:
        sigma = sigma.to(x.dtype).reshape(-1)
        if sigma.numel() == 1 and x.shape[0] != 1:
            sigma = sigma.expand(x.shape[0])
        c_skip, c_out, c_in, c_noise = precondition(sigma, self.sigma_data)
        shape = (-1,) + (1,) * (x.dim() - 1)
        f = self.net((c_in.view(shape) * x).float(), c_noise.float(), **cond)
        return c_skip.view(shape) * x + c_out.view(shape) * f.to(x.dtype)


def denoising_loss(
    denoiser: nn.Module, x0: torch.Tensor, noise: torch.Tensor, sigma: torch.Tensor, cond: dict
) -> torch.Tensor:
    """Per-sample EDM loss ``lambda(sigma) * mean((D(x0 + sigma n; sigma, c) - x0)^2)`` -> ``[B]``.

    ``noise`` and ``sigma`` are passed in explicitly so that DPO/KTO can share them between the policy,
    the reference and the two members of a pair.
    """
    sd = getattr(denoiser, "sigma_data", SIGMA_DATA)
    shape = (-1,) + (1,) * (x0.dim() - 1)
    xs = x0 + sigma.view(shape).to(x0.dtype) * noise
    d = denoiser(xs, sigma, **cond)
    err = (d.float() - x0.float()).pow(2).flatten(1).mean(1)
    return loss_weight(sigma.float(), sd) * err


def count_params(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def model_flops_per_sample(cfg, frames: int, text_len: int) -> float:
    """Approximate forward FLOPs of the DiT for one sample (matmuls only: 2 * MACs)."""
    n = frames // cfg.patch_size
    d = cfg.width
    m = 0.0
    m += n * cfg.latent_channels * cfg.patch_size * d * 2  # patch in/out
    per_block = n * d * 3 * d + (text_len + 1) * d * 2 * d + n * d * d + 2 * n * d * int(d * cfg.mlp_ratio)
    per_block += 2 * n * (n + 1 + text_len) * d  # attention scores and weighted sum
    m += cfg.depth * per_block
    r = cfg.refine_channels
    if r:
        k, C = cfg.refine_kernel, cfg.latent_channels
        m += frames * (2 * C * r * k + r * r * k + r * C)  # conv1, conv2, 1x1 out
    return 2.0 * m
