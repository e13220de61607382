"""The suite experiment: one DRAGON fine-tune per reward of the suite, then the paper-style table.

    python experiments/suite.py [--suite default|NAMES] [--rounds 12] [--n-eval 32] [--out runs/suite]
                                [--md docs/results.md]

For every reward: start from the committed baseline, run `dragontune finetune configs/dragon_cpu.yaml`
with that reward as the target (paired/DPO for per-sample rewards, leave-one-out credit + DPO for set
rewards), then evaluate the fine-tuned model against the baseline on held-out (test-split) prompts for the
target reward: win rate with its 95 % interval and the reward before -> after. Writes the table with the
command and the budget to --md. Resumable: a reward whose run directory holds eval.json is skipped.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def main():
    from dragontune.config import load_config
    from dragontune.dragon.loop import DragonConfig, finetune
    from dragontune.evaluate import evaluate_models, load_prompts, suite_specs
    from dragontune.rewards.registry import RewardContext, build_reward
    from dragontune.models.checkpoint import load_model

    ap = argparse.ArgumentParser()
    ap.add_argument("--suite", default="default")
    ap.add_argument("--rounds", type=int, default=12)
    ap.add_argument("--n-eval", type=int, default=32)
    ap.add_argument("--corpus", default="data/corpus")
    ap.add_argument("--out", default="runs/suite")
    ap.add_argument("--md", default="docs/results.md")
    ap.add_argument("--extra", nargs="*", default=[], help="more key=value overrides for every run")
    args = ap.parse_args()
    names = args.suite if args.suite == "default" else args.suite.split(",")
    specs = suite_specs(names, args.corpus)
    prompts = load_prompts("test", corpus=args.corpus, limit=args.n_eval)
    base = load_model(None)
    rows = []
    t_all = time.time()
    for name, spec in specs:
        run = Path(args.out) / name.replace("/", "_")
        evj = run / "eval" / "eval.json"
        if not evj.is_file():
            cls = build_reward(spec, RewardContext(codec=base.codec)).reward_class
            builder = "loo" if cls == "dist_to_dist" else "paired"
            ov = [f"out_dir={run}", f"rounds={args.rounds}", f"reward={json.dumps(spec)}", "watch=[]",
                  f"builder={builder}", "loss=dpo", "eval_n_prompts=0", f"ckpt_every={args.rounds}",
                  f"data.corpus={args.corpus}"] + args.extra
            cfg = load_config(DragonConfig, ROOT / "configs" / "dragon_cpu.yaml", ov)
            t0 = time.time()
            final = finetune(cfg)
            evaluate_models(None, final, prompts, [(name, spec)], seed=1, sampler=cfg.eval_sampler,
                            out_dir=run / "eval", corpus=args.corpus, n_audio=0)
            print(f"{name}: {time.time() - t0:.0f} s", flush=True)
        rows.append((name, json.loads(evj.read_text())))
    lines = ["# Results: the suite experiment", "",
             f"One DRAGON run per reward from the committed baseline (`configs/dragon_cpu.yaml`, {args.rounds} rounds "
             f"each), evaluated against the baseline on {len(prompts)} held-out test-split prompts with the same seeds "
             f"and sampler, for the reward it was trained on. Command: `python experiments/suite.py --suite "
             f"{args.suite} --rounds {args.rounds} --n-eval {args.n_eval}` ({(time.time() - t_all) / 60:.0f} min on this 2-core CPU for "
             "the runs not already done).", "",
             "Per-sample rewards (instance, instance_to_dist): share of prompts on which the fine-tuned model scores "
             "higher (ties count half), Wilson 95 % interval. Set rewards (dist_to_dist): share of 200 bootstrap "
             "resamples of the prompt set (same indices for both models) on which its set score is higher; that "
             "interval is a Wilson interval over resamples, which are not independent data, so it is narrower than a "
             "sampling interval — `eval.json` of each run also holds the percentile interval of the score difference.",
             "", "| reward | class | win rate [95 % interval] | before -> after |", "|---|---|---|---|"]
    wins = []
    for name, ev in rows:
        r = ev["rewards"][0]
        wr = r.get("win_rate")
        if wr is None:
            lines.append(f"| {name} | {r.get('reward_class', '?')} | {r.get('error', 'n/a')} | |")
            continue
        wins.append(wr)
        lines.append(f"| {name} | {r.get('reward_class', '')} | {100 * wr:.1f} % [{100 * r['lo']:.1f}, {100 * r['hi']:.1f}] | "
                     f"{r.get('before', float('nan')):.4g} -> {r.get('after', float('nan')):.4g} |")
    if wins:
        lines += ["", f"Average win rate over {len(wins)} rewards: **{100 * sum(wins) / len(wins):.1f} %** "
                  "(the paper: 81.45 % over its 20 rewards, with far larger models and budgets)."]
    Path(args.md).write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    sys.exit(main())
