"""Tests for dragontune.sampling against closed forms and independent reference loops."""

from __future__ import annotations

import math

import pytest
import torch

from dragontune.errors import ConfigError
from dragontune.sampling import (
    SAMPLERS,
    CFGDenoiser,
    CFGPPDenoiser,
    Prediction,
    StepInfo,
    get_sampler,
    karras_sigmas,
    sample,
    sample_dpmpp_2m,
    sample_euler,
    sample_heun,
    seeded_noise,
)

D = 8
S = torch.linspace(0.1, 2.0, D, dtype=torch.float64)  # per-dimension data std
MU = torch.linspace(-1.0, 1.5, D, dtype=torch.float64)
SIGMA_MAX = 80.0


def gauss_denoiser(x, sigma, mean=None):
    """Exact D(x; σ) for x0 ~ N(mean, diag(S²)); mean defaults to MU, or per-sample [B, D]."""
    mean = MU.to(x) if mean is None else mean.to(x)
    s2 = S.to(x) ** 2
    return mean + s2 / (s2 + sigma[:, None] ** 2) * (x - mean)


def exact_pf_ode(x_t, sigma_max, mean=MU):
    """x(0) of dx/dσ = (x − D)/σ: y = x − μ obeys dy/dσ = yσ/(s²+σ²), so y ∝ √(s²+σ²)."""
    return mean + S / torch.sqrt(S**2 + sigma_max**2) * (x_t - mean)


def gauss_start(n_samples=16):
    return seeded_noise(range(100, 100 + n_samples), (D,), dtype=torch.float64) * SIGMA_MAX


def rms_error(name, steps, x_t=None):
    x_t = gauss_start() if x_t is None else x_t
    out = SAMPLERS[name](gauss_denoiser, x_t.clone(), karras_sigmas(steps), disable=True)
    return (out - exact_pf_ode(x_t, SIGMA_MAX)).pow(2).mean().sqrt().item()


# --------------------------------------------------------------------------------------- schedule


def test_exact_solution_satisfies_ode():
    # Verify the closed form: finite-difference derivative of x(σ) equals (x − D(x; σ))/σ.
    x_t = gauss_start(4)
    y_t = x_t - MU

    def x_of(sig):
        return MU + torch.sqrt(S**2 + sig**2) / torch.sqrt(S**2 + SIGMA_MAX**2) * y_t

    for sig in (0.05, 0.7, 3.0, 40.0):
        eps = 1e-6 * sig
        deriv = (x_of(sig + eps) - x_of(sig - eps)) / (2 * eps)
        x = x_of(sig)
        rhs = (x - gauss_denoiser(x, torch.full((4,), sig, dtype=torch.float64))) / sig
        torch.testing.assert_close(deriv, rhs, rtol=1e-6, atol=1e-8)
    torch.testing.assert_close(x_of(0.0), exact_pf_ode(x_t, SIGMA_MAX))


def test_karras_sigmas_values():
    sig = karras_sigmas(40)
    assert sig.shape == (41,) and sig.dtype == torch.float64
    assert sig[0].item() == pytest.approx(80.0, rel=1e-12)
    assert sig[-2].item() == pytest.approx(0.002, rel=1e-12)
    assert sig[-1].item() == 0.0
    assert (sig[1:] < sig[:-1]).all()
    # Closed form at an interior point.
    i, n, rho = 17, 40, 7.0
    ref = (80 ** (1 / rho) + i / (n - 1) * (0.002 ** (1 / rho) - 80 ** (1 / rho))) ** rho
    assert sig[i].item() == pytest.approx(ref, rel=1e-12)
    one = karras_sigmas(1, sigma_min=0.1, sigma_max=5.0, dtype=torch.float32)
    assert one.tolist() == [5.0, 0.0] and one.dtype == torch.float32


@pytest.mark.parametrize(
    "kwargs",
    [dict(n=0), dict(n=2.0), dict(n=3, sigma_min=0.0), dict(n=3, sigma_min=5.0, sigma_max=1.0),
     dict(n=3, rho=0.0), dict(n=3, sigma_max=float("inf"))],
)
def test_karras_sigmas_rejects(kwargs):
    with pytest.raises(ConfigError):
        karras_sigmas(**kwargs)


