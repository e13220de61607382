"""One self-contained HTML page for a DRAGON run directory: ``write_report(run_dir) -> run_dir/report.html``,
and one page for a suite of runs (a folder of run directories): :func:`write_suite_report`.

The run page embeds everything (figures as base64 PNG, audio as base64 WAV data URIs, inline CSS, no script,
no external URL) and leads with the result:

1. a **headline**: the target reward before -> after on held-out prompts, its win rate with the 95 %
   interval, the human win rate when a listening test (``dragontune listen``) has votes, and the other
   rewards whose win-rate interval excludes 50 % (the side effects);
2. **audio pairs** side by side (baseline | fine-tuned, same prompt and seed) with their spectrograms;
3. the full win-rate table and the listening-test table;
4. reward curves (target, watch list, held-out ``eval/*``);
5. D+/D- statistics (``metrics.jsonl`` ``train/*`` and ``demo/*`` and the ``demos/round-*.jsonl`` files);
6. the configuration, last.

Inputs: ``config.yaml``, ``batch_arithmetic.json``, ``metrics.jsonl``, ``demos/``, and the evaluation
(``eval.json`` from :func:`dragontune.evaluate.evaluate_models`, its ``audio/index.json`` and the
listening database ``listen.sqlite`` beside it). A missing or unreadable input is reported on the page
instead of failing.
"""

from __future__ import annotations

import base64
import datetime as _dt
import html
import io
import json
import math
import os
from pathlib import Path
from typing import Any

from dragontune.utils import atomic_write_text, log

