"""Command line: thin wrappers that parse arguments and call one function per command."""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from pathlib import Path

from dragontune.errors import DragontuneError

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def _config_cmd(cls, args, check, run, describe=None, adjust=None):
    """Load a typed config (YAML + dotted overrides, then ``adjust(cfg)``), check every value, then run it;
    ``--dry-run`` prints the resolved config (and ``describe(cfg)``, YAML comment lines) instead."""
    from dragontune.config import dump_yaml, load_config

    config, overrides = args.config, list(args.overrides)
    if config is not None and "=" in config and not Path(config).exists():
        config, overrides = None, [config] + overrides  # no YAML file given: only overrides
    cfg = load_config(cls, config, overrides)
    if adjust is not None:
        cfg = adjust(cfg)
    check(cfg)  # the same range checks the command runs before any work
    if args.dry_run:
        print(dump_yaml(cfg), end="")
        if describe is not None:
            print(describe(cfg), end="")
        return 0
    run(cfg)
    return 0


def cmd_pretrain(args) -> int:
    from dragontune.checks import check_pretrain
    from dragontune.training.pretrain import PretrainConfig, pretrain

    return _config_cmd(PretrainConfig, args, check_pretrain,
                       lambda cfg: print(pretrain(cfg, resume=args.resume, overwrite=args.overwrite)))


def cmd_finetune(args) -> int:
    from dragontune.checks import check_finetune
    from dragontune.dragon.loop import DragonConfig, finetune

    return _config_cmd(DragonConfig, args, check_finetune,
                       lambda cfg: print(finetune(cfg, resume=args.resume, overwrite=args.overwrite)),
                       describe=_describe_recipe)


def _describe_recipe(cfg) -> str:
    """What ``builder/loss: auto`` resolve to for this reward (the loop logs the same line when it starts)."""
    from dragontune.dragon.recipes import recipe_of_config
    from dragontune.rewards.registry import reward_class_of

    rc = reward_class_of(cfg.reward)
    if rc is None:
        return "# recipe: chosen when the run starts (the reward's class is known once it is built)\n"
    r = recipe_of_config(cfg, rc)
    lr = "" if r.lr is not None else f" lr={cfg.optim.lr:g} (optim.lr)"
    return f"# recipe for reward class {rc}: {r.describe()}{lr}\n"


def writable_file(path: str | os.PathLike, flag: str) -> Path:
    """Check before any work that ``path`` can be written (its folder exists or can be made, and is writable)."""
    from dragontune.utils import ensure_writable_dir

    p = Path(path)
    if p.is_dir():
        raise DragontuneError(f"{flag} {str(p)!r} is a directory; give a file name such as {str(p / 'score.json')!r}")
    try:
        ensure_writable_dir(p.parent if str(p.parent) else ".")
    except DragontuneError as e:
        raise DragontuneError(f"{flag} {str(p)!r}: {e}") from None
    if p.exists() and not os.access(p, os.W_OK):
        raise DragontuneError(f"{flag} {str(p)!r} exists and is not writable; choose another file")
    return p


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
    from dragontune.models.loading import load_diffusion_model
    from dragontune.utils import atomic_write_text, dumps_strict, ensure_writable_dir, resolve_device

    from dragontune.checks import at_least, check_device, check_sampler, positive

    prompts = read_prompts(args)
    sc = SamplerConfig(steps=args.steps, sampler=args.sampler, cfg=args.cfg, cfg_rescale=args.cfg_rescale,
                       cfgpp=args.cfgpp,
                       cfgpp_scale=args.cfgpp_scale, cfgpp_steps=list(args.cfgpp_steps or []))
    check_sampler(sc, "--")
    at_least("--n-per-prompt", args.n_per_prompt, 1)
    if args.bpm is not None:
        positive("--bpm", args.bpm)
    check_device("--device", args.device)
    options = {}
    if args.seconds_total is not None:
        options["seconds_total"] = args.seconds_total
    if args.adapter and not Path(args.adapter).is_dir():
        raise DragontuneError(f"--adapter {args.adapter!r} is not a folder; give RUN/adapter of a LoRA run")
    out = ensure_writable_dir(args.out)
    model = load_diffusion_model(args.checkpoint, device=resolve_device(args.device), options=options)
    if args.adapter:
        from dragontune.models.lora import load_adapters

        load_adapters(model, args.adapter)
    if args.bpm is not None and not hasattr(model, "tempo_frames"):
        raise DragontuneError(f"--bpm: the model {args.checkpoint!r} has no tempo conditioning; drop --bpm")
    rows, P, S = [], [], []
    for i, p in enumerate(prompts):
        for k in range(args.n_per_prompt):
            P.append(p)
            S.append(args.seed + i * args.n_per_prompt + k)
    lat = generate_latents(model, P, S, sc, disable=None, bpm=args.bpm)
    audio = model.decode(lat)
    n_clip = 0
    for j, (p, s) in enumerate(zip(P, S)):
        name = f"{j:04d}_seed{s}.wav"
        c = save_wav(out / name, audio[j], model.sample_rate, warn=False)  # one summary line below
        n_clip += c
        rows.append({"file": name, "prompt": p, "seed": s, "checkpoint": str(args.checkpoint or "baseline"),
                     "adapter": args.adapter,
                     "sampler": args.sampler, "steps": args.steps, "cfg": args.cfg, "cfgpp": args.cfgpp,
                     "bpm": args.bpm, "clipped_samples": c})
    atomic_write_text(out / "samples.jsonl", "".join(dumps_strict(r) + "\n" for r in rows))
    if n_clip:
        print(f"warning: {n_clip} of {audio.numel()} samples ({100.0 * n_clip / audio.numel():.2f} %) were beyond full "
              f"scale (peak {float(audio.abs().max()):.2f}) and were clipped when saving", file=sys.stderr)
    print(f"wrote {len(rows)} clips to {out}")
    return 0


