"""DRAGON per reward of the suite, several training seeds, evaluated on held-out prompts with real statistics.

    python experiments/set_rewards.py --rewards fad/codec/piano,vendi/codec --seeds 0,1,2 [--builder auto]
        [--rounds 16] [--n-eval 64] [--eval-seeds 4] [--out runs/set_rewards] [--extra key=value ...]
    python experiments/set_rewards.py --table [--out runs/set_rewards[,runs/other ...]] [--md FILE]

For each (reward, training seed): `finetune` from the committed baseline with `configs/dragon_cpu.yaml` and only
`reward` (and the training seed) changed, so the recipe table picks builder and loss (or `--builder` forces one,
for the builder comparison); then the fine-tuned model is evaluated against the baseline on `--n-eval` held-out
test prompts x `--eval-seeds` seeds per prompt (the same seeds for both models; 256 clips per model by default)
over the evaluation suite (`--suite`, default: the 13 rewards of docs/results.md), so every run also shows its
side effects. Baseline generations are cached (`--gen-cache`), so the baseline is generated once for all runs.
A run whose `eval/eval.json` exists is skipped (the script resumes). Each finished run also writes a small record
(its evaluation rows, train time, commit and overrides) to `--records` (default `experiments/results/<name of --out>`),
which is committed, so the tables can be rebuilt on a clean checkout (a record with `transcribed_from` was copied
from an earlier table whose run folder was not kept; the table marks it †). `--table` prints the markdown tables from
the finished runs' `eval.json` files and from record folders (`--out` takes both, comma-separated; a run found in
both is taken once): per reward, the mean difference over seeds with its spread, each seed's 95 % interval of the
difference (paired bootstrap over prompts), and how many seeds improved with the interval excluding zero.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

SUITE13 = ["aesthetics", "clap_score", "per_song_fad/codec/piano", "per_song_fad/codec/calm",
           "per_song_fad/clap-mini/piano", "per_song_fad/clap-mini/calm", "fad/codec/piano", "fad/codec/calm",
           "fad/clap-mini/piano", "fad/clap-mini/calm", "centroid/clap-mini/text", "kad/codec/piano", "vendi/codec"]


def run_dir(out: Path, reward: str, seed: int, builder: str) -> Path:
    tag = reward.replace("/", "_") + ("" if builder == "auto" else f"__{builder}")
    return out / tag / f"seed{seed}"


def run_config(run: Path, spec: dict, seed: int, builder: str, args):
    """The protocol's DragonConfig: ``configs/dragon_cpu.yaml`` with only the reward, the seed (and a forced
    builder, ``args.extra``) changed, no in-loop evaluation, one checkpoint at the end."""
    from dragontune.config import load_config
    from dragontune.dragon.loop import DragonConfig

    ov = [f"out_dir={run}", f"seed={seed}", f"rounds={args.rounds}", f"reward={json.dumps(spec)}", "watch=[]",
          "eval_n_prompts=0", f"ckpt_every={args.rounds}", f"data.corpus={args.corpus}",
          f"pool.cache_dir={args.gen_cache}", f"threads={args.threads}"]
    if builder != "auto":
        ov.append(f"builder={builder}")
    return load_config(DragonConfig, ROOT / "configs" / "dragon_cpu.yaml", ov + list(args.extra))


def train_and_eval(reward: str, seed: int, builder: str, args) -> dict:
    from dragontune.dragon.loop import finetune
    from dragontune.data.prompts import load_prompts
    from dragontune.evaluate import evaluate_models
    from dragontune.rewards.suite import suite_specs

    run = run_dir(Path(args.out), reward, seed, builder)
    eval_dir = run / ("eval" if args.eval_split == "test" else f"eval_{args.eval_split}")
    evj = eval_dir / "eval.json"
    if evj.is_file():
        return json.loads(evj.read_text())
    cfg = run_config(run, dict(suite_specs([reward], args.corpus))[reward], seed, builder, args)
    t0 = time.time()
    final = run / "model.safetensors"
    t_file = run / "train_seconds.txt"
    if final.is_file():  # trained earlier (interrupted, or evaluated on another split): evaluate only
        t_file = t_file if t_file.is_file() else run / "eval" / "train_seconds.txt"  # runs before --eval-split
        t_train = float(t_file.read_text()) if t_file.is_file() else float("nan")
    else:
        final = finetune(cfg)
        t_train = time.time() - t0
        t_file.write_text(f"{t_train:.1f}\n")
    prompts = load_prompts(args.eval_split, corpus=args.corpus, limit=args.n_eval)
    suite = args.suite.split(",") if args.suite != "13" else SUITE13
    if seed not in [int(x) for x in args.side_seeds.split(",") if x]:
        # other seeds: the rewards that cost little once the target's clips exist (codec space needs no decoding;
        # clap-mini is fast once the clips are decoded for a clap-mini target); the whole suite on side seeds
        cheap = [r for r in suite if "/codec" in r or ("clap-mini" in reward and "clap" in r)]
        suite = [reward] + [r for r in cheap if r != reward]
    res = evaluate_models(None, final, prompts, suite, seed=1, seeds_per_prompt=args.eval_seeds,
                          sampler=cfg.eval_sampler, out_dir=eval_dir, corpus=args.corpus, n_boot=args.n_boot,
                          n_audio=0, generation_cache=args.gen_cache)
    res["train_seconds"] = t_train
    (eval_dir / "train_seconds.txt").write_text(f"{t_train:.1f}\n")
    write_record(run, res, seed, builder, args)
    print(f"{reward} seed {seed} builder {builder}: train {t_train:.0f} s, eval {sum(res['time'].values()):.0f} s",
          flush=True)
    return res


def records_dir(args) -> Path:
    if args.records:
        return Path(args.records)
    split = "" if args.eval_split == "test" else f"_{args.eval_split}"
    return ROOT / "experiments" / "results" / (Path(args.out).name + split)


def write_record(run: Path, res: dict, seed: int, builder: str, args) -> Path:
    """The run's evaluation rows (with the per-prompt scores: a few kB), with what produced them."""
    from dragontune.utils import atomic_write_json  # strict JSON: NaN written as null

    rows = res.get("rewards", [])
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                                text=True, timeout=10).stdout.strip()
    except OSError:
        commit = ""
    rec = {"rewards": rows, "train_seconds": res.get("train_seconds"), "seed": seed, "builder": builder,
           "rounds": args.rounds, "n_eval": args.n_eval, "eval_seeds": args.eval_seeds, "eval_split": args.eval_split, "extra": list(args.extra),
           "commit": commit, "date": datetime.date.today().isoformat()}
    path = records_dir(args) / run.parent.name / f"{run.name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(path, rec)
    return path