def test_bad_sigmas_rejected():
    x = torch.zeros(2, D)
    for bad in (torch.tensor([1.0]), torch.tensor([1.0, 2.0, 0.0]), torch.tensor([1.0, 0.0, 0.0]),
                torch.tensor([[1.0, 0.0]])):
        with pytest.raises(ConfigError):
            sample_euler(gauss_denoiser, x, bad, disable=True)


def test_get_sampler():
    assert get_sampler("heun") is sample_heun
    with pytest.raises(ConfigError, match="dpmpp_2m, euler, heun"):
        get_sampler("ddim")


# ---------------------------------------------------------------------------- solver accuracy


@pytest.mark.parametrize("name,tol", [("euler", 0.1), ("heun", 0.015), ("dpmpp_2m", 0.015)])
def test_solvers_reach_exact_gaussian_solution(name, tol):
    assert rms_error(name, 40) < tol


def test_second_order_solvers_beat_euler():
    e_euler, e_heun, e_2m = (rms_error(n, 40) for n in ("euler", "heun", "dpmpp_2m"))
    # Measured at 40 steps: euler 0.0684, heun 0.00815, dpmpp_2m 0.0086 (ratios 8.4x, 8.0x).
    assert e_euler / e_2m >= 5.0
    assert e_euler / e_heun >= 5.0


@pytest.mark.parametrize("name,lo,hi", [("euler", 1.6, 2.5), ("heun", 3.0, 6.0), ("dpmpp_2m", 3.0, 6.0)])
def test_convergence_order(name, lo, hi):
    # Halving the step size divides the error by ~2 (first order) or ~4 (second order).
    x_t = gauss_start()
    e20, e40, e80 = (rms_error(name, n, x_t) for n in (20, 40, 80))
    for ratio in (e20 / e40, e40 / e80):
        assert lo <= ratio <= hi, (name, e20, e40, e80)


def test_heun_matches_edm_algorithm_1():
    def reference(den, x, sig):
        for i in range(len(sig) - 1):
            s, sn = sig[i], sig[i + 1]
            d = (x - den(x, s.expand(x.shape[0]))) / s
            x_new = x + (sn - s) * d
            if sn > 0:
                d2 = (x_new - den(x_new, sn.expand(x.shape[0]))) / sn
                x_new = x + (sn - s) * (d + d2) / 2
            x = x_new
        return x

    x_t, sig = gauss_start(4), karras_sigmas(12)
    torch.testing.assert_close(sample_heun(gauss_denoiser, x_t, sig, disable=True),
                               reference(gauss_denoiser, x_t, sig), rtol=1e-12, atol=1e-12)


def test_dpmpp_2m_matches_reference_loop():
    def reference(den, x, sig):  # the t = −log σ exponential-integrator form
        old, t_prev = None, None
        for i in range(len(sig) - 1):
            s, sn = sig[i], sig[i + 1]
            den_x = den(x, s.expand(x.shape[0]))
            if sn == 0:
                return den_x
            t, tn = -torch.log(s), -torch.log(sn)
            h = tn - t
            if old is None:
                dd = den_x
            else:
                r = (t - t_prev) / h
                dd = (1 + 1 / (2 * r)) * den_x - (1 / (2 * r)) * old
            x = (sn / s) * x - torch.expm1(-h) * dd
            old, t_prev = den_x, t
        return x

    x_t, sig = gauss_start(4), karras_sigmas(12)
    torch.testing.assert_close(sample_dpmpp_2m(gauss_denoiser, x_t, sig, disable=True),
                               reference(gauss_denoiser, x_t, sig), rtol=1e-10, atol=1e-10)


def test_error_table():
    """Prints the table in docs/sampling.md: `python -m pytest tests/test_sampling.py -k table -s`."""
    rows = ["| solver | NFE per step | 10 steps | 20 steps | 40 steps |", "|---|---|---|---|---|"]
    for name, nfe in (("euler", "1"), ("heun", "2 (1 on last)"), ("dpmpp_2m", "1")):
        errs = [rms_error(name, n) for n in (10, 20, 40)]
        assert errs[0] > errs[1] > errs[2]
        rows.append(f"| {name} | {nfe} | " + " | ".join(f"{e:.2e}" for e in errs) + " |")
    print("\n" + "\n".join(rows))


