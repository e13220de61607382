"""Minimal process-group helpers: the same code runs as one process or under ``torchrun``."""

from __future__ import annotations

import os

import torch
import torch.distributed as dist


def init_from_env(device: torch.device) -> None:
    """Initialise the default process group when launched by torchrun (WORLD_SIZE > 1)."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend)


def rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def world() -> int:
    return dist.get_world_size() if dist.is_initialized() else 1


def is_main() -> bool:
    return rank() == 0


def local_device(device: torch.device) -> torch.device:
    if device.type == "cuda" and dist.is_initialized():
        idx = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(idx)
        return torch.device("cuda", idx)
    return device


def gather_rows(x: torch.Tensor, owners: torch.Tensor) -> torch.Tensor:
    """Reassemble a full ``[N, ...]`` tensor of which this rank computed the rows ``owners == rank``.

    Every rank passes its own rows in ascending index order; the result is identical on every rank.
    """
    if world() == 1:
        return x
    n = owners.numel()
    full = torch.zeros((n,) + tuple(x.shape[1:]), dtype=x.dtype, device=x.device)
    full[owners.to(x.device) == rank()] = x
    dist.all_reduce(full)  # rows are disjoint across ranks: the sum is the concatenation
    return full


def average_gradients(params) -> None:
    if world() == 1:
        return
    for p in params:
        if p.grad is not None:
            dist.all_reduce(p.grad)
            p.grad /= world()


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def broadcast_object(obj):
    """Rank 0's ``obj`` on every rank (pickled; for small round data such as the demonstrations)."""
    if world() == 1:
        return obj
    box = [obj if is_main() else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def reduce_stats(stats: dict[str, float], sum_keys: frozenset[str] = frozenset()) -> dict[str, float]:
    """Statistics over all ranks: counts in ``sum_keys`` are summed, everything else is the mean over the ranks
    whose value is finite (NaN where none is). Every rank must pass the same keys."""
    if world() == 1:
        return stats
    keys = sorted(stats)
    v = torch.tensor([float(stats[k]) for k in keys], dtype=torch.float64)
    ok = torch.isfinite(v)
    buf = torch.cat([torch.where(ok, v, torch.zeros_like(v)), ok.double()])
    dist.all_reduce(buf)
    tot, cnt = buf[: len(keys)], buf[len(keys):]
    out = {}
    for i, k in enumerate(keys):
        if k in sum_keys:
            out[k] = float(tot[i])
        else:
            out[k] = float(tot[i] / cnt[i]) if cnt[i] > 0 else float("nan")
    return out
