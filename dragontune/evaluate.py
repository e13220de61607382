"""Win rates of a fine-tuned model against its baseline over a suite of rewards (docs/evaluation.md).

Both models generate ``seeds_per_prompt`` clips per held-out prompt with the *same* seeds and sampler; every
reward of the suite scores both sets of clips (audio is generated once, each encoder embeds it once).

* instance and instance-to-distribution rewards: the **win rate** is the share of prompts whose fine-tuned
  clips score higher (mean over the prompt's seeds) than the baseline's; a tie counts one half. Its interval
  is the Wilson score interval over the n prompts (:func:`dragontune.win_rates.wilson_interval`).
* distribution-to-distribution rewards (one score per set): the set score of all clips per model (>= 256
  clips for statistics that mean something), and the 95 % percentile interval of the *difference* from a
  paired bootstrap over prompts (each resample takes the same prompts, with all their clips, for both
  models: :func:`dragontune.win_rates.bootstrap_set_difference`). The **bootstrap win share** (share of resamples in which the
  fine-tuned set scores higher) is reported as such, not as a probability. FAD is also extrapolated to an
  infinite set (FAD-inf, :func:`dragontune.metrics.fad_infinity`).

The statistics (:func:`wilson_interval`, :func:`instance_win_rate`, :func:`bootstrap_set_difference`) live
in ``dragontune.win_rates``, the reward suite (``DEFAULT_SUITE``, ``suite_specs``, ``build_suite``) in
``dragontune.rewards.suite``, the prompt loader in ``dragontune.data.prompts`` and the seeds in ``dragontune.seeds``.

Public API::

    EvalConfig, run_eval(cfg) -> dict  (what `dragontune eval` runs)
    evaluate_models(baseline_path, model_path, prompts, suite, *, seeds, sampler, device, out_dir, ...) -> dict
    format_eval_table(result) -> str
"""

from __future__ import annotations

import dataclasses
import math
import os
import time
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from dragontune.errors import CheckpointError, ConfigError, DataError, DragontuneError
from dragontune.utils import atomic_write_json, atomic_write_text, ensure_writable_dir, log
from dragontune.data.prompts import load_prompts
from dragontune.generate import SamplerConfig
from dragontune.rewards.suite import build_suite, suite_specs
from dragontune.seeds import eval_seed
from dragontune.win_rates import bootstrap_set_difference, instance_win_rate

EVAL_FORMAT = "dragontune-eval-1"

# ----------------------------------------------------------------------------------------------------------
# evaluation


def _load_pair(baseline_path, model_path, device):
    from dragontune.codecs import codec_from_config
    from dragontune.models.checkpoint import T2AModel, build_net, load_model, read_model_file

    base = load_model(baseline_path, device=device)
    state, spec = read_model_file(model_path)
    codec_b = codec_from_config(spec.codec)
    a_id, b_id = base.codec.id, codec_b.id
    if a_id != b_id or base.sample_rate != codec_b.sample_rate:
        raise CheckpointError(
            f"baseline {str(baseline_path) if baseline_path is not None else '(the committed baseline)'!r} and model "
            f"{str(model_path)!r} use different codecs "
            f"(baseline: {a_id} at {base.sample_rate} Hz; model: {b_id} at {codec_b.sample_rate} Hz); "
            "a win rate compares clips decoded the same way: fine-tune from this baseline or compare against "
            "the baseline the model was trained from"
        )
    same_text = (spec.text_encoder, spec.text_encoder_id) == (base.spec.text_encoder, base.spec.text_encoder_id)
    net = build_net(spec, state, str(model_path))
    model = T2AModel(net, spec, codec=base.codec, text_encoder=base.text_encoder if same_text else None, device=device)
    return base, model


def _decode(model, lat: torch.Tensor, batch_size: int) -> torch.Tensor:
    out = []
    bs = max(1, int(batch_size))
    for i in range(0, lat.shape[0], bs):
        out.append(model.decode(lat[i:i + bs].to(model.device)).cpu())
    return torch.cat(out)


