"""Sampling: σ schedules, probability-flow ODE solvers, classifier-free guidance, seeded noise.

EDM notation (Karras et al. 2022): x_σ = x0 + σ·n, denoiser D(x; σ) ≈ E[x0 | x_σ], probability-flow
ODE dx/dσ = (x − D(x; σ)) / σ, integrated from σ_max down to 0.

Pieces
------
* Schedules return a decreasing 1-D tensor of σ whose last entry is 0 (`karras_sigmas`).
* Solvers share one signature, ``solver(denoiser, x, sigmas, *, extra_args=None, callback=None,
  disable=None) -> x0``. ``denoiser(x, sigma_batch, **extra_args)`` returns D(x; σ) with the shape of
  ``x``; ``sigma_batch`` has shape [B] and the dtype of ``x``. The state is kept in ``x.dtype``
  (σ are cast to it; the denoiser's output is cast to it). ``callback`` receives, once per step and
  before the update, ``dict(i, x, sigma, sigma_next, denoised)`` (``x`` the state at ``sigma``,
  ``denoised`` the guided estimate there). ``disable`` controls a tqdm bar: None → shown only when
  stderr is a TTY, True → off, False → on. Solvers do not touch autograd; wrap them in
  ``torch.no_grad()`` when no gradient is wanted (``sample`` does).
* Every step of every solver is written as

      x_next = D̂ + (σ_next/σ) · (x − D̂_r)

  where D̂ is the solver's data estimate for the step (Euler: D; DPM-Solver++(2M): a linear
  extrapolation of the last two D in log σ; Heun: a mix of D at σ and at σ_next) and D̂_r is the same
  combination of the *re-noising* estimates. For a plain denoiser D̂_r = D̂ and this is exactly the
  textbook solver. Guidance wrappers may supply a different re-noising estimate (CFG++ uses the
  unconditional one), see the protocol below.

Guidance protocol
-----------------
A guidance wrapper is an ordinary denoiser (``wrapper(x, sigma, **extra_args)`` returns the guided
estimate), so anything that takes a denoiser takes it. In addition it may define

    predict(x, sigma_batch, step: StepInfo | None, **extra_args) -> Prediction

Solvers call ``predict`` when it exists (plain denoisers: ``Prediction(D, D, None)``). A ``Prediction``
holds ``denoised`` (the x0 estimate the step moves to), ``renoise`` (the x0 estimate whose residual
(x − renoise)/σ is the noise direction carried to σ_next) and ``estimator`` (a hashable tag of how the
estimate was formed). Multistep solvers extrapolate only between predictions with equal ``estimator``
tags; when the tag changes (e.g. CFG++ switched on for a range of steps) they take a first-order step.
``step`` tells the wrapper which solver step the call belongs to (Heun's second evaluation carries the
same ``StepInfo`` as its first), so per-step choices stay consistent within a step. The protocol is
stateless: wrappers keep no per-call state, so one wrapper may serve concurrent or nested calls.
"""

from __future__ import annotations

import math
import sys
from typing import Any, Callable, Mapping, NamedTuple, Sequence

import torch
from torch import Tensor
from tqdm.auto import tqdm

from dragontune.errors import ConfigError

__all__ = [
    "karras_sigmas",
    "exponential_sigmas",
    "StepInfo",
    "Prediction",
    "sample_euler",
    "sample_heun",
    "sample_dpmpp_2m",
    "SAMPLERS",
    "get_sampler",
    "seeded_noise",
    "CFGDenoiser",
    "CFGPPDenoiser",
    "sample",
]

Denoiser = Callable[..., Tensor]
Callback = Callable[[dict], None]


# ---------------------------------------------------------------------------------------------------
# Schedules
# ---------------------------------------------------------------------------------------------------


