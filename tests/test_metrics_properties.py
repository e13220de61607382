"""Property tests: no metric returns NaN, a complex value or a negative distance beyond rounding."""

from __future__ import annotations

import math

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from dragontune import metrics as M

F64 = torch.float64
SETTINGS = settings(max_examples=30, deadline=None)


def _sample(seed: int, n: int, d: int, log_cond: float, rank: int | None = None) -> torch.Tensor:
    """n points in d dims with singular values spread over 10**log_cond (optionally low rank)."""
    g = torch.Generator().manual_seed(seed)
    scales = torch.logspace(0, -log_cond, d, dtype=F64)
    if rank is not None:
        scales[rank:] = 0
    q, _ = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=F64))
    return (torch.randn(n, d, generator=g, dtype=F64) * scales) @ q.T + torch.randn(d, generator=g, dtype=F64)


def _ok_distance(v: torch.Tensor) -> None:
    assert not v.is_complex()
    assert torch.isfinite(v).all()
    assert (v >= 0).all()


dims = st.integers(1, 24)
counts = st.integers(2, 40)
conds = st.floats(0.0, 10.0)
seeds = st.integers(0, 2**31 - 1)


@SETTINGS
@given(seed=seeds, n1=counts, n2=counts, d=dims, c1=conds, c2=conds)
def test_frechet_never_nan_complex_or_negative(seed, n1, n2, d, c1, c2):
    a = M.gaussian_stats(_sample(seed, n1, d, c1))
    b = M.gaussian_stats(_sample(seed + 1, n2, d, c2))
    v = M.frechet_distance(a.mu, a.cov, b.mu, b.cov)
    _ok_distance(v)
    _ok_distance(M.frechet_distance(a.mu, a.cov, a.mu, a.cov))
    # symmetric up to rounding of the square-root trace
    w = M.frechet_distance(b.mu, b.cov, a.mu, a.cov)
    tr = float(torch.trace(a.cov) + torch.trace(b.cov)) + 1.0
    assert abs(float(v - w)) <= 1e-6 * tr


@SETTINGS
@given(seed=seeds, n=st.integers(2, 12), b=st.integers(1, 4), d=dims, c=conds)
def test_per_song_fad_finite_nonnegative(seed, n, b, d, c):
    ref = M.gaussian_stats(_sample(seed, 3 * d + 2, d, c))
    clips = _sample(seed + 2, n * b, d, c).reshape(b, n, d)
    _ok_distance(M.per_song_fad(clips, ref))


@SETTINGS
@given(seed=seeds, n=st.integers(3, 30), d=dims, c=conds, rank=st.integers(1, 24))
def test_fad_leave_one_out_finite_nonnegative(seed, n, d, c, rank):
    ref = M.gaussian_stats(_sample(seed, 50, d, c, rank=min(rank, d)))
    loo = M.fad_leave_one_out(_sample(seed + 3, n, d, c), ref)
    _ok_distance(loo.full)
    _ok_distance(loo.minus)


@SETTINGS
@given(seed=seeds, n=st.integers(2, 30), d=dims, c=conds, q=st.sampled_from([0.0, 0.5, 1.0, 2.0, math.inf]))
def test_vendi_in_range(seed, n, d, c, q):
    x = _sample(seed, n, d, c)
    v = M.vendi_score(x, q=q)
    assert torch.isfinite(v) and not v.is_complex()
    assert 1 - 1e-9 <= float(v) <= min(n, d) + 1e-9
    loo = M.vendi_leave_one_out(x, q=q)
    assert torch.isfinite(loo.minus).all() and (loo.minus >= 1 - 1e-6).all()


@SETTINGS
@given(seed=seeds, n=st.integers(3, 20), m=st.integers(2, 20), d=dims, c=conds)
def test_kad_finite(seed, n, m, d, c):
    x, y = _sample(seed, n, d, c), _sample(seed + 4, m, d, c)
    if float(torch.cdist(y, y).max()) == 0:
        return
    v = M.kad(x, y)
    assert torch.isfinite(v)
    assert torch.isfinite(M.kad_leave_one_out(x, y).minus).all()