# ------------------------------------------------------------------------------ dtype, callback


@pytest.mark.parametrize("name", sorted(SAMPLERS))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_dtype_preserved(name, dtype):
    seen = []

    def den(x, sigma):
        seen.append((sigma.dtype, tuple(sigma.shape)))
        return gauss_denoiser(x, sigma).to(torch.float32)  # output dtype differs on purpose

    x = gauss_start(3).to(dtype)
    out = SAMPLERS[name](den, x, karras_sigmas(5), disable=True)
    assert out.dtype == dtype and out.shape == x.shape
    assert all(s == (dtype, (3,)) for s in seen)


@pytest.mark.parametrize("name", sorted(SAMPLERS))
def test_callback_every_step(name):
    events = []
    sig = karras_sigmas(7)
    SAMPLERS[name](gauss_denoiser, gauss_start(2), sig, callback=events.append, disable=True)
    assert [e["i"] for e in events] == list(range(7))
    assert set(events[0]) == {"i", "x", "sigma", "sigma_next", "denoised"}
    for e in events:
        assert e["sigma"].item() == sig[e["i"]].item() and e["sigma_next"].item() == sig[e["i"] + 1].item()
        assert e["denoised"].shape == (2, D)


def test_wrong_denoiser_shape_rejected():
    with pytest.raises(ConfigError, match="shape"):
        sample_euler(lambda x, s: x[:, :2], gauss_start(2), karras_sigmas(3), disable=True)


# ------------------------------------------------------------------------------------------ noise


def test_seeded_noise_independent_of_batch():
    alone = seeded_noise([7], (3, 5))
    batch = seeded_noise([1, 2, 7, 9], (3, 5))
    assert torch.equal(batch[2], alone[0])
    assert not torch.equal(batch[0], batch[1])
    as64 = seeded_noise([9, 7], (3, 5), dtype=torch.float64)
    assert as64.dtype == torch.float64 and torch.equal(as64[1], alone[0].double())
    with pytest.raises(ConfigError):
        seeded_noise([], (3,))
    with pytest.raises(ConfigError):
        seeded_noise([-1], (3,))
    with pytest.raises(ConfigError):
        seeded_noise([1.5], (3,))


def toy_denoiser(x, sigma):
    """Per-sample deterministic and nonlinear, elementwise."""
    c = 1.0 / (1.0 + sigma[:, None, None] ** 2)
    return c * x + (1 - c) * torch.tanh(x)


@pytest.mark.parametrize("name", sorted(SAMPLERS))
def test_sampling_batch_invariant(name):
    sig = karras_sigmas(8)
    alone = sample(toy_denoiser, [5], (2, 3), sigmas=sig, sampler=name, disable=True)
    batch = sample(toy_denoiser, [11, 5, 3, 0], (2, 3), sigmas=sig, sampler=name, disable=True)
    torch.testing.assert_close(batch[1], alone[0], rtol=1e-6, atol=1e-6)
    assert alone.dtype == torch.float32 and not alone.requires_grad


# --------------------------------------------------------------------------------------- guidance


class Recorder:
    """Conditional Gaussian denoiser (mean = emb) that records the batch size of every call."""

    def __init__(self):
        self.batches = []

    def __call__(self, x, sigma, emb):
        assert emb.shape[0] == x.shape[0] == sigma.shape[0]
        self.batches.append(x.shape[0])
        return gauss_denoiser(x, sigma, mean=emb)


B = 3
COND = {"emb": torch.linspace(-2, 2, B * D, dtype=torch.float64).reshape(B, D)}
UNCOND = {"emb": torch.zeros(1, D, dtype=torch.float64)}  # batch 1: expanded


