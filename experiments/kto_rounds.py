"""Per-round reward of DRAGON runs against a frozen-model run on the same prompts and seeds (docs/dragon.md, KTO).

    python experiments/kto_rounds.py --base runs/kto_lr0 runs/kto_X [runs/kto_Y ...]

A run's round reward (the mean reward of its new demonstrations) depends on which training prompts the round drew,
so rounds are compared with a run of the same config at a negligible learning rate (`optim.lr=1e-12`): same seeds,
same prompts, same samples from the frozen model. Prints one markdown row per run: the difference per round from
round 2 on (round 1 is generated before any update), its mean, and the training statistics per round.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def rounds(run: Path) -> dict[int, dict]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return {r["round"]: r for r in rows if r.get("round", 0) >= 1 and r.get("reward") is not None}


def row(run: Path, base: dict[int, dict]) -> str:
    m = rounds(run)
    common = sorted(set(m) & set(base))
    diff = [m[r]["reward"] - base[r]["reward"] for r in common if r >= 2]
    fmt = lambda key, spec: " ".join(format(m[r].get(key, float("nan")), spec) for r in common)  # noqa: E731
    mean = sum(diff) / len(diff) if diff else float("nan")
    return (f"| {run.name} | {' '.join(f'{d:+.1f}' for d in diff)} | {mean:+.2f} | {fmt('train/implicit_acc', '.2f')} "
            f"| {fmt('train/saturated', '.2f')} | {fmt('train/grad_norm', '.3g')} |")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--base", required=True, help="the run at lr ~0 with the same config and seed")
    ap.add_argument("runs", nargs="+")
    args = ap.parse_args()
    base = rounds(Path(args.base))
    print("| run | reward minus frozen model, rounds 2 -> last | mean | implicit acc | saturated | grad norm |")
    print("|---|---|---|---|---|---|")
    for r in args.runs:
        print(row(Path(r), base))


if __name__ == "__main__":
    main()
