"""dragontune.metrics against closed forms, SciPy float64 references and brute-force loops."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.linalg
import torch

from dragontune import metrics as M
from dragontune.metrics import MetricError

F64 = torch.float64


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _data(n: int, d: int, seed: int = 0, scale: float = 1.0, shift: float = 0.0) -> torch.Tensor:
    g = _gen(seed)
    mix = torch.randn(d, d, generator=g, dtype=F64) / math.sqrt(d) + torch.eye(d, dtype=F64)
    return (torch.randn(n, d, generator=g, dtype=F64) @ mix) * scale + shift


def _scipy_fd(mu1, c1, mu2, c2) -> float:
    """The fadtk / frechet-audio-distance formula: sqrtm of the non-symmetric product, real part."""
    mu1, c1, mu2, c2 = (t.numpy() for t in (mu1, c1, mu2, c2))
    s = scipy.linalg.sqrtm(c1 @ c2).real
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(c1) + np.trace(c2) - 2 * np.trace(s))


def _drop(x: torch.Tensor, i: int) -> torch.Tensor:
    return torch.cat([x[:i], x[i + 1 :]])


# ---------------------------------------------------------------- Gaussian statistics


def test_gaussian_stats_matches_numpy():
    x = _data(50, 6, seed=1)
    st = M.gaussian_stats(x)
    assert st.n == 50 and st.mu.dtype == F64
    torch.testing.assert_close(st.mu, torch.from_numpy(x.numpy().mean(0)), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(st.cov, torch.from_numpy(np.cov(x.numpy(), rowvar=False)), rtol=1e-12, atol=1e-12)


def test_streaming_merge_equals_one_shot():
    x = _data(103, 7, seed=2, shift=5.0)
    one = M.gaussian_stats(x)
    parts = [x[:1], x[1:40], x[40:41], x[41:103]]
    acc = M.gaussian_stats(parts[0])
    for p in parts[1:]:
        acc = acc.merge(M.gaussian_stats(p))
    assert acc.n == one.n
    torch.testing.assert_close(acc.mu, one.mu, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(acc.cov, one.cov, rtol=1e-11, atol=1e-11)


def test_float32_input_is_computed_in_float64():
    x = _data(30, 4, seed=3).float()
    st = M.gaussian_stats(x)
    assert st.cov.dtype == F64


# ---------------------------------------------------------------- Fréchet distance


@pytest.mark.parametrize("d", [3, 16, 64])
def test_frechet_matches_scipy(d):
    a, b = M.gaussian_stats(_data(400, d, 4)), M.gaussian_stats(_data(300, d, 5, scale=1.7, shift=0.4))
    got = float(M.frechet_distance(a.mu, a.cov, b.mu, b.cov))
    ref = _scipy_fd(a.mu, a.cov, b.mu, b.cov)
    assert got == pytest.approx(ref, rel=1e-8)
    # with the cached square root of the reference side
    got2 = float(M.frechet_distance(a.mu, a.cov, b.mu, b.cov, sqrt_cov2=b.sqrt()))
    assert got2 == pytest.approx(ref, rel=1e-8)


def test_frechet_symmetric_and_zero_on_identical():
    a, b = M.gaussian_stats(_data(200, 12, 6)), M.gaussian_stats(_data(150, 12, 7, scale=0.5))
    ab = float(M.frechet_distance(a.mu, a.cov, b.mu, b.cov))
    ba = float(M.frechet_distance(b.mu, b.cov, a.mu, a.cov))
    assert ab == pytest.approx(ba, rel=1e-10)
    assert abs(float(M.frechet_distance(a.mu, a.cov, a.mu, a.cov))) < 1e-10


def test_frechet_closed_form_diagonal():
    # diagonal covariances: FD = |mu1-mu2|^2 + sum (sqrt(s1) - sqrt(s2))^2
    s1, s2 = torch.tensor([1.0, 4.0, 9.0], dtype=F64), torch.tensor([4.0, 1.0, 0.0], dtype=F64)
    mu1, mu2 = torch.tensor([0.0, 1.0, 2.0], dtype=F64), torch.zeros(3, dtype=F64)
    want = 5.0 + float(((s1.sqrt() - s2.sqrt()) ** 2).sum())
    got = float(M.frechet_distance(mu1, torch.diag(s1), mu2, torch.diag(s2)))
    assert got == pytest.approx(want, rel=1e-12)


def test_frechet_rank_deficient_finite_nonnegative():
    a, b = M.gaussian_stats(_data(5, 40, 8)), M.gaussian_stats(_data(7, 40, 9))
    for x, y in ((a, b), (b, a), (a, a)):
        v = M.frechet_distance(x.mu, x.cov, y.mu, y.cov)
        assert torch.isfinite(v) and float(v) >= 0 and not v.is_complex()
    assert float(M.frechet_distance(a.mu, a.cov, a.mu, a.cov)) < 1e-10


def test_fad_from_embeddings_both_routes_agree():
    ref = M.gaussian_stats(_data(500, 24, 10))
    x = _data(20, 24, 11, shift=0.3)  # n <= d: Gram route
    st = M.gaussian_stats(x)
    full = float(M.frechet_distance(st.mu, st.cov, ref.mu, ref.cov))
    assert float(M.fad_from_embeddings(x, ref)) == pytest.approx(full, rel=1e-8)
    x2 = _data(60, 24, 12, shift=0.3)  # n > d: d x d route
    st2 = M.gaussian_stats(x2)
    assert float(M.fad_from_embeddings(x2, ref)) == pytest.approx(
        _scipy_fd(st2.mu, st2.cov, ref.mu, ref.cov), rel=1e-8
    )


def test_dimension_mismatch_message():
    ref = M.gaussian_stats(_data(50, 8, 13))
    with pytest.raises(MetricError, match="dimension 6.*8"):
        M.fad_from_embeddings(_data(10, 6, 14), ref)


def test_nan_embedding_names_sample():
    x = _data(10, 4, 15)
    x[7, 2] = float("nan")
    with pytest.raises(MetricError, match="sample 7 contains NaN"):
        M.gaussian_stats(x)
    x[7, 2] = float("inf")
    with pytest.raises(MetricError, match="sample 7 contains Inf"):
        M.vendi_score(x)


# ---------------------------------------------------------------- per-song FAD


@pytest.mark.filterwarnings("ignore::scipy.linalg.LinAlgWarning")  # sqrtm of a singular product (the baseline)
def test_per_song_fad_matches_full_covariance_route():
    ref = M.gaussian_stats(_data(300, 32, 16))
    clips = [_data(n, 32, 17 + n, shift=0.1 * n) for n in (4, 9, 2, 9)]
    got = M.per_song_fad(clips, ref)
    for b, c in enumerate(clips):
        st = M.gaussian_stats(c)
        assert float(got[b]) == pytest.approx(_scipy_fd(st.mu, st.cov, ref.mu, ref.cov), rel=1e-7)
    # batched tensor input and single-clip input agree with the list input
    batch = torch.stack([clips[1], clips[3]])
    torch.testing.assert_close(M.per_song_fad(batch, ref), got[[1, 3]], rtol=1e-12, atol=1e-12)
    assert float(M.per_song_fad(clips[0], ref)) == pytest.approx(float(got[0]), rel=1e-12)


def test_per_song_fad_needs_two_frames():
    ref = M.gaussian_stats(_data(50, 8, 18))
    with pytest.raises(MetricError, match="clip 1 has 1 frame.*at least 2 frames"):
        M.per_song_fad([_data(3, 8, 19), _data(1, 8, 20)], ref)


# ---------------------------------------------------------------- KAD


def _kad_loop(x, y, h):
    k = lambda a, b: math.exp(-float(((a - b) ** 2).sum()) / (2 * h * h))  # noqa: E731
    n, m = len(x), len(y)
    sxx = sum(k(x[i], x[j]) for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
    syy = sum(k(y[i], y[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    sxy = sum(k(x[i], y[j]) for i in range(n) for j in range(m)) / (n * m)
    return sxx + syy - 2 * sxy


def test_kad_matches_loop_and_median_bandwidth():
    x, y = _data(9, 3, 21, shift=0.5), _data(11, 3, 22)
    h = float(M.median_bandwidth(y))
    dists = [float((y[i] - y[j]).norm()) for i in range(11) for j in range(i + 1, 11)]
    assert h == pytest.approx(float(np.median(dists)), rel=1e-12)
    assert float(M.kad(x, y)) == pytest.approx(_kad_loop(x, y, h), rel=1e-10)


def test_kad_same_distribution_near_zero_and_can_be_negative():
    vals, far = [], []
    g = _gen(99)
    for _ in range(20):
        x, y = torch.randn(30, 4, generator=g, dtype=F64), torch.randn(30, 4, generator=g, dtype=F64)
        vals.append(float(M.kad(x, y)))
        far.append(float(M.kad(x + 1.0, y)))
    vals = np.array(vals)
    assert abs(vals.mean()) < 3 * vals.std() / math.sqrt(len(vals)) + 1e-3
    assert (vals < 0).any()  # unbiased estimator: not clamped
    assert min(far) > vals.max()


# ---------------------------------------------------------------- Vendi


def test_vendi_identical_and_orthonormal():
    v = torch.randn(8, generator=_gen(23), dtype=F64)
    assert float(M.vendi_score(v.repeat(10, 1))) == pytest.approx(1.0, abs=1e-9)
    eye = torch.eye(6, dtype=F64) * 3.0
    for q in (0.0, 0.5, 1.0, 2.0, math.inf):
        assert float(M.vendi_score(eye, q=q)) == pytest.approx(6.0, rel=1e-9)
        assert float(M.vendi_score(v.repeat(5, 1), q=q)) == pytest.approx(1.0, rel=1e-9)


def _vendi_eig(x: np.ndarray, q: float) -> float:
    xn = x / np.linalg.norm(x, axis=1, keepdims=True)
    lam = np.linalg.eigvalsh(xn @ xn.T / len(x))
    lam = lam[lam > 1e-12]
    if q == 1:
        return float(np.exp(-(lam * np.log(lam)).sum()))
    if math.isinf(q):
        return float(1 / lam.max())
    return float((lam**q).sum() ** (1 / (1 - q)))


@pytest.mark.parametrize("n,d", [(12, 5), (5, 12), (30, 30)])
@pytest.mark.parametrize("q", [0.5, 1.0, 2.0, math.inf])
def test_vendi_equals_eigen_definition(n, d, q):
    x = _data(n, d, 24 + n, shift=0.2)
    assert float(M.vendi_score(x, q=q)) == pytest.approx(_vendi_eig(x.numpy(), q), rel=1e-9)


def test_vendi_zero_embedding_error():
    x = _data(5, 3, 25)
    x[2] = 0
    with pytest.raises(MetricError, match="sample 2 has a zero embedding"):
        M.vendi_score(x)


# ---------------------------------------------------------------- centroid


def test_centroid_similarity():
    x = torch.tensor([[1.0, 0.0], [0.0, 2.0], [-3.0, 0.0]], dtype=F64)
    got = M.centroid_similarity(x, torch.tensor([5.0, 0.0]))
    torch.testing.assert_close(got, torch.tensor([1.0, 0.0, -1.0], dtype=F64))


# ---------------------------------------------------------------- leave-one-out credits vs brute force


@pytest.mark.parametrize("n,d", [(6, 16), (20, 20), (40, 8)])
def test_fad_leave_one_out_equals_brute_force(n, d):
    ref = M.gaussian_stats(_data(200, d, 26, scale=1.5))
    x = _data(n, d, 27, shift=0.3)
    loo = M.fad_leave_one_out(x, ref)
    assert float(loo.full) == pytest.approx(float(M.fad_from_embeddings(x, ref)), rel=1e-10)
    brute = torch.stack([M.fad_from_embeddings(_drop(x, i), ref) for i in range(n)])
    torch.testing.assert_close(loo.minus, brute, rtol=1e-6, atol=0)
    credit = loo.credit(higher_is_better=False)
    brute_credit = -(float(M.fad_from_embeddings(x, ref)) - brute)
    assert float((credit - brute_credit).abs().max()) <= 1e-6 * float(loo.full)


@pytest.mark.parametrize("n,d", [(7, 16), (25, 6)])
@pytest.mark.parametrize("q", [1.0, 0.5, 2.0])
def test_vendi_leave_one_out_equals_brute_force(n, d, q):
    x = _data(n, d, 28, shift=0.5)
    loo = M.vendi_leave_one_out(x, q=q)
    brute = torch.stack([M.vendi_score(_drop(x, i), q=q) for i in range(n)])
    torch.testing.assert_close(loo.minus, brute, rtol=1e-6, atol=0)
    torch.testing.assert_close(loo.full, M.vendi_score(x, q=q))


def test_kad_leave_one_out_equals_brute_force():
    x, y = _data(15, 5, 29, shift=0.2), _data(20, 5, 30)
    h = M.median_bandwidth(y)
    loo = M.kad_leave_one_out(x, y)
    brute = torch.stack([M.kad(_drop(x, i), y, bandwidth=h) for i in range(15)])
    torch.testing.assert_close(loo.minus, brute, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(loo.full, M.kad(x, y))


def test_leave_one_out_needs_three():
    ref = M.gaussian_stats(_data(20, 3, 31))
    with pytest.raises(MetricError, match="at least 3"):
        M.fad_leave_one_out(_data(2, 3, 32), ref)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu():
    ref = M.gaussian_stats(_data(300, 32, 33))
    x = _data(50, 32, 34, shift=0.2)
    cpu = M.fad_leave_one_out(x, ref)
    gpu = M.fad_leave_one_out(x.cuda(), ref.to("cuda"))
    torch.testing.assert_close(gpu.minus.cpu(), cpu.minus, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(M.vendi_score(x.cuda()).cpu(), M.vendi_score(x), rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(M.per_song_fad(x.cuda().reshape(5, 10, 32), ref.to("cuda")).cpu(),
                               M.per_song_fad(x.reshape(5, 10, 32), ref), rtol=1e-9, atol=1e-9)