def test_cfg_scale_one_is_conditional_model():
    rec = Recorder()
    sig = karras_sigmas(6)
    x_t = gauss_start(B)
    out = sample_euler(CFGDenoiser(rec, COND, UNCOND, 1.0), x_t, sig, disable=True)
    ref = sample_euler(lambda x, s: gauss_denoiser(x, s, mean=COND["emb"]), x_t, sig, disable=True)
    assert torch.equal(out, ref)
    assert rec.batches == [B] * 6


@pytest.mark.parametrize("name,calls", [("euler", 6), ("dpmpp_2m", 6), ("heun", 11)])
def test_cfg_one_batched_forward_and_matches_reference(name, calls):
    rec, w = Recorder(), 4.5
    sig, x_t = karras_sigmas(6), gauss_start(B)
    out = SAMPLERS[name](CFGDenoiser(rec, COND, UNCOND, w), x_t, sig, disable=True)
    assert rec.batches == [2 * B] * calls

    def two_forward(x, s):
        c = gauss_denoiser(x, s, mean=COND["emb"])
        u = gauss_denoiser(x, s, mean=UNCOND["emb"].expand(B, D))
        return u + w * (c - u)

    torch.testing.assert_close(out, SAMPLERS[name](two_forward, x_t, sig, disable=True),
                               rtol=1e-12, atol=1e-12)


def test_cfg_validation():
    with pytest.raises(ConfigError, match="same keys"):
        CFGDenoiser(Recorder(), COND, {"other": UNCOND["emb"]}, 2.0)
    with pytest.raises(ConfigError, match="pad"):
        CFGDenoiser(Recorder(), COND, {"emb": torch.zeros(1, D + 1)}, 2.0)
    with pytest.raises(ConfigError, match="batch"):
        cfg = CFGDenoiser(Recorder(), COND, {"emb": torch.zeros(2, D)}, 2.0)
        cfg(gauss_start(B), torch.ones(B, dtype=torch.float64))
    with pytest.raises(ConfigError, match="finite"):
        CFGDenoiser(Recorder(), COND, UNCOND, float("nan"))


def _branches(x, sigma):
    c = gauss_denoiser(x, sigma, mean=COND["emb"].to(x))
    u = gauss_denoiser(x, sigma, mean=UNCOND["emb"].to(x).expand_as(x))
    return c, u


def test_cfgpp_euler_step_hand_formula():
    lam, s0, s1 = 0.6, 7.0, 2.5
    x = gauss_start(B) / SIGMA_MAX * s0
    rec = Recorder()
    out = sample_euler(CFGPPDenoiser(rec, COND, UNCOND, lam), x, torch.tensor([s0, s1]), disable=True)
    c, u = _branches(x, torch.full((B,), s0, dtype=torch.float64))
    expected = (u + lam * (c - u)) + (s1 / s0) * (x - u)
    torch.testing.assert_close(out, expected, rtol=1e-12, atol=1e-12)
    assert rec.batches == [2 * B]


def test_cfgpp_dpmpp_2m_two_steps_hand_formula():
    lam, (s0, s1, s2) = 0.8, (7.0, 2.5, 0.9)
    x0 = gauss_start(B) / SIGMA_MAX * s0
    sig = torch.tensor([s0, s1, s2], dtype=torch.float64)
    out = sample_dpmpp_2m(CFGPPDenoiser(Recorder(), COND, UNCOND, lam), x0, sig, disable=True)
    full = lambda v: torch.full((B,), v, dtype=torch.float64)  # noqa: E731
    c0, u0 = _branches(x0, full(s0))
    x1 = (u0 + lam * (c0 - u0)) + (s1 / s0) * (x0 - u0)
    c1, u1 = _branches(x1, full(s1))
    g0, g1 = u0 + lam * (c0 - u0), u1 + lam * (c1 - u1)
    k = math.log(s1 / s2) / (2 * math.log(s0 / s1))  # 1/(2r)
    x2 = (g1 + k * (g1 - g0)) + (s2 / s1) * (x1 - (u1 + k * (u1 - u0)))
    torch.testing.assert_close(out, x2, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name", sorted(SAMPLERS))
def test_cfgpp_limits(name):
    """λ = 0 is the unconditional model; cond == uncond gives the plain solver."""
    sig, x_t = karras_sigmas(6), gauss_start(B)
    rec = Recorder()
    out = SAMPLERS[name](CFGPPDenoiser(rec, COND, UNCOND, 0.0), x_t, sig, disable=True)
    ref = SAMPLERS[name](lambda x, s: gauss_denoiser(x, s, mean=UNCOND["emb"].expand(B, D)), x_t, sig,
                         disable=True)
    torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12)
    assert set(rec.batches) == {B}
    out = SAMPLERS[name](CFGPPDenoiser(Recorder(), COND, COND, 0.7), x_t, sig, disable=True)
    ref = SAMPLERS[name](lambda x, s: gauss_denoiser(x, s, mean=COND["emb"]), x_t, sig, disable=True)
    torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name", sorted(SAMPLERS))
