"""DPO / KTO losses against hand-computed values (METHOD.md §3)."""

import math
import os
import tempfile

import pytest
import torch

from dragontune.dragon.losses import diffusion_dpo_loss, diffusion_kto_loss


def sig(x):
    return 1.0 / (1.0 + math.exp(-x))


def t(*v, grad=False, dtype=torch.float64):
    return torch.tensor(v, dtype=dtype, requires_grad=grad)


# ---------------------------------------------------------------------------------------------- DPO


def test_dpo_hand_computed_beta1():
    # pair 0: A_w = 0.3-0.5 = -0.2, A_l = 0.4-0.1 = 0.3, d = A_w - A_l = -0.5
    # pair 1: A_w = 0.6-0.1 = 0.5,  A_l = 0.2-0.7 = -0.5, d = 1.0
    pw, pl = t(0.3, 0.6, grad=True), t(0.4, 0.2, grad=True)
    rw, rl = t(0.5, 0.1), t(0.1, 0.7)
    loss, st = diffusion_dpo_loss(pw, pl, rw, rl, beta=1.0)
    l0 = math.log(1 + math.exp(-0.5))  # -log sigmoid(0.5)
    l1 = math.log(1 + math.exp(1.0))  # -log sigmoid(-1)
    assert loss.item() == pytest.approx((l0 + l1) / 2, abs=1e-12)
    assert st["n_pairs"] == 2
    assert st["implicit_acc"] == 0.5
    assert st["A_pos"] == pytest.approx((-0.2 + 0.5) / 2)
    assert st["A_neg"] == pytest.approx((0.3 - 0.5) / 2)
    assert st["margin"] == pytest.approx((0.5 - 1.0) / 2)
    loss.backward()
    # d/dd [-logsigmoid(-beta d)] = beta * sigmoid(beta d); mean over 2 pairs
    gw = [sig(-0.5) / 2, sig(1.0) / 2]
    assert pw.grad.tolist() == pytest.approx(gw, abs=1e-12)
    assert pl.grad.tolist() == pytest.approx([-x for x in gw], abs=1e-12)


def test_dpo_mean_outside_logsigmoid():
    # d = -1 and +1: mean of losses != loss of the mean difference (log 2)
    loss, _ = diffusion_dpo_loss(t(0.0, 1.0), t(1.0, 0.0), t(0.0, 0.0), t(0.0, 0.0), beta=1.0)
    expected = (math.log(1 + math.exp(-1.0)) + math.log(1 + math.exp(1.0))) / 2
    assert loss.item() == pytest.approx(expected, abs=1e-12)
    assert abs(loss.item() - math.log(2)) > 0.1


def test_dpo_tie_is_log2():
    loss, st = diffusion_dpo_loss(t(0.5), t(0.75), t(0.25), t(0.5), beta=5000.0)  # A_w = A_l = 0.25 exactly
    assert loss.item() == pytest.approx(math.log(2), abs=1e-9)
    assert st["implicit_acc"] == 0.5
    assert st["margin"] == pytest.approx(0.0, abs=1e-12)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16, torch.float16])
def test_dpo_saturation_beta5000_finite(dtype):
    # d = +1 -> loss = 5000 (linear regime), grad = beta/P; d = -1 -> loss ~ 0, grad ~ 0
    pw = torch.tensor([1.0, 0.0], dtype=dtype, requires_grad=True)
    pl = torch.tensor([0.0, 1.0], dtype=dtype, requires_grad=True)
    z = torch.zeros(2, dtype=dtype)
    loss, st = diffusion_dpo_loss(pw, pl, z, z, beta=5000.0)
    assert torch.isfinite(loss)
    assert loss.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
    assert loss.item() == pytest.approx(5000.0 / 2, rel=1e-6)
    loss.backward()
    assert torch.isfinite(pw.grad).all() and torch.isfinite(pl.grad).all()
    assert pw.grad.float().tolist() == pytest.approx([2500.0, 0.0], rel=1e-2, abs=1e-3)  # bf16 grad: 2496
    assert st["implicit_acc"] == 0.5


def test_dpo_gradient_only_into_policy():
    pw, pl = t(0.3, grad=True), t(0.4, grad=True)
    rw, rl = t(0.5), t(0.1)
    loss, _ = diffusion_dpo_loss(pw, pl, rw, rl)
    loss.backward()
    assert rw.grad is None and rl.grad is None
    assert pw.grad is not None and pl.grad is not None


