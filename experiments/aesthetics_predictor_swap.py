"""DRAGON toward an aesthetics predictor other than the packaged one, evaluated on both.

    git show abf4690~1:dragontune/assets/aesthetics.safetensors > runs/aesthetics_before_retrain.safetensors
    python experiments/aesthetics_predictor_swap.py --predictor runs/aesthetics_before_retrain.safetensors --seed 0

The protocol of ``experiments/set_rewards.py`` (``configs/dragon_cpu.yaml`` with only the reward and the seed changed,
16 rounds; 64 held-out test prompts x 4 seeds against the baseline), with the reward ``aesthetics`` loading
``--predictor``; the fine-tuned model is scored by that predictor and by the packaged one. Used to tell whether
a per-sample result changed with the predictor (issue 14 retrained it with degenerate clips) or with the code.
Writes a record like the driver's to ``experiments/results/aesthetics_predictor_swap/``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "experiments"))


def main() -> None:
    from dragontune.dragon.loop import finetune
    from dragontune.data.prompts import load_prompts
    from dragontune.evaluate import evaluate_models
    from set_rewards import run_config, write_record

    ap = argparse.ArgumentParser()
    ap.add_argument("--predictor", required=True)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--rounds", type=int, default=16)
    ap.add_argument("--n-eval", type=int, default=64)
    ap.add_argument("--eval-seeds", type=int, default=4)
    ap.add_argument("--corpus", default="data/corpus")
    ap.add_argument("--gen-cache", default="runs/gen_cache")
    ap.add_argument("--out", default="runs/aesthetics_predictor_swap")
    args = ap.parse_args()
    spec = {"name": "aesthetics", "path": str(Path(args.predictor).resolve())}
    run = Path(args.out) / "aesthetics" / f"seed{args.seed}"
    args.threads, args.extra, args.records = 1, [], None
    cfg = run_config(run, spec, args.seed, "auto", args)
    t0 = time.time()
    final = run / "model.safetensors"
    t_train = float("nan")  # trained earlier: evaluate only
    if not final.is_file():
        final = finetune(cfg)
        t_train = time.time() - t0
    prompts = load_prompts("test", corpus=args.corpus, limit=args.n_eval)
    res = evaluate_models(None, final, prompts, [("aesthetics (trained predictor)", spec), "aesthetics"], seed=1,
                          seeds_per_prompt=args.eval_seeds, sampler=cfg.eval_sampler, out_dir=run / "eval",
                          corpus=args.corpus, n_boot=200, n_audio=0, generation_cache=args.gen_cache)
    res["train_seconds"] = t_train
    args.extra = [f"reward.path={args.predictor}"]  # what the record says was changed
    write_record(run, res, args.seed, "auto", args)
    for r in res["rewards"]:
        print(f"{r['name']}: {r['before']:.4f} -> {r['after']:.4f}, {100 * r['win_rate']:.1f} % of prompts "
              f"[{100 * r['lo']:.0f}, {100 * r['hi']:.0f}]")


if __name__ == "__main__":
    main()