def cmd_score(args) -> int:
    from dragontune.file_scoring import clips_to_score, parse_reward_spec, score_files
    from dragontune.rewards.exemplars import exemplar_spec_for_path

    spec = parse_reward_spec(args.reward)
    out_path = writable_file(args.out, "--out")  # before any work
    if args.encoder:
        spec["encoder"] = args.encoder
    if args.exemplars:
        spec["exemplars"] = exemplar_spec_for_path(args.exemplars, args.filter)
    files, prompts = clips_to_score(run=args.run, audio_dir=args.audio_dir, prompt=args.prompt)
    table, failure = score_files(spec, files, prompts, out_path, checkpoint=args.checkpoint)
    print(table)
    print(f"wrote {out_path}")
    if failure:
        raise DragontuneError(failure)
    return 0


def cmd_encoders(args) -> int:
    from dragontune.encoders.catalog import format_encoder_table, list_encoders

    print(format_encoder_table(list_encoders(clap_hf_path=args.path)))
    return 0


def cmd_train_clap(args) -> int:
    from dragontune.training.clap_mini import train_clap
    from dragontune.utils import dumps_strict

    res = train_clap(args.corpus, args.out, steps=args.steps, batch=args.batch, seed=args.seed)
    print(dumps_strict(res, indent=1, default=str))
    return 0


def cmd_train_aesthetics(args) -> int:
    from dragontune.training.aesthetics import train_aesthetics
    from dragontune.utils import dumps_strict

    kw = {"encoders": args.encoders.split(",")} if args.encoders else {}
    res = train_aesthetics(args.corpus, args.out, ratings_csv=args.ratings, seed=args.seed,
                           report_path=args.report, **kw)
    print(dumps_strict(res, indent=1, default=str))
    return 0


#: the flags of `eval` before it took a typed config: flag attribute -> config key
EVAL_FLAGS = {"baseline": "baseline", "model": "model", "prompts": "prompts", "n": "n_prompts", "suite": "suite",
              "corpus": "corpus", "steps": "sampler.steps", "cfg": "sampler.cfg", "seed": "seed",
              "seeds_per_prompt": "seeds_per_prompt", "generation_cache": "generation_cache", "device": "device",
              "skip_unavailable": "skip_unavailable", "n_audio": "n_audio", "out": "out_dir"}


def cmd_eval(args) -> int:
    from dragontune.checks import check_eval
    from dragontune.evaluate import EvalConfig, format_eval_table, run_eval, unscored_reason

    def with_flags(cfg):
        """The flags given on the command line override the config; each is checked under its own name first."""
        _check_eval_flags(args)
        for attr, key in EVAL_FLAGS.items():
            v = getattr(args, attr)
            if v is None or v is False:
                continue
            if key.startswith("sampler."):
                cfg = dataclasses.replace(cfg, sampler=dataclasses.replace(cfg.sampler, **{key[8:]: v}))
            else:
                cfg = dataclasses.replace(cfg, **{key: str(v) if key in ("baseline", "model") else v})
        return cfg

    def run(cfg):
        res = run_eval(cfg)
        print(format_eval_table(res))
        print(f"wrote {cfg.out_dir}/eval.json and eval.md")
        why = unscored_reason(res)
        if why is not None:
            raise DragontuneError(f"evaluation produced no result: no suite reward gave a finite win rate ({why}); "
                                  f"{cfg.out_dir}/eval.json holds null for each")

    return _config_cmd(EvalConfig, args, check_eval, run, adjust=with_flags)