def test_dpo_rejects_ref_with_grad_and_bad_shapes():
    with pytest.raises(ValueError, match="no_grad"):
        diffusion_dpo_loss(t(0.3), t(0.4), t(0.5, grad=True), t(0.1))
    with pytest.raises(ValueError, match="entries"):
        diffusion_dpo_loss(t(0.3, 0.1), t(0.4), t(0.5), t(0.1))
    with pytest.raises(ValueError, match="shape"):
        diffusion_dpo_loss(torch.zeros(2, 2), torch.zeros(2, 2), torch.zeros(2, 2), torch.zeros(2, 2))


def test_dpo_empty_is_zero():
    e = torch.zeros(0, requires_grad=True)
    loss, st = diffusion_dpo_loss(e, e, torch.zeros(0), torch.zeros(0))
    assert loss.item() == 0.0 and st["n_pairs"] == 0
    loss.backward()  # attached to the graph, no NaN


# ---------------------------------------------------------------------------------------------- KTO


def test_kto_hand_computed_clamped_z():
    # g = -(pol - ref) = [0.2, -0.3, 0.0, 0.1, -0.5]; mean = -0.1 -> z = 0 (clamped); odd N = 5
    pol = t(0.1, 0.5, 0.2, 0.0, 0.6, grad=True)
    ref = t(0.3, 0.2, 0.2, 0.1, 0.1)
    des = torch.tensor([True, False, True, False, True])
    loss, st = diffusion_kto_loss(pol, ref, des, beta=1.0)
    g = [0.2, -0.3, 0.0, 0.1, -0.5]
    terms = [
        1 - sig(g[0] - 0),  # desirable
        1 - sig(0 - g[1]),  # undesirable
        1 - sig(g[2] - 0),
        1 - sig(0 - g[3]),
        1 - sig(g[4] - 0),
    ]
    assert loss.item() == pytest.approx(sum(terms) / 5, abs=1e-12)
    assert st["z"] == 0.0 and st["z_raw"] == pytest.approx(-0.1)
    assert st["n_pos"] == 3 and st["n_neg"] == 2
    # desirable right: g>0 (0.2) ; tie g=0 counts 0.5 ; -0.5 wrong; undesirable right: g<0 (-0.3); 0.1 wrong
    assert st["implicit_acc"] == pytest.approx((1 + 0.5 + 0 + 1 + 0) / 5)
    assert st["g_pos"] == pytest.approx((0.2 + 0.0 - 0.5) / 3)
    assert st["A_neg"] == pytest.approx(-(-0.3 + 0.1) / 2)


def test_kto_positive_z_and_weights():
    # g = [0.4, 0.1] -> z = 0.25; both terms = sigmoid(-0.15)
    pol, ref = t(0.0, 0.1, grad=True), t(0.4, 0.2)
    des = torch.tensor([True, False])
    loss, st = diffusion_kto_loss(pol, ref, des, beta=1.0, w_desirable=2.0, w_undesirable=0.5)
    assert st["z"] == pytest.approx(0.25)
    assert loss.item() == pytest.approx((2.0 * sig(-0.15) + 0.5 * sig(-0.15)) / 2, abs=1e-12)


def test_kto_z_is_detached():
    # Gradient equals the formula with z held constant (a gradient through z would add terms).
    beta = 3.0
    pol = t(0.0, 0.1, 0.05, grad=True)
    ref = t(0.4, 0.2, 0.3)
    des = torch.tensor([True, False, True])
    loss, st = diffusion_kto_loss(pol, ref, des, beta=beta)
    loss.backward()
    g = [0.4, 0.1, 0.25]
    z = sum(g) / 3
    assert st["z"] == pytest.approx(z)
    expect = []
    for gi, d in zip(g, [True, False, True]):
        if d:  # term = sigmoid(beta (z - g)), d/dpol = beta s (1-s)   (dg/dpol = -1)
            s = sig(beta * (z - gi))
            expect.append(beta * s * (1 - s) / 3)
        else:  # term = sigmoid(beta (g - z)), d/dpol = -beta s (1-s)
            s = sig(beta * (gi - z))
            expect.append(-beta * s * (1 - s) / 3)
    assert pol.grad.tolist() == pytest.approx(expect, abs=1e-12)
    assert ref.grad is None