def test_cfgpp_step_range_is_plain_cfg_outside(name):
    n, start, w, lam = 10, 4, 3.0, 0.5
    sig, x_t = karras_sigmas(n), gauss_start(B)

    def run(model):
        states = []
        out = SAMPLERS[name](model, x_t, sig, callback=lambda e: states.append(e["x"]), disable=True)
        return states + [out]

    plain = run(CFGDenoiser(Recorder(), COND, UNCOND, w))
    by_step = run(CFGPPDenoiser(Recorder(), COND, UNCOND, lam, steps=(start, n), cfg_scale=w))
    by_sigma = run(CFGPPDenoiser(Recorder(), COND, UNCOND, lam, sigma_range=(0.0, float(sig[start])),
                                 cfg_scale=w))
    for i in range(start + 1):  # states before and at the first CFG++ step are plain CFG
        assert torch.equal(by_step[i], plain[i])
    assert not torch.allclose(by_step[start + 1], plain[start + 1])
    for a, b in zip(by_step, by_sigma):
        assert torch.equal(a, b)
    if name != "heun":  # the first CFG++ step restarts multistep history: a CFG++ Euler step
        xs = by_step[start]
        c, u = _branches(xs, torch.full((B,), float(sig[start]), dtype=torch.float64))
        expected = (u + lam * (c - u)) + (sig[start + 1] / sig[start]) * (xs - u)
        torch.testing.assert_close(by_step[start + 1], expected, rtol=1e-12, atol=1e-12)


def test_cfgpp_validation():
    with pytest.raises(ConfigError, match="cfg_scale"):
        CFGPPDenoiser(Recorder(), COND, UNCOND, 0.5, steps=(0, 3))
    with pytest.raises(ConfigError, match="cfg_scale"):
        CFGPPDenoiser(Recorder(), COND, UNCOND, 0.5, cfg_scale=3.0)
    with pytest.raises(ConfigError):
        CFGPPDenoiser(Recorder(), COND, UNCOND, 0.5, steps=(3, 1), cfg_scale=3.0)
    limited = CFGPPDenoiser(Recorder(), COND, UNCOND, 0.5, steps=(0, 3), cfg_scale=3.0)
    x, s = gauss_start(B), torch.ones(B, dtype=torch.float64)
    with pytest.raises(ConfigError, match="StepInfo"):
        limited(x, s)
    p = limited.predict(x, s, StepInfo(5, 10, 1.0, 0.5))
    assert isinstance(p, Prediction) and p.estimator == ("cfg", 3.0)
    assert limited.predict(x, s, StepInfo(1, 10, 1.0, 0.5)).estimator == ("cfgpp", 0.5)


def test_cfg_batch_invariant():
    sig = karras_sigmas(6)
    embs = torch.randn(4, 2, 3, generator=torch.Generator().manual_seed(0))

    def den(x, sigma, emb):
        c = 1.0 / (1.0 + sigma[:, None, None] ** 2)
        return c * x + (1 - c) * torch.tanh(x + emb)

    def run(idx):
        model = CFGPPDenoiser(den, {"emb": embs[idx]}, {"emb": torch.zeros(1, 2, 3)}, 0.7,
                              steps=(2, 6), cfg_scale=2.0)
        return sample(model, [10 + i for i in idx], (2, 3), sigmas=sig, disable=True)

    torch.testing.assert_close(run([0, 1, 2, 3])[2], run([2])[0], rtol=1e-6, atol=1e-6)