def _check_eval_flags(args) -> None:
    from dragontune.checks import at_least, check_device, check_sampler
    from dragontune.generate import SamplerConfig

    if args.steps is not None or args.cfg is not None:
        d = SamplerConfig()
        check_sampler(SamplerConfig(steps=d.steps if args.steps is None else args.steps,
                                    cfg=d.cfg if args.cfg is None else args.cfg), "--")
    if args.n is not None:
        at_least("--n", args.n, 1)
    if args.n_audio is not None:
        at_least("--n-audio", args.n_audio, 0, "0 = save no audio pairs")
    if args.seeds_per_prompt is not None:
        at_least("--seeds-per-prompt", args.seeds_per_prompt, 1, "clips per prompt and model")
    if args.device is not None:
        check_device("--device", args.device)


def cmd_report(args) -> int:
    from dragontune.report import write_report
    from dragontune.utils import ensure_writable_dir

    if not Path(args.run_dir).is_dir():
        raise DragontuneError(f"run folder {args.run_dir!r} does not exist")
    ensure_writable_dir(args.run_dir)  # report.html goes there: find out before reading the run
    print(write_report(args.run_dir))
    return 0


def cmd_listen(args) -> int:
    from dragontune import listen

    if args.results:
        store = listen.open_store(args.dir, args.db, create=False)
        res = listen.listening_results(store, args.ties)
        print(listen.format_results(res))
        out = Path(args.csv) if args.csv else store.path.with_name(store.path.stem + "-results.csv")
        print(f"wrote {listen.write_results_csv(res, out)}")
        return 0
    if args.csv:
        raise DragontuneError("--csv goes with --results (the server offers the CSV at /results.csv)")
    listen.serve(args.dir, port=args.port, host=args.host, question=args.question, db=args.db, tie_rule=args.ties)
    return 0