def karras_sigmas(
    n: int,
    sigma_min: float = 0.002,
    sigma_max: float = 80.0,
    rho: float = 7.0,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float64,
) -> Tensor:
    """EDM schedule σ_i = (σ_max^(1/ρ) + i/(n−1)·(σ_min^(1/ρ) − σ_max^(1/ρ)))^ρ, i < n, then 0.

    Returns n+1 decreasing values (n solver steps); n = 1 gives [σ_max, 0].
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ConfigError(f"karras_sigmas: number of steps n={n!r} must be an integer >= 1")
    for name, v in (("sigma_min", sigma_min), ("sigma_max", sigma_max), ("rho", rho)):
        if not math.isfinite(float(v)):
            raise ConfigError(f"karras_sigmas: {name}={v!r} must be finite")
    if not 0.0 < sigma_min < sigma_max:
        raise ConfigError(
            f"karras_sigmas: need 0 < sigma_min < sigma_max, got sigma_min={sigma_min!r}, "
            f"sigma_max={sigma_max!r}"
        )
    if rho <= 0:
        raise ConfigError(f"karras_sigmas: rho={rho!r} must be > 0 (EDM uses 7)")
    ramp = torch.linspace(0.0, 1.0, n, dtype=torch.float64)
    lo, hi = sigma_min ** (1.0 / rho), sigma_max ** (1.0 / rho)
    sig = (hi + ramp * (lo - hi)) ** rho
    sig = torch.cat([sig, sig.new_zeros(1)])
    return sig.to(device=device, dtype=dtype)


def exponential_sigmas(
    n: int,
    sigma_min: float,
    sigma_max: float,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float64,
) -> Tensor:
    """Log-uniform schedule σ_i = exp(log σ_max + i/(n−1)·(log σ_min − log σ_max)), i < n, then 0 (the
    "exponential" schedule of k-diffusion and of diffusers' cosine/EDM DPM-Solver schedulers)."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ConfigError(f"exponential_sigmas: number of steps n={n!r} must be an integer >= 1")
    if not (math.isfinite(float(sigma_min)) and math.isfinite(float(sigma_max)) and 0.0 < sigma_min < sigma_max):
        raise ConfigError(f"exponential_sigmas: need 0 < sigma_min < sigma_max, got {sigma_min!r}, {sigma_max!r}")
    ramp = torch.linspace(0.0, 1.0, n, dtype=torch.float64)
    sig = torch.exp(math.log(sigma_max) + ramp * (math.log(sigma_min) - math.log(sigma_max)))
    return torch.cat([sig, sig.new_zeros(1)]).to(device=device, dtype=dtype)


def _check_sigmas(sigmas: Tensor, x: Tensor) -> Tensor:
    if not isinstance(sigmas, Tensor):
        raise ConfigError(f"sigmas must be a torch.Tensor (e.g. karras_sigmas(n)), got {type(sigmas)}")
    if sigmas.ndim != 1 or sigmas.numel() < 2:
        raise ConfigError(f"sigmas must be 1-D with at least 2 entries, got shape {tuple(sigmas.shape)}")
    s = sigmas.detach().to(dtype=torch.float64, device="cpu")
    if not torch.isfinite(s).all():
        raise ConfigError("sigmas contain a non-finite value")
    if (s[:-1] <= 0).any() or s[-1] < 0:
        raise ConfigError("sigmas must be > 0 except the last entry, which may be 0")
    if (s[1:] >= s[:-1]).any():
        raise ConfigError(f"sigmas must be strictly decreasing, got {s.tolist()}")
    return sigmas.to(device=x.device, dtype=x.dtype)


# ---------------------------------------------------------------------------------------------------
# Protocol between solvers and guidance wrappers
# ---------------------------------------------------------------------------------------------------


class StepInfo(NamedTuple):
    """Which solver step a denoiser call belongs to."""

    index: int  # 0-based step index
    total: int  # number of steps, len(sigmas) - 1
    sigma: float  # σ at the start of the step
    sigma_next: float  # σ at its end


class Prediction(NamedTuple):
    """A denoiser evaluation as the solvers consume it (see the module docstring)."""

    denoised: Tensor
    renoise: Tensor
    estimator: Any = None


def _predict(
    denoiser: Denoiser, x: Tensor, sigma: Tensor, step: StepInfo, extra_args: Mapping[str, Any]
) -> Prediction:
    s_in = sigma.expand(x.shape[0]).contiguous()
    predict = getattr(denoiser, "predict", None)
    if predict is not None:
        p = predict(x, s_in, step, **extra_args)
        if not isinstance(p, Prediction):
            raise ConfigError(
                f"{type(denoiser).__name__}.predict must return dragontune.sampling.Prediction, "
                f"got {type(p).__name__}"
            )
        den, ren = _as_state(p.denoised, x, "denoised"), _as_state(p.renoise, x, "renoise")
        return Prediction(den, ren, p.estimator)
    d = _as_state(denoiser(x, s_in, **extra_args), x, "denoised")
    return Prediction(d, d, None)


def _as_state(d: Any, x: Tensor, what: str) -> Tensor:
    if not isinstance(d, Tensor):
        raise ConfigError(f"denoiser returned {type(d).__name__} for {what}; expected a Tensor")
    if d.shape != x.shape:
        raise ConfigError(
            f"denoiser returned {what} of shape {tuple(d.shape)} for x of shape {tuple(x.shape)}; "
            "it must return D(x; sigma) with the shape of x"
        )
    return d.to(dtype=x.dtype)


def _progress_disabled(disable: bool | None) -> bool:
    if disable is None:
        return not (hasattr(sys.stderr, "isatty") and sys.stderr.isatty())
    return bool(disable)


def _start(x: Tensor, sigmas: Tensor, extra_args: Mapping[str, Any] | None):
    if not isinstance(x, Tensor) or not x.is_floating_point() or x.ndim < 1:
        raise ConfigError("x must be a floating-point tensor with a batch dimension")
    sigmas = _check_sigmas(sigmas, x)
    values = sigmas.detach().to(device="cpu", dtype=torch.float64).tolist()  # one sync, not one per step
    infos = [StepInfo(i, len(values) - 1, values[i], values[i + 1]) for i in range(len(values) - 1)]
    return sigmas, infos, dict(extra_args or {})


def _renoise_step(
    x: Tensor, d_hat: Tensor, r_hat: Tensor, sigma: Tensor, sigma_next: Tensor, info: StepInfo
) -> Tensor:
    """x_next = D̂ + (σ_next/σ)(x − D̂_r); exactly D̂ when σ_next = 0."""
    if info.sigma_next == 0.0:
        return d_hat
    return d_hat + (sigma_next / sigma) * (x - r_hat)


def _emit(callback: Callback | None, i: int, x: Tensor, sigma: Tensor, sigma_next: Tensor, den: Tensor):
    if callback is not None:
        callback(dict(i=i, x=x, sigma=sigma, sigma_next=sigma_next, denoised=den))


# ---------------------------------------------------------------------------------------------------
# Solvers
# ---------------------------------------------------------------------------------------------------


def sample_euler(
    denoiser: Denoiser,
    x: Tensor,
    sigmas: Tensor,
    *,
    extra_args: Mapping[str, Any] | None = None,
    callback: Callback | None = None,
    disable: bool | None = None,
) -> Tensor:
    """First-order Euler on the probability-flow ODE: x ← D + (σ_next/σ)(x − D)."""
    sigmas, infos, extra = _start(x, sigmas, extra_args)
    for i in tqdm(range(len(infos)), disable=_progress_disabled(disable), desc="euler"):
        s, s_next = sigmas[i], sigmas[i + 1]
        info = infos[i]
        p = _predict(denoiser, x, s, info, extra)
        _emit(callback, i, x, s, s_next, p.denoised)
        x = _renoise_step(x, p.denoised, p.renoise, s, s_next, info)
    return x


def sample_heun(
    denoiser: Denoiser,
    x: Tensor,
    sigmas: Tensor,
    *,
    extra_args: Mapping[str, Any] | None = None,
    callback: Callback | None = None,
    disable: bool | None = None,
) -> Tensor:
    """EDM Algorithm 1 (deterministic, no churn): Heun's 2nd-order method, Euler on the step to σ=0.

    With d = (x − D)/σ and the Euler predictor x' at σ', the corrector x + (σ'−σ)(d + d')/2 equals
    D̂ + (σ'/σ)(x − D̂) with D̂ = D + a(D' − D), a = σ/(2σ'); guidance wrappers mix their
    re-noising estimates with the same weights.
    """
    sigmas, infos, extra = _start(x, sigmas, extra_args)
    for i in tqdm(range(len(infos)), disable=_progress_disabled(disable), desc="heun"):
        s, s_next = sigmas[i], sigmas[i + 1]
        info = infos[i]
        p = _predict(denoiser, x, s, info, extra)
        _emit(callback, i, x, s, s_next, p.denoised)
        x_pred = _renoise_step(x, p.denoised, p.renoise, s, s_next, info)
        if info.sigma_next == 0.0:
            x = x_pred
            continue
        q = _predict(denoiser, x_pred, s_next, info, extra)
        a = s / (2.0 * s_next)
        d_hat = p.denoised + a * (q.denoised - p.denoised)
        r_hat = p.renoise + a * (q.renoise - p.renoise)
        x = _renoise_step(x, d_hat, r_hat, s, s_next, info)
    return x


def sample_dpmpp_2m(
    denoiser: Denoiser,
    x: Tensor,
    sigmas: Tensor,
    *,
    extra_args: Mapping[str, Any] | None = None,
    callback: Callback | None = None,
    disable: bool | None = None,
) -> Tensor:
    """DPM-Solver++(2M) (Lu et al. 2022), data prediction, multistep in t = −log σ.

    h = log(σ/σ_next), r = h_prev/h, D̂ = D + (D − D_prev)/(2r); x ← D̂ + (σ_next/σ)(x − D̂).
    First order (D̂ = D) on the first step, on the final step to σ = 0 (which returns D) and whenever
    the guidance estimator changes.
    """
    sigmas, infos, extra = _start(x, sigmas, extra_args)
    prev: Prediction | None = None
    h_prev: float | None = None
    for i in tqdm(range(len(infos)), disable=_progress_disabled(disable), desc="dpmpp_2m"):
        s, s_next = sigmas[i], sigmas[i + 1]
        info = infos[i]
        p = _predict(denoiser, x, s, info, extra)
        _emit(callback, i, x, s, s_next, p.denoised)
        if info.sigma_next == 0.0:
            x = p.denoised
            break
        h = math.log(info.sigma / info.sigma_next)
        if prev is None or h_prev is None or prev.estimator != p.estimator:
            d_hat, r_hat = p.denoised, p.renoise
        else:
            c = h / (2.0 * h_prev)  # 1/(2r)
            d_hat = p.denoised + c * (p.denoised - prev.denoised)
            r_hat = p.renoise + c * (p.renoise - prev.renoise)
        x = _renoise_step(x, d_hat, r_hat, s, s_next, info)
        prev, h_prev = p, h
    return x


SAMPLERS: dict[str, Callable[..., Tensor]] = {
    "euler": sample_euler,
    "heun": sample_heun,
    "dpmpp_2m": sample_dpmpp_2m,
}


def get_sampler(name: str) -> Callable[..., Tensor]:
    """The solver registered under ``name`` in SAMPLERS."""
    if name not in SAMPLERS:
        raise ConfigError(f"unknown sampler {name!r}; valid names: {', '.join(sorted(SAMPLERS))}")
    return SAMPLERS[name]


# ---------------------------------------------------------------------------------------------------
# Noise
# ---------------------------------------------------------------------------------------------------


def seeded_noise(
    seeds: Sequence[int],
    shape: Sequence[int],
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """Standard normal noise [len(seeds), *shape]; row b depends only on seeds[b] and shape.

    Each row is drawn in float32 on the CPU from its own ``torch.Generator().manual_seed(seed)`` and
    then cast and moved, so it does not depend on batch composition, rank, device or dtype.
    """
    seeds = list(seeds)
    if not seeds:
        raise ConfigError("seeded_noise: seeds is empty; pass one integer seed per sample")
    for s in seeds:
        if isinstance(s, bool) or not isinstance(s, int) or not 0 <= s < 2**64:
            raise ConfigError(f"seeded_noise: seed {s!r} must be an int in [0, 2**64)")
    shape = tuple(shape)
    if any(isinstance(n, bool) or not isinstance(n, int) or n < 0 for n in shape):
        raise ConfigError(f"seeded_noise: per-sample shape {shape!r} must be non-negative ints")
    rows = []
    for s in seeds:
        g = torch.Generator(device="cpu").manual_seed(s)
        rows.append(torch.randn(shape, generator=g, dtype=torch.float32, device="cpu"))
    return torch.stack(rows).to(device=device, dtype=dtype)


# ---------------------------------------------------------------------------------------------------
# Guidance
# ---------------------------------------------------------------------------------------------------


def _check_scale(name: str, v: float) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        raise ConfigError(f"{name}={v!r} must be a finite number")
    return float(v)


class _Branches:
    """Calls a denoiser on the conditional and/or unconditional branch in one forward."""

    def __init__(self, denoiser: Denoiser, cond: Mapping[str, Tensor], uncond: Mapping[str, Tensor]):
        if not callable(denoiser):
            raise ConfigError(f"denoiser must be callable, got {type(denoiser).__name__}")
        cond, uncond = dict(cond), dict(uncond)
        if set(cond) != set(uncond):
            raise ConfigError(
                f"cond and uncond must have the same keys, got {sorted(cond)} and {sorted(uncond)}"
            )
        for k in cond:
            c, u = cond[k], uncond[k]
            if not isinstance(c, Tensor) or not isinstance(u, Tensor) or c.ndim < 1 or u.ndim < 1:
                raise ConfigError(f"cond[{k!r}] and uncond[{k!r}] must be tensors with a batch dim")
            if c.shape[1:] != u.shape[1:]:
                raise ConfigError(
                    f"cond[{k!r}] has shape {tuple(c.shape)} and uncond[{k!r}] {tuple(u.shape)}: they "
                    "must agree except in the batch dim (pad sequences to one length before guidance)"
                )
        self.denoiser, self.cond, self.uncond = denoiser, cond, uncond

    @staticmethod
    def _expand(t: Tensor, b: int, key: str, which: str) -> Tensor:
        if t.shape[0] == b:
            return t
        if t.shape[0] == 1:
            return t.expand(b, *t.shape[1:])
        raise ConfigError(f"{which}[{key!r}] has batch {t.shape[0]}, expected 1 or {b} (the batch of x)")

    def _kwargs(self, extra: Mapping[str, Any], branch: Mapping[str, Tensor], b: int, which: str):
        clash = set(extra) & set(branch)
        if clash:
            raise ConfigError(f"extra_args and {which} both set {sorted(clash)}; pass each key once")
        out = dict(extra)
        for k, t in branch.items():
            out[k] = self._expand(t, b, k, which)
        return out

    def one(self, x: Tensor, sigma: Tensor, extra: Mapping[str, Any], which: str) -> Tensor:
        branch = self.cond if which == "cond" else self.uncond
        out = self.denoiser(x, sigma, **self._kwargs(extra, branch, x.shape[0], which))
        return _as_state(out, x, f"{which} branch")

    def both(self, x: Tensor, sigma: Tensor, extra: Mapping[str, Any]) -> tuple[Tensor, Tensor]:
        b = x.shape[0]
        clash = set(extra) & set(self.cond)
        if clash:
            raise ConfigError(f"extra_args and cond/uncond both set {sorted(clash)}; pass each key once")
        kw = dict(extra)
        for k in self.cond:
            c = self._expand(self.cond[k], b, k, "cond")
            u = self._expand(self.uncond[k], b, k, "uncond").to(device=c.device, dtype=c.dtype)
            kw[k] = torch.cat([c, u], dim=0)
        out = self.denoiser(torch.cat([x, x], dim=0), torch.cat([sigma, sigma], dim=0), **kw)
        if not isinstance(out, Tensor) or out.shape != (2 * b, *x.shape[1:]):
            got = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
            raise ConfigError(f"denoiser returned {got} for the doubled CFG batch of {2 * b}")
        out = out.to(dtype=x.dtype)
        return out[:b], out[b:]


class CFGDenoiser:
    """Classifier-free guidance: D = u + scale·(c − u), both branches in one batched forward.

    The inner ``denoiser(x, sigma, **extra_args, **cond_or_uncond)`` is called once per evaluation
    on ``[x, x]``, ``[σ, σ]`` and ``cat([cond[k], uncond[k]])`` for each key (entries with batch 1 are
    expanded; cond and uncond tensors must agree except in the batch dim — the caller pads).
    ``extra_args`` are passed unchanged, so per-sample tensors belong in cond/uncond.
    ``scale == 1`` evaluates the conditional branch only (batch B).

    ``rescale`` (phi in [0, 1]) blends the guided estimate with a copy of it moved to the conditional estimate's
    per-sample mean and standard deviation (guidance rescale, after Lin et al. 2024, here with the mean too):
    in a log-spectral latent space guidance extrapolates log-energies, and the decoded level grows
    exponentially with the overshoot (docs/sampling.md, "Loudness").
    """

    def __init__(
        self, denoiser: Denoiser, cond: Mapping[str, Tensor], uncond: Mapping[str, Tensor], scale: float,
        rescale: float = 0.0,
    ):
        self.branches = _Branches(denoiser, cond, uncond)
        self.scale = _check_scale("scale", scale)
        self.rescale = _check_scale("rescale", rescale)
        if not 0.0 <= self.rescale <= 1.0:
            raise ConfigError(f"cfg rescale={rescale!r} must be in [0, 1] (0 = plain CFG)")

    def predict(self, x: Tensor, sigma: Tensor, step: StepInfo | None = None, **extra_args) -> Prediction:
        g = _cfg(self.branches, x, sigma, self.scale, extra_args, self.rescale)
        return Prediction(g, g, ("cfg", self.scale))

    def __call__(self, x: Tensor, sigma: Tensor, **extra_args) -> Tensor:
        return self.predict(x, sigma, None, **extra_args).denoised


def _cfg(br: _Branches, x: Tensor, sigma: Tensor, scale: float, extra: Mapping[str, Any],
         rescale: float = 0.0) -> Tensor:
    if scale == 1.0:
        return br.one(x, sigma, extra, "cond")
    if scale == 0.0:
        return br.one(x, sigma, extra, "uncond")
    c, u = br.both(x, sigma, extra)
    g = u + scale * (c - u)
    return g if rescale == 0.0 else rescale_to(g, c, rescale)


def rescale_to(g: Tensor, c: Tensor, phi: float) -> Tensor:
    """``phi * g' + (1 - phi) * g`` where ``g'`` is ``g`` with the per-sample mean and std of ``c``."""
    dims = tuple(range(1, g.dim()))
    mg, sg = g.mean(dim=dims, keepdim=True), g.std(dim=dims, keepdim=True)
    mc, sc = c.mean(dim=dims, keepdim=True), c.std(dim=dims, keepdim=True)
    moved = (g - mg) * (sc / sg.clamp_min(1e-12)) + mc
    return phi * moved + (1.0 - phi) * g


class CFGPPDenoiser:
    """CFG++ (Chung et al. 2024): guided estimate u + λ(c − u), re-noising with the unconditional u.

    With a plain solver step x_next = D̂ + (σ_next/σ)(x − D̂_r) this gives, for Euler,
    x_next = D_λ + (σ_next/σ)(x − D_u). λ is typically in [0, 1].

    CFG++ may be limited to some steps: ``steps=(start, stop)`` (half-open step indices) and/or
    ``sigma_range=(lo, hi)`` (σ at the start of the step, inclusive); when both are given both must
    hold. Elsewhere plain CFG with ``cfg_scale`` is applied (required when a limit is given, and
    rejected otherwise). Calls outside a solver (``step`` None) need no limit.
    """

    def __init__(
        self,
        denoiser: Denoiser,
        cond: Mapping[str, Tensor],
        uncond: Mapping[str, Tensor],
        scale: float,
        *,
        steps: tuple[int, int] | range | None = None,
        sigma_range: tuple[float, float] | None = None,
        cfg_scale: float | None = None,
    ):
        self.branches = _Branches(denoiser, cond, uncond)
        self.scale = _check_scale("scale (CFG++ lambda)", scale)
        if steps is not None:
            if isinstance(steps, range):
                if steps.step != 1:
                    raise ConfigError(f"CFG++ steps={steps!r} must be a contiguous range (step 1)")
                steps = (steps.start, steps.stop)
            if len(steps) != 2 or not all(isinstance(v, int) and not isinstance(v, bool) for v in steps):
                raise ConfigError(f"CFG++ steps={steps!r} must be (start, stop) step indices")
            if not 0 <= steps[0] <= steps[1]:
                raise ConfigError(f"CFG++ steps={steps!r} needs 0 <= start <= stop")
            steps = (int(steps[0]), int(steps[1]))
        if sigma_range is not None:
            if len(sigma_range) != 2:
                raise ConfigError(f"CFG++ sigma_range={sigma_range!r} must be (lo, hi)")
            lo, hi = (_check_scale("sigma_range", float(v)) for v in sigma_range)
            if not 0 <= lo <= hi:
                raise ConfigError(f"CFG++ sigma_range={sigma_range!r} needs 0 <= lo <= hi")
            sigma_range = (lo, hi)
        limited = steps is not None or sigma_range is not None
        if limited and cfg_scale is None:
            raise ConfigError(
                "CFG++ limited to steps/sigma_range needs cfg_scale for the other steps (plain CFG)"
            )
        if not limited and cfg_scale is not None:
            raise ConfigError(
                "cfg_scale is only used outside the CFG++ steps; give steps or sigma_range, or drop it"
            )
        self.steps, self.sigma_range = steps, sigma_range
        self.cfg_scale = None if cfg_scale is None else _check_scale("cfg_scale", cfg_scale)

    def active(self, step: StepInfo | None) -> bool:
        """Whether CFG++ (rather than plain CFG) applies to this step."""
        if self.steps is None and self.sigma_range is None:
            return True
        if step is None:
            raise ConfigError(
                "CFG++ limited to steps/sigma_range was called without StepInfo; use it through a "
                "dragontune.sampling solver or call predict(x, sigma, StepInfo(...))"
            )
        ok = True
        if self.steps is not None:
            ok &= self.steps[0] <= step.index < self.steps[1]
        if self.sigma_range is not None:
            ok &= self.sigma_range[0] <= step.sigma <= self.sigma_range[1]
        return ok

    def predict(self, x: Tensor, sigma: Tensor, step: StepInfo | None = None, **extra_args) -> Prediction:
        if not self.active(step):
            assert self.cfg_scale is not None
            g = _cfg(self.branches, x, sigma, self.cfg_scale, extra_args)
            return Prediction(g, g, ("cfg", self.cfg_scale))
        if self.scale == 0.0:
            u = self.branches.one(x, sigma, extra_args, "uncond")
            return Prediction(u, u, ("cfgpp", 0.0))
        c, u = self.branches.both(x, sigma, extra_args)
        return Prediction(u + self.scale * (c - u), u, ("cfgpp", self.scale))

    def __call__(self, x: Tensor, sigma: Tensor, **extra_args) -> Tensor:
        return self.predict(x, sigma, None, **extra_args).denoised


# ---------------------------------------------------------------------------------------------------
# Convenience
# ---------------------------------------------------------------------------------------------------


def sample(
    denoiser: Denoiser,
    seeds: Sequence[int],
    shape: Sequence[int],
    *,
    sigmas: Tensor,
    sampler: str | Callable[..., Tensor] = "dpmpp_2m",
    extra_args: Mapping[str, Any] | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
    callback: Callback | None = None,
    disable: bool | None = None,
) -> Tensor:
    """Generate len(seeds) samples of per-sample ``shape`` from x = seeded_noise(seeds)·σ_0.

    Runs under ``torch.no_grad()``; ``sampler`` is a SAMPLERS name or a solver function.
    """
    solver = get_sampler(sampler) if isinstance(sampler, str) else sampler
    x = seeded_noise(seeds, shape, device=device, dtype=dtype)
    sig = _check_sigmas(sigmas, x)
    with torch.no_grad():
        return solver(denoiser, x * sig[0], sig, extra_args=extra_args, callback=callback, disable=disable)
