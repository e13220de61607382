"""Model benchmarks: pre-training steps/s at the baseline size, 40-step DPM++ 2M + CFG samples/s, and
batched CFG (one forward of 2B) vs two forwards of B. On CUDA also bf16 autocast and model FLOPs utilisation.

    python benchmarks/bench_model.py [--device cpu|cuda] [--out benchmarks/results/model-cpu.md]

Random text embeddings stand in for the text encoder (its cost is cached per prompt in real runs).
"""

from __future__ import annotations

import argparse
import platform
import time

import torch

from dragontune.config import load_config
from dragontune.models.dit import DiT, DiTConfig
from dragontune.models.edm import EDMDenoiser, count_params, denoising_loss, model_flops_per_sample, sample_sigma
from dragontune.sampling import CFGDenoiser, karras_sigmas, sample_dpmpp_2m, seeded_noise
from dragontune.training.pretrain import PretrainConfig

from _emit import emit  # benchmarks/ is on sys.path when a benchmark runs as a script


def sync(dev):
    if dev.type == "cuda":
        torch.cuda.synchronize()


def timeit(fn, dev, reps, warm=1):
    for _ in range(warm):
        fn()
    sync(dev)
    t = time.perf_counter()
    for _ in range(reps):
        fn()
    sync(dev)
    return (time.perf_counter() - t) / reps


def machine(dev) -> str:
    if dev.type == "cuda":
        return f"{torch.cuda.get_device_name(dev)}, torch {torch.__version__}"
    cpu = "unknown CPU"
    try:
        for ln in open("/proc/cpuinfo"):
            if ln.startswith("model name"):
                cpu = ln.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {torch.get_num_threads()} threads, torch {torch.__version__}, {platform.python_version()}"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--config", default="configs/baseline.yaml")
    ap.add_argument("--out", default=None)
    ap.add_argument("--width", type=int, default=None, help="override the model width (larger GPU model)")
    ap.add_argument("--depth", type=int, default=None)
    ap.add_argument("--batch", type=int, default=None)
    ap.add_argument("--reps", type=int, default=None)
    args = ap.parse_args()
    dev = torch.device(args.device)
    cfg = load_config(PretrainConfig, args.config)
    mcfg = cfg.model
    if args.width or args.depth:
        mcfg = DiTConfig(**{**mcfg.__dict__, "width": args.width or mcfg.width, "depth": args.depth or mcfg.depth,
                            "heads": max(4, (args.width or mcfg.width) // 64)})
    B = args.batch or cfg.batch_size
    F = int(cfg.data.duration * cfg.codec.sample_rate) // cfg.codec.hop_length
    F -= F % mcfg.patch_size
    L = 20
    reps = args.reps or (5 if dev.type == "cpu" else 30)
    torch.manual_seed(0)
    net = DiT(mcfg).to(dev)
    D = EDMDenoiser(net)
    opt = torch.optim.Adam(net.parameters(), lr=1e-4)
    x0 = torch.randn(B, mcfg.latent_channels, F, device=dev) * 0.5
    cond = {"text": torch.randn(B, L, mcfg.text_dim, device=dev), "text_mask": torch.ones(B, L, dtype=torch.bool, device=dev)}
    g = torch.Generator().manual_seed(0)
    rows = []
    flops = model_flops_per_sample(mcfg, F, L)

    def train_step(bf16):
        s = sample_sigma(B, g, device=dev)
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=bf16):
            loss = denoising_loss(D, x0, torch.randn_like(x0), s, cond).mean()
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
        opt.step()

    modes = [False] + ([True] if dev.type == "cuda" else [])
    for bf16 in modes:
        t = timeit(lambda: train_step(bf16), dev, reps)
        tag = "bf16" if bf16 else "fp32"
        r = {"what": f"pretrain step ({tag}, batch {B})", "value": f"{1 / t:.2f} steps/s ({t * 1000:.0f} ms/step)"}
        if dev.type == "cuda":
            r["mfu"] = 3 * flops * B / t
        rows.append(r)

    # sampling: 40-step DPM++ 2M with CFG (one batched forward per step)
    nS = B
    sig = karras_sigmas(40, device=dev, dtype=torch.float32)
    uncond = {"text": torch.zeros_like(cond["text"][:nS]), "text_mask": torch.zeros_like(cond["text_mask"][:nS])}
    c = {k: v[:nS] for k, v in cond.items()}
    net.eval()
    for bf16 in modes:
        def run():
            x = seeded_noise(list(range(nS)), (mcfg.latent_channels, F), device=dev) * sig[0]
            with torch.no_grad(), torch.autocast(dev.type, dtype=torch.bfloat16, enabled=bf16):
                sample_dpmpp_2m(CFGDenoiser(D, c, uncond, 4.0), x, sig, disable=True)
        t = timeit(run, dev, max(1, reps // 5), warm=1)
        tag = "bf16" if bf16 else "fp32"
        r = {"what": f"40-step DPM++ 2M + CFG ({tag}, batch {nS})", "value": f"{nS / t:.2f} samples/s"}
        if dev.type == "cuda":
            r["mfu"] = 40 * 2 * flops * nS / t
        rows.append(r)

    # batched CFG vs two forwards
    xs = torch.randn(nS, mcfg.latent_channels, F, device=dev)
    ss = torch.full((nS,), 1.0, device=dev)
    cfg_one = CFGDenoiser(D, c, uncond, 4.0)

    def two():
        cc = D(xs, ss, **c)
        uu = D(xs, ss, **uncond)
        return uu + 4.0 * (cc - uu)

    with torch.no_grad():
        torch.testing.assert_close(cfg_one(xs, ss), two(), rtol=1e-4, atol=1e-4)
        t1 = timeit(lambda: cfg_one(xs, ss), dev, reps * 2)
        t2 = timeit(two, dev, reps * 2)
    rows.append({"what": f"CFG evaluation, batch {nS}: one forward of 2B vs two of B",
                 "value": f"{t1 * 1000:.1f} ms vs {t2 * 1000:.1f} ms (two/one = {t2 / t1:.2f}x)"})

    peak = 989e12 if dev.type == "cuda" and "H100" in torch.cuda.get_device_name(dev) else None
    lines = [f"### Model ({args.device}): {machine(dev)}", "",
             f"DiT {count_params(net) / 1e6:.2f}M params (width {mcfg.width}, depth {mcfg.depth}, patch {mcfg.patch_size}), "
             f"latent {mcfg.latent_channels}x{F}, text length {L}; forward {flops / 1e9:.2f} GFLOP/sample. "
             f"Command: `python benchmarks/bench_model.py --device {args.device}"
             + (f" --width {args.width}" if args.width else "") + (f" --depth {args.depth}" if args.depth else "")
             + (f" --batch {args.batch}" if args.batch else "") + "`", "",
             "| measurement | result |" + (" MFU |" if dev.type == "cuda" else ""),
             "|---|---|" + ("---|" if dev.type == "cuda" else "")]
    for r in rows:
        extra = ""
        if dev.type == "cuda":
            extra = f" {100 * r['mfu'] / peak:.1f} % of {peak / 1e12:.0f} TFLOP/s |" if "mfu" in r and peak else " |"
        lines.append(f"| {r['what']} | {r['value']} |" + extra)
    emit(lines, args.out)


if __name__ == "__main__":
    main()
