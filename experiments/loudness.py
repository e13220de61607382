"""Why do generated clips decode loud? Level of generated audio against the corpus, stage by stage.

    python experiments/loudness.py [--checkpoint PATH] [--n 64] [--steps 40] [--cfg 1 4] [--cfg-rescale 0 1]

For ``n`` test-split captions (seed = index) and each guidance scale: the latents' statistics next to the
corpus clips' own latents (mean, std, 99.9th percentile, the share of latent values above the corpus's maximum,
the mean per-frame log-mel energy), and the decoded audio's RMS, peak and share of samples beyond full scale,
next to the corpus clips and their codec round trip. Prints a markdown table.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from dragontune.audio import fit_length, load_audio
from dragontune.data.dataset import filter_rows, load_metadata
from dragontune.generate import SamplerConfig, generate_latents
from dragontune.models.checkpoint import load_model


def audio_stats(a: torch.Tensor) -> dict:
    rms = a.pow(2).mean(dim=(1, 2)).sqrt()
    peak = a.abs().amax(dim=(1, 2))
    return {"rms_median": float(rms.median()), "rms_p90": float(rms.quantile(0.9)),
            "peak_median": float(peak.median()), "peak_max": float(peak.max()),
            "clipped_share": float((a.abs() > 1.0).float().mean())}


def latent_stats(z: torch.Tensor, ref_max: float, codec) -> dict:
    logmel = z / codec.scale + codec.shift
    frame_energy = torch.logsumexp(logmel, dim=1)  # log of the total mel energy per frame
    return {"mean": float(z.mean()), "std": float(z.std()), "p999": float(z.flatten().quantile(0.999)),
            "above_corpus_max": float((z > ref_max).float().mean()),
            "frame_log_energy": float(frame_energy.mean()),
            "per_clip_mean_spread": float(z.mean(dim=(1, 2)).std())}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--checkpoint", default=None)
    ap.add_argument("--corpus", default="data/corpus")
    ap.add_argument("--n", type=int, default=64)
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--cfg", type=float, nargs="*", default=[1.0, 4.0])
    ap.add_argument("--sampler", default="dpmpp_2m")
    ap.add_argument("--cfg-rescale", type=float, nargs="*", default=[0.0], help="guidance rescale phi values")
    args = ap.parse_args()
    rows = filter_rows(load_metadata(args.corpus), {"split": "test"})[: args.n]
    model = load_model(args.checkpoint)
    codec, sr = model.codec, model.sample_rate
    T = codec.num_samples(model.spec.latent_frames)
    real = torch.stack([fit_length(load_audio(f"{args.corpus}/{r['file']}", sr), T) for r in rows])
    z_real = codec.encode(real)
    ref_max = float(z_real.max())
    lines = [f"| source | latent mean | std | p99.9 | share > corpus max | frame log-energy | clip-mean spread "
             "| RMS median | RMS p90 | peak median | peak max | clipped share |", "|" + "---|" * 12]

    def row(name, z, a):
        ls, au = latent_stats(z, ref_max, codec), audio_stats(a)
        lines.append(f"| {name} | {ls['mean']:.3f} | {ls['std']:.3f} | {ls['p999']:.2f} | {ls['above_corpus_max']:.4f} "
                     f"| {ls['frame_log_energy']:.2f} | {ls['per_clip_mean_spread']:.3f} | {au['rms_median']:.3f} "
                     f"| {au['rms_p90']:.3f} | {au['peak_median']:.2f} | {au['peak_max']:.2f} "
                     f"| {100 * au['clipped_share']:.2f} % |")

    row("corpus clips (their own latents, audio as is)", z_real, real)
    row("corpus clips through the codec", z_real, codec.decode(z_real))
    prompts = [r["caption"] for r in rows]
    for cfg in args.cfg:
        for phi in (args.cfg_rescale if cfg != 1.0 else [0.0]):
            t0 = time.time()
            z = generate_latents(model, prompts, list(range(len(rows))),
                                 SamplerConfig(steps=args.steps, cfg=cfg, cfg_rescale=phi, sampler=args.sampler,
                                               batch_size=32))
            row(f"generated, cfg {cfg:g}, rescale {phi:g} ({time.time() - t0:.0f} s)", z, codec.decode(z))
    print(f"{len(rows)} test captions, {args.steps} {args.sampler} steps, checkpoint "
          f"{args.checkpoint or 'committed baseline'}; corpus latent max {ref_max:.2f}\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
