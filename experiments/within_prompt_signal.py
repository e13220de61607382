"""Is there a within-prompt signal of a per-sample reward (CLAP score by default) for DRAGON to learn, and do the
demonstrations rank clips as the evaluation does?

    python experiments/within_prompt_signal.py [--reward clap_score|aesthetics] [--n-prompts 16] [--k 8]
        [--compare OTHER_PREDICTOR.safetensors]

Committed baseline, the first training-split captions, K seeds each, generated with the 12-step demonstration
sampler and the 25-step evaluation sampler (plain CFG 3, the same seeds), decoded and scored with the reward
(`clap_score`: clap-mini). Prints the within-prompt and between-prompt spread, the within-prompt correlation of the score with
clipping and level, and how well the 12-step scores rank a prompt's clips as the 25-step ones do. ``--compare`` (aesthetics): how well a second
predictor file ranks the same 12-step clips within each prompt (would it form the same best-vs-worst pairs?).
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from dragontune.data.corpus import DataConfig, ensure_corpus
from dragontune.data.prompts import load_prompts
from dragontune.generate import SamplerConfig, generate_latents
from dragontune.models.loading import load_diffusion_model
from dragontune.rewards.registry import build_reward, score_audio


def within_corr(a: np.ndarray, b: np.ndarray) -> float:
    """Mean over prompts (rows) of the correlation of a and b across a prompt's clips."""
    return float(np.nanmean([np.corrcoef(x, y)[0, 1] for x, y in zip(a, b)]))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n-prompts", type=int, default=16)
    ap.add_argument("--k", type=int, default=8)
    ap.add_argument("--corpus", default="data/corpus")
    ap.add_argument("--reward", default="clap_score", help="clap_score (clap-mini) or aesthetics")
    ap.add_argument("--path", default=None, help="aesthetics: a predictor file other than the packaged one")
    ap.add_argument("--compare", default=None, help="aesthetics: a second predictor file scored on the same clips")
    args = ap.parse_args()
    torch.set_num_threads(1)
    model = load_diffusion_model(None)
    prompts = load_prompts("corpus:train", ensure_corpus(DataConfig(corpus=args.corpus)))[: args.n_prompts]
    n, k = len(prompts), args.k
    clip_prompts = [p for p in prompts for _ in range(k)]
    seeds = [1000 + i for i in range(len(clip_prompts))]
    spec = {"name": "clap_score", "encoder": "clap-mini"} if args.reward == "clap_score" else {"name": args.reward}
    if args.path:
        spec["path"] = args.path
    reward = build_reward(spec)
    scores = {}
    for steps in (12, 25):
        audio = model.decode(generate_latents(model, clip_prompts, seeds, SamplerConfig(steps=steps, cfg=3.0)))
        sc = score_audio(reward, audio, model.sample_rate, clip_prompts).scores.numpy().reshape(n, k)
        clipped = (audio.abs() >= 1.0).float().mean(dim=(1, 2)).numpy().reshape(n, k)
        rms = audio.pow(2).mean(dim=(1, 2)).sqrt().numpy().reshape(n, k)
        scores[steps] = sc
        if args.compare and steps == 12:
            other = score_audio(build_reward({"name": "aesthetics", "path": args.compare}), audio, model.sample_rate,
                                clip_prompts).scores.numpy().reshape(n, k)
            print(f"  --compare on the same clips: within-prompt correlation {within_corr(sc, other):+.3f}; same best "
                  f"clip {np.mean(sc.argmax(1) == other.argmax(1)):.2f}, same worst {np.mean(sc.argmin(1) == other.argmin(1)):.2f}; "
                  f"its within-prompt correlation with the clipped share {within_corr(other, clipped):+.3f}")
        print(f"{steps} steps: mean {sc.mean():.4f}, within-prompt sd {sc.std(axis=1, ddof=1).mean():.4f}, "
              f"between-prompt sd {sc.mean(axis=1).std(ddof=1):.4f}, best minus worst {np.mean(sc.max(1) - sc.min(1)):.4f}")
        print(f"  within-prompt correlation with the clipped share {within_corr(sc, clipped):+.3f}, with log RMS "
              f"{within_corr(sc, np.log(rms)):+.3f}; clipped share {clipped.mean():.3f}")
    a, b = scores[12], scores[25]
    print(f"12 vs 25 steps, same seeds: within-prompt correlation {within_corr(a, b):+.3f}; same best clip "
          f"{np.mean(a.argmax(1) == b.argmax(1)):.2f}; the 12-step best-vs-worst pair ordered the same at 25 steps "
          f"{np.mean([b[i, a[i].argmax()] > b[i, a[i].argmin()] for i in range(n)]):.2f}")


if __name__ == "__main__":
    main()
