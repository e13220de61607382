"""Set rewards in a DRAGON round: where the time goes, and what the pool credit costs.

    python benchmarks/bench_set_rewards.py [--out benchmarks/results/set-rewards.md] [--threads 2]

1. Round time split (generate / score / train) for one round of the CPU recipe (8 prompts x 4 samples, 12-step
   demonstrations, 4 DPO updates of 8 pairs) with the committed baseline, for a codec-space reward (full-set
   FAD with the codec encoder) and a clap-mini reward (full-set FAD with clap-mini): *before* = the batch is
   decoded to audio and the audio re-encoded (what every reward did until now), *after* = the reward's own
   protocol (codec-space rewards score the latents, nothing decoded). Same latents for both.
2. Credit cost against pool size: ``FADReward.pool_credit`` of 32 candidates against pools of 256, 1024 and
   4096 clip vectors, next to one full FAD of that pool (``fad_from_embeddings``), for the codec (64-d) and
   clap-mini (256-d) dimensions. Medians of repeated runs.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from pathlib import Path

import torch

from _emit import emit  # benchmarks/ is on sys.path when a benchmark runs as a script


def _median_time(fn, reps: int) -> float:
    ts = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t)
    return statistics.median(ts)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="benchmarks/results/set-rewards.md")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reps", type=int, default=3)
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    torch.set_num_threads(args.threads)

    from dragontune.config import load_config
    from dragontune.dragon.builders import build_demonstrations
    from dragontune.dragon.loop import DragonConfig, _train_round
    from dragontune.generate import generate_latents
    from dragontune.metrics import fad_from_embeddings
    from dragontune.models.checkpoint import load_model
    from dragontune.rewards.base import Features, ScoringBatch
    from dragontune.rewards.registry import RewardContext, build_reward

    root = Path(__file__).resolve().parent.parent
    cfg = load_config(DragonConfig, root / "configs" / "dragon_cpu.yaml", [])
    policy = load_model(None)
    reference = policy.copy_frozen()
    ctx = RewardContext(codec=policy.codec)
    ex = {"corpus": "data/corpus", "filter": "instrument=piano,quality=clean"}
    rewards = {"codec": build_reward({"name": "fad", "encoder": "codec", "exemplars": ex}, ctx),
               "clap-mini": build_reward({"name": "fad", "encoder": "clap-mini", "exemplars": ex}, ctx)}
    P, K = cfg.prompts_per_round, cfg.k_per_prompt
    prompts = [f"a calm piano melody, take {p}" for p in range(P) for _ in range(K)]
    seeds = list(range(P * K))
    groups = torch.arange(P).repeat_interleave(K)
    load = os.getloadavg()[0]

    t = time.perf_counter()
    lat = generate_latents(policy, prompts, seeds, cfg.sampler)
    t_gen = time.perf_counter() - t

    def train_once():
        opt = torch.optim.Adam(policy.net.parameters(), lr=0.0)  # timing only: lr 0 keeps the weights
        r = rewards["codec"]
        res = r(ScoringBatch(None, policy.sample_rate, prompts, latents=lat, codec=policy.codec))
        d = build_demonstrations("dist_to_dist", "loo", "dpo", res.scores, groups, credit=res.credit)
        _train_round(cfg, "dpo", cfg.optim.lr, policy, reference, opt, d, lat, prompts, 1, False)

    t_train = _median_time(train_once, 1)
    rows = []
    for name, r in rewards.items():
        def before():
            audio = policy.decode(lat)
            r(ScoringBatch(audio, policy.sample_rate, prompts))

        def after():
            r(ScoringBatch(None, policy.sample_rate, prompts, latents=lat, codec=policy.codec))

        tb, ta = _median_time(before, args.reps), _median_time(after, args.reps)
        rows.append((name, tb, ta))

    g = torch.Generator().manual_seed(0)
    credit_rows = []
    for dim_name, r in rewards.items():
        d = r.exemplars.dim
        mu = r.exemplars.clips.mu
        for n in (256, 1024, 4096):
            pool = Features(n=n, clips=mu + torch.randn(n, d, generator=g, dtype=torch.float64))
            cand = Features(n=32, clips=mu + torch.randn(32, d, generator=g, dtype=torch.float64))
            tc = _median_time(lambda: r.pool_credit(pool, cand), args.reps)
            tf = _median_time(lambda: fad_from_embeddings(pool.clips, r.exemplars.clips), args.reps)
            credit_rows.append((dim_name, d, n, tc, tf))

    machine = f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, " \
              f"{args.threads} threads, load average {load:.1f} at start"
    lines = [f"### Set rewards in a round (cpu: {machine})", "",
             "Command: `python benchmarks/bench_set_rewards.py`; committed baseline, one round of the CPU recipe "
             f"({P} prompts x {K} samples, {cfg.sampler.steps}-step demonstrations, {cfg.updates_per_round} DPO "
             f"updates of {cfg.batch_per_update} pairs).", "",
             "| reward | generate | score before (decode + re-encode) | score after (reward protocol) | train | "
             "round before | round after | round after / before |", "|---|---|---|---|---|---|---|---|"]
    for name, tb, ta in rows:
        rb, ra = t_gen + tb + t_train, t_gen + ta + t_train
        lines.append(f"| fad/{name}/piano | {t_gen:.2f} s | {tb:.2f} s | {ta:.3f} s | {t_train:.2f} s | {rb:.2f} s | "
                     f"{ra:.2f} s | {ra / rb:.2f} |")
    lines += ["", "Pool credit of 32 candidates (exact joins from the pool's statistics) against one full FAD of the "
              "pool, medians:", "", "| encoder (dim) | pool size | pool credit, 32 candidates | one FAD of the pool | "
              "credit / FAD |", "|---|---|---|---|---|"]
    for name, d, n, tc, tf in credit_rows:
        lines.append(f"| {name} ({d}) | {n} | {1000 * tc:.1f} ms | {1000 * tf:.1f} ms | {tc / tf:.2f} |")
    emit(lines, args.out)


if __name__ == "__main__":
    main()