#: where :func:`write_report` looks for the evaluation, relative to the run directory
EVAL_CANDIDATES = ("eval.json", "eval/eval.json")
#: largest audio file embedded (bytes); larger files are listed, not embedded
MAX_AUDIO_BYTES = 4 * 1024 * 1024

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:2em auto;max-width:1100px;
color:#1d1d1f;padding:0 1em;line-height:1.45}
h1{font-size:1.6em}h2{border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:2em}
table{border-collapse:collapse;margin:.6em 0;font-size:.92em}
th,td{border:1px solid #ddd;padding:.25em .6em;text-align:left;vertical-align:top}
th{background:#f4f4f6}td.num{text-align:right;font-variant-numeric:tabular-nums}
.missing{background:#fff6e0;border-left:4px solid #e0a000;padding:.5em .8em;margin:.6em 0}
.bar{position:relative;background:#eee;width:160px;height:12px;display:inline-block;vertical-align:middle}
.bar span{position:absolute;top:0;bottom:0;background:#4a7bd0}
.bar i{position:absolute;top:-2px;bottom:-2px;width:1px;background:#c00;left:50%}
.pair{display:flex;gap:1.5em;flex-wrap:wrap;margin:.4em 0 1.2em 0}.pair div{min-width:300px}
figure{margin:1em 0}img{max-width:100%}pre{background:#f7f7f9;padding:.8em;overflow:auto;font-size:.85em}
.small{color:#666;font-size:.88em}
#headline{background:#eef3fb;border:1px solid #c9d8f0;border-radius:8px;padding:.7em 1.1em;margin:1em 0}
#headline h2{border:0;margin:.1em 0 .3em 0;font-size:1.25em}#headline p{margin:.35em 0}
#headline .big{font-size:1.15em}.up{color:#17663a}.down{color:#a3241c}
.pairs{border-collapse:collapse}.pairs td{border:0;padding:.3em .8em .8em 0;vertical-align:top}
.pairs img{width:440px;max-width:100%;display:block}
.matrix td.cell{text-align:center;font-variant-numeric:tabular-nums;min-width:3.2em}
.matrix td.diag{outline:2px solid #333;outline-offset:-2px}.matrix td.sig{font-weight:bold}
"""


def _e(x: Any) -> str:
    return html.escape(str(x), quote=True)


def _num(v: Any, digits: int = 4) -> str:
    if v is None:
        return "-"
    if isinstance(v, bool):
        return str(v)
    if isinstance(v, (int,)):
        return str(v)
    try:
        f = float(v)
    except (TypeError, ValueError):
        return _e(v)
    return f"{f:.{digits}g}" if math.isfinite(f) else "-"


def _finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(float(v))


# ----------------------------------------------------------------------------------------------------------
# inputs


def read_metrics(path: Path) -> tuple[list[dict], list[str]]:
    """Records of ``metrics.jsonl`` (sorted by round) and a list of problems found (bad lines)."""
    recs, problems = [], []
    for ln, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            r = json.loads(line)
        except json.JSONDecodeError as e:
            problems.append(f"{path.name}:{ln}: not valid JSON ({e.msg}); line skipped")
            continue
        if not isinstance(r, dict) or not isinstance(r.get("round"), int):
            problems.append(f"{path.name}:{ln}: no integer 'round'; line skipped")
            continue
        recs.append(r)
    recs.sort(key=lambda r: r["round"])
    return recs, problems


def _read_demos(run_dir: Path) -> tuple[list[dict], list[str]]:
    """Per-round summaries of ``demos/round-*.jsonl``."""
    out, problems = [], []
    for f in sorted((run_dir / "demos").glob("round-*.jsonl")):
        try:
            rnd = int(f.stem.split("-", 1)[1])
            rows = [json.loads(x) for x in f.read_text(encoding="utf-8").splitlines() if x.strip()]
        except (ValueError, json.JSONDecodeError) as e:
            problems.append(f"{f.name}: unreadable ({e}); skipped")
            continue

        def mean(key: str, sel) -> float | None:
            v = [float(r[key]) for r in rows if sel(r) and _finite(r.get(key))]
            return sum(v) / len(v) if v else None

        pos = lambda r: (r.get("label") or 0) > 0  # noqa: E731
        neg = lambda r: (r.get("label") or 0) < 0  # noqa: E731
        out.append({
            "round": rnd,
            "n": len(rows),
            "n_pos": sum(1 for r in rows if pos(r)),
            "n_neg": sum(1 for r in rows if neg(r)),
            "n_unused": sum(1 for r in rows if not pos(r) and not neg(r)),
            "n_reference": sum(1 for r in rows if r.get("source") == "reference"),
            "n_pos_reference": sum(1 for r in rows if pos(r) and r.get("source") == "reference"),
            "n_pairs": len({r["pair"] for r in rows if r.get("pair") is not None}),
            "reward_pos": mean("reward", pos),
            "reward_neg": mean("reward", neg),
            "n_nan": sum(1 for r in rows if r.get("reward") is None),
        })
    return out, problems


def _find_eval(run_dir: Path, eval_path: str | os.PathLike | None) -> Path | None:
    if eval_path is not None:
        return Path(eval_path)
    for c in EVAL_CANDIDATES:
        if (run_dir / c).is_file():
            return run_dir / c
    return None


# ----------------------------------------------------------------------------------------------------------
# figures


def _png(fig) -> str:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _img(b64: str, alt: str, caption: str) -> str:
    return (f'<figure><img alt="{_e(alt)}" src="data:image/png;base64,{b64}">'
            f'<figcaption class="small">{_e(caption)}</figcaption></figure>')


def _series(recs: list[dict], key: str) -> tuple[list[int], list[float]]:
    xs, ys = [], []
    for r in recs:
        v = r.get(key)
        if _finite(v):
            xs.append(r["round"])
            ys.append(float(v))
    return xs, ys


def _fig_target(recs: list[dict], target: str | None):
    from matplotlib.figure import Figure

    fig = Figure(figsize=(8, 3.4))
    ax = fig.add_subplot(1, 1, 1)
    drawn = False
    for key, label in (("reward", "train batch: mean reward of policy samples"),
                       ("set_reward", "train batch: set reward")):
        xs, ys = _series(recs, key)
        if xs:
            ax.plot(xs, ys, "-", lw=1.5, label=label)
            drawn = True
    if target:
        xs, ys = _series(recs, f"eval/{target}")
        if xs:
            ax.plot(xs, ys, "o--", ms=5, label=f"held-out prompts: eval/{target}")
            drawn = True
    if not drawn:
        return None
    ax.set_xlabel("round")
    ax.set_ylabel(f"reward{f' ({target})' if target else ''} (higher is better)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return fig


def _fig_grid(recs: list[dict], names: list[str], lines: list[tuple[str, str, str]], title_prefix: str = ""):
    """One small subplot per name; ``lines`` = (key prefix, style, label)."""
    from matplotlib.figure import Figure

    names = [n for n in names if any(_series(recs, f"{p}{n}")[0] for p, _, _ in lines)]
    if not names:
        return None
    cols = min(3, len(names))
    rows = math.ceil(len(names) / cols)
    fig = Figure(figsize=(3.6 * cols, 2.6 * rows))
    for k, n in enumerate(names):
        ax = fig.add_subplot(rows, cols, k + 1)
        for prefix, style, label in lines:
            xs, ys = _series(recs, f"{prefix}{n}")
            if xs:
                ax.plot(xs, ys, style, ms=4, lw=1.2, label=label)
        ax.set_title(f"{title_prefix}{n}", fontsize=9)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
        if k == 0:
            ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def _fig_train(recs: list[dict]):
    from matplotlib.figure import Figure

    panels = [
        ("DPO/KTO loss", [("train/loss", "loss")]),
        ("implicit accuracy", [("train/implicit_acc", "implicit acc")]),
        ("A = l_theta - l_ref (D+ should fall below D-)", [("train/A_pos", "A on D+"), ("train/A_neg", "A on D-")]),
        ("gradient norm (before clipping)", [("train/grad_norm", "grad norm")]),
    ]
    panels = [(t, ks) for t, ks in panels if any(_series(recs, k)[0] for k, _ in ks)]
    if not panels:
        return None
    cols = 2
    rows = math.ceil(len(panels) / cols)
    fig = Figure(figsize=(8, 2.7 * rows))
    for i, (title, keys) in enumerate(panels):
        ax = fig.add_subplot(rows, cols, i + 1)
        for k, label in keys:
            xs, ys = _series(recs, k)
            if xs:
                ax.plot(xs, ys, "-", lw=1.2, label=label)
        if "implicit" in title:
            ax.axhline(0.5, color="grey", lw=0.8, ls=":")
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("round", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
        if len(keys) > 1:
            ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


# ----------------------------------------------------------------------------------------------------------
# sections


def _missing(msg: str) -> str:
    return f'<div class="missing">{_e(msg)}</div>'


def _kv_table(items: list[tuple[str, Any]]) -> str:
    rows = "".join(f"<tr><th>{_e(k)}</th><td>{_e(v)}</td></tr>" for k, v in items)
    return f"<table>{rows}</table>"


def _section_config(run_dir: Path) -> str:
    import yaml

    parts = ["<h2>Configuration</h2>"]
    p = run_dir / "config.yaml"
    if not p.is_file():
        parts.append(_missing(f"No config.yaml in {run_dir}: the configuration of this run is unknown."))
    else:
        text = p.read_text(encoding="utf-8")
        try:
            cfg = yaml.safe_load(text) or {}
        except yaml.YAMLError as e:
            cfg = None
            parts.append(_missing(f"config.yaml could not be parsed ({e}); its text is shown below."))
        if isinstance(cfg, dict):
            def get(path: str) -> Any:
                cur: Any = cfg
                for k in path.split("."):
                    if not isinstance(cur, dict) or k not in cur:
                        return None
                    cur = cur[k]
                return cur

            keys = ["baseline", "reward", "watch", "loss", "builder", "builder_options", "beta", "rounds",
                    "prompts_per_round", "k_per_prompt", "p_reference", "updates_per_round", "batch_per_update",
                    "optim.lr", "optim.grad_clip", "sampler.steps", "sampler.sampler", "sampler.cfg",
                    "sampler.cfgpp", "prompts", "eval_prompts", "seed", "device"]
            items = []
            for k in keys:
                v = get(k)
                if v is None or v == "" or v == [] or v == {}:
                    continue
                items.append((k, json.dumps(v, sort_keys=True) if isinstance(v, (dict, list)) else v))
            parts.append(_kv_table(items) if items else _missing("config.yaml holds none of the usual DRAGON keys."))
        parts.append(f"<details><summary>config.yaml</summary><pre>{_e(text)}</pre></details>")
    ba = run_dir / "batch_arithmetic.json"
    if ba.is_file():
        try:
            arith = json.loads(ba.read_text(encoding="utf-8"))
            parts.append("<h3>Batch arithmetic</h3>" + _kv_table(sorted(arith.items())))
        except json.JSONDecodeError as e:
            parts.append(_missing(f"batch_arithmetic.json is not valid JSON ({e})."))
    return "\n".join(parts)


def _target_name(run_dir: Path, recs: list[dict]) -> str | None:
    ba = run_dir / "batch_arithmetic.json"
    if ba.is_file():
        try:
            name = json.loads(ba.read_text(encoding="utf-8")).get("reward")
            if name:
                return str(name)
        except json.JSONDecodeError:
            pass
    evals = sorted({k[5:] for r in recs for k in r if k.startswith("eval/")})
    watches = {k[6:] for r in recs for k in r if k.startswith("watch/")}
    cand = [e for e in evals if e not in watches]
    return cand[0] if len(cand) == 1 else None


def _section_curves(run_dir: Path, recs: list[dict], problems: list[str]) -> str:
    parts = ["<h2>Reward curves</h2>"]
    parts += [_missing(p) for p in problems]
    if not recs:
        parts.append(_missing(f"No metrics: {run_dir / 'metrics.jsonl'} is missing or empty, so there are no "
                              "reward curves (the run has not finished a round yet, or this is not a run directory)."))
        return "\n".join(parts)
    target = _target_name(run_dir, recs)
    fig = _fig_target(recs, target)
    if fig is None:
        parts.append(_missing("metrics.jsonl has no finite reward values to plot."))
    else:
        parts.append(_img(_png(fig), "target reward per round",
                          f"Target reward {target or ''} per round: mean over the policy's samples of the round's "
                          "batch (or the set reward), and on the held-out prompts (round 0 = baseline)."))
    watch = sorted({k[6:] for r in recs for k in r if k.startswith("watch/")})
    evals = sorted({k[5:] for r in recs for k in r if k.startswith("eval/")})
    names = [n for n in dict.fromkeys(watch + evals) if n != target]
    if names:
        fig = _fig_grid(recs, names, [("watch/", "-", "watch (train batch)"), ("eval/", "o--", "held-out")])
        if fig is not None:
            parts.append(_img(_png(fig), "watch-list and held-out rewards",
                              "Watch-list rewards (logged, not optimised) on each round's policy samples, and "
                              "held-out evaluations (eval/*)."))
    else:
        parts.append('<p class="small">No watch-list rewards were logged.</p>')
    last = recs[-1]
    items = [(k, _num(v)) for k, v in sorted(last.items()) if k.startswith(("time/",))]
    if items:
        parts.append(f"<h3>Time per round (round {last['round']})</h3>" + _kv_table(items))
    return "\n".join(parts)


def _section_winrates(run_dir: Path, eval_file: Path | None) -> tuple[str, dict | None]:
    parts = ["<h2>Win rates: fine-tuned vs baseline</h2>"]
    if eval_file is None or not eval_file.is_file():
        where = eval_file if eval_file is not None else " or ".join(str(run_dir / c) for c in EVAL_CANDIDATES)
        parts.append(_missing(f"No evaluation found ({where}). Run `dragontune evaluate` (or "
                              "dragontune.evaluate.evaluate_models with out_dir=<run>/eval) to add win rates "
                              "and audio examples."))
        return "\n".join(parts), None
    try:
        ev = json.loads(eval_file.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        parts.append(_missing(f"{eval_file} is not valid JSON ({e})."))
        return "\n".join(parts), None
    parts.append(f'<p class="small">model <code>{_e(ev.get("model"))}</code> vs baseline '
                 f'<code>{_e(ev.get("baseline"))}</code>, {_e(ev.get("n_prompts"))} held-out prompts, one clip per '
                 f'prompt and model with the same seed and sampler. Instance rewards: share of prompts where the '
                 f'fine-tuned clip scores higher (ties count 1/2), Wilson 95% interval. Set rewards: share of '
                 f'{_e(ev.get("n_boot"))} bootstrap resamples of the prompts in which the fine-tuned set scores '
                 f'higher; its interval reflects resampling noise (see docs/evaluation.md).</p>')
    head = "<tr><th>reward</th><th>class</th><th>n</th><th>win rate</th><th></th><th>95% interval</th>" \
           "<th>baseline</th><th>fine-tuned</th><th>notes</th></tr>"
    rows = []
    for r in ev.get("rewards", []):
        if "error" in r:
            rows.append(f"<tr><td>{_e(r.get('name'))}</td><td>{_e(r.get('reward_class', ''))}</td>"
                        f"<td colspan=7>error: {_e(r['error'])}</td></tr>")
            continue
        wr, lo, hi = r.get("win_rate"), r.get("lo"), r.get("hi")
        if _finite(wr) and _finite(lo) and _finite(hi):
            bar = (f'<span class="bar" title="interval"><span style="left:{100 * lo:.1f}%;width:'
                   f'{100 * (hi - lo):.1f}%"></span><i></i></span>')
            wtxt, ci = f"{100 * wr:.1f}%", f"[{100 * lo:.1f}%, {100 * hi:.1f}%]"
        else:
            bar, wtxt, ci = "", "-", "-"
        if r.get("method") == "bootstrap":
            note = (f"set score; {r.get('n_boot')} resamples; difference "
                    f"[{_num(r.get('diff_lo'))}, {_num(r.get('diff_hi'))}]")
        else:
            note = f"ties {r.get('ties', 0)}" + (f", {r['nan_dropped']} NaN dropped" if r.get("nan_dropped") else "")
        rows.append(f"<tr><td>{_e(r.get('name'))}</td><td>{_e(r.get('reward_class', ''))}</td>"
                    f"<td class=num>{_e(r.get('n', '-'))}</td><td class=num>{wtxt}</td><td>{bar}</td>"
                    f"<td class=num>{ci}</td><td class=num>{_num(r.get('before'))}</td>"
                    f"<td class=num>{_num(r.get('after'))}</td><td class=small>{_e(note)}</td></tr>")
    for s in ev.get("skipped", []):
        rows.append(f"<tr><td>{_e(s.get('name'))}</td><td>-</td><td colspan=7>skipped: {_e(s.get('reason'))}</td></tr>")
    if rows:
        parts.append(f"<table>{head}{''.join(rows)}</table>")
    else:
        parts.append(_missing(f"{eval_file.name} lists no rewards."))
    m = ev.get("mean_win_rate")
    if _finite(m):
        parts.append(f"<p>Mean win rate over the scored rewards: <b>{100 * m:.1f}%</b></p>")
    return "\n".join(parts), ev


def _section_demos(run_dir: Path, recs: list[dict], max_rows: int = 25) -> str:
    parts = ["<h2>Demonstrations: D+ / D−</h2>"]
    demos, problems = _read_demos(run_dir)
    parts += [_missing(p) for p in problems]
    train = [r for r in recs if any(k.startswith("train/") for k in r)]
    if train:
        fig = _fig_train(recs)
        if fig is not None:
            parts.append(_img(_png(fig), "training statistics",
                              "Per round (means over its optimiser steps): loss, implicit accuracy (share of pairs / "
                              "samples the policy ranks as the reward does, relative to the reference), A on D+ "
                              "and on D− (policy minus reference denoising error: training lowers A on D+ and "
                              "raises it on D−), gradient norm."))

        def mean_of(key: str) -> float | None:
            v = [float(r[key]) for r in train if _finite(r.get(key))]
            return sum(v) / len(v) if v else None

        keys = [("train/implicit_acc", "implicit accuracy"), ("train/A_pos", "A on D+"), ("train/A_neg", "A on D−"),
                ("train/loss", "loss"), ("demo/n_pairs", "pairs per round"), ("demo/n_pos", "D+ per round"),
                ("demo/n_neg", "D− per round")]
        items = []
        for k, label in keys:
            m, lastv = mean_of(k), train[-1].get(k)
            if m is not None:
                items.append((label, f"mean {_num(m)}; last round {_num(lastv)}"))
        skipped = recs[-1].get("skipped_rounds")
        if skipped is not None:
            items.append(("rounds skipped (no demonstrations)", skipped))
        parts.append(f"<p class=small>{len(train)} training rounds.</p>" + _kv_table(items))
    else:
        parts.append(_missing("No training statistics (train/* in metrics.jsonl): no round has trained yet, or the "
                              "metrics are missing."))
    if demos:
        tot = {k: sum(d[k] for d in demos) for k in ("n", "n_pos", "n_neg", "n_unused", "n_reference", "n_pos_reference")}
        parts.append(
            f"<p>{len(demos)} rounds of demonstrations, {tot['n']} samples: {tot['n_pos']} in D+, {tot['n_neg']} in "
            f"D−, {tot['n_unused']} unused; {tot['n_reference']} from the frozen reference "
            f"({tot['n_pos_reference']} of them in D+).</p>")
        shown = demos[-max_rows:]
        head = ("<tr><th>round</th><th>samples</th><th>D+</th><th>D−</th><th>unused</th><th>pairs</th>"
                "<th>from reference</th><th>reward D+</th><th>reward D−</th><th>NaN</th></tr>")
        body = "".join(
            f"<tr><td class=num>{d['round']}</td><td class=num>{d['n']}</td><td class=num>{d['n_pos']}</td>"
            f"<td class=num>{d['n_neg']}</td><td class=num>{d['n_unused']}</td><td class=num>{d['n_pairs']}</td>"
            f"<td class=num>{d['n_reference']}</td><td class=num>{_num(d['reward_pos'])}</td>"
            f"<td class=num>{_num(d['reward_neg'])}</td><td class=num>{d['n_nan']}</td></tr>" for d in shown)
        note = f'<p class="small">Last {len(shown)} of {len(demos)} rounds.</p>' if len(shown) < len(demos) else ""
        parts.append(f"<table>{head}{body}</table>{note}")
    else:
        parts.append(_missing(f"No demonstration files ({run_dir / 'demos'}/round-*.jsonl)."))
    return "\n".join(parts)


def _audio_tag(path: Path) -> tuple[str | None, str | None]:
    """(audio element, problem)."""
    import soundfile as sf

    if not path.is_file():
        return None, f"{path} is missing"
    size = path.stat().st_size
    if size > MAX_AUDIO_BYTES:
        return None, f"{path.name} is {size / 1e6:.1f} MB, above the {MAX_AUDIO_BYTES / 1e6:.0f} MB embedding limit"
    data = path.read_bytes()
    try:
        info = sf.info(io.BytesIO(data))
    except Exception as e:  # soundfile raises several types for undecodable data
        return None, f"{path.name} is not readable audio ({e})"
    fmt = info.format.lower()
    mime = {"wav": "audio/wav", "flac": "audio/flac", "ogg": "audio/ogg"}.get(fmt)
    if mime is None:
        return None, f"{path.name} has format {info.format}, not embeddable (use WAV)"
    b64 = base64.b64encode(data).decode("ascii")
    return f'<audio controls preload="metadata" src="data:{mime};base64,{b64}"></audio>', None


def _spectrogram_png(clips: list[tuple[Any, int]]) -> list[str]:
    """Log-magnitude spectrograms (dB) of clips of one pair, on one shared colour scale so they compare."""
    import numpy as np
    from matplotlib.figure import Figure

    n_fft, hop = 512, 128
    specs = []
    for x, sr in clips:
        x = np.asarray(x, dtype=np.float64)
        x = x.mean(axis=1) if x.ndim == 2 else x
        if x.shape[0] < n_fft:
            x = np.pad(x, (0, n_fft - x.shape[0]))
        frames = np.lib.stride_tricks.sliding_window_view(x, n_fft)[::hop] * np.hanning(n_fft)
        mag = np.abs(np.fft.rfft(frames, axis=1)).T
        specs.append((20 * np.log10(mag + 1e-6), sr, x.shape[0] / sr))
    top = max(float(sp.max()) for sp, _, _ in specs)
    out = []
    for sp, sr, dur in specs:
        fig = Figure(figsize=(4.6, 1.7))
        ax = fig.add_subplot(1, 1, 1)
        ax.imshow(sp, origin="lower", aspect="auto", cmap="magma", vmin=top - 80, vmax=top,
                  extent=(0, dur, 0, sr / 2000))
        ax.set_xlabel("s", fontsize=7, labelpad=1)
        ax.set_ylabel("kHz", fontsize=7, labelpad=1)
        ax.tick_params(labelsize=6)
        out.append(_png(fig))
    return out


def _read_pairs(eval_file: Path | None, ev: dict | None) -> tuple[list[dict] | None, str | None]:
    """The audio pairs of an evaluation and a problem, if any."""
    if ev is None or eval_file is None:
        return None, ("No audio examples: they are written with the evaluation (audio/index.json next to "
                      "eval.json).")
    base = eval_file.parent
    index = (ev.get("audio") or {}).get("index")
    if index and (base / index).is_file():
        try:
            return json.loads((base / index).read_text(encoding="utf-8")).get("pairs"), None
        except json.JSONDecodeError as e:
            problem = f"{base / index} is not valid JSON ({e})."
            return (ev.get("audio") or {}).get("pairs"), problem
    return (ev.get("audio") or {}).get("pairs"), None


def _section_audio(eval_file: Path | None, ev: dict | None, max_pairs: int) -> str:
    import soundfile as sf

    parts = ["<h2 id=\"listen\">Listen: baseline | fine-tuned (same prompt, same seed)</h2>"]
    pairs, problem = _read_pairs(eval_file, ev)
    if problem:
        parts.append(_missing(problem))
    if ev is None or eval_file is None:
        return "\n".join(parts)
    if not pairs:
        parts.append(_missing(f"No audio pairs listed by {eval_file.name} (audio/index.json missing or empty): "
                              "`dragontune eval ... --n-audio N` saves N pairs."))
        return "\n".join(parts)
    base = eval_file.parent
    rows = []
    for p in pairs[:max_pairs]:
        cells, clips = [], []
        for key, label in (("baseline", "baseline"), ("model", "fine-tuned")):
            path = base / str(p.get(key, ""))
            tag, problem = _audio_tag(path)
            n_clip = p.get(f"clipped_{key}")
            if tag and isinstance(n_clip, int) and n_clip > 0:
                tag += f'<br><span class="small">{n_clip} samples were beyond full scale and clipped when saved</span>'

            if tag:
                try:
                    x, sr = sf.read(str(path), dtype="float32")
                    clips.append((x, sr))
                except Exception as e:  # soundfile raises several types
                    tag, problem = None, f"{path.name} is not readable audio ({e})"
            cells.append((label, tag, problem))
        imgs = _spectrogram_png(clips) if len(clips) == 2 else [None, None]
        tds = "".join(
            f"<td><b>{label}</b><br>{tag if tag else _missing(problem or 'missing')}"
            + (f'<img alt="spectrogram, {label}" src="data:image/png;base64,{img}">' if img else "") + "</td>"
            for (label, tag, problem), img in zip(cells, imgs))
        rows.append(f'<tr><td colspan=2><h3>{_e(p.get("prompt", ""))}</h3><span class="small">seed '
                    f'{_e(p.get("seed"))}</span></td></tr><tr>{tds}</tr>')
    parts.append('<p class="small">Spectrograms: log magnitude (dB), 80 dB range, one colour scale per pair. '
                 'A blind A/B test of these pairs: <code>dragontune listen RUN</code>.</p>')
    parts.append(f'<table class="pairs">{"".join(rows)}</table>')
    if len(pairs) > max_pairs:
        parts.append(f'<p class="small">{len(pairs) - max_pairs} more pairs in {_e(base / "audio")}.</p>')
    return "\n".join(parts)


# ----------------------------------------------------------------------------------------------------------
# the headline


def _config(run_dir: Path) -> dict:
    import yaml

    try:
        cfg = yaml.safe_load((run_dir / "config.yaml").read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError):
        return {}
    return cfg if isinstance(cfg, dict) else {}


def _row_label(name: str) -> str:
    return name[: -len(" (target)")] if name.endswith(" (target)") else name


def target_row(run_dir: Path, ev: dict | None, recs: list[dict] | None = None) -> dict | None:
    """The evaluation row of the reward the run was trained on: the row whose spec is the run's reward spec,
    else one marked "(target)", else the one row named after the target reward (or after the run folder)."""
    rows = [r for r in (ev or {}).get("rewards", []) if isinstance(r, dict)]
    if not rows:
        return None
    spec = _config(run_dir).get("reward")
    hit = [r for r in rows if spec is not None and r.get("spec") == spec]
    if len(hit) == 1:
        return hit[0]
    hit = [r for r in rows if str(r.get("name", "")).endswith("(target)")]
    if len(hit) == 1:
        return hit[0]
    name = _target_name(run_dir, recs or [])
    hit = [r for r in rows if name and (r.get("reward") == name or str(r.get("name", "")).split("/")[0] == name)]
    if len(hit) == 1:
        return hit[0]
    hit = [r for r in rows if str(r.get("name", "")).replace("/", "_") == run_dir.name]
    if len(hit) == 1:
        return hit[0]
    return rows[0] if len(rows) == 1 else None


def _moved(r: dict) -> int:
    """+1 / -1 when the reward clearly rose / fell, else 0: the win-rate interval lies above / below 50 %;
    for a set reward (bootstrap) the percentile interval of the score difference lies above / below 0,
    because its win-rate interval only measures resampling noise (docs/evaluation.md)."""
    if "error" in r:
        return 0
    if r.get("method") == "bootstrap":
        lo, hi, mid = r.get("diff_lo"), r.get("diff_hi"), 0.0
    else:
        lo, hi, mid = r.get("lo"), r.get("hi"), 0.5
    if not (_finite(lo) and _finite(hi)):
        return 0
    return 1 if lo > mid else (-1 if hi < mid else 0)


def _wr(r: dict) -> str:
    return (f"{100 * r['win_rate']:.1f}% [{100 * r['lo']:.1f}%, {100 * r['hi']:.1f}%]"
            if _finite(r.get("win_rate")) and _finite(r.get("lo")) and _finite(r.get("hi")) else "-")


def _is_set(r: dict) -> bool:
    return r.get("method") == "bootstrap"


def _diff_mean(r: dict) -> float | None:
    m = r.get("diff_mean")
    if _finite(m):
        return float(m)
    return float(r["after"]) - float(r["before"]) if _finite(r.get("after")) and _finite(r.get("before")) else None


def _effect(r: dict) -> str:
    """Instance rewards: win rate [Wilson interval]. Set rewards: the score difference with its paired-bootstrap
    interval (their bootstrap win share is not a probability; docs/evaluation.md)."""
    if _is_set(r) and _finite(r.get("diff_lo")) and _finite(r.get("diff_hi")):
        share = f"; bootstrap win share {100 * r['win_rate']:.0f}%" if _finite(r.get("win_rate")) else ""
        return f"difference {_num(_diff_mean(r))} [95% {_num(r['diff_lo'])}, {_num(r['diff_hi'])}]{share}"
    return _wr(r)


def _listening(eval_file: Path | None) -> tuple[dict | None, str | None]:
    """Results of the listening test beside the evaluation, or (None, why not)."""
    if eval_file is None:
        return None, None
    db = eval_file.parent / "listen.sqlite"
    if not db.is_file():
        return None, None
    from dragontune.errors import DragontuneError
    from dragontune.listen import listening_results, open_store

    try:
        return listening_results(open_store(eval_file.parent, create=False)), None
    except DragontuneError as e:
        return None, str(e)


def _section_headline(run_dir: Path, recs: list[dict], eval_file: Path | None, ev: dict | None,
                      human: dict | None, human_problem: str | None) -> str:
    from dragontune.listen import TIE_RULE_TEXT, headline as human_line

    parts = ['<section id="headline"><h2>Result</h2>']
    # "moved": interval above/below 50 % (set rewards: the score difference's interval excludes 0)
    tr = target_row(run_dir, ev, recs)
    target = _row_label(str(tr.get("name"))) if tr else _target_name(run_dir, recs)
    if tr is not None and "error" not in tr:
        d = _moved(tr)
        unclear = "the difference's interval includes 0" if _is_set(tr) else "the interval includes 50%"
        verdict = {1: '<b class="up">improved</b>', -1: '<b class="down">worse</b>',
                   0: f"<b>no clear change</b> ({unclear})"}[d]
        if _is_set(tr):
            how = (f'set score {_e(_effect(tr))} (paired bootstrap over {_e(tr.get("n", "-"))} prompts, '
                   f'{_e(tr.get("n_clips", tr.get("n", "-")))} clips per model)')
        else:
            how = f'win rate <b>{_e(_wr(tr))}</b> over {_e(tr.get("n", "-"))} prompts vs the baseline'
        parts.append(
            f'<p class="big">Target reward <code>{_e(target)}</code>: {verdict}; held-out '
            f'{_num(tr.get("before"))} → <b>{_num(tr.get("after"))}</b> (higher is better), {how}.</p>')
    else:
        xs, ys = _series(recs, f"eval/{target}") if target else ([], [])
        what = (f"held-out eval/{target} {_num(ys[0])} (round {xs[0]}) → {_num(ys[-1])} (round {xs[-1]})"
                if len(xs) >= 2 else "no held-out values yet")
        why = (f"{eval_file.name} has no row for it" if ev is not None else "no evaluation yet: "
               f"`dragontune eval --model {run_dir / 'model.safetensors'} --out {run_dir / 'eval'}` adds win rates")
        parts.append(f'<p class="big">Target reward <code>{_e(target or "unknown")}</code>: {_e(what)}; {_e(why)}.</p>')
    if human:
        for q in human["questions"]:
            parts.append(f'<p>Listeners ({_e(q["question"])}; {q["listeners"]} listener{"" if q["listeners"] == 1 else "s"}): '
                         f'{_e(human_line(q["overall"]))}. Ties: {_e(TIE_RULE_TEXT[human["tie_rule"]])}.</p>')
        if not human["questions"]:
            parts.append('<p class="small">Listening test: no votes yet.</p>')
    elif human_problem:
        parts.append(_missing(f"Listening test not read: {human_problem}"))
    elif ev is not None:
        parts.append(f'<p class="small">No listening test yet: <code>dragontune listen {_e(run_dir)}</code> '
                     'runs a blind A/B test of the audio pairs below.</p>')
    others = [r for r in (ev or {}).get("rewards", []) if r is not tr and "error" not in r]
    if others:
        moved = [r for r in others if _moved(r)]
        items = [f'<span class="{"up" if _moved(r) > 0 else "down"}">{"▲" if _moved(r) > 0 else "▼"} '
                 f'<code>{_e(_row_label(str(r.get("name"))))}</code> {_e(_effect(r))} ({_num(r.get("before"))} → '
                 f'{_num(r.get("after"))})</span>' for r in moved]
        rest = len(others) - len(moved)
        parts.append("<p>Side effects: " + ("; ".join(items) if items else "none of the other rewards moved")
                     + (f"; {rest} other reward{'s' if rest != 1 else ''} unchanged (interval includes 50%)"
                        if rest and items else (f" ({rest} evaluated)" if rest else "")) + ".</p>")
    parts.append("</section>")
    return "\n".join(parts)


def _section_listening(human: dict | None) -> str:
    if not human or not human["questions"]:
        return ""
    from dragontune.listen import TIE_RULE_TEXT

    parts = ["<h2>Listening test</h2>",
             f'<p class="small">{human["n_votes"]} votes on {human["n_pairs"]} pairs ({_e(human["database"])}). '
             f'Win rate: share of votes preferring the fine-tuned clip; ties: {_e(TIE_RULE_TEXT[human["tie_rule"]])}; '
             'Wilson 95% interval; p: two-sided binomial test against 50%; P(&gt;50%): Beta posterior, uniform '
             'prior. Per-prompt rows and the CSV: <code>dragontune listen --results RUN</code>.</p>']
    head = ("<tr><th>question / prompt</th><th>votes</th><th>fine-tuned / baseline / none</th><th>win rate</th>"
            "<th>95% interval</th><th>p</th><th>P(&gt;50%)</th></tr>")

    def pct(v: float) -> str:
        return f"{100 * v:.1f}%" if _finite(v) else "-"

    for q in human["questions"]:
        body = []
        for label, r in [(q["question"], q["overall"])] + [(x["prompt"], x) for x in q["per_prompt"]]:
            body.append(f"<tr><td>{_e(label)}</td><td class=num>{r['votes']}</td><td class=num>{r['wins']} / "
                        f"{r['losses']} / {r['ties']}</td><td class=num>{pct(r['win_rate'])}</td>"
                        f"<td class=num>[{pct(r['lo'])}, {pct(r['hi'])}]</td>"
                        f"<td class=num>{r['p_value']:.3g}</td><td class=num>{r['p_better']:.3f}</td></tr>")
        parts.append(f"<table>{head}{''.join(body)}</table>")
    return "\n".join(parts)


# ----------------------------------------------------------------------------------------------------------


def _page(title: str, body: list[str]) -> str:
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
            f"<title>{_e(title)}</title><style>{_CSS}</style></head>\n<body>\n"
            + "\n".join(b for b in body if b) + "\n</body></html>\n")


def _is_run_dir(p: Path) -> bool:
    return any((p / f).exists() for f in ("config.yaml", "metrics.jsonl", "eval.json", "eval", "demos"))


def suite_runs(folder: Path) -> list[Path]:
    """The run directories inside ``folder`` (a suite folder, as `experiments/set_rewards.py` writes: one
    folder per reward holding one run directory per training seed; run directories directly inside count too)."""
    if not folder.is_dir():
        return []
    out = []
    for c in sorted(p for p in folder.iterdir() if p.is_dir()):
        if _is_run_dir(c):
            out.append(c)
        else:
            out.extend(sorted(g for g in c.iterdir() if g.is_dir() and _is_run_dir(g)))
    return out


def write_report(run_dir: str | os.PathLike, eval_path: str | os.PathLike | None = None, max_audio: int = 6,
                 out_path: str | os.PathLike | None = None) -> Path:
    """Write the run's report (default ``run_dir/report.html``) and return its path.

    ``eval_path``: the evaluation JSON (default: ``run_dir/eval.json``, else ``run_dir/eval/eval.json``);
    its ``audio/index.json`` gives the audio pairs (at most ``max_audio`` are embedded). A folder that is
    not itself a run but holds run directories is a suite: :func:`write_suite_report`.
    """
    from dragontune.errors import DataError

    run = Path(run_dir)
    if not run.is_dir():
        raise DataError(f"run directory {str(run)!r} does not exist; pass the out_dir of a `dragontune finetune` run")
    if eval_path is None and not _is_run_dir(run) and suite_runs(run):
        return write_suite_report(run, out_path=out_path, max_audio=max_audio)
    mpath = run / "metrics.jsonl"
    recs, problems = read_metrics(mpath) if mpath.is_file() else ([], [])
    eval_file = _find_eval(run, eval_path)
    win_html, ev = _section_winrates(run, eval_file)
    human, human_problem = _listening(eval_file if ev is not None else None)
    last = f", last round {recs[-1]['round']}" if recs else ""
    now = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    body = [
        f"<h1>DRAGON run report: {_e(run.name)}</h1><p class=small>run directory <code>{_e(run.resolve())}</code>; "
        f"generated {now}; {len(recs)} metric records{last}.</p>",
        _section_headline(run, recs, eval_file, ev, human, human_problem),
        _section_audio(eval_file, ev, max_audio),
        win_html,
        _section_listening(human),
        _section_curves(run, recs, problems),
        _section_demos(run, recs),
        _section_config(run),
    ]
    page = _page(f"DRAGON report: {run.name}", body)
    out = Path(out_path) if out_path is not None else run / "report.html"
    atomic_write_text(out, page)
    log.info("report written to %s (%.1f MB)", out, len(page) / 1e6)
    return out


# ----------------------------------------------------------------------------------------------------------
# the suite report


def _suite_order(names: list[str]) -> list[str]:
    from dragontune.rewards.suite import DEFAULT_SUITE

    known = [n for n, _ in DEFAULT_SUITE]
    return sorted(names, key=lambda n: (known.index(n) if n in known else len(known), names.index(n)))


def _fig_radar(labels: list[str], values: list[float]):
    import numpy as np
    from matplotlib.figure import Figure

    if len(labels) < 3:  # a radar needs three spokes: bars say the same
        fig = Figure(figsize=(6, 2.6))
        ax = fig.add_subplot(1, 1, 1)
        ax.barh(labels, [100 * v for v in values], color="#4a7bd0")
        ax.axvline(50, color="#c00", lw=1, ls="--")
        ax.set_xlim(0, 100)
        ax.set_xlabel("win rate on the reward trained on (%)")
        fig.tight_layout()
        return fig
    ang = np.linspace(0, 2 * np.pi, len(labels), endpoint=False)
    fig = Figure(figsize=(6.2, 6.2))
    ax = fig.add_subplot(1, 1, 1, projection="polar")
    v = np.array(values) * 100
    ax.plot(np.append(ang, ang[0]), np.append(v, v[0]), "-o", color="#4a7bd0", lw=1.8, ms=4, label="DRAGON")
    ax.fill(ang, v, color="#4a7bd0", alpha=0.15)
    ax.plot(np.linspace(0, 2 * np.pi, 200), np.full(200, 50.0), "--", color="#c00", lw=1, label="50% (baseline)")
    ax.set_xticks(ang)
    ax.set_xticklabels(labels, fontsize=7)
    ax.set_ylim(0, 100)
    ax.set_yticks([25, 50, 75, 100])
    ax.tick_params(axis="y", labelsize=7)
    ax.legend(loc="lower right", bbox_to_anchor=(1.12, -0.08), fontsize=8)
    fig.tight_layout()
    return fig


def _cell_colour(wr: float) -> str:
    t = min(1.0, abs(wr - 0.5) * 2)
    base = (23, 102, 58) if wr >= 0.5 else (163, 36, 28)
    r, g, b = (int(255 + (c - 255) * 0.55 * t) for c in base)
    return f"#{r:02x}{g:02x}{b:02x}"


def write_suite_report(folder: str | os.PathLike, out_path: str | os.PathLike | None = None,
                       max_audio: int = 6) -> Path:
    """One page for a suite (one DRAGON run per reward): the win rate of every run on the reward it was
    trained on (radar chart, the paper's Fig. 1b), the side-effect matrix (rows: reward trained on; columns:
    every reward evaluated) and links to each run's report (written here too). Returns the page's path
    (default ``folder/report.html``)."""
    from dragontune.errors import DataError, DragontuneError

    root = Path(folder)
    runs = suite_runs(root)
    if not runs:
        raise DataError(f"{str(root)!r} holds no run directories (folders with config.yaml, metrics.jsonl or "
                        "eval/); `python experiments/set_rewards.py --out DIR` makes a suite folder")
    entries, problems = [], []
    for run in runs:
        ef = _find_eval(run, None)
        ev = None
        if ef is not None:
            try:
                ev = json.loads(ef.read_text(encoding="utf-8"))
            except (OSError, json.JSONDecodeError) as e:
                problems.append(f"{ef}: not readable JSON ({e}); run left without win rates")
        try:
            write_report(run, max_audio=max_audio)
            link = f"{run.name}/report.html"
        except DragontuneError as e:
            problems.append(f"{run.name}: report not written ({e})")
            link = None
        tr = target_row(run, ev)
        label = _row_label(str(tr["name"])) if tr else run.name
        cells = {_row_label(str(r.get("name"))): r for r in (ev or {}).get("rewards", []) if "name" in r}
        entries.append({"run": run, "label": label, "target": tr, "cells": cells, "link": link, "has_eval": ev is not None})
    columns = _suite_order(list(dict.fromkeys(c for e in entries for c in e["cells"])))
    order = _suite_order([e["label"] for e in entries])  # rows in the columns' order: the diagonal runs down
    entries.sort(key=lambda e: order.index(e["label"]))
    scored = [e for e in entries if e["target"] and _finite(e["target"].get("win_rate"))]
    parts = [f"<h1>DRAGON suite report: {_e(root.name)}</h1>",
             f'<p class=small>suite folder <code>{_e(root.resolve())}</code>; {len(runs)} runs; generated '
             f'{_dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")}.</p>']
    if scored:
        mean = sum(e["target"]["win_rate"] for e in scored) / len(scored)
        up = sum(1 for e in scored if _moved(e["target"]) > 0)
        parts.append(f'<section id="headline"><h2>Result</h2><p class="big">Mean win rate on the reward trained on: '
                     f'<b>{100 * mean:.1f}%</b> over {len(scored)} runs; {up} of {len(scored)} runs beat the baseline '
                     'with a 95% interval above 50% (the paper: 81.45% over its 20 rewards).</p></section>')
    parts += [_missing(p) for p in problems]
    parts.append("<h2>Win rate of every reward (trained on itself)</h2>")
    if scored:
        fig = _fig_radar([e["label"] + (" *" if _is_set(e["target"]) else "") for e in scored],
                         [e["target"]["win_rate"] for e in scored])
        parts.append(_img(_png(fig), "win rate per reward (radar)",
                          "Win rate of each run against the baseline on the reward it was trained on (held-out "
                          "prompts, same seeds); dashed: 50%. As the paper's Fig. 1b. * set reward: the bootstrap "
                          "win share (share of paired resamples of the prompts in which the fine-tuned set scores "
                          "higher), not a share of prompts."))
    else:
        parts.append(_missing("No run has an evaluation of its target reward yet (eval/eval.json)."))
    parts.append("<h2>Side effects</h2><p class=small>Rows: reward trained on; columns: every reward evaluated. "
                 "Cell: win rate of that run against the baseline on that reward (green above 50%, red below; "
                 "bold when the 95% interval excludes 50%; outlined: the reward trained on); for a set reward, Δ = "
                 "the set score difference (fine-tuned − baseline), bold and coloured when its paired-bootstrap 95% "
                 "interval excludes 0. Hover for the interval "
                 "and before → after. An empty cell was not evaluated: <code>dragontune eval --model "
                 "RUN/model.safetensors --suite default --out RUN/eval</code> fills a row.</p>")
    if columns:
        head = "<tr><th>trained on</th>" + "".join(f"<th class=small>{_e(c)}</th>" for c in columns) + "<th>report</th></tr>"
        body = []
        for e in entries:
            tds = []
            for c in columns:
                r = e["cells"].get(c)
                cls = "cell" + (" diag" if c == e["label"] else "")
                dm = _diff_mean(r) if r is not None and _is_set(r) else None
                if r is None or (not _finite(r.get("win_rate")) and dm is None):
                    tip = r.get("error", "not evaluated") if r else "not evaluated"
                    tds.append(f'<td class="{cls}" title="{_e(tip)}">{"err" if r else ""}</td>')
                    continue
                cls += " sig" if _moved(r) else ""
                tip = f"{_effect(r)}; {_num(r.get('before'))} → {_num(r.get('after'))}"
                if dm is not None:  # a set reward: the score difference, coloured by its interval
                    colour = _cell_colour(0.5 + 0.3 * _moved(r))
                    text = f"Δ{dm:+.2g}"
                else:
                    colour, text = _cell_colour(r["win_rate"]), f"{100 * r['win_rate']:.0f}%"
                tds.append(f'<td class="{cls}" style="background:{colour}" title="{_e(tip)}" '
                           f'data-reward="{_e(c)}">{_e(text)}</td>')
            link = f'<a href="{_e(e["link"])}">report</a>' if e["link"] else "-"
            body.append(f'<tr data-run="{_e(e["run"].name)}"><td>{_e(e["label"])}</td>{"".join(tds)}<td>{link}</td></tr>')
        parts.append(f'<table class="matrix">{head}{"".join(body)}</table>')
    else:
        parts.append(_missing("No evaluations in this suite yet."))
    page = _page(f"DRAGON suite report: {root.name}", parts)
    out = Path(out_path) if out_path is not None else root / "report.html"
    atomic_write_text(out, page)
    log.info("suite report written to %s", out)
    return out
