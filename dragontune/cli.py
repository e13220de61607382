"""Command line: thin wrappers that parse arguments and call one function per command."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from dragontune.errors import DragontuneError

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def _config_cmd(cls, args, run):
    from dragontune.config import dump_yaml, load_config

    config, overrides = args.config, list(args.overrides)
    if config is not None and "=" in config and not Path(config).exists():
        config, overrides = None, [config] + overrides  # no YAML file given: only overrides
    cfg = load_config(cls, config, overrides)
    if args.dry_run:
        print(dump_yaml(cfg), end="")
        return 0
    run(cfg)
    return 0


def cmd_pretrain(args) -> int:
    from dragontune.train import PretrainConfig, pretrain

    return _config_cmd(PretrainConfig, args, lambda cfg: print(pretrain(cfg, resume=args.resume)))


def cmd_finetune(args) -> int:
    from dragontune.dragon.loop import DragonConfig, finetune

    return _config_cmd(DragonConfig, args, lambda cfg: print(finetune(cfg, resume=args.resume)))


def cmd_text_cache(args) -> int:
    from dragontune.text import build_text_encoder
    from dragontune.text_cache import write_text_cache

    prompts = list(args.prompt or [])
    if args.corpus:
        from dragontune.data.dataset import filter_rows, load_metadata

        rows = load_metadata(args.corpus)
        if args.splits:
            rows = filter_rows(rows, {"split": args.splits.replace(",", "|")})
        prompts += [r["caption"] for r in rows]
    if args.prompts:
        prompts += read_prompts(argparse.Namespace(prompt=None, prompts=args.prompts))
    if not prompts:
        raise DragontuneError("text-cache: no prompts; pass --corpus DIR, --prompts FILE or --prompt TEXT")
    enc = build_text_encoder(args.encoder)
    print(write_text_cache(enc, prompts, args.out, args.encoder))
    return 0


def cmd_synth(args) -> int:
    from dragontune.data.synth import synth_corpus
    from dragontune.utils import ensure_writable_dir

    options = {}
    for ov in args.option or []:
        if "=" not in ov:
            raise DragontuneError(f"--option {ov!r} must look like key=value")
        import yaml

        k, v = ov.split("=", 1)
        options[k] = yaml.safe_load(v)
    ensure_writable_dir(args.out)
    out = synth_corpus(args.out, n=args.n, seed=args.seed, options=options or None)
    print(out)
    return 0


def read_prompts(args) -> list[str]:
    prompts = list(args.prompt or [])
    if args.prompts:
        p = Path(args.prompts)
        if not p.is_file():
            raise DragontuneError(f"prompt file {str(p)!r} does not exist")
        prompts += [ln.strip() for ln in p.read_text().splitlines() if ln.strip()]
    if not prompts:
        raise DragontuneError("no prompts: pass --prompt TEXT (repeatable) or --prompts FILE (one per line)")
    return prompts


def cmd_sample(args) -> int:
    from dragontune.audio import save_wav
    from dragontune.generate import SamplerConfig, generate_latents
    from dragontune.models.checkpoint import load_model
    from dragontune.utils import atomic_write_text, ensure_writable_dir, resolve_device

    prompts = read_prompts(args)
    out = ensure_writable_dir(args.out)
    model = load_model(args.checkpoint, device=resolve_device(args.device))
    sc = SamplerConfig(steps=args.steps, sampler=args.sampler, cfg=args.cfg, cfgpp=args.cfgpp,
                       cfgpp_scale=args.cfgpp_scale)
    rows, P, S = [], [], []
    for i, p in enumerate(prompts):
        for k in range(args.n_per_prompt):
            P.append(p)
            S.append(args.seed + i * args.n_per_prompt + k)
    lat = generate_latents(model, P, S, sc, disable=None)
    audio = model.decode(lat)
    for j, (p, s) in enumerate(zip(P, S)):
        name = f"{j:04d}_seed{s}.wav"
        save_wav(out / name, audio[j], model.sample_rate)
        rows.append({"file": name, "prompt": p, "seed": s, "checkpoint": str(args.checkpoint or "baseline"),
                     "sampler": args.sampler, "steps": args.steps, "cfg": args.cfg, "cfgpp": args.cfgpp})
    atomic_write_text(out / "samples.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
    print(f"wrote {len(rows)} clips to {out}")
    return 0


def cmd_demo(args) -> int:
    from dragontune.demo import run_demo

    run_demo(out=args.out, quick=args.quick)
    return 0


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="dragontune", description="DRAGON fine-tuning of text-to-audio diffusion")
    ap.add_argument("-v", "--verbose", action="store_true")
    sub = ap.add_subparsers(dest="cmd", required=True)

    d = sub.add_parser("demo", help="the whole story on the embedded defaults")
    d.add_argument("--out", default="runs/demo")
    d.add_argument("--quick", action="store_true", help="smaller budget (about 3 minutes on a laptop CPU)")
    d.set_defaults(fn=cmd_demo)

    data = sub.add_parser("data", help="corpus tools")
    dsub = data.add_subparsers(dest="data_cmd", required=True)
    s = dsub.add_parser("synth", help="synthesise the embedded captioned music corpus")
    s.add_argument("--out", required=True)
    s.add_argument("--n", type=int, default=2000)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--option", action="append", help="synth option key=value (repeatable)")
    s.set_defaults(fn=cmd_synth)

    p = sub.add_parser("pretrain", help="pre-train the text-to-audio DiT")
    p.add_argument("config", nargs="?", default=None)
    p.add_argument("overrides", nargs="*", help="dotted key=value overrides")
    p.add_argument("--resume", action="store_true")
    p.add_argument("--dry-run", action="store_true", help="print the resolved config and stop")
    p.set_defaults(fn=cmd_pretrain)

    f = sub.add_parser("finetune", help="DRAGON fine-tuning toward a reward")
    f.add_argument("config", nargs="?", default=None)
    f.add_argument("overrides", nargs="*", help="dotted key=value overrides")
    f.add_argument("--resume", action="store_true", help="continue from the last checkpoint in out_dir")
    f.add_argument("--dry-run", action="store_true", help="print the resolved config and stop")
    f.set_defaults(fn=cmd_finetune)

    tc = sub.add_parser("text-cache", help="precompute text-encoder outputs for a prompt set")
    tc.add_argument("--out", required=True)
    tc.add_argument("--encoder", default="minilm")
    tc.add_argument("--corpus", help="corpus folder: its captions")
    tc.add_argument("--splits", default="", help="e.g. train,val (default: all)")
    tc.add_argument("--prompt", action="append")
    tc.add_argument("--prompts", help="text file, one prompt per line")
    tc.set_defaults(fn=cmd_text_cache)

    sm = sub.add_parser("sample", help="generate audio from a checkpoint")
    sm.add_argument("--checkpoint", default=None, help="model .safetensors (default: the committed baseline)")
    sm.add_argument("--prompt", action="append")
    sm.add_argument("--prompts", help="text file, one prompt per line")
    sm.add_argument("--seed", type=int, default=0)
    sm.add_argument("--n-per-prompt", type=int, default=1)
    sm.add_argument("--steps", type=int, default=40)
    sm.add_argument("--cfg", type=float, default=4.0)
    sm.add_argument("--cfgpp", action="store_true")
    sm.add_argument("--cfgpp-scale", type=float, default=0.6)
    sm.add_argument("--sampler", default="dpmpp_2m")
    sm.add_argument("--device", default="auto")
    sm.add_argument("--out", required=True)
    sm.set_defaults(fn=cmd_sample)
    return ap


def main(argv: list[str] | None = None) -> int:
    from dragontune.utils import setup_logging

    args = build_parser().parse_args(argv)
    setup_logging(10 if args.verbose else 20)
    try:
        return int(args.fn(args) or 0)
    except DragontuneError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