def _per_prompt_mean(scores: torch.Tensor, n_prompts: int, per_prompt: int) -> torch.Tensor:
    """Mean over each prompt's clips (NaN clips ignored; a prompt whose clips are all NaN stays NaN)."""
    s = scores.to(torch.float64).reshape(n_prompts, per_prompt)
    ok = torch.isfinite(s)
    cnt = ok.sum(1)
    tot = torch.where(ok, s, torch.zeros_like(s)).sum(1)
    return torch.where(cnt > 0, tot / cnt.clamp_min(1), torch.full_like(tot, float("nan")))


def _pick_audio(n: int, k: int) -> list[int]:
    if k <= 0:
        return []
    if k >= n:
        return list(range(n))
    return sorted({int(round(j * (n - 1) / (k - 1))) for j in range(k)}) if k > 1 else [0]


#: fewest clips per model for a set-reward comparison whose statistics mean something (issue: >= 256)
MIN_SET_CLIPS = 256


@dataclasses.dataclass
class EvalConfig:
    """What ``dragontune eval`` compares, how, and where it writes (YAML + dotted overrides, like finetune)."""

    model: str = ""                     # the fine-tuned checkpoint (required)
    baseline: str = ""                  # "" = the committed baseline
    prompts: str = "test"               # corpus:SPLIT, a bare split name, or a text file with one prompt per line
    n_prompts: int = 0                  # the first N prompts (0 = all)
    suite: str = "default"              # default | comma-separated suite reward names
    corpus: str = "data/corpus"
    seed: int = 0
    seeds_per_prompt: int = 1           # clips per prompt and model (>= 256 clips in all for set rewards)
    sampler: SamplerConfig = dataclasses.field(default_factory=SamplerConfig)
    device: str = "cpu"
    generation_cache: str = ""          # "" = off; a folder keeps each model's latents under a content key
    skip_unavailable: bool = False      # a suite reward that cannot be built is listed, not fatal
    n_audio: int = 4                    # audio pairs saved for listening (0 = none)
    n_boot: int = 200                   # bootstrap resamples of the set rewards
    out_dir: str = "runs/eval"


def run_eval(cfg: EvalConfig) -> dict:
    """The evaluation a checked :class:`EvalConfig` describes (see :func:`evaluate_models`)."""
    prompts = load_prompts(cfg.prompts, corpus=cfg.corpus, limit=cfg.n_prompts or None)
    suite = cfg.suite if cfg.suite == "default" else [s for s in cfg.suite.split(",") if s]
    return evaluate_models(cfg.baseline or None, cfg.model, prompts, suite, seed=cfg.seed,
                           seeds_per_prompt=cfg.seeds_per_prompt, sampler=cfg.sampler, device=cfg.device,
                           out_dir=cfg.out_dir, corpus=cfg.corpus, n_boot=cfg.n_boot, n_audio=cfg.n_audio,
                           skip_unavailable=cfg.skip_unavailable, generation_cache=cfg.generation_cache or None)


