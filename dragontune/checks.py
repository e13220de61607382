"""Range checks of every config value, run before any work (and by ``--dry-run``).

Each check raises a :class:`ConfigError` naming the dotted key, the value and the valid range. One function per
command config: :func:`check_finetune`, :func:`check_pretrain`, :func:`check_sampler`; :func:`check_device`
for the ``device`` strings every command takes.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Iterable

import torch

from dragontune.errors import ConfigError


def _bad(key: str, value: Any, valid: str, hint: str = "") -> ConfigError:
    return ConfigError(f"{key}={value!r} is out of range: {valid}{'; ' + hint if hint else ''}")


def _finite(key: str, v: Any) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(float(v)):
        raise _bad(key, v, "must be a finite number")
    return float(v)


def at_least(key: str, v: Any, lo: float, hint: str = "") -> None:
    if _finite(key, v) < lo:
        raise _bad(key, v, f"must be >= {lo:g}", hint)


def positive(key: str, v: Any, hint: str = "") -> None:
    if not _finite(key, v) > 0:
        raise _bad(key, v, "must be > 0", hint)


def within(key: str, v: Any, lo: float, hi: float, hint: str = "", hi_open: bool = False) -> None:
    x = _finite(key, v)
    if not (lo <= x < hi if hi_open else lo <= x <= hi):
        raise _bad(key, v, f"must be in [{lo:g}, {hi:g}{')' if hi_open else ']'}", hint)


def one_of(key: str, v: Any, valid: Iterable[str]) -> None:
    valid = tuple(valid)
    if v not in valid:
        raise _bad(key, v, f"must be one of {', '.join(valid)}")


def check_reward_spec(key: str, spec: Any, corpus: str | None = None) -> None:
    """What a reward spec names that can be checked without loading anything: a known reward name (also in
    weighted components) and exemplar folders and files that exist. ``corpus``: the run's own corpus folder,
    synthesised on first use, so it may be missing yet. Options are checked when the reward is built."""
    from dragontune.rewards.registry import known_rewards

    if not isinstance(spec, dict) or not str(spec.get("name", "")).strip():
        raise _bad(key, spec, "must be a mapping with a 'name', e.g. {name: per_song_fad, encoder: codec}")
    names = known_rewards()
    if spec["name"] not in names:  # the registry's own error, named by key, before any work
        from dragontune.errors import RewardError

        raise RewardError(f"{key}.name: unknown reward {spec['name']!r}; known rewards: {', '.join(names)}")
    if spec["name"] == "weighted":
        comps = spec.get("components")
        if not isinstance(comps, list) or not comps:
            raise _bad(f"{key}.components", comps, "must be a non-empty list of reward specs with weights")
        for i, c in enumerate(comps):
            check_reward_spec(f"{key}.components[{i}]", c, corpus)
        return
    ex = spec.get("exemplars")
    if not isinstance(ex, dict):
        return
    own = Path(corpus).expanduser().resolve() if corpus else None
    for k in ("audio_dir", "corpus"):
        if k in ex:
            p = Path(str(ex[k])).expanduser()
            if not p.is_dir() and not (k == "corpus" and p.resolve() == own):
                raise _bad(f"{key}.exemplars.{k}", ex[k], "must be an existing folder",
                           f"it does not exist (relative paths start at {Path.cwd()})")
    files = ex.get("files")
    if isinstance(files, list):
        missing = [f for f in files if not Path(str(f)).expanduser().is_file()]
        if missing:
            raise _bad(f"{key}.exemplars.files", missing[:5], "must all be existing audio files")


def check_device(key: str, device: str) -> None:
    """``auto``, ``cpu``, ``cuda`` or ``cuda:N`` (``mps`` where available); CUDA must exist if named."""
    if device == "auto":
        return
    try:
        d = torch.device(device)
    except (RuntimeError, TypeError):
        raise _bad(key, device, "must be auto, cpu, cuda or cuda:N") from None
    if d.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"{key}={device!r} but CUDA is not available on this machine (torch "
                              f"{torch.__version__}); use {key.split('.')[-1]}=cpu or auto")
        if d.index is not None and d.index >= torch.cuda.device_count():
            raise _bad(key, device, f"this machine has {torch.cuda.device_count()} CUDA device(s): cuda:0.."
                                    f"cuda:{torch.cuda.device_count() - 1}")
    elif d.type == "mps":
        if not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
            raise ConfigError(f"{key}={device!r} but MPS is not available on this machine; use cpu or auto")
    elif d.type != "cpu":
        raise _bad(key, device, "must be auto, cpu, cuda or cuda:N")


def check_sampler(sc, prefix: str = "sampler.") -> None:
    from dragontune.sampling import SAMPLERS

    p = prefix
    at_least(p + "steps", sc.steps, 1)
    one_of(p + "sampler", sc.sampler, sorted(SAMPLERS))
    at_least(p + "cfg", sc.cfg, 0, "1 = conditional model only, larger = stronger guidance")
    within(p + "cfg_rescale", sc.cfg_rescale, 0, 1, "0 = plain CFG")
    at_least(p + "cfgpp_scale", sc.cfgpp_scale, 0, "CFG++ lambda, typically in [0, 1]")
    if sc.cfgpp_steps:
        st = list(sc.cfgpp_steps)
        if len(st) != 2 or not all(isinstance(x, int) for x in st) or not 0 <= st[0] < st[1] <= sc.steps:
            raise _bad(p + "cfgpp_steps", st, f"must be [] or [start, stop] with 0 <= start < stop <= steps={sc.steps}")
    positive(p + "sigma_min", sc.sigma_min)
    if not _finite(p + "sigma_max", sc.sigma_max) > sc.sigma_min:
        raise _bad(p + "sigma_max", sc.sigma_max, f"must be > sigma_min={sc.sigma_min:g}")
    positive(p + "rho", sc.rho)
    at_least(p + "batch_size", sc.batch_size, 1)


def check_optim(o, prefix: str = "optim.") -> None:
    positive(prefix + "lr", o.lr)
    within(prefix + "beta1", o.beta1, 0, 1, hi_open=True)
    within(prefix + "beta2", o.beta2, 0, 1, hi_open=True)
    at_least(prefix + "weight_decay", o.weight_decay, 0)
    at_least(prefix + "grad_clip", o.grad_clip, 0, "0 = no clipping")
    at_least(prefix + "warmup_steps", o.warmup_steps, 0)


def check_data(d, prefix: str = "data.") -> None:
    if not str(d.corpus).strip():
        raise _bad(prefix + "corpus", d.corpus, "must be a folder path")
    at_least(prefix + "synth_n", d.synth_n, 1)
    positive(prefix + "duration", d.duration, "seconds per clip")


def _common(cfg) -> None:
    check_device("device", cfg.device)
    one_of("precision", cfg.precision, ("auto", "fp32", "bf16"))
    at_least("threads", cfg.threads, 0, "0 = torch's default")
    within("cond_dropout", cfg.cond_dropout, 0, 1, "the share of prompts replaced by the null condition")
    positive("p_std", cfg.p_std)
    _finite("p_mean", cfg.p_mean)
    check_optim(cfg.optim)
    check_data(cfg.data)


def check_eval(cfg) -> None:
    """Every value of an :class:`~dragontune.evaluate.EvalConfig`, and that its output folder can be written."""
    from dragontune.utils import ensure_writable_dir

    if not str(cfg.model).strip():
        raise _bad("model", cfg.model, "must be the fine-tuned checkpoint to compare (--model PATH or model=PATH)")
    if not str(cfg.prompts).strip():
        raise _bad("prompts", cfg.prompts, "must be corpus:SPLIT, a split name or a text file with one prompt per line")
    at_least("n_prompts", cfg.n_prompts, 0, "0 = every prompt")
    at_least("seeds_per_prompt", cfg.seeds_per_prompt, 1, "clips per prompt and model")
    at_least("n_audio", cfg.n_audio, 0, "0 = save no audio pairs")
    at_least("n_boot", cfg.n_boot, 1)
    if not str(cfg.suite).strip():
        raise _bad("suite", cfg.suite, "must be default or comma-separated suite reward names")
    check_sampler(cfg.sampler, "sampler.")
    check_device("device", cfg.device)
    ensure_writable_dir(cfg.out_dir)  # before any work


def check_finetune(cfg) -> None:
    """Every value of a :class:`DragonConfig` (no model, corpus or reward is loaded)."""
    from dragontune.dragon.builders import BUILDERS, LOSSES
    from dragontune.dragon.losses import KTO_REFERENCES, KTO_UTILITIES
    from dragontune.dragon.objectives import KTO_NOISE
    from dragontune.dragon.recipes import AUTO

    _common(cfg)
    at_least("rounds", cfg.rounds, 1)
    at_least("prompts_per_round", cfg.prompts_per_round, 1)
    at_least("k_per_prompt", cfg.k_per_prompt, 1)
    within("p_reference", cfg.p_reference, 0, 1)
    at_least("updates_per_round", cfg.updates_per_round, 1)
    at_least("batch_per_update", cfg.batch_per_update, 1)
    one_of("loss", cfg.loss, (*LOSSES, AUTO))
    one_of("builder", cfg.builder, (*BUILDERS, AUTO))
    one_of("kto_reference", cfg.kto_reference, KTO_REFERENCES)
    one_of("kto_utility", cfg.kto_utility, KTO_UTILITIES)
    one_of("kto_noise", cfg.kto_noise, KTO_NOISE)
    at_least("set_reward_lr", cfg.set_reward_lr, 0, "0 = optim.lr for set rewards too")
    at_least("kto_lr", cfg.kto_lr, 0, "0 = optim.lr for the KTO recipe too")
    _check_reward_recipes(cfg.reward_recipes)
    cfg.pool.check()
    positive("beta", cfg.beta, "the DPO/KTO temperature (the paper uses 5000)")
    at_least("kto_w_desirable", cfg.kto_w_desirable, 0)
    at_least("kto_w_undesirable", cfg.kto_w_undesirable, 0)
    if cfg.kto_w_desirable == 0 and cfg.kto_w_undesirable == 0:
        raise ConfigError("kto_w_desirable=0 and kto_w_undesirable=0: at least one KTO weight must be > 0")
    at_least("eval_n_prompts", cfg.eval_n_prompts, 0, "0 = no in-loop evaluation")
    at_least("eval_every", cfg.eval_every, 0, "0 = only the first and last round")
    at_least("ckpt_every", cfg.ckpt_every, 0, "0 = only the last round")
    if not isinstance(cfg.reward, dict) or not str(cfg.reward.get("name", "")).strip():
        raise _bad("reward", cfg.reward, "must be a mapping with a 'name', e.g. {name: per_song_fad, encoder: codec}")
    check_reward_spec("reward", cfg.reward, cfg.data.corpus)
    for i, w in enumerate(cfg.watch):
        if not isinstance(w, dict) or not str(w.get("name", "")).strip():
            raise _bad(f"watch[{i}]", w, "must be a mapping with a 'name'")
        check_reward_spec(f"watch[{i}]", w, cfg.data.corpus)
    from dragontune.data.prompts import corpus_split

    for key in ("prompts", "eval_prompts"):
        v = getattr(cfg, key)
        if not str(v).strip() or (str(v).startswith("corpus:") and not str(v)[7:].strip()):
            raise _bad(key, v, "must be corpus:SPLIT or a text file with one prompt per line")
        if key == "eval_prompts" and cfg.eval_n_prompts == 0:
            continue  # not read
        if corpus_split(v) is None:
            if not Path(str(v)).expanduser().is_file():
                raise _bad(key, v, "must be corpus:SPLIT or a text file with one prompt per line",
                           f"no such file (relative paths start at {Path.cwd()})")
    check_sampler(cfg.sampler, "sampler.")
    check_sampler(cfg.eval_sampler, "eval_sampler.")
    cfg.lora.check("lora.")
    one_of("reference", cfg.reference, ("auto", "copy", "adapters_off"))
    if cfg.reference == "adapters_off" and not cfg.lora.enabled:
        raise _bad("reference", cfg.reference, "adapters_off needs LoRA (lora.rank > 0)",
                   "use reference=copy (or auto) for full fine-tuning")
    at_least("micro_batch", cfg.micro_batch, 0, "0 = the whole per-process batch at once")
    if not isinstance(cfg.model_options, dict):
        raise _bad("model_options", cfg.model_options, "must be a mapping, e.g. {seconds_total: 10}")
    if str(cfg.baseline).strip() and Path(cfg.baseline).is_dir():  # a pipeline folder: its layout, before any work
        from dragontune.models.stable_audio import MODEL_OPTIONS, check_pipeline_dir

        check_pipeline_dir(Path(cfg.baseline))
        unknown = sorted(set(cfg.model_options) - set(MODEL_OPTIONS))
        if unknown:
            raise _bad("model_options", cfg.model_options, f"unknown keys {unknown}; valid: {', '.join(MODEL_OPTIONS)}")
    elif cfg.model_options:
        raise _bad("model_options", cfg.model_options, "applies to a Stable Audio pipeline folder only",
                   "set baseline=FOLDER (a StableAudioPipeline.save_pretrained folder) or remove model_options")
    _check_combination(cfg)


def _check_reward_recipes(table) -> None:
    """``reward_recipes``: reward name -> {lr, batch_per_update, all_pairs, margin}."""
    from dragontune.dragon.recipes import REWARD_RECIPE_KEYS

    if not isinstance(table, dict):
        raise ConfigError(f"reward_recipes={table!r} must be a mapping reward name -> recipe entries, e.g. "
                          "{clap_score: {lr: 2.0e-5}} (or {} for none)")
    for name, entry in table.items():
        key = f"reward_recipes.{name}"
        if not isinstance(entry, dict):
            raise _bad(key, entry, f"must be a mapping of {', '.join(REWARD_RECIPE_KEYS)}", "e.g. {lr: 2.0e-5}")
        unknown = sorted(set(entry) - set(REWARD_RECIPE_KEYS))
        if unknown:
            raise _bad(f"{key}.{unknown[0]}", entry[unknown[0]], f"is not a recipe entry; valid: "
                                                                 f"{', '.join(REWARD_RECIPE_KEYS)}")
        if "lr" in entry:
            v = entry["lr"]
            try:  # YAML reads 2e-5 (no dot) as a string
                v = float(v) if isinstance(v, str) else v
            except ValueError:
                pass
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not v > 0 or v != v or v == float("inf"):
                raise _bad(f"{key}.lr", v, "a learning rate > 0", "drop the key to use the class's lr")
        if "batch_per_update" in entry:
            v = entry["batch_per_update"]
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise _bad(f"{key}.batch_per_update", v, "an integer >= 1 (pairs per optimiser step)")
        if "all_pairs" in entry and not isinstance(entry["all_pairs"], bool):
            raise _bad(f"{key}.all_pairs", entry["all_pairs"], "true or false")
        if "margin" in entry:
            at_least(f"{key}.margin", entry["margin"], 0)


def _check_combination(cfg) -> None:
    """Builder, loss and K against the reward's class, as the loop checks them once the reward is built,
    here before any work (a plugin reward of unknown class is checked by the loop)."""
    from dragontune.dragon.builders import validate_combination
    from dragontune.dragon.recipes import recipe_of_config
    from dragontune.rewards.registry import reward_class_of

    rc = reward_class_of(cfg.reward)
    if rc is None:
        return
    recipe = recipe_of_config(cfg, rc)
    validate_combination(rc, recipe.builder, recipe.loss, cfg.k_per_prompt, recipe.options)


def check_model(m, prefix: str = "model.") -> None:
    at_least(prefix + "latent_channels", m.latent_channels, 1)
    at_least(prefix + "patch_size", m.patch_size, 1)
    at_least(prefix + "width", m.width, 1)
    at_least(prefix + "depth", m.depth, 1)
    at_least(prefix + "heads", m.heads, 1)
    if m.width % m.heads:
        divisors = [h for h in range(1, min(m.width, 64) + 1) if m.width % h == 0]
        raise _bad(prefix + "heads", m.heads, f"must divide model.width={m.width} (e.g. one of "
                                              f"{', '.join(map(str, divisors[-6:]))})")
    if m.rope and (m.width // m.heads) % 2:
        raise _bad(prefix + "heads", m.heads, f"with model.rope the head size width/heads={m.width // m.heads} must "
                                              "be even")
    positive(prefix + "mlp_ratio", m.mlp_ratio)
    at_least(prefix + "text_dim", m.text_dim, 1)
    at_least(prefix + "noise_freqs", m.noise_freqs, 2)
    if m.noise_freqs % 2:
        raise _bad(prefix + "noise_freqs", m.noise_freqs, "must be even (cosine and sine halves)")
    at_least(prefix + "refine_channels", m.refine_channels, 0, "0 = no refiner head")
    if m.refine_kernel < 1 or m.refine_kernel % 2 == 0:
        raise _bad(prefix + "refine_kernel", m.refine_kernel, "must be a positive odd number")
    positive(prefix + "rope_theta", m.rope_theta)
    at_least(prefix + "tempo_bins", m.tempo_bins, 0, "0 = no tempo conditioning")
    if m.tempo_bins > 0:
        positive(prefix + "tempo_period_min", m.tempo_period_min)
        if not _finite(prefix + "tempo_period_max", m.tempo_period_max) > m.tempo_period_min:
            raise _bad(prefix + "tempo_period_max", m.tempo_period_max,
                       f"must be > model.tempo_period_min={m.tempo_period_min:g}")
        at_least(prefix + "tempo_harmonics", m.tempo_harmonics, 1)
    # anything the network's own constructor refuses, found on the meta device (no memory, no time)
    from dragontune.models.dit import DiT

    try:
        with torch.device("meta"):
            DiT(m)
    except (ValueError, AssertionError) as e:
        raise ConfigError(f"model config: {e}") from None


def check_pretrain(cfg) -> None:
    """Every value of a :class:`PretrainConfig` (no corpus or text encoder is loaded)."""
    from dragontune.codecs import LogMelCodec
    import dataclasses

    _common(cfg)
    at_least("steps", cfg.steps, 1)
    at_least("batch_size", cfg.batch_size, 1)
    at_least("tempo_loss_weight", cfg.tempo_loss_weight, 0)
    positive("ema_halflife_steps", cfg.ema_halflife_steps)
    at_least("log_every", cfg.log_every, 1)
    at_least("val_every", cfg.val_every, 0, "0 = no validation")
    at_least("val_samples", cfg.val_samples, 0)
    at_least("sample_every", cfg.sample_every, 0, "0 = only at the end")
    at_least("sample_steps", cfg.sample_steps, 1)
    at_least("sample_cfg", cfg.sample_cfg, 0)
    at_least("ckpt_every", cfg.ckpt_every, 1)
    at_least("keep_checkpoints", cfg.keep_checkpoints, 0, "0 = keep all")
    check_model(cfg.model)
    codec = LogMelCodec(**dataclasses.asdict(cfg.codec))  # its constructor range-checks every codec value
    if cfg.model.latent_channels != codec.latent_channels:
        raise ConfigError(f"model.latent_channels={cfg.model.latent_channels} but the codec has "
                          f"{codec.latent_channels} channels (codec.n_mels); make them equal")
    frames = codec.latent_frames(int(round(cfg.data.duration * codec.sample_rate)))
    if frames < cfg.model.patch_size or frames % cfg.model.patch_size:
        raise ConfigError(f"latent length {frames} frames (data.duration={cfg.data.duration}s at "
                          f"{codec.sample_rate} Hz, hop {codec.hop_length}) is not a positive multiple of "
                          f"model.patch_size={cfg.model.patch_size}; change one of them")
