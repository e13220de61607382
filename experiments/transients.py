"""Where do the peaks of generated clips come from: the decoder, the sampler or the model's latents?

    python experiments/transients.py [--checkpoint PATH] [--n 32] [--corpus data/corpus]

At guidance rescale 1 a generated clip has about the corpus's RMS but peaks 2-3x full scale (docs/sampling.md).
This measures, next to the corpus clips' own latents, how far a clip's loudest frame rises above its typical frame
("max - median": nats of total mel energy above the clip's median frame) and the largest rise from one frame to the
next ("max jump"), and the decoded clip's clipped-sample share, for

- several samplers, step counts and guidance settings (if the spikes are the sampler's, they change with these);
- one set of generated latents decoded by variants of the decoder (more Griffin-Lim iterations, no momentum,
  the plain pseudo-inverse, zero initial phase): if the peaks were the phase reconstruction's, these would move;
- the same latents smoothed over three frames (a counterfactual: what a smoother temporal envelope would give).

Prints markdown tables. Generation uses seed = index, test-split captions.
"""

from __future__ import annotations

import argparse
import time

import torch

from dragontune.audio import fit_length, load_audio
from dragontune.data.dataset import filter_rows, load_metadata
from dragontune.generate import SamplerConfig, generate_latents
from dragontune.models.checkpoint import load_model

SETTINGS = [  # (sampler, steps, cfg, cfg_rescale, sigma_min)
    ("dpmpp_2m", 40, 1.0, 0.0, 0.002),
    ("dpmpp_2m", 12, 4.0, 1.0, 0.002),
    ("dpmpp_2m", 40, 4.0, 1.0, 0.002),
    ("dpmpp_2m", 100, 4.0, 1.0, 0.002),
    ("dpmpp_2m", 40, 4.0, 1.0, 0.05),
    ("euler", 40, 4.0, 1.0, 0.002),
    ("heun", 40, 4.0, 1.0, 0.002),
]
DECODER_VARIANTS = [{}, {"griffin_lim_iters": 128}, {"gl_momentum": 0.0}, {"inverse": "pinv"}, {"init_phase": "zero"}]


def frame_log_energy(z: torch.Tensor, codec) -> torch.Tensor:
    """``[B, F]`` log of each frame's total mel energy."""
    return torch.logsumexp(z / codec.scale + codec.shift, dim=1)


def cap_frame_energy(z: torch.Tensor, codec, top: float) -> torch.Tensor:
    """Latents whose frames are scaled down (all bands alike) so that no frame's log energy exceeds ``top``."""
    logmel = z / codec.scale + codec.shift
    over = (torch.logsumexp(logmel, dim=1, keepdim=True) - top).clamp(min=0.0)
    return (logmel - over - codec.shift) * codec.scale


def describe(z: torch.Tensor, audio: torch.Tensor, codec) -> str:
    e = frame_log_energy(z, codec)
    rise = e.amax(dim=1) - e.median(dim=1).values
    jump = (e[:, 1:] - e[:, :-1]).amax(dim=1)
    rms = audio.pow(2).mean(dim=(1, 2)).sqrt()
    peak = audio.abs().amax(dim=(1, 2))
    clipped = (audio.abs() > 1.0).float().mean()
    return (f"{rise.median():.2f} | {rise.quantile(0.9):.2f} | {jump.median():.2f} | {rms.median():.3f} "
            f"| {peak.median():.2f} | {100 * clipped:.2f} %")


HEAD = ("| max - median, median | max - median, p90 | max jump, median | RMS median | peak median | clipped |",
        "|---|---|---|---|---|---|")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--checkpoint", default=None)
    ap.add_argument("--corpus", default="data/corpus")
    ap.add_argument("--n", type=int, default=32, help="test captions (and test corpus clips)")
    args = ap.parse_args()
    model = load_model(args.checkpoint)
    codec, sr = model.codec, model.sample_rate
    T = codec.num_samples(model.spec.latent_frames)
    meta = load_metadata(args.corpus)
    rows = filter_rows(meta, {"split": "test"})[: args.n]
    real = torch.stack([fit_length(load_audio(f"{args.corpus}/{r['file']}", sr), T) for r in rows])
    z_real = codec.encode(real)
    prompts = [r["caption"] for r in rows]
    seeds = list(range(len(rows)))

    print(f"{len(rows)} test captions / clips, checkpoint {args.checkpoint or 'committed baseline'}\n")
    print("| source | " + HEAD[0][2:])
    print("|---" + HEAD[1])
    print(f"| corpus clips through the codec | {describe(z_real, codec.decode(z_real), codec)} |")
    kept = None
    for sampler, steps, cfg, phi, sigma_min in SETTINGS:
        t0 = time.time()
        z = generate_latents(model, prompts, seeds, SamplerConfig(steps=steps, sampler=sampler, cfg=cfg, cfg_rescale=phi,
                                                                  sigma_min=sigma_min, batch_size=32), disable=True)
        name = (f"{sampler}, {steps} steps, cfg {cfg:g}, rescale {phi:g}, sigma_min {sigma_min:g} "
                f"({time.time() - t0:.0f} s)")
        print(f"| {name} | {describe(z, codec.decode(z), codec)} |", flush=True)
        if (sampler, steps, cfg, phi, sigma_min) == ("dpmpp_2m", 40, 4.0, 1.0, 0.002):
            kept = z

    print("\nThe dpmpp_2m, 40 steps, cfg 4, rescale 1 latents through decoder variants (corpus clips alongside):\n")
    print("| decoder | " + HEAD[0][2:] + " corpus clips: clipped |")
    print("|---" + HEAD[1] + "---|")
    for kw in DECODER_VARIANTS:
        c2 = codec.replace(**kw) if kw else codec
        real_clipped = float((c2.decode(z_real).abs() > 1.0).float().mean())
        print(f"| {kw or 'default'} | {describe(kept, c2.decode(kept), codec)} | {100 * real_clipped:.2f} % |",
              flush=True)
    # a cap at the loudest frame of the corpus's training clips (every 4th, up to 320)
    train = filter_rows(meta, {"split": "train"})[::4][:320]
    z_train = codec.encode(torch.stack([fit_length(load_audio(f"{args.corpus}/{r['file']}", sr), T) for r in train]))
    top = float(frame_log_energy(z_train, codec).max())
    share = float((frame_log_energy(kept, codec) > top).float().mean())
    capped = cap_frame_energy(kept, codec, top)
    print(f"| default, frames capped at the corpus's loudest ({top:.2f} nats, {len(train)} training clips; "
          f"{100 * share:.2f} % of generated frames above) | {describe(capped, codec.decode(capped), codec)} | |")
    smooth = torch.nn.functional.avg_pool1d(kept, 3, 1, 1, count_include_pad=False)
    print(f"| default, latents averaged over 3 frames | {describe(smooth, codec.decode(smooth), codec)} | |")
    # where the rises sit relative to the DiT's patches
    patch = getattr(getattr(model.spec, "model", None), "patch_size", None)
    if patch:
        e = frame_log_energy(kept, codec)
        at = ((e[:, 1:] - e[:, :-1]) > 1.0).nonzero()[:, 1] + 1
        print(f"\nrises > 1 nat by frame position modulo the patch size {patch}: "
              f"{torch.bincount(at % patch, minlength=patch).tolist()}")


if __name__ == "__main__":
    main()