def evaluate_models(
    baseline_path: str | os.PathLike | None,
    model_path: str | os.PathLike,
    prompts: Sequence[str],
    suite: str | Sequence[Any] = "default",
    *,
    seeds: Sequence[int] | None = None,
    seed: int = 0,
    seeds_per_prompt: int = 1,
    sampler=None,
    device: str = "cpu",
    out_dir: str | os.PathLike | None = None,
    corpus: str | os.PathLike = "data/corpus",
    n_boot: int = 200,
    n_audio: int = 4,
    skip_unavailable: bool = False,
    on_error: str = "raise",
    cache_dir: str | os.PathLike | None = None,
    generation_cache: str | os.PathLike | None = None,
    z: float = 1.96,
) -> dict:
    """Win rates of ``model_path`` (B) against ``baseline_path`` (A; ``None`` = the committed baseline).

    Both models generate ``seeds_per_prompt`` clips per prompt with the same seeds (default
    ``eval_seed(seed, i, k)``; or one explicit seed per prompt in ``seeds``) and the same ``sampler``.
    Per-sample rewards: win rate over prompts of the per-prompt mean score (ties 1/2), Wilson interval.
    Set rewards: the set score of all clips per model, a paired bootstrap over prompts of the difference
    (percentile interval; the *bootstrap win share* summarises the same resamples), and for FAD also FAD
    extrapolated to infinitely many clips (``fad_inf``) so that sets of different sizes compare. A set
    comparison on fewer than ``MIN_SET_CLIPS`` clips per model is flagged (``small_set``) and warned about.
    Each batch is embedded once per encoder (rewards share embeddings through the batch).
    ``generation_cache``: a folder where generated latents are kept (the baseline of repeated comparisons).
    ``on_error="record"`` stores a reward that fails while scoring as an error row instead of raising. With
    ``out_dir`` it writes ``eval.json``, ``eval.md`` and ``audio/`` (``n_audio`` baseline/model pairs).
    Returns the dict written to ``eval.json``.
    """
    from dragontune.generate import generate_latents_cached
    from dragontune.metrics import fad_infinity
    from dragontune.rewards.base import ScoringBatch
    from dragontune.rewards.builtin import FADReward
    from dragontune.rewards.registry import RewardContext
    from dragontune.utils import resolve_device

    if on_error not in ("raise", "record"):
        raise ConfigError(f"on_error={on_error!r} must be 'raise' or 'record'")
    prompts = [str(p) for p in prompts]
    if not prompts or any(not p.strip() for p in prompts):
        raise DataError("evaluation needs at least one prompt, and no prompt may be empty"
                        if prompts else "evaluation needs at least one prompt; the prompt list is empty")
    S = int(seeds_per_prompt)
    if S < 1:
        raise ConfigError(f"seeds_per_prompt={seeds_per_prompt!r} must be >= 1 (clips per prompt and model)")
    if seeds is not None:
        if S != 1:
            raise ConfigError("give either explicit seeds (one per prompt) or seeds_per_prompt, not both")
        seeds = [int(v) for v in seeds]
        if len(seeds) != len(prompts):
            raise ConfigError(f"{len(prompts)} prompts but {len(seeds)} seeds; give one seed per prompt")
    else:
        seeds = [eval_seed(seed, i, k) for i in range(len(prompts)) for k in range(S)]
    clip_prompts = [p for p in prompts for _ in range(S)]
    sampler = sampler or SamplerConfig()
    specs = suite_specs(suite, corpus)
    out = ensure_writable_dir(out_dir) if out_dir is not None else None
    dev = resolve_device(device)
    t0 = time.perf_counter()
    base, model = _load_pair(baseline_path, model_path, dev)
    ctx = RewardContext(codec=base.codec, device=dev, cache_dir=cache_dir)
    rewards, skipped = build_suite(specs, ctx, skip_unavailable=skip_unavailable)
    t1 = time.perf_counter()
    n_clips = len(clip_prompts)
    log.info("evaluation: generating %d clips per model (%d prompts x %d seeds; %s, %d steps)", n_clips,
             len(prompts), S, sampler.sampler, sampler.steps)
    lat_a = generate_latents_cached(base, None if baseline_path is None else str(baseline_path), clip_prompts,
                                     seeds, sampler, generation_cache)
    lat_b = generate_latents_cached(model, str(model_path), clip_prompts, seeds, sampler, generation_cache)
    t2 = time.perf_counter()
    sr = base.sample_rate
    # latents with decoding on first use: rewards in the codec's space score the latents the model made (as in
    # training), the others see the decoded audio (decoded once per model)
    batch_a = ScoringBatch(None, sr, clip_prompts, latents=lat_a, codec=base.codec,
                           decode=lambda z: _decode(base, z, sampler.batch_size))
    batch_b = ScoringBatch(None, sr, clip_prompts, latents=lat_b, codec=base.codec,
                           decode=lambda z: _decode(model, z, sampler.batch_size))
    spec_of = dict(specs)
    rows = []
    for name, reward in rewards:
        row: dict[str, Any] = {"name": name, "reward": reward.name, "reward_class": reward.reward_class,
                               "spec": spec_of[name]}
        try:
            with torch.no_grad():
                fa, fb = reward.features(batch_a), reward.features(batch_b)
                if reward.reward_class == "dist_to_dist":
                    row["before"], row["after"] = reward.set_value(fa), reward.set_value(fb)
                    row["method"] = "bootstrap"
                    bs = bootstrap_set_difference(
                        lambda idx: (reward.set_value(fa.subset(idx)), reward.set_value(fb.subset(idx))),
                        len(prompts), S, n_boot=n_boot, seed=seed)
                    row.update(bs)
                    # the table's "win rate" of a set reward is the bootstrap win share (labelled as such)
                    row.update(win_rate=bs["boot_win_share"], win_rate_kind="bootstrap win share", lo=None, hi=None,
                               n=len(prompts), n_clips=n_clips)
                    if n_clips < MIN_SET_CLIPS:
                        row["small_set"] = True
                        log.warning("evaluation: set reward %s compared on %d clips per model (< %d): its statistics "
                                    "are rank-deficient; raise the prompts or seeds_per_prompt", name, n_clips,
                                    MIN_SET_CLIPS)
                    if isinstance(reward, FADReward) and reward.pooling == "clip" and n_clips >= 8:
                        ia = fad_infinity(fa.clips, reward.exemplars.clips, seed=seed)
                        ib = fad_infinity(fb.clips, reward.exemplars.clips, seed=seed)
                        row["fad_inf_before"], row["fad_inf_after"] = ia["fad_inf"], ib["fad_inf"]
                else:
                    ra, rb = reward.score(fa), reward.score(fb)
                    pa = _per_prompt_mean(ra.scores, len(prompts), S)
                    pb = _per_prompt_mean(rb.scores, len(prompts), S)
                    iw = instance_win_rate(pa, pb, z=z)
                    row["method"] = "instance"
                    row["win_rate_kind"] = "share of prompts"
                    row["before"], row["after"] = iw.pop("mean_a"), iw.pop("mean_b")
                    row.update(iw)
                    row["scores_before"] = [_jf(v) for v in pa.tolist()]
                    row["scores_after"] = [_jf(v) for v in pb.tolist()]
        except DragontuneError as e:
            if on_error == "raise":
                raise type(e)(f"suite reward {name!r}: {e}") from None
            log.warning("evaluation: suite reward %s failed: %s", name, e)
            row = {"name": name, "reward": reward.name, "reward_class": reward.reward_class, "spec": spec_of[name],
                   "error": f"{type(e).__name__}: {e}"}
        rows.append(row)
        if row.get("method") == "bootstrap":
            log.info("evaluation: %s difference %.4g [%.4g, %.4g] (bootstrap win share %.3f)", name,
                     row["after"] - row["before"], row["diff_lo"], row["diff_hi"], row["win_rate"])
        elif "win_rate" in row:
            log.info("evaluation: %s win rate %.3f [%.3f, %.3f]", name, row["win_rate"], row["lo"], row["hi"])
    t3 = time.perf_counter()
    result: dict[str, Any] = {
        "format": EVAL_FORMAT,
        "baseline": str(baseline_path) if baseline_path is not None else "(committed baseline)",
        "model": str(model_path),
        "codec": base.codec.id,
        "sample_rate": sr,
        "n_prompts": len(prompts),
        "seeds_per_prompt": S,
        "n_clips": n_clips,
        "prompts": prompts,
        "seeds": seeds,
        "sampler": dataclasses.asdict(sampler),
        "n_boot": int(n_boot),
        "z": z,
        "rewards": rows,
        "skipped": [{"name": n, "reason": r} for n, r in skipped],
        "time": {"load": t1 - t0, "generate": t2 - t1, "score (incl. decoding)": t3 - t2},
        "decoded": batch_a.n_decoded > 0,
    }
    scored = [r for r in rows if "win_rate" in r and r["win_rate"] is not None and math.isfinite(r["win_rate"])]
    result["mean_win_rate"] = float(np.mean([r["win_rate"] for r in scored])) if scored else None
    if out is not None:
        result["audio"] = _save_audio(out, clip_prompts, seeds, batch_a, batch_b, sr, n_audio)
        atomic_write_json(out / "eval.json", _json_safe(result))
        atomic_write_text(out / "eval.md", format_eval_markdown(result))
        log.info("evaluation written to %s", out / "eval.json")
    return result


