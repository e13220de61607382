"""One self-contained HTML page for a DRAGON run directory: ``write_report(run_dir) -> run_dir/report.html``.

The page embeds everything (figures as base64 PNG, audio as base64 WAV data URIs, inline CSS, no script,
no external URL). Sections: configuration, reward curves (target, watch list, held-out ``eval/*``), win
rates (``eval.json`` from :func:`dragontune.evaluate.evaluate_models`), D+/D- statistics (``metrics.jsonl``
``train/*`` and ``demo/*`` and the ``demos/round-*.jsonl`` files), and baseline vs fine-tuned audio for
several prompts (same seed). A missing or unreadable input is reported on the page instead of failing.
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


def _section_audio(eval_file: Path | None, ev: dict | None, max_pairs: int) -> str:
    parts = ["<h2>Listen: baseline vs fine-tuned (same prompt, same seed)</h2>"]
    if ev is None or eval_file is None:
        parts.append(_missing("No audio examples: they are written with the evaluation (audio/index.json next to "
                              "eval.json)."))
        return "\n".join(parts)
    base = eval_file.parent
    index = (ev.get("audio") or {}).get("index")
    pairs = None
    if index and (base / index).is_file():
        try:
            pairs = json.loads((base / index).read_text(encoding="utf-8")).get("pairs")
        except json.JSONDecodeError as e:
            parts.append(_missing(f"{base / index} is not valid JSON ({e})."))
    if pairs is None:
        pairs = (ev.get("audio") or {}).get("pairs")
    if not pairs:
        parts.append(_missing(f"No audio pairs listed by {eval_file.name} (audio/index.json missing or empty)."))
        return "\n".join(parts)
    for p in pairs[:max_pairs]:
        cells = []
        for key, label in (("baseline", "baseline"), ("model", "fine-tuned")):
            tag, problem = _audio_tag(base / str(p.get(key, "")))
            cells.append(f"<div><b>{label}</b><br>{tag if tag else _missing(problem or 'missing')}</div>")
        parts.append(f'<h3>{_e(p.get("prompt", ""))}</h3><p class="small">seed {_e(p.get("seed"))}</p>'
                     f'<div class="pair">{"".join(cells)}</div>')
    if len(pairs) > max_pairs:
        parts.append(f'<p class="small">{len(pairs) - max_pairs} more pairs in {_e(base / "audio")}.</p>')
    return "\n".join(parts)


# ----------------------------------------------------------------------------------------------------------


def write_report(run_dir: str | os.PathLike, eval_path: str | os.PathLike | None = None, max_audio: int = 6,
                 out_path: str | os.PathLike | None = None) -> Path:
    """Write the run's report (default ``run_dir/report.html``) and return its path.

    ``eval_path``: the evaluation JSON (default: ``run_dir/eval.json``, else ``run_dir/eval/eval.json``);
    its ``audio/index.json`` gives the audio pairs (at most ``max_audio`` are embedded).
    """
    from dragontune.errors import DataError

    run = Path(run_dir)
    if not run.is_dir():
        raise DataError(f"run directory {str(run)!r} does not exist; pass the out_dir of a `dragontune finetune` run")
    mpath = run / "metrics.jsonl"
    recs, problems = read_metrics(mpath) if mpath.is_file() else ([], [])
    eval_file = _find_eval(run, eval_path)
    win_html, ev = _section_winrates(run, eval_file)
    last = f", last round {recs[-1]['round']}" if recs else ""
    now = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    body = [
        f"<h1>DRAGON run report</h1><p class=small>run directory <code>{_e(run.resolve())}</code>; "
        f"generated {now}; {len(recs)} metric records{last}.</p>",
        _section_config(run),
        _section_curves(run, recs, problems),
        win_html,
        _section_demos(run, recs),
        _section_audio(eval_file, ev, max_audio),
    ]
    page = ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
            f"<title>DRAGON report: {_e(run.name)}</title><style>{_CSS}</style></head>\n<body>\n"
            + "\n".join(body) + "\n</body></html>\n")
    out = Path(out_path) if out_path is not None else run / "report.html"
    atomic_write_text(out, page)
    log.info("report written to %s (%.1f MB)", out, len(page) / 1e6)
    return out
