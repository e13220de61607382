"""Benchmark dragontune.metrics against the SciPy ``sqrtm`` path used by fadtk / frechet-audio-distance.

Every figure is a ratio against a baseline timed in the same run, on the same machine. Writes a markdown
section to ``benchmarks/results/metrics.md`` (``--out`` to change). ``--device cuda`` runs dragontune's side
on a GPU (the SciPy baselines always run on the CPU, as in those packages). Takes ~1-3 minutes on 2 CPU cores.

    python benchmarks/bench_metrics.py [--device cpu|cuda] [--threads N] [--quick]
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import subprocess
import sys
import time
from pathlib import Path


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu", help="cpu or cuda (dragontune side only)")
    ap.add_argument("--threads", type=int, default=1,
                    help="CPU threads for torch and the SciPy/NumPy BLAS (default 1: stable on a shared machine; "
                         "0 = library defaults)")
    ap.add_argument("--quick", action="store_true", help="smaller sizes (smoke test)")
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent / "results" / "metrics.md"))
    return ap


_EARLY, _ = _parser().parse_known_args()
if _EARLY.threads:  # BLAS thread counts must be set before NumPy/SciPy load their BLAS
    for _v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[_v] = str(_EARLY.threads)

import numpy as np  # noqa: E402
import scipy  # noqa: E402
import scipy.linalg  # noqa: E402
import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from dragontune import metrics as M  # noqa: E402

F64 = torch.float64


# ------------------------------------------------------------------------------------------ baselines (SciPy)


def scipy_frechet(mu1: np.ndarray, c1: np.ndarray, mu2: np.ndarray, c2: np.ndarray) -> float:
    """What fadtk and frechet-audio-distance do: sqrtm of the non-symmetric product, real part, trace."""
    covmean = scipy.linalg.sqrtm(c1 @ c2)
    covmean = covmean.real
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(c1) + np.trace(c2) - 2.0 * np.trace(covmean))


def scipy_per_song(frames: np.ndarray, mu_r: np.ndarray, c_r: np.ndarray) -> float:
    return scipy_frechet(frames.mean(0), np.cov(frames, rowvar=False), mu_r, c_r)


def vendi_nxn(x: torch.Tensor) -> torch.Tensor:
    """Vendi score through the n x n kernel matrix (the definition, as the vendi-score package computes it)."""
    xn = x / x.norm(dim=1, keepdim=True)
    ev = torch.linalg.eigvalsh(xn @ xn.T / x.shape[0]).clamp_min(0)
    ev = ev[ev > 0]
    return torch.exp(-(ev * ev.log()).sum())


# ------------------------------------------------------------------------------------------ timing helpers


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def timeit(fn, device: torch.device, reps: int = 3, warmup: int = 1) -> float:
    """Median wall time of ``reps`` calls (after ``warmup`` calls), in seconds."""
    for _ in range(warmup):
        fn()
    _sync(device)
    ts = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        _sync(device)
        ts.append(time.perf_counter() - t0)
    return float(np.median(ts))


def _fmt(t: float) -> str:
    return f"{t * 1e3:.2f} ms" if t < 1 else f"{t:.2f} s"


def machine_line(device: torch.device) -> str:
    try:
        cpu = next(
            (ln.split(":", 1)[1].strip() for ln in subprocess.run(["lscpu"], capture_output=True, text=True).stdout.splitlines()
             if ln.startswith("Model name")),
            platform.processor() or "unknown CPU",
        )
    except OSError:
        cpu = platform.processor() or "unknown CPU"
    gpu = f", GPU {torch.cuda.get_device_name(device)}" if device.type == "cuda" else ""
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return (
        f"CPU {cpu} ({os.cpu_count()} cores visible, torch threads {torch.get_num_threads()}){gpu}; "
        f"torch {torch.__version__}, SciPy {scipy.__version__}, NumPy {np.__version__}; "
        f"1-min load average at start {load:.1f}"
    )


def _data(n: int, d: int, seed: int, device: torch.device, shift: float = 0.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    mix = torch.randn(d, d, generator=g, dtype=F64) / d**0.5 + torch.eye(d, dtype=F64)
    return ((torch.randn(n, d, generator=g, dtype=F64) @ mix) + shift).to(device)


# ------------------------------------------------------------------------------------------ benchmarks


def bench_frechet(device: torch.device, dims: list[int], rows: list[str]) -> None:
    for d in dims:
        ref = M.gaussian_stats(_data(max(3 * d, 1000), d, 1, device))
        gen = M.gaussian_stats(_data(max(2 * d, 1000), d, 2, device, shift=0.1))
        ref.sqrt()  # cached exemplar side
        c1, c2 = gen.cov.cpu().numpy(), ref.cov.cpu().numpy()
        m1, m2 = gen.mu.cpu().numpy(), ref.mu.cpu().numpy()
        reps_b = 3 if d <= 512 else 1
        t_base = timeit(lambda: scipy_frechet(m1, c1, m2, c2), torch.device("cpu"), reps=reps_b, warmup=1 if d <= 512 else 0)
        t_cached = timeit(lambda: M.frechet_distance(gen.mu, gen.cov, ref.mu, ref.cov, sqrt_cov2=ref.sqrt()), device, reps=5)
        t_uncached = timeit(lambda: M.frechet_distance(gen.mu, gen.cov, ref.mu, ref.cov), device, reps=3)
        ours = float(M.frechet_distance(gen.mu, gen.cov, ref.mu, ref.cov, sqrt_cov2=ref.sqrt()))
        base = scipy_frechet(m1, c1, m2, c2)
        rows.append(
            f"| Fréchet distance, d = {d} (both statistics given) | {_fmt(t_base)} | {_fmt(t_cached)} cached root / "
            f"{_fmt(t_uncached)} uncached | **{t_base / t_cached:.0f}×** / {t_base / t_uncached:.0f}× | "
            f"rel. diff {abs(ours - base) / base:.1e} |"
        )


def bench_fad_with_stats(device: torch.device, rows: list[str], n: int = 4000, d: int = 512) -> None:
    x = _data(n, d, 3, device, shift=0.1)
    ref = M.gaussian_stats(_data(3 * d, d, 1, device))
    ref.sqrt()
    st = M.gaussian_stats(x)
    t_total = timeit(lambda: M.fad_from_embeddings(x, ref), device, reps=5)
    t_cov = timeit(lambda: M.gaussian_stats(x), device, reps=5)
    t_eig = timeit(lambda: torch.linalg.eigvalsh(st.cov), device, reps=5)
    floor = t_cov + t_eig
    rows.append(
        f"| FAD from embeddings, n = {n}, d = {d} (statistics + distance, cached reference root) | floor: covariance "
        f"{_fmt(t_cov)} + one eigvalsh {_fmt(t_eig)} = {_fmt(floor)} | {_fmt(t_total)} | **{t_total / floor:.2f}× the floor** | goal ≤ 1.5× |"
    )


def bench_per_song(device: torch.device, rows: list[str], clips: int = 64, frames: int = 16, d: int = 512, base_clips: int = 4) -> None:
    ref = M.gaussian_stats(_data(3 * d, d, 1, device))
    x = _data(clips * frames, d, 4, device, shift=0.1).reshape(clips, frames, d)
    xs = x.cpu().numpy()
    mu_r, c_r = ref.mu.cpu().numpy(), ref.cov.cpu().numpy()
    t0 = time.perf_counter()
    base_vals = [scipy_per_song(xs[b], mu_r, c_r) for b in range(base_clips)]
    t_base_clip = (time.perf_counter() - t0) / base_clips
    t_base = t_base_clip * clips
    t_ours = timeit(lambda: M.per_song_fad(x, ref), device, reps=5)
    ours = M.per_song_fad(x, ref)[:base_clips].cpu().numpy()
    rel = float(np.max(np.abs(ours - np.array(base_vals)) / np.array(base_vals)))
    rows.append(
        f"| per-song FAD, {clips} clips × {frames} frames, d = {d} | {_fmt(t_base)} (per-clip sqrtm; {base_clips} clips timed, "
        f"×{clips // base_clips if clips % base_clips == 0 else clips / base_clips:.1f}) | {_fmt(t_ours)} (batched Gram) | "
        f"**{t_base / t_ours:.0f}×** | rel. diff {rel:.1e} (SciPy's sqrtm of a singular product) |"
    )


def bench_loo(device: torch.device, rows: list[str], n: int = 256, d: int = 512, brute_subsets: int = 8) -> None:
    ref = M.gaussian_stats(_data(3 * d, d, 1, device))
    ref.sqrt()
    x = _data(n, d, 5, device, shift=0.1)
    t_loo = timeit(lambda: M.fad_leave_one_out(x, ref), device, reps=3)
    t_one = timeit(lambda: M.fad_from_embeddings(x, ref), device, reps=5)
    st = M.gaussian_stats(x)
    t_one_dxd = timeit(
        lambda: (lambda s: M.frechet_distance(s.mu, s.cov, ref.mu, ref.cov, sqrt_cov2=ref.sqrt()))(M.gaussian_stats(x)),
        device, reps=3,
    )
    keep = [torch.cat([x[:i], x[i + 1 :]]) for i in range(brute_subsets)]
    t0 = time.perf_counter()
    brute = torch.stack([M.fad_from_embeddings(k, ref) for k in keep])
    _sync(device)
    t_brute = (time.perf_counter() - t0) / brute_subsets * n
    loo = M.fad_leave_one_out(x, ref)
    err = float(((loo.minus[:brute_subsets] - brute).abs() / brute).max())
    del st
    rows.append(
        f"| leave-one-out FAD credits, N = {n}, d = {d} | {n} brute-force FADs: {_fmt(t_brute)} ({brute_subsets} timed); "
        f"one FAD: {_fmt(t_one)} (Gram route), {_fmt(t_one_dxd)} (statistics + d×d route) | {_fmt(t_loo)} | "
        f"**{t_brute / t_loo:.0f}× faster than brute force; {t_loo / t_one:.2f}× one Gram FAD, {t_loo / t_one_dxd:.2f}× one d×d FAD** "
        f"| max rel. diff vs brute force {err:.1e} (goal ≤ 5× one FAD) |"
    )


def bench_vendi(device: torch.device, rows: list[str], n: int = 2000, d: int = 512) -> None:
    x = _data(n, d, 6, device)
    t_base = timeit(lambda: vendi_nxn(x), device, reps=1, warmup=0)
    t_ours = timeit(lambda: M.vendi_score(x), device, reps=3)
    rel = abs(float(M.vendi_score(x)) - float(vendi_nxn(x))) / float(vendi_nxn(x))
    rows.append(
        f"| Vendi score, n = {n}, d = {d} | {_fmt(t_base)} (n×n eigvalsh) | {_fmt(t_ours)} (d×d dual) | "
        f"**{t_base / t_ours:.1f}×** | rel. diff {rel:.1e} |"
    )
    xs = x[: min(256, n)]
    t_vl = timeit(lambda: M.vendi_leave_one_out(xs), device, reps=3)
    t_v1 = timeit(lambda: M.vendi_score(xs), device, reps=3)
    rows.append(
        f"| Vendi leave-one-out, N = {xs.shape[0]}, d = {d} | one Vendi {_fmt(t_v1)} | {_fmt(t_vl)} | {t_vl / t_v1:.1f}× one Vendi | |"
    )


def main(argv: list[str] | None = None) -> int:
    ap = _parser()
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        ap.error("--device cuda requested but CUDA is not available")
    t_start = time.perf_counter()
    machine = machine_line(device)
    rows: list[str] = []
    if args.quick:
        bench_frechet(device, [64, 128], rows)
        bench_fad_with_stats(device, rows, n=500, d=64)
        bench_per_song(device, rows, clips=8, frames=8, d=64, base_clips=4)
        bench_loo(device, rows, n=32, d=64, brute_subsets=8)
        bench_vendi(device, rows, n=200, d=64)
    else:
        bench_frechet(device, [128, 512, 2048], rows)
        bench_fad_with_stats(device, rows)
        bench_per_song(device, rows)
        bench_loo(device, rows)
        bench_vendi(device, rows)
    for r in rows:
        print(r, flush=True)
    total = time.perf_counter() - t_start
    lines = [
        f"## Metrics ({'quick, ' if args.quick else ''}device {device.type})",
        "",
        f"Machine: {machine}. Run {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC, {total:.0f} s in all, "
        "`python benchmarks/bench_metrics.py"
        + (f" --device {args.device}" if args.device != "cpu" else "")
        + (f" --threads {args.threads}" if args.threads != 1 else "")
        + (" --quick" if args.quick else "")
        + "`.",
        "",
        "Baselines are timed in the same run: the SciPy path of fadtk / frechet-audio-distance "
        "(`scipy.linalg.sqrtm(C1 @ C2).real`, trace formula; always on the CPU), N separate FADs for leave-one-out, "
        "and the n×n kernel eigenvalues for Vendi. Medians of several calls; the slowest baselines are timed on fewer "
        "calls or a subset of clips and scaled (stated in the row). All dragontune figures are float64.",
        "",
        "| task | baseline | dragontune | speed-up / ratio | notes |",
        "|---|---|---|---|---|",
        *rows,
        "",
    ]
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".md.tmp")
    tmp.write_text("\n".join(lines))
    os.replace(tmp, out)
    print(f"wrote {out} ({total:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
