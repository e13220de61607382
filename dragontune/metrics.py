"""Distribution metrics on embeddings (DESIGN.md layer 6): pure functions on torch tensors.

Everything is computed in float64 on the device of the inputs (CPU or CUDA); TF32 never applies to
float64 matmuls. See ``docs/metrics.md`` for the formulas, the clamping rules and the leave-one-out tricks.

Conventions
-----------
* ``x[n, d]``: n embeddings (rows) of dimension d.
* Covariances are unbiased (divide by ``n - 1``).
* Distances are clamped at 0 (rounding can push an exact 0 to ``-1e-13``); KAD is an unbiased estimator
  and is deliberately *not* clamped: it can be slightly negative when the two sets share a distribution.
"""

from __future__ import annotations

import dataclasses
import math
from typing import NamedTuple

import torch

from dragontune.errors import DragontuneError

__all__ = [
    "MetricError",
    "GaussianStats",
    "gaussian_stats",
    "merge_stats",
    "sqrtm_psd",
    "frechet_distance",
    "fad_from_embeddings",
    "per_song_fad",
    "kad",
    "median_bandwidth",
    "vendi_score",
    "centroid_similarity",
    "LeaveOneOut",
    "fad_leave_one_out",
    "kad_leave_one_out",
    "vendi_leave_one_out",
    "fad_join",
    "kad_join",
    "vendi_join",
    "fad_infinity",
]

_F64 = torch.float64


class MetricError(DragontuneError, ValueError):
    """Invalid input to a metric (too few samples, NaN/Inf rows, mismatched dimensions)."""


# ----------------------------------------------------------------------------------------------------------
# input checks


def _as_matrix(x: torch.Tensor, name: str, min_rows: int = 1) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        x = torch.as_tensor(x)
    if x.dim() != 2:
        raise MetricError(f"{name} must be a 2-D tensor [n, d]; got shape {tuple(x.shape)}")
    if x.shape[0] < min_rows:
        raise MetricError(f"{name} has {x.shape[0]} rows; at least {min_rows} are needed")
    if x.shape[1] == 0:
        raise MetricError(f"{name} has dimension 0")
    x = x.detach().to(_F64)
    check_finite(x, name)
    return x


def check_finite(x: torch.Tensor, name: str = "embeddings") -> None:
    """Raise :class:`MetricError` naming the first row of ``x[n, ...]`` that holds NaN or Inf."""
    bad = ~torch.isfinite(x)
    if bad.any():
        if x.dim() >= 2:
            row = int(bad.reshape(x.shape[0], -1).any(dim=1).nonzero()[0].item())
            kind = "NaN" if torch.isnan(x[row]).any() else "Inf"
            raise MetricError(f"{name}: sample {row} contains {kind} values; fix or drop that sample")
        raise MetricError(f"{name} contains NaN or Inf values")


def _check_dims(d1: int, d2: int, what1: str, what2: str) -> None:
    if d1 != d2:
        raise MetricError(f"dimension mismatch: {what1} has dimension {d1} but {what2} has {d2}")


# ----------------------------------------------------------------------------------------------------------
# Gaussian statistics


@dataclasses.dataclass
class GaussianStats:
    """Mean ``mu[d]``, unbiased covariance ``cov[d, d]`` (zeros when ``n == 1``) and sample count ``n``.

    ``sqrt_cov`` caches the symmetric PSD square root of ``cov`` (see :meth:`sqrt`); it is what makes
    repeated Fréchet distances against one fixed reference cost a single symmetric eigenproblem.
    """

    mu: torch.Tensor
    cov: torch.Tensor
    n: int
    sqrt_cov: torch.Tensor | None = None

    @property
    def dim(self) -> int:
        return int(self.mu.shape[0])

    def m2(self) -> torch.Tensor:
        """Sum of centred outer products ``(n - 1) * cov``."""
        return self.cov * max(self.n - 1, 0)

    def sqrt(self) -> torch.Tensor:
        """Symmetric PSD square root of ``cov``, computed once and kept."""
        if self.sqrt_cov is None:
            self.sqrt_cov = sqrtm_psd(self.cov)
        return self.sqrt_cov

    def merge(self, other: "GaussianStats") -> "GaussianStats":
        """Statistics of the union of both samples (Chan et al.'s pairwise update); exact."""
        return merge_stats(self, other)

    def rank(self, rtol: float | None = None) -> int:
        """Numerical rank of the covariance."""
        ev = torch.linalg.eigvalsh(self.cov)
        tol = (rtol if rtol is not None else self.dim * torch.finfo(_F64).eps) * max(float(ev.max()), 0.0)
        return int((ev > tol).sum())

    def to(self, device: torch.device | str) -> "GaussianStats":
        s = None if self.sqrt_cov is None else self.sqrt_cov.to(device)
        return GaussianStats(self.mu.to(device), self.cov.to(device), self.n, s)


def gaussian_stats(x: torch.Tensor, name: str = "embeddings") -> GaussianStats:
    """Mean and unbiased covariance of ``x[n, d]`` in float64 (two-pass, centred)."""
    x = _as_matrix(x, name, min_rows=1)
    n = x.shape[0]
    mu = x.mean(dim=0)
    xc = x - mu
    cov = xc.T @ xc / max(n - 1, 1)
    cov = 0.5 * (cov + cov.T)
    return GaussianStats(mu, cov, n)


