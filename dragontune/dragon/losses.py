"""Preference losses of DRAGON over per-sample denoising errors (METHOD.md §3).

Inputs are per-sample weighted denoising errors, shape ``[N]``::

    err(x0) = lambda(sigma) * mean((D(x0 + sigma * n; sigma, c) - x0) ** 2)

computed for the policy (``err_pol``, with gradient) and for the frozen reference (``err_ref``,
without gradient) **with the same sigma and noise n**; for DPO also the same sigma and n for the two
members of a pair. ``A = err_pol - err_ref``: negative when the policy denoises ``x0`` better than the
reference does.

Reference errors must not carry a gradient: compute them under ``torch.no_grad()``. A reference
tensor with ``requires_grad=True`` is an error (a trainable reference is almost certainly a bug), not
something these functions silently detach.

Precision: half and bfloat16 inputs are promoted to float32 before multiplying by beta; float32 and
float64 stay as they are. The returned loss has the promoted dtype.

Stats are plain Python floats/ints, detached, for ``metrics.jsonl``; means over an empty group are NaN.
``saturated`` is the share of terms whose sigmoid has gone flat (|beta x| > ``SATURATION`` in the direction
where the gradient vanishes): a loss whose terms are all saturated has stopped learning.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["diffusion_dpo_loss", "diffusion_kto_loss", "SATURATION", "KTO_REFERENCES", "KTO_UTILITIES"]

#: |beta * x| beyond which a sigmoid term counts as saturated: its slope is below 0.7 % of the maximum
SATURATION = 5.0
#: how the KTO reference point z is formed from the batch mean of the implicit reward
KTO_REFERENCES = ("clamped_mean", "mean")
#: KTO's value function of the signed margin s (s > 0: the sample is on its label's side of z)
KTO_UTILITIES = ("sigmoid", "log_sigmoid")


def _check(name: str, t: torch.Tensor, *, ref: bool) -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dim() != 1:
        raise ValueError(f"{name} must have shape [N], got {tuple(t.shape)}")
    if not t.is_floating_point():
        raise TypeError(f"{name} must be a float tensor, got {t.dtype}")
    if ref and t.requires_grad:
        raise ValueError(
            f"{name} requires grad: reference errors must come from the frozen reference model "
            "computed under torch.no_grad() (or pass .detach())"
        )


def _promote(t: torch.Tensor) -> torch.Tensor:
    return t.float() if t.dtype in (torch.float16, torch.bfloat16) else t


def _mean(t: torch.Tensor) -> float:
    return float(t.double().mean()) if t.numel() else float("nan")


def diffusion_dpo_loss(
    err_pol_w: torch.Tensor,
    err_pol_l: torch.Tensor,
    err_ref_w: torch.Tensor,
    err_ref_l: torch.Tensor,
    beta: float = 5000.0,
) -> tuple[torch.Tensor, dict]:
    """Diffusion-DPO over P pairs (winner ``w``, loser ``l``), each input shape ``[P]``.

    ``A_w = err_pol_w - err_ref_w``, ``A_l = err_pol_l - err_ref_l``;
    per-pair loss ``-logsigmoid(-beta * (A_w - A_l))``; the loss is the mean of the per-pair losses
    (never the log-sigmoid of a mean). ``P = 0`` gives a loss of exactly 0 (still attached to the
    graph when the inputs are) and ``stats["n_pairs"] == 0``: the caller decides whether to step.

    Stats: ``implicit_acc`` (share of pairs with ``A_w < A_l``, ties count 0.5), ``A_pos`` (mean
    A_w), ``A_neg`` (mean A_l), ``margin`` (mean ``A_l - A_w``, positive when the policy already prefers
    the winners), ``saturated`` (share of pairs with ``beta (A_l - A_w) > SATURATION``: already so well
    ordered that they give no gradient), ``loss``, ``n_pairs``.
    """
    _check("err_pol_w", err_pol_w, ref=False)
    _check("err_pol_l", err_pol_l, ref=False)
    _check("err_ref_w", err_ref_w, ref=True)
    _check("err_ref_l", err_ref_l, ref=True)
    n = err_pol_w.shape[0]
    for name, t in (("err_pol_l", err_pol_l), ("err_ref_w", err_ref_w), ("err_ref_l", err_ref_l)):
        if t.shape[0] != n:
            raise ValueError(f"{name} has {t.shape[0]} entries but err_pol_w has {n}: one entry per pair")
    if not beta > 0:
        raise ValueError(f"beta must be > 0, got {beta}")

    a_w = _promote(err_pol_w) - _promote(err_ref_w)
    a_l = _promote(err_pol_l) - _promote(err_ref_l)
    per_pair = -F.logsigmoid(-beta * (a_w - a_l))
    loss = per_pair.sum() / n if n else per_pair.sum()

    with torch.no_grad():
        dw, dl = a_w.detach().double(), a_l.detach().double()
        acc = ((dw < dl).double() + 0.5 * (dw == dl).double()).mean() if n else torch.tensor(float("nan"))
        stats = {
            "loss": float(loss.detach()),
            "implicit_acc": float(acc),
            "A_pos": _mean(dw),
            "A_neg": _mean(dl),
            "margin": _mean(dl - dw),
            "saturated": _mean((beta * (dl - dw) > SATURATION).double()),
            "n_pairs": int(n),
        }
    return loss, stats


def _global_sum_count(g: torch.Tensor, reduce_reference: bool) -> tuple[float, float]:
    s = g.detach().double().sum()
    c = torch.tensor(float(g.numel()), dtype=torch.float64, device=g.device)
    if reduce_reference and torch.distributed.is_available() and torch.distributed.is_initialized():
        buf = torch.stack([s, c])
        torch.distributed.all_reduce(buf, op=torch.distributed.ReduceOp.SUM)
        s, c = buf[0], buf[1]
    return float(s), float(c)


def diffusion_kto_loss(
    err_pol: torch.Tensor,
    err_ref: torch.Tensor,
    desirable: torch.Tensor,
    beta: float = 5000.0,
    w_desirable: float = 1.0,
    w_undesirable: float = 1.0,
    reduce_reference: bool = True,
    reference: str = "clamped_mean",
    utility: str = "sigmoid",
) -> tuple[torch.Tensor, dict]:
    """Diffusion-KTO over N labelled samples (pass only D+ and D−, not unused samples).

    Implicit reward ``g = -(err_pol - err_ref)``. Reference point ``z = max(0, mean(g))``, detached
    (no gradient flows through z): ``reference="clamped_mean"``, as Diffusion-KTO's reference implementation
    and KTO (whose z estimates a KL divergence, >= 0). ``reference="mean"`` drops the clamp: z is the plain
    batch mean, so the terms stay centred when the policy drifts away from the reference on *every* sample
    (mean g < 0), where the clamp at 0 pushes all of them into saturation at once.

    ``utility="sigmoid"`` is KTO's value function: a sample's term is ``w (1 - sigmoid(s))`` with the signed margin
    ``s = beta (g - z)`` for D+ and ``beta (z - g)`` for D-. Its slope vanishes on *both* sides, so once
    ``|beta (g - z)|`` is large for every sample the loss stops learning, right or wrong. ``utility="log_sigmoid"``
    is the loss-averse value function of Diffusion-KTO's reference implementation (its ``halo`` option): the term
    is ``-w log sigmoid(s)``, flat only for samples already on their label's side, like Diffusion-DPO's loss. When ``torch.distributed`` is initialised and ``reduce_reference``,
    the mean is global: the sum of g and the count are all-reduced (a collective: every rank must
    call this, also a rank with N = 0). Per-sample terms::

        desirable:   w_desirable   * (1 - sigmoid(beta * (g - z)))   = w_d * sigmoid(beta * (z - g))
        undesirable: w_undesirable * (1 - sigmoid(beta * (z - g)))   = w_u * sigmoid(beta * (g - z))

    The loss is the sum of the per-sample terms divided by N (the local number of samples, D+ and D−
    together), as in KTO's reference implementation, which concatenates both groups and takes one
    mean. So a group's share of the loss grows with its size; rebalance with the weights. Under DDP
    the gradient average across ranks makes it the global mean when ranks hold equal N. N = 0 gives
    a loss of exactly 0.

    Stats: ``implicit_acc`` (desirable with g > z, undesirable with g < z; ties count 0.5), ``g_pos``,
    ``g_neg``, ``A_pos``, ``A_neg`` (means over D+ / D−), ``margin`` (``g_pos - g_neg``), ``z``, ``z_raw``
    (before clamping), ``saturated`` (share of samples with ``|beta (g - z)| > SATURATION``: the sigmoid is
    flat on either side), ``n_pos``, ``n_neg``, ``loss``.
    """
    _check("err_pol", err_pol, ref=False)
    _check("err_ref", err_ref, ref=True)
    n = err_pol.shape[0]
    if err_ref.shape[0] != n:
        raise ValueError(f"err_ref has {err_ref.shape[0]} entries but err_pol has {n}")
    if not isinstance(desirable, torch.Tensor) or desirable.dtype != torch.bool or desirable.shape != (n,):
        raise ValueError(
            f"desirable must be a bool tensor of shape [{n}], got "
            f"{getattr(desirable, 'dtype', type(desirable).__name__)} {tuple(getattr(desirable, 'shape', ()))}"
        )
    if not beta > 0:
        raise ValueError(f"beta must be > 0, got {beta}")
    if w_desirable < 0 or w_undesirable < 0:
        raise ValueError(f"KTO weights must be >= 0, got w_desirable={w_desirable}, w_undesirable={w_undesirable}")
    if reference not in KTO_REFERENCES:
        raise ValueError(f"KTO reference={reference!r} must be one of {', '.join(KTO_REFERENCES)}")
    if utility not in KTO_UTILITIES:
        raise ValueError(f"KTO utility={utility!r} must be one of {', '.join(KTO_UTILITIES)}")

    g = -(_promote(err_pol) - _promote(err_ref))
    desirable = desirable.to(g.device)
    s, c = _global_sum_count(g, reduce_reference)
    z_raw = s / c if c > 0 else float("nan")
    z = (max(0.0, z_raw) if reference == "clamped_mean" else z_raw) if c > 0 else 0.0
    x = beta * (g - z)  # z is a Python float: no gradient through it
    signed = torch.where(desirable, x, -x)  # > 0: on the label's side of the reference point
    weight = torch.where(desirable, torch.full_like(x, w_desirable), torch.full_like(x, w_undesirable))
    if utility == "sigmoid":
        per_sample = weight * torch.sigmoid(-signed)  # = w (1 - sigmoid(s))
    else:
        per_sample = -weight * F.logsigmoid(signed)
    loss = per_sample.sum() / n if n else per_sample.sum()

    with torch.no_grad():
        gd = g.detach().double()
        pos, neg = gd[desirable], gd[~desirable]
        if n:
            right = torch.where(desirable, gd > z, gd < z).double() + 0.5 * (gd == z).double()
            acc = float(right.mean())
        else:
            acc = float("nan")
        stats = {
            "loss": float(loss.detach()),
            "implicit_acc": acc,
            "g_pos": _mean(pos),
            "g_neg": _mean(neg),
            "A_pos": _mean(-pos),
            "A_neg": _mean(-neg),
            "margin": _mean(pos) - _mean(neg),
            "saturated": _mean(((beta * (gd - z)).abs().gt(SATURATION) if utility == "sigmoid" else
                                (torch.where(desirable, beta * (gd - z), beta * (z - gd)) > SATURATION)).double()),
            "z": float(z),
            "z_raw": float(z_raw),
            "n_pos": int(desirable.sum()),
            "n_neg": int((~desirable).sum()),
        }
    return loss, stats
