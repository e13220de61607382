"""One DRAGON training step vs one plain EDM fine-tuning step on the same batch (ratio in one run).

    python benchmarks/bench_dragon.py [--device cpu|cuda] [--pairs 8] [--reps 5] [--out FILE]

DRAGON (DPO): policy forward + backward on the 2P pair members and a no-grad forward of the frozen
reference on the same inputs (shared sigma and noise), then the DPO loss. Plain EDM: forward + backward of
the policy on the same 2P samples. Both take one Adam step with gradient clipping. Uses the committed
baseline's architecture and weights.
"""

from __future__ import annotations

import argparse
import time

import torch

from _emit import emit  # benchmarks/ is on sys.path when a benchmark runs as a script
from bench_model import machine
from dragontune.dragon.builders import Demonstrations
from dragontune.dragon.loop import DragonConfig, _train_round
from dragontune.models.checkpoint import load_model
from dragontune.models.edm import count_params, denoising_loss, sample_sigma


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--pairs", type=int, default=8)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    dev = torch.device(args.device)
    policy = load_model(None, device=dev)
    ref = policy.copy_frozen()
    P = args.pairs
    g = torch.Generator().manual_seed(0)
    lat = 0.5 * torch.randn((2 * P,) + policy.latent_shape, generator=g)
    prompts = [f"a calm piano melody number {i // 2}" for i in range(2 * P)]
    demos = Demonstrations(pairs=torch.arange(2 * P).view(P, 2), labels=None,
                           kept=torch.ones(2 * P, dtype=torch.bool), n_dropped_nan=0, info={})
    cfg = DragonConfig(updates_per_round=1, batch_per_update=P, device=args.device)
    opt = torch.optim.Adam(policy.net.parameters(), lr=1e-6)
    policy.cond(prompts)  # warm the text cache: both variants then see cached prompts

    def sync():
        if dev.type == "cuda":
            torch.cuda.synchronize()

    def dragon_step(i):
        _train_round(cfg, "dpo", 1e-6, policy, ref, opt, demos, lat, prompts, i, dev.type == "cuda")

    def edm_step(i):
        policy.net.train()
        x0 = lat.to(dev)
        sig = sample_sigma(2 * P, g, cfg.p_mean, cfg.p_std, dev)
        cond = policy.cond(prompts)
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=dev.type == "cuda"):
            loss = denoising_loss(policy.denoiser, x0, torch.randn(x0.shape, generator=g).to(dev), sig, cond).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(policy.net.parameters(), 1.0)
        opt.step()

    res = {}
    for name, fn in (("edm", edm_step), ("dragon", dragon_step)):
        fn(0)
        sync()
        t = time.perf_counter()
        for i in range(args.reps):
            fn(i + 1)
        sync()
        res[name] = (time.perf_counter() - t) / args.reps
    try:
        import os

        load = os.getloadavg()[0]
    except OSError:
        load = float("nan")
    text = (f"### DRAGON step vs plain EDM step ({args.device}: {machine(dev)}, load average {load:.1f})\n\n"
            f"Command: `python benchmarks/bench_dragon.py --device {args.device} --pairs {P} --reps {args.reps}`; committed baseline "
            f"({count_params(policy.net) / 1e6:.2f}M params), {P} pairs = {2 * P} clips of 4 s per step.\n\n"
            "| step | time | ratio |\n|---|---|---|\n"
            f"| plain EDM fine-tuning (policy forward + backward, {2 * P} clips) | {1000 * res['edm']:.0f} ms | 1.00 |\n"
            f"| DRAGON DPO (policy fwd + bwd, frozen reference fwd, shared sigma/noise) | {1000 * res['dragon']:.0f} ms | "
            f"{res['dragon'] / res['edm']:.2f} |")
    emit([text], args.out)


if __name__ == "__main__":
    main()