def merge_stats(a: GaussianStats, b: GaussianStats) -> GaussianStats:
    """Merge two partial statistics: ``M2 = M2a + M2b + delta delta^T * na nb / n`` (Chan et al. 1979)."""
    _check_dims(a.dim, b.dim, "first statistics", "second statistics")
    n = a.n + b.n
    delta = b.mu.to(_F64) - a.mu.to(_F64)
    mu = a.mu + delta * (b.n / n)
    m2 = a.m2() + b.m2() + torch.outer(delta, delta) * (a.n * b.n / n)
    cov = m2 / max(n - 1, 1)
    return GaussianStats(mu, 0.5 * (cov + cov.T), n)


def _sum_sqrt_eig(ev: torch.Tensor) -> torch.Tensor:
    """``sum sqrt(ev)`` over the last axis, with eigenvalues at rounding level (``<= m eps max``) set to 0:
    a rank-deficient PSD matrix's zero eigenvalues come out of ``eigvalsh`` as +-1e-16 * max, whose square
    roots (1e-8 * sqrt(max) each) would otherwise add up to a visible bias."""
    return _zero_small(ev).sqrt().sum(-1)


def _eigvalsh(m: torch.Tensor) -> torch.Tensor:
    """Eigenvalues (ascending) of the symmetric part of ``m`` (torch's LAPACK/cuSOLVER ``syevd``).

    SciPy's ``dsyevr`` was tried for large CPU matrices: faster on one thread, but its OpenBLAS threads
    fight torch's OpenMP pool on many cores (measured 2-10x slower there), so torch is used throughout."""
    return torch.linalg.eigvalsh(0.5 * (m + m.transpose(-1, -2)))


def _zero_small(ev: torch.Tensor) -> torch.Tensor:
    tol = ev.shape[-1] * torch.finfo(_F64).eps * ev.max(-1, keepdim=True).values.clamp_min(0)
    return torch.where(ev > tol, ev, torch.zeros_like(ev))


def sqrtm_psd(c: torch.Tensor) -> torch.Tensor:
    """Symmetric square root of a symmetric PSD matrix by ``eigh``; negative rounding eigenvalues -> 0."""
    c = c.to(_F64)
    ev, v = torch.linalg.eigh(0.5 * (c + c.T))
    return (v * ev.clamp_min(0).sqrt()) @ v.T


# ----------------------------------------------------------------------------------------------------------
# Fréchet distance


def frechet_distance(
    mu1: torch.Tensor,
    cov1: torch.Tensor,
    mu2: torch.Tensor,
    cov2: torch.Tensor,
    *,
    sqrt_cov2: torch.Tensor | None = None,
) -> torch.Tensor:
    """Fréchet distance between N(mu1, cov1) and N(mu2, cov2), a float64 scalar >= 0.

    ``|mu1 - mu2|^2 + tr C1 + tr C2 - 2 tr (S C1 S)^(1/2)`` with ``S = C2^(1/2)``: the eigenvalues of the
    symmetric PSD matrix ``S C1 S`` equal those of ``C1 C2``, so the trace term is ``sum sqrt(eig)`` from one
    symmetric eigenvalue problem -- never complex. Eigenvalues below 0 (rounding) count as 0 and the
    result is clamped at 0. Pass ``sqrt_cov2`` (e.g. :meth:`GaussianStats.sqrt`) to reuse a cached root.
    """
    mu1, mu2 = mu1.to(_F64), mu2.to(_F64)
    cov1, cov2 = cov1.to(_F64), cov2.to(_F64)
    _check_dims(mu1.shape[-1], mu2.shape[-1], "first mean", "second mean")
    for c, m, nm in ((cov1, mu1, "cov1"), (cov2, mu2, "cov2")):
        if c.shape != (m.shape[0], m.shape[0]):
            raise MetricError(f"{nm} has shape {tuple(c.shape)}; expected {(m.shape[0], m.shape[0])}")
    for t, nm in ((mu1, "mu1"), (mu2, "mu2"), (cov1, "cov1"), (cov2, "cov2")):
        if not torch.isfinite(t).all():
            raise MetricError(f"{nm} contains NaN or Inf values")
    s = sqrtm_psd(cov2) if sqrt_cov2 is None else sqrt_cov2.to(_F64)
    m = s @ cov1 @ s
    tr_sqrt = _sum_sqrt_eig(_eigvalsh(m))
    diff = mu1 - mu2
    d = diff @ diff + torch.trace(cov1) + torch.trace(cov2) - 2.0 * tr_sqrt
    return d.clamp_min(0.0)