def cmd_merge_lora(args) -> int:
    """Fold LoRA adapters into their base: a full pipeline folder (Stable Audio) or a model file (in-project DiT)."""
    import shutil

    from dragontune.models.loading import is_pipeline_dir, load_diffusion_model
    from dragontune.models.lora import load_adapters, merge_adapters, read_adapter_info

    read_adapter_info(args.adapter)  # names what is missing before the base is loaded
    out = Path(args.out)
    if out.exists():
        raise DragontuneError(f"--out {str(out)!r} exists; give a new path (nothing is overwritten)")
    model = load_diffusion_model(args.base)
    load_adapters(model, args.adapter)
    merge_adapters(model)
    if is_pipeline_dir(args.base):
        tmp = out.with_name(f".{out.name}.partial")
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(args.base, tmp, ignore=shutil.ignore_patterns("transformer"))
        model.save_full(tmp / "transformer")
        tmp.rename(out)
    else:
        model.save_full(out)
    print(f"wrote the merged model to {out}")
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
    p.add_argument("--resume", action="store_true", help="continue from the last checkpoint in out_dir")
    p.add_argument("--overwrite", action="store_true", help="replace the run already in out_dir")
    p.add_argument("--dry-run", action="store_true", help="check and print the resolved config, then stop")
    p.set_defaults(fn=cmd_pretrain)

    f = sub.add_parser("finetune", help="DRAGON fine-tuning toward a reward")
    f.add_argument("config", nargs="?", default=None)
    f.add_argument("overrides", nargs="*", help="dotted key=value overrides")
    f.add_argument("--resume", action="store_true", help="continue from the last checkpoint in out_dir")
    f.add_argument("--overwrite", action="store_true", help="replace the run already in out_dir")
    f.add_argument("--dry-run", action="store_true", help="check and print the resolved config, then stop")
    f.set_defaults(fn=cmd_finetune)

    tc = sub.add_parser("text-cache", help="precompute text-encoder outputs for a prompt set")
    tc.add_argument("--out", required=True)
    tc.add_argument("--encoder", default="minilm")
    tc.add_argument("--corpus", help="corpus folder: its captions")
    tc.add_argument("--splits", default="", help="e.g. train,val (default: all)")
    tc.add_argument("--prompt", action="append")
    tc.add_argument("--prompts", help="text file, one prompt per line")
    tc.set_defaults(fn=cmd_text_cache)

    sc = sub.add_parser("score", help="score audio files with a reward")
    sc.add_argument("--reward", required=True, help="reward name (e.g. per_song_fad) or a YAML/JSON spec")
    sc.add_argument("--encoder", default=None, help="encoder name (codec, musicnn, aisfx, clap-mini, ...)")
    sc.add_argument("--exemplars", default=None,
                    help="audio folder, corpus folder (with --filter), or a .txt file of text exemplars")
    sc.add_argument("--filter", default=None, help="corpus metadata filter, e.g. instrument=piano,quality=clean")
    g = sc.add_mutually_exclusive_group(required=True)
    g.add_argument("--audio-dir")
    g.add_argument("--run", help="a folder written by `dragontune sample`, or a DRAGON run directory "
                                  "(its evaluation clips); prompts come with them")
    sc.add_argument("--prompt", default=None, help="prompt for every clip of --audio-dir (clap/tag scores)")
    sc.add_argument("--checkpoint", default=None, help="model whose codec the codec encoder uses (default baseline), or a Stable Audio "
                    "pipeline folder whose VAE the vae encoder uses")
    sc.add_argument("--out", default="score.json")
    sc.set_defaults(fn=cmd_score)

    en = sub.add_parser("encoders", help="list the encoders, their dims, rates and weights")
    en.add_argument("--path", default=None, help="a local LAION-CLAP (transformers) folder for clap-hf")
    en.set_defaults(fn=cmd_encoders)

    tcl = sub.add_parser("train-clap", help="train the clap-mini text-audio model on the corpus")
    tcl.add_argument("--corpus", default="data/corpus")
    tcl.add_argument("--out", default=None, help="default: the packaged asset")
    tcl.add_argument("--steps", type=int, default=600)
    tcl.add_argument("--batch", type=int, default=128)
    tcl.add_argument("--seed", type=int, default=0)
    tcl.set_defaults(fn=cmd_train_clap)

    ta = sub.add_parser("train-aesthetics", help="train the aesthetics predictor")
    ta.add_argument("--corpus", default="data/corpus")
    ta.add_argument("--ratings", default=None, help="CSV path,rating (1-5) instead of the corpus formula")
    ta.add_argument("--encoders", default=None, help="comma list, e.g. musicnn-penultimate,clap-mini")
    ta.add_argument("--out", default=None, help="default: the packaged asset")
    ta.add_argument("--report", default=None, help="JSON report path")
    ta.add_argument("--seed", type=int, default=0)
    ta.set_defaults(fn=cmd_train_aesthetics)

    ev = sub.add_parser("eval", help="win rates of a model against a baseline over a reward suite")
    ev.add_argument("config", nargs="?", default=None, help="YAML of an EvalConfig (optional)")
    ev.add_argument("overrides", nargs="*", help="dotted key=value overrides, e.g. sampler.cfgpp=true")
    ev.add_argument("--dry-run", action="store_true", help="check and print the resolved config, then stop")
    # the flags below are short forms of config keys (cli.EVAL_FLAGS); given, they override the config
    ev.add_argument("--baseline", default=None, help="default: the committed baseline")
    ev.add_argument("--model", default=None, help="the fine-tuned checkpoint (required, here or as model=PATH)")
    ev.add_argument("--prompts", default=None, help="test | val | corpus:SPLIT | FILE (default test)")
    ev.add_argument("--n", type=int, default=None, help="use the first N prompts")
    ev.add_argument("--suite", default=None, help="default | comma-separated reward names")
    ev.add_argument("--corpus", default=None, help="default data/corpus")
    ev.add_argument("--steps", type=int, default=None, help="sampler.steps (default 40)")
    ev.add_argument("--cfg", type=float, default=None, help="sampler.cfg (default 4)")
    ev.add_argument("--seed", type=int, default=None)
    ev.add_argument("--seeds-per-prompt", type=int, default=None,
                    help="clips per prompt and model (set rewards need >= 256 clips: e.g. 64 prompts x 4)")
    ev.add_argument("--generation-cache", default=None,
                    help="folder that keeps generated latents (the baseline is then generated once)")
    ev.add_argument("--device", default=None, help="default cpu")
    ev.add_argument("--skip-unavailable", action="store_true", default=None)
    ev.add_argument("--n-audio", type=int, default=None,
                    help="baseline/fine-tuned clip pairs saved under OUT/audio (default 4; for the report and "
                         "`dragontune listen`)")
    ev.add_argument("--out", default=None, help="default runs/eval")
    ev.set_defaults(fn=cmd_eval)

    rp = sub.add_parser("report", help="write RUN_DIR/report.html (on a suite folder: the suite page and each run's)")
    rp.add_argument("run_dir", help="a run directory, or a folder of run directories (experiments/set_rewards.py --out)")
    rp.set_defaults(fn=cmd_report)

    li = sub.add_parser("listen", help="blind A/B listening test of an evaluation's clip pairs (votes in SQLite)")
    li.add_argument("dir", help="a run directory (its eval/ folder) or an evaluation folder (--out of `dragontune eval`)")
    li.add_argument("--port", type=int, default=8765, help="0: any free port")
    li.add_argument("--host", default="127.0.0.1", help="127.0.0.1 (this machine only) or 0.0.0.0 (the network)")
    li.add_argument("--question", default="Which clip is better?",
                    help='the question asked, e.g. "Which has better music quality?" (votes are kept per question)')
    li.add_argument("--db", default=None, help="the votes database (default DIR/eval/listen.sqlite)")
    li.add_argument("--ties", choices=["half", "drop"], default="half",
                    help="no-preference votes count one half (default) or are left out")
    li.add_argument("--results", action="store_true", help="print the results (and write a CSV) instead of serving")
    li.add_argument("--csv", default=None, help="with --results: CSV path (default next to the database)")
    li.set_defaults(fn=cmd_listen)

    sm = sub.add_parser("sample", help="generate audio from a checkpoint")
    sm.add_argument("--checkpoint", default=None, help="model .safetensors (default: the committed baseline), or a "
                    "Stable Audio pipeline folder (StableAudioPipeline.save_pretrained layout, read from disk only)")
    sm.add_argument("--adapter", default=None, help="LoRA adapters to apply (RUN/adapter of a LoRA finetune run)")
    sm.add_argument("--seconds-total", type=float, default=None,
                    help="Stable Audio pipeline only: clip length in seconds (default: the longest it makes)")
    sm.add_argument("--prompt", action="append")
    sm.add_argument("--prompts", help="text file, one prompt per line")
    sm.add_argument("--seed", type=int, default=0)
    sm.add_argument("--n-per-prompt", type=int, default=1)
    sm.add_argument("--steps", type=int, default=40)
    sm.add_argument("--cfg", type=float, default=4.0)
    sm.add_argument("--cfg-rescale", type=float, default=0.0,
                    help="guidance rescale phi in [0, 1]: keeps guided latents at the conditional level (0 = off)")
    sm.add_argument("--cfgpp", action="store_true")
    sm.add_argument("--cfgpp-scale", type=float, default=0.6, help="CFG++ lambda, typically in [0, 1]")
    sm.add_argument("--cfgpp-steps", type=int, nargs=2, metavar=("START", "STOP"),
                    help="apply CFG++ on steps [START, STOP) only, plain CFG (--cfg) elsewhere")
    sm.add_argument("--sampler", default="dpmpp_2m")
    sm.add_argument("--bpm", type=float, default=None,
                    help="tempo for every clip instead of the one read from the prompt (tempo-conditioned models)")
    sm.add_argument("--device", default="auto")
    sm.add_argument("--out", required=True)
    sm.set_defaults(fn=cmd_sample)
    _add_merge(sub)
    return ap


def _add_merge(sub) -> None:
    mg = sub.add_parser("merge-lora", help="fold LoRA adapters into their base model (a new pipeline folder or file)")
    mg.add_argument("--base", required=True, help="the base: a Stable Audio pipeline folder or a model .safetensors")
    mg.add_argument("--adapter", required=True, help="the adapter folder (RUN/adapter)")
    mg.add_argument("--out", required=True, help="new pipeline folder (Stable Audio) or .safetensors file (DiT)")
    mg.set_defaults(fn=cmd_merge_lora)


def main(argv: list[str] | None = None) -> int:
    from dragontune.utils import setup_logging

    args = build_parser().parse_args(argv)
    setup_logging(10 if args.verbose else 20)
    try:
        return int(args.fn(args) or 0)
    except DragontuneError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        import errno

        if e.errno not in (errno.ENOSPC, getattr(errno, "EDQUOT", -1)):
            raise
        print(f"error: disk full while writing {e.filename or 'output'}; free some space and run the command again "
              "(--resume for pretrain/finetune)", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
