"""One seed scheme for the whole project: every random draw is seeded by a hash of what it is for.

``derived_seed(seed, "sample", round, j)`` is the noise seed of sample j of a DRAGON round,
``derived_seed(seed, "eval", i)`` that of held-out prompt i (and ``eval_seed(seed, i, k)`` of its k-th clip), and so
on. A seed depends only on its parts — never on batch size, rank, process or Python version — so a resumed run
replays the same draws and an evaluation can be regenerated clip by clip.
"""

from __future__ import annotations

import hashlib

import torch

__all__ = ["derived_seed", "gen_for", "eval_seed"]


def derived_seed(*parts) -> int:
    """A 63-bit seed from any parts (stable across processes, Python versions and batch sizes)."""
    return int(hashlib.sha256("/".join(map(str, parts)).encode()).hexdigest()[:15], 16)


def gen_for(*parts) -> torch.Generator:
    """A CPU generator seeded by :func:`derived_seed` of ``parts``."""
    return torch.Generator().manual_seed(derived_seed(*parts))


def eval_seed(seed: int, i: int, k: int = 0) -> int:
    """Seed of clip ``k`` of held-out prompt ``i``; clip 0 is the DRAGON loop's held-out seed
    ``derived_seed(seed, "eval", i)``."""
    return derived_seed(seed, "eval", i) if k == 0 else derived_seed(seed, "eval", i, k)
