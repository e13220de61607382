"""Bring your own model: peak memory and step time of a DRAGON step on random Stable Audio pipelines.

    OMP_NUM_THREADS=1 python benchmarks/bench_byom.py [--pairs 4] [--reps 3] [--out FILE]

For each pipeline size (``tiny``: the test pipeline; ``larger``: 8 blocks of width 512) and each variant, a fresh
process loads the pipeline folder and measures

- the resident memory after loading the pipeline and touching its weights (``VmRSS``) and the peak resident memory from then on (``VmHWM``,
  reset with ``/proc/self/clear_refs`` after loading) through set-up (reference, adapters, optimiser) and the steps
  (activations, gradients, Adam state). Workers run with ``MALLOC_MMAP_THRESHOLD_=65536`` so that glibc returns freed
  tensors to the system at once and the resident size follows the live tensors (otherwise freed activations stay
  resident and hide the differences). The figure compared is the peak minus the loaded size;
- the median time of one DRAGON DPO step (``dragontune.dragon.loop._train_round``: policy forward + backward,
  reference forward, shared sigma and noise, Adam) and of one plain fine-tuning step on the same clips (policy
  forward + backward of the model's own objective, Adam), measured in the same process: their ratio.

Variants: ``full`` (full fine-tuning, frozen deep-copy reference), ``lora`` (LoRA rank 16 on attention and MLP,
the reference = adapters disabled, no weight copy), ``lora+copy`` (LoRA with a deep-copy reference: isolates the
copy's memory). Random weights: the numbers are about memory and time, not quality.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from _emit import emit  # benchmarks/ is on sys.path when a benchmark runs as a script

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests"), str(ROOT / "benchmarks")]

SIZES = {
    "tiny": dict(width_heads=2, layers=2, head_dim=16, sample_size=32),
    "larger": dict(width_heads=8, layers=8, head_dim=64, sample_size=256),
}
VARIANTS = ("full", "lora", "lora+copy")


def _status(key: str) -> int:
    for ln in open("/proc/self/status"):
        if ln.startswith(key + ":"):
            return int(ln.split()[1]) * 1024
    raise RuntimeError(key)


def worker(pipe: str, variant: str, pairs: int, reps: int) -> dict:
    import statistics

    import torch

    from dragontune.dragon.builders import Demonstrations
    from dragontune.dragon.loop import DragonConfig, _train_round
    from dragontune.models.loading import load_diffusion_model
    from dragontune.models.lora import LoraSettings, add_lora, make_reference

    torch.manual_seed(0)
    policy = load_diffusion_model(pipe)
    n_base = sum(p.numel() for p in policy.trainable.parameters())
    with torch.no_grad():  # touch every weight page (diffusers may map the file lazily) and the text encoder
        sum(float(p.sum()) for p in policy.trainable.parameters())
        policy.cond(["warm-up prompt"])
    rss_loaded = _status("VmRSS")
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset the peak (VmHWM) to the current RSS
    ref = policy.copy_frozen() if variant in ("full", "lora+copy") else None
    if variant != "full":
        add_lora(policy, LoraSettings(rank=16), policy.family)
    if ref is None:
        ref = make_reference(policy, "adapters_off")
    params = list(policy.parameters())
    n_train = sum(p.numel() for p in params)
    opt = torch.optim.Adam(params, lr=1e-6)
    g = torch.Generator().manual_seed(0)
    n = 2 * pairs
    lat = torch.randn((n,) + policy.latent_shape, generator=g)
    prompts = [f"a soft piano melody {i // 2}" for i in range(n)]
    demos = Demonstrations(pairs=torch.arange(n).view(pairs, 2), labels=None, kept=torch.ones(n, dtype=torch.bool),
                           n_dropped_nan=0, info={})
    cfg = DragonConfig(updates_per_round=1, batch_per_update=pairs, device="cpu")

    def dragon_step(i):
        _train_round(cfg, "dpo", 1e-6, policy, ref, opt, demos, lat, prompts, i, False)

    def plain_step(i):
        policy.trainable.train()
        sig = policy.train_sigma(n, g, cfg.p_mean, cfg.p_std)
        cond = policy.drop_condition(policy.cond(prompts), torch.rand(n, generator=g) < 0.1)
        loss = policy.denoising_error(lat, torch.randn(lat.shape, generator=g), sig, cond).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 45.0)
        opt.step()

    dragon_step(0)  # warm-up (allocates Adam state), then time the steady state
    plain_step(0)
    times = {"dragon": [], "plain": []}
    for i in range(reps):
        for name, fn in (("dragon", dragon_step), ("plain", plain_step)):
            t = time.perf_counter()
            fn(i + 1)
            times[name].append(time.perf_counter() - t)
    return {"variant": variant, "params_total": n_base, "params_trained": n_train, "rss_loaded": rss_loaded,
            "peak_rss": _status("VmHWM"), "dragon_s": statistics.median(times["dragon"]),
            "plain_s": statistics.median(times["plain"]), "clips": n, "latent": list(policy.latent_shape)}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--pairs", type=int, default=4)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--dir", default=str(ROOT / "runs" / "bench_byom"), help="where the random pipelines are written")
    ap.add_argument("--out", default=None)
    ap.add_argument("--worker", nargs=2, metavar=("PIPE", "VARIANT"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker[0], args.worker[1], args.pairs, args.reps)))
        return
    import platform

    import torch

    from tiny_stable_audio import tiny_stable_audio

    rows = []
    for size, kw in SIZES.items():
        pipe = tiny_stable_audio(Path(args.dir) / size, **kw)
        for variant in VARIANTS:
            cmd = [sys.executable, __file__, "--worker", str(pipe), variant, "--pairs", str(args.pairs),
                   "--reps", str(args.reps)]
            out = subprocess.run(cmd, check=True, capture_output=True, text=True,
                                 env={**os.environ, "HF_HUB_OFFLINE": "1", "MALLOC_MMAP_THRESHOLD_": "65536"}).stdout
            rows.append({"size": size, **json.loads(out.strip().splitlines()[-1])})
            print(rows[-1], file=sys.stderr)
    cpu = next((ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name")), "?")
    load = os.getloadavg()
    mib = 2 ** 20
    lines = [f"### Bring your own model: DRAGON step on random Stable Audio pipelines (CPU)\n",
             f"Machine: {cpu}, {os.cpu_count()} cores, OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', '-')}, "
             f"torch {torch.__version__}, Python {platform.python_version()}; load average at the end "
             f"{load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f} (1/5/15 min; the CPU is shared).",
             f"Command: `OMP_NUM_THREADS=1 python benchmarks/bench_byom.py --pairs {args.pairs} --reps {args.reps}`; "
             f"{2 * args.pairs} clips per step (DPO, {args.pairs} pairs), median of {args.reps} steps after one "
             "warm-up; each row a fresh process (MALLOC_MMAP_THRESHOLD_=65536). Memory: resident after loading the "
             "pipeline, and the peak from then on (reference, adapters, optimiser, the warm-up and timed DRAGON and "
             "plain steps) above it.\n",
             "| pipeline | variant | transformer params | trained params | RSS loaded | peak RSS | peak - loaded "
             "| DRAGON step | plain step | DRAGON / plain |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['size']} (latent {r['latent'][0]}x{r['latent'][1]}) | {r['variant']} | "
                     f"{r['params_total'] / 1e6:.2f} M | {r['params_trained'] / 1e6:.3f} M | "
                     f"{r['rss_loaded'] / mib:.0f} MiB | {r['peak_rss'] / mib:.0f} MiB | "
                     f"{(r['peak_rss'] - r['rss_loaded']) / mib:.0f} MiB | {1000 * r['dragon_s']:.0f} ms | "
                     f"{1000 * r['plain_s']:.0f} ms | {r['dragon_s'] / r['plain_s']:.2f} |")
    lines += ["", "`full`: full fine-tuning with a frozen deep-copy reference; `lora`: LoRA rank 16 on the attention and "
              "MLP projections, the reference = the same transformer with its adapters disabled (no weight copy); "
              "`lora+copy`: LoRA with a deep-copy reference (the difference to `lora` is the copy). Transformer "
              "params exclude the adapters. Peak - loaded holds the reference copy (if any), gradients, Adam state, "
              "activations and the text-encoder/VAE work of the steps. Step times are absolute on a shared CPU; "
              "the ratio compares two steps timed alternately in the same process. CPU only: no GPU was lent to "
              "the session that measured this, so CUDA memory, samples/s and a two-process NCCL run are not "
              "measured here."]
    emit(lines, args.out)


if __name__ == "__main__":
    main()
