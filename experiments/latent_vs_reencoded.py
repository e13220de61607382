"""Do gains measured on the generator's latents carry over to the same metric on decoded and re-encoded audio?

    python experiments/latent_vs_reencoded.py --model RUN/model.safetensors [--rewards fad/codec/piano,...]
        [--n 64 --seeds 4] [--gen-cache runs/gen_cache]

A codec-space reward scores the latents a model makes (what DRAGON trains on and `dragontune eval` reports). A
listener hears decoded audio, and a decoded clip re-encoded by the codec is not the latent it came from (the
decoder's Griffin-Lim phase and level cap change the mel frames). This evaluates the baseline and ``--model`` on
the evaluation protocol of ``experiments/set_rewards.py`` (held-out test prompts x seeds, the 25-step sampler of
`configs/dragon_cpu.yaml`, the same seeds for both; latents from the generation cache when present) and reports,
per set reward, the fine-tuned-minus-baseline difference with its 95 % paired-bootstrap interval twice: on the
latents and on decoded-then-re-encoded audio.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    from dragontune.config import load_config
    from dragontune.dragon.loop import DragonConfig
    from dragontune.data.prompts import load_prompts
    from dragontune.evaluate import _decode, _load_pair
    from dragontune.rewards.suite import build_suite, suite_specs
    from dragontune.seeds import eval_seed
    from dragontune.win_rates import bootstrap_set_difference
    from dragontune.generate import generate_latents_cached
    from dragontune.rewards.base import ScoringBatch
    from dragontune.rewards.registry import RewardContext

    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--rewards", default="fad/codec/piano,fad/codec/calm,kad/codec/piano,vendi/codec")
    ap.add_argument("--n", type=int, default=64)
    ap.add_argument("--seeds", type=int, default=4)
    ap.add_argument("--n-boot", type=int, default=200)
    ap.add_argument("--corpus", default="data/corpus")
    ap.add_argument("--gen-cache", default="runs/gen_cache")
    ap.add_argument("--out", default=None, help="write the rows as JSON here")
    args = ap.parse_args()
    torch.set_num_threads(1)
    sampler = load_config(DragonConfig, ROOT / "configs" / "dragon_cpu.yaml", []).eval_sampler
    prompts = load_prompts("test", corpus=args.corpus, limit=args.n)
    S = args.seeds
    seeds = [eval_seed(1, i, k) for i in range(len(prompts)) for k in range(S)]  # the driver's evaluation seed 1
    clip_prompts = [p for p in prompts for _ in range(S)]
    base, model = _load_pair(None, args.model, torch.device("cpu"))
    rewards, _ = build_suite(suite_specs(args.rewards.split(","), args.corpus), RewardContext(codec=base.codec))
    lat = {"baseline": generate_latents_cached(base, None, clip_prompts, seeds, sampler, args.gen_cache),
           "model": generate_latents_cached(model, args.model, clip_prompts, seeds, sampler, args.gen_cache)}
    audio = {"baseline": _decode(base, lat["baseline"], sampler.batch_size),
             "model": _decode(model, lat["model"], sampler.batch_size)}
    sr = base.sample_rate
    rows = []
    for name, reward in rewards:
        row = {"name": name}
        for how in ("latents", "re-encoded"):
            if how == "latents":
                ba = ScoringBatch(None, sr, clip_prompts, latents=lat["baseline"], codec=base.codec)
                bb = ScoringBatch(None, sr, clip_prompts, latents=lat["model"], codec=base.codec)
            else:  # audio only: the codec encoder embeds the decoded clips
                ba = ScoringBatch(audio["baseline"], sr, clip_prompts)
                bb = ScoringBatch(audio["model"], sr, clip_prompts)
            with torch.no_grad():
                fa, fb = reward.features(ba), reward.features(bb)
            bs = bootstrap_set_difference(lambda idx: (reward.set_value(fa.subset(idx)), reward.set_value(fb.subset(idx))),
                                          len(prompts), S, n_boot=args.n_boot, seed=1)
            row[how] = {"before": reward.set_value(fa), "after": reward.set_value(fb),
                        "diff_lo": bs["diff_lo"], "diff_hi": bs["diff_hi"]}
        rows.append(row)
    print(f"model {args.model}: {len(prompts)} test prompts x {S} seeds, {sampler.steps}-step {sampler.sampler} "
          f"cfg {sampler.cfg}\n")
    print("| reward | on latents: before → after [95 % interval of the difference] | decoded and re-encoded |")
    print("|---|---|---|")
    for r in rows:
        cell = lambda x: f"{x['before']:.4g} → {x['after']:.4g} [{x['diff_lo']:+.3g}, {x['diff_hi']:+.3g}]"  # noqa: E731
        print(f"| {r['name']} | {cell(r['latents'])} | {cell(r['re-encoded'])} |")
    if args.out:
        Path(args.out).write_text(json.dumps({"model": args.model, "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