def _fad_gram(xc: torch.Tensor, nrows: torch.Tensor, cov_r: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """For centred clips ``xc[B, n, d]`` (zero rows allowed as padding) with ``nrows[B]`` real rows, return
    ``(tr C_b, tr (S C_b S)^(1/2))`` where ``C_b = xc_b^T xc_b / (n_b - 1)`` and ``S = cov_r^(1/2)``.

    Uses the n x n Gram form ``xc R xc^T / (n - 1)``, which shares its non-zero eigenvalues with ``S C S``.
    """
    denom = (nrows.to(_F64) - 1).clamp_min(1)
    g = (xc @ cov_r) @ xc.transpose(-1, -2) / denom[:, None, None]
    tr_sqrt = _sum_sqrt_eig(torch.linalg.eigvalsh(0.5 * (g + g.transpose(-1, -2))))
    tr_c = (xc * xc).sum(dim=(-1, -2)) / denom
    return tr_c, tr_sqrt


def fad_from_embeddings(x: torch.Tensor, ref: GaussianStats, name: str = "embeddings") -> torch.Tensor:
    """Fréchet distance between the Gaussian fitted to ``x[n, d]`` and ``ref``.

    Picks the cheaper exact route: the n x n Gram form when ``n <= d`` (no d x d eigenproblem at all),
    else the d x d symmetric form with ``ref``'s cached square root.
    """
    x = _as_matrix(x, name, min_rows=2)
    _check_dims(x.shape[1], ref.dim, name, "reference statistics")
    n = x.shape[0]
    mu_r, cov_r = ref.mu.to(x), ref.cov.to(x)
    if n <= x.shape[1]:
        mu = x.mean(0)
        tr_c, tr_sqrt = _fad_gram((x - mu)[None], torch.tensor([n], device=x.device), cov_r)
        diff = mu - mu_r
        return (diff @ diff + tr_c[0] + torch.trace(cov_r) - 2 * tr_sqrt[0]).clamp_min(0.0)
    st = gaussian_stats(x, name)
    return frechet_distance(st.mu, st.cov, mu_r, cov_r, sqrt_cov2=ref.sqrt().to(x))


def per_song_fad(frames: torch.Tensor | list[torch.Tensor], ref: GaussianStats, name: str = "clip") -> torch.Tensor:
    """fadtk's per-song FAD: the frames of one clip form the test Gaussian, compared with ``ref``.

    ``frames`` is ``[n, d]`` (one clip -> scalar), ``[B, n, d]`` or a list of ``[n_b, d]`` (-> ``[B]``).
    A clip with ``n <= d`` frames has a covariance of rank < n, so its trace term comes from the n x n Gram
    matrix ``Xc R Xc^T / (n - 1)`` (same non-zero eigenvalues as ``S C S``); such clips are batched a few at a
    time (shorter ones zero-padded after centring, which adds only zero eigenvalues). A longer clip (``n > d``)
    uses its d x d covariance instead, so memory stays O(d^2) per clip however long it is (never n^2).
    Raises :class:`MetricError` if a clip has fewer than 2 frames.
    """
    single = isinstance(frames, torch.Tensor) and frames.dim() == 2
    if isinstance(frames, torch.Tensor):
        if frames.dim() not in (2, 3):
            raise MetricError(f"frames must be [n, d], [B, n, d] or a list of [n, d]; got {tuple(frames.shape)}")
        clips = [frames] if single else list(frames.unbind(0))
    else:
        clips = list(frames)
    if not clips:
        raise MetricError("per_song_fad got no clips")
    d = ref.dim
    for b, f in enumerate(clips):
        nm = name if single else f"{name} {b}"
        if f.dim() != 2:
            raise MetricError(f"{nm}: frames must be [n, d]; got shape {tuple(f.shape)}")
        if f.shape[0] < 2:
            raise MetricError(
                f"{nm} has {f.shape[0]} frame(s); per-song FAD needs at least 2 frames to fit a Gaussian "
                "(use longer clips)"
            )
        _check_dims(f.shape[1], d, f"{nm} frames", "reference statistics")
        check_finite(f, f"{nm} frames")
    dev = clips[0].device
    out = torch.empty(len(clips), dtype=_F64, device=dev)
    mu_r, cov_r = ref.mu.to(device=dev, dtype=_F64), ref.cov.to(device=dev, dtype=_F64)
    short = [b for b, f in enumerate(clips) if f.shape[0] <= d]
    for b, f in enumerate(clips):
        if f.shape[0] > d:  # the d x d route with the reference's cached square root
            st = gaussian_stats(f.detach().to(device=dev, dtype=_F64), f"{name} {b}")
            out[b] = frechet_distance(st.mu, st.cov, mu_r, cov_r, sqrt_cov2=ref.sqrt().to(device=dev, dtype=_F64))
    per_chunk = 16  # Gram matrices of at most 16 clips at once: memory <= 16 d^2
    for c in range(0, len(short), per_chunk):
        idx = short[c:c + per_chunk]
        rows = [clips[b].detach().to(device=dev, dtype=_F64) for b in idx]
        nmax = max(f.shape[0] for f in rows)
        xc = torch.zeros(len(rows), nmax, d, dtype=_F64, device=dev)
        mus = torch.empty(len(rows), d, dtype=_F64, device=dev)
        for j, f in enumerate(rows):
            mus[j] = f.mean(0)
            xc[j, : f.shape[0]] = f - mus[j]
        nrows = torch.tensor([f.shape[0] for f in rows], device=dev)
        tr_c, tr_sqrt = _fad_gram(xc, nrows, cov_r)
        diff = mus - mu_r
        out[idx] = ((diff * diff).sum(-1) + tr_c + torch.trace(cov_r) - 2 * tr_sqrt).clamp_min(0.0)
    return out[0] if single else out


# ----------------------------------------------------------------------------------------------------------
# KAD (kernel audio distance = unbiased MMD^2 with a Gaussian RBF kernel)


def _sqdist(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    d = (a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2 * a @ b.T
    return d.clamp_min(0)


def squared_distances(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``[n, m]`` squared Euclidean distances between the rows of ``a[n, d]`` and ``b[m, d]`` (clamped at 0)."""
    return _sqdist(a, b)


def median_bandwidth(y: torch.Tensor, max_points: int = 2000) -> torch.Tensor:
    """Median heuristic: the median Euclidean distance between distinct reference points (the first
    ``max_points`` rows; pass a shuffled subsample for large sets). Raises if all points coincide."""
    y = _as_matrix(y, "reference embeddings", min_rows=2)[:max_points]
    d2 = _sqdist(y, y)
    iu = torch.triu_indices(y.shape[0], y.shape[0], offset=1, device=y.device)
    med = d2[iu[0], iu[1]].sqrt().median()
    if not med > 0:
        raise MetricError("KAD bandwidth: all reference embeddings are identical (median distance 0)")
    return med


def _rbf(d2: torch.Tensor, bw: torch.Tensor) -> torch.Tensor:
    return torch.exp(-d2 / (2 * bw * bw))


def rbf_kernel(a: torch.Tensor, b: torch.Tensor, bandwidth: float | torch.Tensor) -> torch.Tensor:
    """Gaussian RBF kernel matrix ``exp(-|a_i - b_j|^2 / (2 bandwidth^2))`` of ``a[n, d]`` and ``b[m, d]``."""
    return _rbf(_sqdist(a, b), bandwidth)


def kad(x: torch.Tensor, y: torch.Tensor, bandwidth: float | torch.Tensor | None = None,
        single_ok: bool = False) -> torch.Tensor:
    """Kernel audio distance: unbiased MMD^2 between samples ``x[n, d]`` and ``y[m, d]``.

    Kernel ``k(a, b) = exp(-|a - b|^2 / (2 h^2))`` with ``h`` = :func:`median_bandwidth` of ``y`` (the
    reference) unless given. The estimator averages kernel values over distinct pairs, so it is unbiased
    and *can be slightly negative* when x and y come from one distribution; it is not clamped.
    ``single_ok``: a single ``x`` row is scored with the V-statistic within-set term k(x, x) = 1 (the unbiased
    one is undefined for one sample).
    """
    if single_ok and isinstance(x, torch.Tensor) and x.dim() == 2 and x.shape[0] == 1:
        x = _as_matrix(x, "generated embeddings", min_rows=1)
        y = _as_matrix(y, "reference embeddings", min_rows=2).to(x.device)
        bw = median_bandwidth(y) if bandwidth is None else torch.as_tensor(bandwidth, dtype=_F64, device=x.device)
        m = y.shape[0]
        kyy = _rbf(_sqdist(y, y), bw)
        syy = (kyy.sum() - kyy.diagonal().sum()) / (m * (m - 1))
        return 1.0 + syy - 2 * _rbf(_sqdist(x, y), bw).mean()
    x = _as_matrix(x, "generated embeddings", min_rows=2)
    y = _as_matrix(y, "reference embeddings", min_rows=2).to(x.device)
    _check_dims(x.shape[1], y.shape[1], "generated embeddings", "reference embeddings")
    bw = median_bandwidth(y) if bandwidth is None else torch.as_tensor(bandwidth, dtype=_F64, device=x.device)
    n, m = x.shape[0], y.shape[0]
    kxx = _rbf(_sqdist(x, x), bw)
    kyy = _rbf(_sqdist(y, y), bw)
    kxy = _rbf(_sqdist(x, y), bw)
    sxx = (kxx.sum() - kxx.diagonal().sum()) / (n * (n - 1))
    syy = (kyy.sum() - kyy.diagonal().sum()) / (m * (m - 1))
    return sxx + syy - 2 * kxy.mean()


# ----------------------------------------------------------------------------------------------------------
# Vendi score and centroid similarity


def _unit_rows(x: torch.Tensor, name: str) -> torch.Tensor:
    norms = x.norm(dim=1)
    zero = norms <= torch.finfo(_F64).tiny
    if zero.any():
        i = int(zero.nonzero()[0].item())
        raise MetricError(f"{name}: sample {i} has a zero embedding; cosine similarity is undefined for it")
    return x / norms[:, None]


def _spectrum(xn: torch.Tensor) -> torch.Tensor:
    """Eigenvalues of ``K / n`` (K = xn xn^T) through the smaller of the n x n and d x d problems."""
    n, d = xn.shape
    a = xn.T @ xn if d < n else xn @ xn.T
    ev = _eigvalsh(a) / n
    tol = max(n, d) * torch.finfo(_F64).eps * float(ev.max().clamp_min(0))
    return torch.where(ev > tol, ev, torch.zeros_like(ev))


def _vendi_from_spectrum(ev: torch.Tensor, q: float) -> torch.Tensor:
    ev = ev / ev.sum(-1, keepdim=True)  # exact trace 1 (removes rounding in the trace)
    pos = ev > 0
    if q == 1:
        h = -torch.where(pos, ev * torch.log(torch.where(pos, ev, torch.ones_like(ev))), torch.zeros_like(ev)).sum(-1)
        return torch.exp(h)
    if math.isinf(q):
        return 1.0 / ev.max(-1).values
    if q == 0:
        return pos.sum(-1).to(_F64)
    p = torch.where(pos, ev, torch.zeros_like(ev)) ** q
    p = torch.where(pos, p, torch.zeros_like(p))
    return p.sum(-1) ** (1.0 / (1.0 - q))


def vendi_score(embeddings: torch.Tensor, q: float = 1.0) -> torch.Tensor:
    """Vendi score of ``embeddings[n, d]`` with the cosine kernel: the exponential of the order-q Rényi
    entropy of the eigenvalues of ``K / n``. q = 1 is Shannon (the usual Vendi score), q = 0 the rank,
    q = inf ``1 / max eigenvalue``. Ranges from 1 (all identical) to ``min(n, d)``. Computed from the d x d
    dual ``X^T X / n`` when d < n. Zero embeddings raise (cosine undefined)."""
    if q < 0:
        raise MetricError(f"vendi_score: q must be >= 0; got {q}")
    x = _unit_rows(_as_matrix(embeddings, "embeddings", min_rows=1), "embeddings")
    return _vendi_from_spectrum(_spectrum(x), float(q))


def centroid_similarity(x: torch.Tensor, exemplar_mean: torch.Tensor) -> torch.Tensor:
    """Cosine similarity of each row of ``x[n, d]`` to the exemplar centroid ``exemplar_mean[d]`` -> ``[n]``."""
    x = _unit_rows(_as_matrix(x, "embeddings"), "embeddings")
    c = exemplar_mean.detach().to(device=x.device, dtype=_F64).reshape(1, -1)
    _check_dims(x.shape[1], c.shape[1], "embeddings", "exemplar centroid")
    check_finite(c, "exemplar centroid")
    c = _unit_rows(c, "exemplar centroid")[0]
    return (x @ c).clamp(-1.0, 1.0)


# ----------------------------------------------------------------------------------------------------------
# Leave-one-out


class LeaveOneOut(NamedTuple):
    """``full`` = metric on the whole set; ``minus[i]`` = metric with sample i left out."""

    full: torch.Tensor
    minus: torch.Tensor

    def credit(self, higher_is_better: bool) -> torch.Tensor:
        """``r(D) - r(D minus i)`` with ``r`` = metric (higher is better) or -metric (lower is better)."""
        delta = self.full - self.minus
        return delta if higher_is_better else -delta


def _log_grid(lo: float, hi: float, step: float, like: torch.Tensor) -> torch.Tensor:
    k = int(math.ceil((math.log(hi) - math.log(lo)) / step)) + 1
    return torch.exp(math.log(lo) + step * torch.arange(k, dtype=_F64, device=like.device))


def _trapezoid_log(f: torch.Tensor, s: torch.Tensor, step: float) -> torch.Tensor:
    """Trapezoidal rule for ``int f(s) ds`` sampled on a log grid ``s`` (last axis): ``ds = s du``."""
    g = f * s
    return step * (g.sum(-1) - 0.5 * (g[..., 0] + g[..., -1]))


def _sqrt_trace_downdate(theta: torch.Tensor, z: torch.Tensor, a: float) -> torch.Tensor:
    """For ``P = diag(theta)`` (PSD) and each row ``z_i`` of ``z[N, m]``, return
    ``tr sqrt(P - a z_i z_i^T) - tr sqrt(P)`` (assumes the downdate stays PSD, as it does for a sample
    removed from its own covariance).

    Uses ``sqrt(x) = (2/pi) int_0^inf x / (x + s^2) ds`` and Sherman-Morrison: the difference is
    ``-(2/pi) int_0^inf h_i(s) ds`` with ``h_i = s^2 a g2 / (1 - a g1)``, ``g_k = sum z^2 / (theta + s^2)^k``,
    and ``0 <= h_i <= 1`` by eigenvalue interlacing (used to clamp rounding). ``h`` is analytic in
    ``u = log s`` in the strip ``|Im u| < pi/2``, so the trapezoidal rule in ``u`` converges geometrically
    (step 0.25: error ~ exp(-pi^2 / 0.25) ~ 1e-17). Cost O(N m Q) with Q ~ 200 nodes.
    """
    theta = theta.clamp_min(0)
    z2 = z * z
    # tr sqrt is homogeneous of degree 1/2: work on P / c and z / sqrt(c) with c the largest scale, so that a
    # set of identical (or silent) clips, whose scatter is zero or at rounding level, neither underflows the
    # quadrature grid (s^2 below 1e-308 made 0 * inf = NaN credits) nor divides by zero.
    c = max(float(theta.max()), a * float(z2.sum(1).max()))
    if not c > 0:
        return torch.zeros(z.shape[0], dtype=z.dtype, device=z.device)  # nothing to remove: tr sqrt unchanged
    theta, z2 = theta / c, z2 / c
    step = 0.25
    s = _log_grid(1e-12, 1e9, step, theta)
    s2 = s * s
    w1 = 1.0 / (theta[:, None] + s2[None, :])  # [m, Q]
    g1 = z2 @ w1
    g2 = z2 @ (w1 * w1)
    den = 1.0 - a * g1
    h = torch.where(den > 0, s2 * a * g2 / den.clamp_min(torch.finfo(_F64).tiny), torch.ones_like(den))
    h = h.clamp(0.0, 1.0)
    integral = _trapezoid_log(h, s, step)
    # tail beyond s_max: h ~ a |z|^2 / s^2
    integral = integral + a * z2.sum(1) / s[-1]
    return -(2.0 / math.pi) * math.sqrt(c) * integral


def _xlogx_trace_downdate(theta: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """``tr phi(P - z_i z_i^T) - tr phi(P)`` for ``phi(x) = x log x``, ``P = diag(theta)``, each row z_i.

    ``x log x = int_0^inf [x / (1 + s) - x / (x + s)] ds``; with Sherman-Morrison the difference is
    ``int_0^inf [-|z|^2 / (1 + s) + s g2 / (1 - g1)] ds`` (``g_k = sum z^2 / (theta + s)^k``), where
    ``0 <= s g2 / (1 - g1) <= 1``. Trapezoidal rule in ``log s`` (analytic strip ``|Im| < pi``)."""
    theta = theta.clamp_min(0)
    z2 = z * z
    nz = z2.sum(1)
    scale = max(float(theta.max()), float(nz.max()), 1e-300)
    step = 0.4
    s = _log_grid(scale * 1e-15, scale * 1e12, step, theta)
    w1 = 1.0 / (theta[:, None] + s[None, :])
    g1 = z2 @ w1
    g2 = z2 @ (w1 * w1)
    den = 1.0 - g1
    h = torch.where(den > 0, s * g2 / den.clamp_min(torch.finfo(_F64).tiny), torch.ones_like(den)).clamp(0.0, 1.0)
    f = h - nz[:, None] / (1.0 + s)
    integral = _trapezoid_log(f, s, step)
    # tail: f ~ (|z|^4 - 2 z^T theta z + |z|^2) / s^2 ; integral beyond s_max = that / s_max
    integral = integral + (nz * nz - 2 * (z2 * theta).sum(1) + nz) / s[-1]
    # head below s_min: f ~ c0 - |z|^2 with 0 <= c0 <= 1, negligible (|.| <= s_min (1 + |z|^2))
    return integral


def fad_leave_one_out(x: torch.Tensor, ref: GaussianStats, name: str = "embeddings") -> LeaveOneOut:
    """FAD of ``x[N, d]`` against ``ref`` and, for every i, FAD of the set without row i.

    Removing one row is a rank-one downdate of the scatter matrix, ``M2_-i = M2 - N/(N-1) v_i v_i^T``
    (``v_i = x_i - mean``). With one eigendecomposition of ``P = S M2 S`` (``S = ref^(1/2)``; done through the
    N x N Gram ``Vc R Vc^T`` when N <= d) each ``tr sqrt(S C_-i S)`` follows from
    :func:`_sqrt_trace_downdate`: O(N m Q) instead of N eigenproblems. Needs N >= 3.
    """
    x = _as_matrix(x, name, min_rows=3)
    _check_dims(x.shape[1], ref.dim, name, "reference statistics")
    n, d = x.shape
    mu_r, cov_r = ref.mu.to(x), ref.cov.to(x)
    mu = x.mean(0)
    vc = x - mu
    if n <= d:
        g = (vc @ cov_r) @ vc.T
        theta, u = torch.linalg.eigh(0.5 * (g + g.T))
        theta = theta.clamp_min(0)
        z = u * theta.sqrt()[None, :]
    else:
        s_ref = ref.sqrt().to(x)
        y = vc @ s_ref
        p = y.T @ y
        theta, q = torch.linalg.eigh(0.5 * (p + p.T))
        theta = theta.clamp_min(0)
        z = y @ q
    theta = _zero_small(theta)
    z = torch.where(theta[None, :] > 0, z, torch.zeros_like(z))
    tr_sqrt_p = theta.sqrt().sum()
    b = n / (n - 1)
    delta = _sqrt_trace_downdate(theta, z, b)
    tr_m2 = (vc * vc).sum()
    tr_r = torch.trace(cov_r)
    diff = mu - mu_r
    full = (diff @ diff + tr_m2 / (n - 1) + tr_r - 2 * tr_sqrt_p / math.sqrt(n - 1)).clamp_min(0)
    vnorm2 = (vc * vc).sum(1)
    diff_i = diff[None, :] - vc / (n - 1)
    tr_c_i = (tr_m2 - b * vnorm2) / (n - 2)
    tr_sqrt_i = (tr_sqrt_p + delta).clamp_min(0) / math.sqrt(n - 2)
    minus = ((diff_i * diff_i).sum(1) + tr_c_i + tr_r - 2 * tr_sqrt_i).clamp_min(0)
    return LeaveOneOut(full, minus)


def kad_leave_one_out(
    x: torch.Tensor, y: torch.Tensor, bandwidth: float | torch.Tensor | None = None
) -> LeaveOneOut:
    """KAD of ``x`` against ``y`` and of every ``x`` without row i, from one set of kernel sums (O(N^2 + N m)).
    The bandwidth depends on ``y`` only, so it is the same for all subsets. Needs N >= 3."""
    x = _as_matrix(x, "generated embeddings", min_rows=3)
    y = _as_matrix(y, "reference embeddings", min_rows=2).to(x.device)
    _check_dims(x.shape[1], y.shape[1], "generated embeddings", "reference embeddings")
    bw = median_bandwidth(y) if bandwidth is None else torch.as_tensor(bandwidth, dtype=_F64, device=x.device)
    n, m = x.shape[0], y.shape[0]
    kxx = _rbf(_sqdist(x, x), bw)
    kxx.fill_diagonal_(0)
    kyy = _rbf(_sqdist(y, y), bw)
    syy = (kyy.sum() - kyy.diagonal().sum()) / (m * (m - 1))
    kxy_rows = _rbf(_sqdist(x, y), bw).sum(1)
    sxx, rxx = kxx.sum(), kxx.sum(1)
    sxy = kxy_rows.sum()
    full = sxx / (n * (n - 1)) + syy - 2 * sxy / (n * m)
    minus = (sxx - 2 * rxx) / ((n - 1) * (n - 2)) + syy - 2 * (sxy - kxy_rows) / ((n - 1) * m)
    return LeaveOneOut(full, minus)


def vendi_leave_one_out(embeddings: torch.Tensor, q: float = 1.0) -> LeaveOneOut:
    """Vendi score of the set and of every set without sample i.

    q = 1: one eigendecomposition of the smaller Gram/dual matrix, then each rank-one downdate's
    ``tr (A - x_i x_i^T) log(A - x_i x_i^T)`` by :func:`_xlogx_trace_downdate`. Other q: one batched
    eigenvalue call over the N downdated ``m x m`` matrices (m = min(N - 1, d)). Needs N >= 2.
    """
    if q < 0:
        raise MetricError(f"vendi_leave_one_out: q must be >= 0; got {q}")
    x = _unit_rows(_as_matrix(embeddings, "embeddings", min_rows=2), "embeddings")
    n, d = x.shape
    full = _vendi_from_spectrum(_spectrum(x), float(q))
    if q == 1:
        if n <= d:
            g = x @ x.T
            theta, u = torch.linalg.eigh(0.5 * (g + g.T))
            theta = theta.clamp_min(0)
            z = u * theta.sqrt()[None, :]
        else:
            a = x.T @ x
            theta, qv = torch.linalg.eigh(0.5 * (a + a.T))
            theta = theta.clamp_min(0)
            z = x @ qv
        pos = theta > 0
        tr_phi = torch.where(pos, theta * torch.log(torch.where(pos, theta, torch.ones_like(theta))), 0 * theta).sum()
        dphi = _xlogx_trace_downdate(theta, z)
        # H(D - i) = -(tr phi(A_-i)) / (n - 1) + log(n - 1) since tr A_-i = n - 1 (unit rows)
        h = -(tr_phi + dphi) / (n - 1) + math.log(n - 1)
        return LeaveOneOut(full, torch.exp(h))
    if n - 1 <= d:
        g = x @ x.T
        idx = torch.arange(n, device=x.device)
        keep = torch.stack([torch.cat([idx[:i], idx[i + 1 :]]) for i in range(n)])  # [n, n-1]
        mats = g[keep[:, :, None], keep[:, None, :]]
    else:
        a = x.T @ x
        mats = a[None] - x[:, :, None] * x[:, None, :]
    ev = torch.linalg.eigvalsh(0.5 * (mats + mats.transpose(-1, -2))) / (n - 1)
    tol = max(n, d) * torch.finfo(_F64).eps * ev.max(-1, keepdim=True).values.clamp_min(0)
    ev = torch.where(ev > tol, ev, torch.zeros_like(ev))
    return LeaveOneOut(full, _vendi_from_spectrum(ev, float(q)))


# ----------------------------------------------------------------------------------------------------------
# Joining a pool: the metric of pool + {candidate i} for every candidate, from the pool's statistics


def fad_join(pool: GaussianStats, adds: torch.Tensor | list[GaussianStats], ref: GaussianStats) -> torch.Tensor:
    """FAD against ``ref`` of the pool's Gaussian merged with each candidate -> ``[N]``.

    ``adds`` is ``[N, d]`` (each candidate one row, e.g. a clip vector) or a list of N GaussianStats (each
    candidate several rows, e.g. one clip's frames). Exact: Chan's merge of the statistics, then one batched
    ``d x d`` symmetric eigenvalue problem per candidate; the pool's own rows are never revisited, so the cost
    does not grow with the pool size.
    """
    if pool.n < 1:
        raise MetricError("fad_join: the pool is empty")
    dt, dev = _F64, pool.mu.device
    if isinstance(adds, torch.Tensor):
        x = _as_matrix(adds, "candidates", min_rows=1).to(dev)
        mu_c, m2_c = x, None
        n_c = torch.ones(x.shape[0], dtype=dt, device=dev)
    else:
        if not adds:
            return torch.zeros(0, dtype=dt, device=dev)
        mu_c = torch.stack([a.mu.to(dev, dt) for a in adds])
        m2_c = torch.stack([a.m2().to(dev, dt) for a in adds])
        n_c = torch.tensor([float(a.n) for a in adds], dtype=dt, device=dev)
    _check_dims(mu_c.shape[1], pool.dim, "candidates", "pool")
    _check_dims(mu_c.shape[1], ref.dim, "candidates", "reference statistics")
    n = float(pool.n)
    tot = n + n_c
    delta = mu_c - pool.mu[None]
    mu = pool.mu[None] + delta * (n_c / tot)[:, None]
    m2 = pool.m2()[None] + (delta[:, :, None] * delta[:, None, :]) * (n * n_c / tot)[:, None, None]
    if m2_c is not None:
        m2 = m2 + m2_c
    cov = m2 / (tot - 1)[:, None, None]
    s_ref = ref.sqrt().to(dev, dt)
    p = s_ref[None] @ cov @ s_ref[None]
    tr_sqrt = _sum_sqrt_eig(torch.linalg.eigvalsh(0.5 * (p + p.transpose(-1, -2))))
    diff = mu - ref.mu.to(dev, dt)[None]
    tr_c = torch.diagonal(cov, dim1=-2, dim2=-1).sum(-1)
    return ((diff * diff).sum(1) + tr_c + torch.trace(ref.cov.to(dev, dt)) - 2 * tr_sqrt).clamp_min(0.0)


def kad_join(pool: torch.Tensor, adds: torch.Tensor, y: torch.Tensor,
             bandwidth: float | torch.Tensor | None = None) -> torch.Tensor:
    """Unbiased KAD against ``y`` of ``pool[n, d]`` plus each row of ``adds[N, d]`` -> ``[N]``; O((n + m) N d)
    beyond the pool's own kernel sums."""
    p = _as_matrix(pool, "pool embeddings", min_rows=1)
    x = _as_matrix(adds, "candidates", min_rows=1).to(p.device)
    y = _as_matrix(y, "reference embeddings", min_rows=2).to(p.device)
    _check_dims(x.shape[1], y.shape[1], "candidates", "reference embeddings")
    _check_dims(p.shape[1], y.shape[1], "pool embeddings", "reference embeddings")
    bw = median_bandwidth(y) if bandwidth is None else torch.as_tensor(bandwidth, dtype=_F64, device=p.device)
    n, m = p.shape[0], y.shape[0]
    kpp = _rbf(_sqdist(p, p), bw)
    s_pp = kpp.sum() - kpp.diagonal().sum()
    kyy = _rbf(_sqdist(y, y), bw)
    syy = (kyy.sum() - kyy.diagonal().sum()) / (m * (m - 1))
    s_py = _rbf(_sqdist(p, y), bw).sum()
    s_xp = _rbf(_sqdist(x, p), bw).sum(1)
    s_xy = _rbf(_sqdist(x, y), bw).sum(1)
    return (s_pp + 2 * s_xp) / ((n + 1) * n) + syy - 2 * (s_py + s_xy) / ((n + 1) * m)


def vendi_join(pool: torch.Tensor, adds: torch.Tensor, q: float = 1.0) -> torch.Tensor:
    """Vendi score (cosine kernel, order ``q``) of ``pool[n, d]`` plus each row of ``adds[N, d]`` -> ``[N]``:
    one batched eigenvalue problem of the smaller of the ``d x d`` dual and the ``(n + 1)`` Gram matrix."""
    if q < 0:
        raise MetricError(f"vendi_join: q must be >= 0; got {q}")
    p = _unit_rows(_as_matrix(pool, "pool embeddings", min_rows=1), "pool embeddings")
    x = _unit_rows(_as_matrix(adds, "candidates", min_rows=1).to(p.device), "candidates")
    _check_dims(x.shape[1], p.shape[1], "candidates", "pool embeddings")
    n, d = p.shape[0] + 1, p.shape[1]
    if d < n:
        mats = (p.T @ p)[None] + x[:, :, None] * x[:, None, :]
    else:
        g = p @ p.T
        px = x @ p.T  # [N, n-1]
        top = torch.cat([g[None].expand(x.shape[0], -1, -1), px[:, :, None]], dim=2)
        bottom = torch.cat([px, torch.ones(x.shape[0], 1, dtype=p.dtype, device=p.device)], dim=1)[:, None, :]
        mats = torch.cat([top, bottom], dim=1)
    ev = torch.linalg.eigvalsh(0.5 * (mats + mats.transpose(-1, -2))) / n
    tol = max(n, d) * torch.finfo(_F64).eps * ev.max(-1, keepdim=True).values.clamp_min(0)
    ev = torch.where(ev > tol, ev, torch.zeros_like(ev))
    return _vendi_from_spectrum(ev, float(q))


# ----------------------------------------------------------------------------------------------------------
# FAD extrapolated to an infinite set (Chong & Forsyth 2020; fadtk's --inf)


def fad_infinity(x: torch.Tensor, ref: GaussianStats, n_sizes: int = 8, draws: int = 3, min_n: int | None = None,
                 seed: int = 0) -> dict:
    """FAD is biased upward by O(1/n). Fit ``FAD(n) = FAD_inf + b / n`` by least squares over random subsets
    (without replacement) of ``n_sizes`` sizes from ``min_n`` (default max(d + 2, N / 4)) to N, ``draws`` each;
    returns ``{"fad_inf", "slope", "sizes", "fad_at"}``. Sets of different sizes compare through ``fad_inf``."""
    x = _as_matrix(x, "embeddings", min_rows=3)
    n_all, d = x.shape
    lo = int(min_n) if min_n is not None else max(d + 2, n_all // 4)
    lo = max(3, min(lo, n_all))
    sizes = sorted({int(round(v)) for v in torch.linspace(lo, n_all, n_sizes).tolist()})
    g = torch.Generator().manual_seed(int(seed))
    inv, vals, means = [], [], []
    for s in sizes:
        k = 1 if s == n_all else draws
        vs = []
        for _ in range(k):
            idx = torch.randperm(n_all, generator=g)[:s].to(x.device)
            vs.append(float(fad_from_embeddings(x[idx], ref)))
        for v in vs:
            inv.append(1.0 / s)
            vals.append(v)
        means.append(sum(vs) / len(vs))
    if len(sizes) < 2:
        return {"fad_inf": float("nan"), "slope": float("nan"), "sizes": sizes, "fad_at": means}
    a = torch.tensor([[1.0, v] for v in inv], dtype=_F64)
    b = torch.tensor(vals, dtype=_F64)
    sol = torch.linalg.lstsq(a, b[:, None]).solution[:, 0]
    return {"fad_inf": float(sol[0]), "slope": float(sol[1]), "sizes": sizes, "fad_at": means}
