"""One optimiser step's gradient over per-sample denoising errors, at once or in micro-batches.

DPO and KTO losses are functions of the per-sample errors of the whole step (KTO's reference point is the batch
mean). With ``micro_batch`` smaller than the step, the gradient is computed in two passes so that it equals the
large batch's up to float error, whatever the loss: (1) the errors of every micro-batch without a graph, the loss
on them and its gradient with respect to each error; (2) per micro-batch the errors again with a graph, back-
propagated with that upstream gradient. It costs one extra policy forward per sample; peak activation memory is
that of one micro-batch.
"""

from __future__ import annotations

from typing import Callable

import torch


def slice_cond(cond: dict, sl: slice, n: int) -> dict:
    return {k: (v[sl] if isinstance(v, torch.Tensor) and v.dim() > 0 and v.shape[0] == n else v)
            for k, v in cond.items()}


def step_gradient(policy, reference, x0: torch.Tensor, noise: torch.Tensor, sigma: torch.Tensor, cond: dict,
                  loss_fn: Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, dict]],
                  micro_batch: int = 0, use_bf16: bool = False) -> tuple[torch.Tensor, dict]:
    """Accumulate into ``.grad`` the gradient of ``loss_fn(err_pol, err_ref)``; returns (loss, stats).

    ``micro_batch`` <= 0 or >= the batch: one forward and backward (the plain path)."""
    n = x0.shape[0]
    dev = x0.device.type

    def errors(model, sl, grad: bool):
        with torch.autocast(dev, dtype=torch.bfloat16, enabled=use_bf16), torch.set_grad_enabled(grad):
            return model.denoising_error(x0[sl], noise[sl], sigma[sl], slice_cond(cond, sl, n)).float()

    if micro_batch <= 0 or micro_batch >= n:
        err_pol = errors(policy, slice(None), True)
        err_ref = errors(reference, slice(None), False)
        loss, st = loss_fn(err_pol, err_ref)
        loss.backward()
        return loss, st
    chunks = [slice(i, min(i + micro_batch, n)) for i in range(0, n, micro_batch)]
    err_ref = torch.cat([errors(reference, sl, False) for sl in chunks])
    err_pol = torch.cat([errors(policy, sl, False) for sl in chunks]).requires_grad_(True)
    loss, st = loss_fn(err_pol, err_ref)
    upstream, = torch.autograd.grad(loss, err_pol)
    for sl in chunks:
        errors(policy, sl, True).backward(upstream[sl])
    return loss.detach(), st