def _found_runs(outs: list[str]) -> list[tuple[str, int, dict]]:
    """(tag, seed, evaluation) from run folders (``TAG/seedN/eval/eval.json``) and record folders
    (``TAG/seedN.json``); the first place a (folder name, tag, seed) is found wins."""
    found, seen = [], set()
    for out in outs:
        paths = [(e, e.parent.parent.parent.name, e.parent.parent.name) for e in sorted(Path(out).glob("*/seed*/eval/eval.json"))]
        paths += [(e, e.parent.name, e.stem) for e in sorted(Path(out).glob("*/seed*.json"))]
        for path, tag, seed_name in paths:
            key = (Path(out).name, tag, seed_name)
            if key in seen:
                continue
            seen.add(key)
            ev = json.loads(path.read_text())
            if "train_seconds" not in ev:
                ts = path.parent / "train_seconds.txt"
                ev["train_seconds"] = float(ts.read_text()) if ts.is_file() else float("nan")
            if ev["train_seconds"] is None:
                ev["train_seconds"] = float("nan")
            found.append((tag, int(seed_name[4:]), ev))
    return found


def _row(ev: dict, name: str) -> dict | None:
    for r in ev.get("rewards", []):
        if r["name"] == name:
            return r
    return None


def _mean_sd(v: list[float]) -> tuple[float, float]:
    m = sum(v) / len(v)
    sd = math.sqrt(sum((x - m) ** 2 for x in v) / (len(v) - 1)) if len(v) > 1 else float("nan")
    return m, sd


