"""Summarise DRAGON run directories as a markdown section with a curve image.

    python experiments/summarize_runs.py RUN_DIR [RUN_DIR ...] --png docs/dragon/curves.png

For each run: target reward, builder and loss; held-out reward (eval/<target>) at round 0 (the baseline)
and at the last evaluation; watch-list rewards before -> after; the share of round time spent
generating / scoring / training; wall time.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def load(run: Path):
    recs = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines() if x.strip()]
    arith = json.loads((run / "batch_arithmetic.json").read_text())
    return recs, arith


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("runs", nargs="+")
    ap.add_argument("--png", default=None)
    args = ap.parse_args()
    rows = []
    fig, axes = plt.subplots(1, len(args.runs), figsize=(4.2 * len(args.runs), 3.2), squeeze=False)
    for ax, run in zip(axes[0], map(Path, args.runs)):
        recs, ar = load(run)
        tgt = f"eval/{ar['reward']}"
        ev = [(r["round"], r[tgt]) for r in recs if tgt in r]
        tr = [(r["round"], r.get("reward") if r.get("reward") is not None else r.get("set_reward")) for r in recs
              if r["round"] > 0]
        tr = [(a, b) for a, b in tr if b is not None]
        ax.plot([a for a, _ in tr], [b for _, b in tr], ".-", alpha=0.5, label="policy demos (per round)")
        ax.plot([a for a, _ in ev], [b for _, b in ev], "o-", label="held-out prompts")
        ax.set_title(f"{run.name}: {ar['reward']} ({ar['builder']}/{ar['loss']})", fontsize=8)
        ax.set_xlabel("round")
        ax.legend(fontsize=7)
        t = {k: sum(r.get(f"time/{k}", 0.0) for r in recs) for k in ("generate", "score", "train")}
        tot = sum(t.values()) or 1.0
        watch = sorted({k for r in recs for k in r if k.startswith("eval/") and k != tgt})
        w0 = {k: recs[0].get(k) for k in watch}
        wl = {k: next((r[k] for r in reversed(recs) if k in r), None) for k in watch}
        rows.append((run.name, ar, ev[0][1], ev[-1][1], ev[-1][0], w0, wl, t, tot))
    if args.png:
        Path(args.png).parent.mkdir(parents=True, exist_ok=True)
        fig.tight_layout()
        fig.savefig(args.png, dpi=80)
    print("| run | reward (class) | builder / loss | held-out target, baseline -> after | rounds | other rewards before -> after | time generate / score / train |")
    print("|---|---|---|---|---|---|---|")
    for name, ar, e0, e1, n, w0, wl, t, tot in rows:
        others = "; ".join(f"{k[5:]} {w0[k]:.3f} -> {wl[k]:.3f}" for k in w0 if w0[k] is not None and wl[k] is not None)
        print(f"| {name} | {ar['reward']} ({ar['reward_class']}) | {ar['builder']} / {ar['loss']} | "
              f"{e0:.3f} -> {e1:.3f} | {n} | {others} | "
              f"{100 * t['generate'] / tot:.0f} % / {100 * t['score'] / tot:.0f} % / {100 * t['train'] / tot:.0f} % "
              f"({tot:.0f} s) |")


if __name__ == "__main__":
    main()
