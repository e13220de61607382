"""Run the CPU benchmarks and assemble docs/benchmarks.md from benchmarks/results/*.md.

    python benchmarks/run_all.py            # runs everything (several minutes on 2 cores)
    python benchmarks/run_all.py --assemble # only rebuild docs/benchmarks.md from the stored results
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RES = ROOT / "benchmarks" / "results"
RUNS = [
    ["benchmarks/bench_model.py", "--device", "cpu", "--out", "benchmarks/results/model-cpu.md"],
    ["benchmarks/bench_dragon.py", "--device", "cpu", "--out", "benchmarks/results/dragon-cpu.md"],
    ["benchmarks/bench_metrics.py", "--out", "benchmarks/results/metrics.md"],
    ["benchmarks/bench_encoders.py", "--out", "benchmarks/results/encoders.md"],
    ["benchmarks/bench_set_rewards.py", "--out", "benchmarks/results/set-rewards.md"],
    ["benchmarks/bench_byom.py", "--out", "benchmarks/results/byom-cpu.md"],
]
ORDER = ["summary", "model-cpu", "bench_model_cuda", "bench_model_cuda_large", "dragon-cpu", "byom-cpu", "set-rewards", "demo", "metrics",
         "metrics_cuda", "encoders", "codec"]


def assemble() -> Path:
    parts = sorted(RES.glob("*.md"), key=lambda p: (ORDER.index(p.stem) if p.stem in ORDER else 99, p.stem))
    head = ("# Benchmarks\n\nEvery figure below was measured by the command shown with it, on the machine named "
            "with it. Timings are ratios against a baseline measured in the same run, or absolute figures with the "
            "device named. The sections are assembled by `python benchmarks/run_all.py --assemble` from "
            "`benchmarks/results/`.\n\n")
    out = ROOT / "docs" / "benchmarks.md"
    out.write_text(head + "\n".join(p.read_text().rstrip() + "\n" for p in parts))
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--assemble", action="store_true")
    args = ap.parse_args()
    if not args.assemble:
        for cmd in RUNS:
            print("+", " ".join(cmd), flush=True)
            subprocess.run([sys.executable] + cmd, cwd=ROOT, check=True)
    print(assemble())


if __name__ == "__main__":
    main()