def tables(args) -> str:
    runs: dict[tuple[str, str], dict[int, dict]] = {}
    for tag, seed, ev in _found_runs(args.out.split(",")):
        builder = tag.partition("__")[2]
        runs.setdefault((tag, builder or "auto"), {})[seed] = ev
    lines = ["| target reward | builder | seeds | before | after (mean ± sd over seeds) | difference per seed [95 % interval] "
             "| seeds improved, interval excl. 0 | win rate (mean over seeds) | train time / run |",
             "|---|---|---|---|---|---|---|---|---|"]
    side = {}
    wins = {}
    transcribed = 0
    for (tag, builder), by_seed in sorted(runs.items()):
        ev0 = next(iter(by_seed.values()))
        name = ev0["rewards"] and _target_name(tag, ev0)
        rows = [(_row(ev, name), s, ev) for s, ev in sorted(by_seed.items())]
        rows = [(r, s, ev) for r, s, ev in rows if r and "error" not in r]
        if not rows:
            continue
        after = [r["after"] for r, _, _ in rows]
        m, sd = _mean_sd(after)
        per_seed, ok = [], 0
        for r, s, ev in rows:
            d = r["after"] - r["before"]
            mark = " †" if ev.get("transcribed_from") else ""
            transcribed += bool(mark)
            if r["method"] == "bootstrap":
                per_seed.append(f"{d:+.3g} [{r['diff_lo']:+.3g}, {r['diff_hi']:+.3g}]{mark}")
                ok += int(r["diff_lo"] > 0)
            else:
                per_seed.append(f"{d:+.3g} (win {100 * r['win_rate']:.0f} % [{100 * r['lo']:.0f}, {100 * r['hi']:.0f}]){mark}")
                ok += int(r["lo"] > 0.5)
        wr = [r["win_rate"] for r, _, _ in rows]
        kind = rows[0][0].get("win_rate_kind", "")
        times = [ev["train_seconds"] for _, _, ev in rows if math.isfinite(ev["train_seconds"])]
        tt = _mean_sd(times)[0] if times else float("nan")
        lines.append(f"| {name} | {builder} | {len(rows)} | {rows[0][0]['before']:.4g} | {m:.4g} ± {sd:.2g} | "
                     f"{'; '.join(per_seed)} | {ok} of {len(rows)} | {100 * sum(wr) / len(wr):.1f} % ({kind}) | "
                     f"{tt / 60:.1f} min |")
        if builder == "auto":
            wins[name] = sum(wr) / len(wr)
        sums: dict[str, list[float]] = {}
        for _, _, ev in rows:  # each column averaged over the runs that evaluated it
            for x in ev["rewards"]:
                if "after" in x and x.get("before") is not None:
                    sums.setdefault(x["name"], []).append(x["after"] - x["before"])
        side[name if builder == "auto" else f"{name} ({builder})"] = {k: (sum(v) / len(v), len(v))
                                                                     for k, v in sums.items()}
    text = "\n".join(lines)
    if transcribed:
        text += ("\n\n† a record transcribed from an earlier docs/results.md (its `transcribed_from` says which); the run "
                 "folder was not kept, so only the target row, to the precision printed there")
    if wins:
        text += (f"\n\nAverage win rate over {len(wins)} target rewards (recipe runs; share of prompts for per-sample "
                 f"rewards, bootstrap win share for set rewards): **{100 * sum(wins.values()) / len(wins):.1f} %**\n")
    if side:
        cols = [c for c in SUITE13 if any(c in v for v in side.values())]
        text += "\nSide effects: mean change (fine-tuned minus baseline, higher is better for every column) of every " \
                "evaluated reward over the training seeds that evaluated it (their number in parentheses); rows = " \
                "reward trained on\n\n"
        text += "| trained on \\ evaluated | " + " | ".join(cols) + " |\n|---|" + "---|" * len(cols) + "\n"
        for t, v in side.items():
            text += f"| {t} | " + " | ".join(f"{v[c][0]:+.3g} ({v[c][1]})" if c in v else "" for c in cols) + " |\n"
    return text


def _target_name(tag: str, ev: dict) -> str:
    base = tag.partition("__")[0]
    for r in ev["rewards"]:
        if r["name"].replace("/", "_") == base:
            return r["name"]
    return base


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rewards", default="fad/codec/piano")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--builder", default="auto")
    ap.add_argument("--rounds", type=int, default=16)
    ap.add_argument("--n-eval", type=int, default=64)
    ap.add_argument("--eval-seeds", type=int, default=4)
    ap.add_argument("--n-boot", type=int, default=200)
    ap.add_argument("--eval-split", default="test", choices=["test", "val"],
                    help="prompts of the evaluation: test (results) or val (choosing a recipe); records of val "
                         "evaluations go to experiments/results/NAME_val, run folders' to eval_val/")
    ap.add_argument("--suite", default="13")
    ap.add_argument("--corpus", default="data/corpus")
    ap.add_argument("--out", default="runs/set_rewards")
    ap.add_argument("--gen-cache", default="runs/gen_cache")
    ap.add_argument("--records", default=None, help="folder for the runs' records (default experiments/results/NAME)")
    ap.add_argument("--side-seeds", default="0", help="training seeds evaluated on the whole suite (others: target)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--extra", nargs="*", default=[])
    ap.add_argument("--table", action="store_true")
    ap.add_argument("--md", default=None)
    args = ap.parse_args()
    if args.table:
        text = tables(args)
        if args.md:
            Path(args.md).write_text(text)
        print(text)
        return 0
    for reward in args.rewards.split(","):
        for seed in (int(s) for s in args.seeds.split(",")):
            for builder in args.builder.split(","):
                train_and_eval(reward, seed, builder, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