@pytest.mark.parametrize("all_desirable", [True, False])
def test_kto_single_class_batches(all_desirable):
    pol = t(0.1, 0.2, 0.3, grad=True)
    ref = t(0.2, 0.2, 0.2)
    des = torch.full((3,), all_desirable)
    loss, st = diffusion_kto_loss(pol, ref, des, beta=5000.0)
    assert torch.isfinite(loss)
    loss.backward()
    assert torch.isfinite(pol.grad).all()
    if all_desirable:
        assert st["n_neg"] == 0 and math.isnan(st["g_neg"]) and st["n_pos"] == 3
    else:
        assert st["n_pos"] == 0 and math.isnan(st["g_pos"]) and st["n_neg"] == 3
    # g = [0.1, 0, -0.1], z = 0: desirable terms sigmoid(-500), 0.5, sigmoid(500)
    if all_desirable:
        assert loss.item() == pytest.approx((0.0 + 0.5 + 1.0) / 3, abs=1e-9)
    else:
        assert loss.item() == pytest.approx((1.0 + 0.5 + 0.0) / 3, abs=1e-9)


def test_kto_saturation_no_nan_low_precision():
    for dtype in (torch.bfloat16, torch.float16, torch.float32):
        pol = torch.tensor([0.0, 10.0, -3.0], dtype=dtype, requires_grad=True)
        ref = torch.zeros(3, dtype=dtype)
        loss, _ = diffusion_kto_loss(pol, ref, torch.tensor([True, False, True]), beta=5000.0)
        loss.backward()
        assert torch.isfinite(loss) and torch.isfinite(pol.grad).all()


def test_kto_input_checks():
    with pytest.raises(ValueError, match="no_grad"):
        diffusion_kto_loss(t(0.1), t(0.1, grad=True), torch.tensor([True]))
    with pytest.raises(ValueError, match="bool"):
        diffusion_kto_loss(t(0.1), t(0.1), torch.tensor([1]))
    with pytest.raises(ValueError, match="entries"):
        diffusion_kto_loss(t(0.1, 0.2), t(0.1), torch.tensor([True, True]))


def test_kto_empty():
    loss, st = diffusion_kto_loss(torch.zeros(0), torch.zeros(0), torch.zeros(0, dtype=torch.bool))
    assert loss.item() == 0.0 and st["n_pos"] == 0 and st["n_neg"] == 0


# ------------------------------------------------------------------- distributed reference point


def _kto_worker(rank, world, init_file, out_dir):
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        # rank 0 holds 1 sample (g = 0.9), rank 1 holds 3 (g = 0.1 each):
        # global mean = (0.9 + 0.3) / 4 = 0.3; the mean of the per-rank means would be 0.5
        if rank == 0:
            pol, ref = t(0.1), t(1.0)
        else:
            pol, ref = t(0.1, 0.1, 0.1), t(0.2, 0.2, 0.2)
        des = torch.ones(pol.shape[0], dtype=torch.bool)
        _, st = diffusion_kto_loss(pol, ref, des, beta=1.0)
        _, st_local = diffusion_kto_loss(pol, ref, des, beta=1.0, reduce_reference=False)
        torch.save({"z": st["z"], "z_local": st_local["z"]}, os.path.join(out_dir, f"{rank}.pt"))
    finally:
        dist.destroy_process_group()


def test_kto_reference_point_reduces_sum_and_count(monkeypatch):
    # Fast in-process check: pretend another rank holds 3 samples with g = 0.1 each (sum 0.3, count 3).
    import torch.distributed as dist

    calls = []

    def fake_all_reduce(buf, op=None):
        calls.append(buf.clone())
        buf += torch.tensor([0.3, 3.0], dtype=buf.dtype)

    monkeypatch.setattr(dist, "is_available", lambda: True)
    monkeypatch.setattr(dist, "is_initialized", lambda: True)
    monkeypatch.setattr(dist, "all_reduce", fake_all_reduce)
    _, st = diffusion_kto_loss(t(0.1), t(1.0), torch.tensor([True]), beta=1.0)  # local g = 0.9
    assert calls and calls[0].tolist() == pytest.approx([0.9, 1.0])
    assert st["z"] == pytest.approx((0.9 + 0.3) / 4)  # not (0.9 + 0.1) / 2
    _, st = diffusion_kto_loss(t(0.1), t(1.0), torch.tensor([True]), beta=1.0, reduce_reference=False)
    assert st["z"] == pytest.approx(0.9) and len(calls) == 1


@pytest.mark.slow
def test_kto_reference_point_global_mean_across_processes():
    import torch.multiprocessing as mp

    with tempfile.TemporaryDirectory() as d:
        mp.spawn(_kto_worker, args=(2, os.path.join(d, "init"), d), nprocs=2, join=True)
        r0, r1 = torch.load(os.path.join(d, "0.pt")), torch.load(os.path.join(d, "1.pt"))
    assert r0["z"] == pytest.approx(0.3) and r1["z"] == pytest.approx(0.3)
    assert r0["z_local"] == pytest.approx(0.9) and r1["z_local"] == pytest.approx(0.1)