def unscored_reason(result: dict) -> str | None:
    """Why no suite reward gave a finite result (None if at least one did): one clause per reward."""
    if result.get("mean_win_rate") is not None:
        return None
    parts = []
    for r in result.get("rewards", []):
        if "error" in r:
            parts.append(f"{r['name']}: {r['error']}")
        else:
            n = r.get("nan_dropped")
            parts.append(f"{r['name']}: every score is NaN" + (f" ({n} prompts dropped)" if n else ""))
    parts += [f"{s['name']}: skipped ({s['reason']})" for s in result.get("skipped", [])]
    return "; ".join(parts) or "the suite is empty"


def _jf(v: float) -> float | None:
    return float(v) if math.isfinite(float(v)) else None


def _json_safe(obj: Any) -> Any:
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, Mapping):
        return {str(k): _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    return obj


def _save_audio(out: Path, prompts, seeds, batch_a, batch_b, sr, n_audio) -> dict:
    from dragontune.audio import save_wav

    d = out / "audio"
    pairs = []
    picked = _pick_audio(len(prompts), int(n_audio))
    audio_a = batch_a.audio if picked else None
    audio_b = batch_b.audio if picked else None
    n_clipped = n_total = 0
    for k, i in enumerate(picked):
        fa, fb = f"audio/{k:03d}-baseline.wav", f"audio/{k:03d}-model.wav"
        ca = save_wav(out / fa, audio_a[i], sr)  # each warns with its own count
        cb = save_wav(out / fb, audio_b[i], sr)
        # kept beside the files: the report and the listening test say how much a clip was clipped when saved
        pairs.append({"index": i, "prompt": prompts[i], "seed": seeds[i], "baseline": fa, "model": fb,
                      "clipped_baseline": ca, "clipped_model": cb})
        n_clipped += ca + cb
        n_total += audio_a[i].numel() + audio_b[i].numel()
    if n_clipped:
        log.warning("evaluation audio: %d of %d saved samples (%.2f %%) were beyond full scale and clipped (counts per "
                    "clip in %s)", n_clipped, n_total, 100.0 * n_clipped / n_total, d / "index.json")
    index = {"sample_rate": sr, "pairs": pairs}
    if pairs:
        atomic_write_json(d / "index.json", index)
    return {"index": "audio/index.json" if pairs else None, "pairs": pairs}


# ----------------------------------------------------------------------------------------------------------
# tables


def _fmt(v: Any, digits: int = 4) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "-"
    return f"{v:.{digits}g}" if isinstance(v, float) else str(v)


def _table_rows(result: Mapping[str, Any]) -> list[list[str]]:
    rows = []
    for r in result.get("rewards", []):
        if "error" in r:
            rows.append([r["name"], r.get("reward_class", ""), "-", "error", "-", "-", r["error"][:80]])
            continue
        wr = r.get("win_rate")
        win = "-" if wr is None or not math.isfinite(wr) else f"{100 * wr:.1f}%"
        ci = "-" if wr is None or r.get("lo") is None else f"[{100 * r['lo']:.1f}, {100 * r['hi']:.1f}]"
        if r.get("method") == "bootstrap":
            win = "-" if wr is None or not math.isfinite(wr) else f"{100 * wr:.1f}% (boot. share)"
            note = (f"{r.get('n_clips', r.get('n'))} clips; difference 95% [{_fmt(r.get('diff_lo'))}, "
                    f"{_fmt(r.get('diff_hi'))}] (paired bootstrap over prompts, {r.get('n_boot')}x)")
            if r.get("fad_inf_before") is not None:
                note += f"; FAD-inf {_fmt(r['fad_inf_before'])} -> {_fmt(r['fad_inf_after'])}"
        else:
            note = f"ties {r.get('ties', 0)}" + (f", NaN {r['nan_dropped']}" if r.get("nan_dropped") else "")
        rows.append([r["name"], r.get("reward_class", ""), str(r.get("n", "-")), win, ci,
                     f"{_fmt(r.get('before'))} -> {_fmt(r.get('after'))}", note])
    for s in result.get("skipped", []):
        rows.append([s["name"], "-", "-", "skipped", "-", "-", s["reason"][:80]])
    return rows


_HEAD = ["reward", "class", "n", "win rate", "95% CI", "before -> after", "notes"]


def format_eval_table(result: Mapping[str, Any]) -> str:
    """Plain-text table of an evaluation result (for the terminal)."""
    rows = [_HEAD] + _table_rows(result)
    w = [max(len(r[j]) for r in rows) for j in range(len(_HEAD))]
    line = lambda r: "  ".join(c.ljust(w[j]) for j, c in enumerate(r)).rstrip()  # noqa: E731
    out = [f"model {result.get('model')} vs baseline {result.get('baseline')}: "
           f"{result.get('n_prompts')} prompts, same seeds", line(rows[0]), "-" * (sum(w) + 2 * (len(w) - 1))]
    out += [line(r) for r in rows[1:]]
    m = result.get("mean_win_rate")
    if m is not None:
        out.append(f"mean win rate over {sum(1 for r in result.get('rewards', []) if 'win_rate' in r)} rewards: "
                   f"{100 * m:.1f}%")
    return "\n".join(out)


def format_eval_markdown(result: Mapping[str, Any]) -> str:
    """Markdown version of :func:`format_eval_table` (written to ``eval.md``)."""
    def cell(s: str) -> str:
        return s.replace("|", "\\|").replace("\n", " ")

    lines = [
        "# Win rates: fine-tuned vs baseline", "",
        f"- model: `{result.get('model')}`", f"- baseline: `{result.get('baseline')}`",
        f"- prompts: {result.get('n_prompts')} x {result.get('seeds_per_prompt', 1)} seeds per prompt and model "
        "(same seeds and sampler)",
        f"- sampler: {(result.get('sampler') or {}).get('sampler')}, {(result.get('sampler') or {}).get('steps')} steps",
        "- win rate: share of prompts where the fine-tuned clips score higher (ties count 1/2), Wilson 95% "
        "interval; set rewards: the 95% interval is of the score difference (paired bootstrap over prompts, "
        "percentile), and the bootstrap win share is the share of those resamples in which the fine-tuned set "
        "scores higher (see docs/evaluation.md)", "",
        "| " + " | ".join(_HEAD) + " |", "|" + "---|" * len(_HEAD),
    ]
    lines += ["| " + " | ".join(cell(c) for c in r) + " |" for r in _table_rows(result)]
    m = result.get("mean_win_rate")
    if m is not None:
        lines += ["", f"Mean win rate: {100 * m:.1f}%"]
    return "\n".join(lines) + "\n"
