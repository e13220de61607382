"""Training of the aesthetics predictor: ratings, evaluation metrics and head fitting (docs/aesthetics.md).

Training ratings default to a documented synthetic formula over the corpus' quality factors
(:func:`synthetic_rating`); a CSV of ``path,rating`` [``,prompt``] replaces it. Degenerate clips (silence, white
noise, hard clipping) are added at the bottom of the scale. Each head's hyper-parameters are chosen on an inner
validation split by PLCC/SRCC. The predictor that uses the result is :class:`dragontune.aesthetics.AestheticsPredictor`.
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
import os
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from dragontune.aesthetics import (HEADS, TRAIN_COMMAND, AestheticsPredictor, EncoderSpec, MLPHead,
                                   default_aesthetics_path, nadaraya_watson_predict)
from dragontune.errors import CheckpointError, ConfigError, DataError, EncoderError
from dragontune.metrics import rbf_kernel
from dragontune.utils import log

__all__ = [
    "SEVERITY_WEIGHTS",
    "severity",
    "synthetic_rating",
    "degenerate_version",
    "read_ratings_csv",
    "train_aesthetics",
    "plcc",
    "srcc",
    "per_prompt_srcc",
    "ENCODER_CHOICES",
    "DEGENERATE_KINDS",
]

#: audibility of each corpus defect at full strength (severity = weight * strength)
SEVERITY_WEIGHTS = {"clean": 0.0, "noise": 1.0, "clipping": 0.8, "distortion": 1.0, "detune": 0.8, "jitter": 0.7}
#: encoder candidates of train_aesthetics: label -> (registry name, options)
ENCODER_CHOICES: dict[str, tuple[str, dict]] = {
    "musicnn-penultimate": ("musicnn", {"layer": "penultimate"}),
    "musicnn-pooled": ("musicnn", {"layer": "pooled"}),
    "clap-mini": ("clap-mini", {}),
    "codec": ("codec", {}),
}
#: degenerate clips added to the synthetic training data, rated at the bottom of the scale: what a generator can
#: make that is not music at all. Without them, kernel ridge rates an embedding far from every corpus clip near
#: its training mean (it reverts to the mean away from the data): pure silence scored 4.07.
DEGENERATE_KINDS = ("silence", "white_noise", "hard_clipping")
DEGENERATE_RATING = 1.0


# ----------------------------------------------------------------------------------------------------------
# ratings


def severity(quality: str, strength: float) -> float:
    """``SEVERITY_WEIGHTS[quality] * strength`` (strength in [0, 1]); 0 for clean clips."""
    if quality not in SEVERITY_WEIGHTS:
        raise DataError(f"unknown quality {quality!r}; expected one of {sorted(SEVERITY_WEIGHTS)}")
    s = float(strength)
    if not 0.0 <= s <= 1.0:
        raise DataError(f"quality_strength {strength!r} must be in [0, 1]")
    return SEVERITY_WEIGHTS[quality] * s


def synthetic_rating(quality: str, strength: float, rng: np.random.Generator | None = None, noise_std: float = 0.3) -> float:
    """``clip(5 - 3.5 * severity(quality, strength) + N(0, noise_std), 1, 5)``; no noise when ``rng`` is None."""
    r = 5.0 - 3.5 * severity(quality, strength)
    if rng is not None and noise_std > 0:
        r += float(rng.normal(0.0, noise_std))
    return float(min(5.0, max(1.0, r)))


def degenerate_version(audio: torch.Tensor, kind: str, rng: np.random.Generator) -> torch.Tensor:
    """A degenerate version (float32, same shape) of ``audio[C, T]``.

    ``silence``: zeros (half the draws) or the clip 60-100 dB down; ``white_noise``: Gaussian noise at an RMS of
    -40 to -3 dBFS, limited to +-1; ``hard_clipping``: the clip 30-45 dB up, clipped at +-1 (the corpus' own
    clipping defect stops at +24 dB). Levels are drawn from ``rng``.
    """
    x = audio.to(torch.float32)
    if kind == "silence":
        return torch.zeros_like(x) if rng.random() < 0.5 else x * float(10 ** (-rng.uniform(60, 100) / 20))
    if kind == "white_noise":
        g = torch.Generator().manual_seed(int(rng.integers(2**62)))
        rms = float(10 ** (rng.uniform(-40, -3) / 20))
        return (rms * torch.randn(x.shape, generator=g)).clamp(-1.0, 1.0)
    if kind == "hard_clipping":
        return (x * float(10 ** (rng.uniform(30, 45) / 20))).clamp(-1.0, 1.0)
    raise ConfigError(f"unknown degenerate kind {kind!r}; choose one of {list(DEGENERATE_KINDS)}")


def read_ratings_csv(path: str | os.PathLike) -> list[dict]:
    """Read ``path,rating`` [``,prompt``] rows (header required; paths relative to the CSV's folder).

    Returns ``[{"path": Path, "rating": float, "prompt": str | None}]``. Raises :class:`DataError` listing
    every row whose file is missing or whose rating is not a number in [1, 5].
    """
    p = Path(path)
    if not p.is_file():
        raise DataError(f"ratings CSV {str(p)!r} not found")
    with open(p, encoding="utf-8", newline="") as fh:
        reader = csv.DictReader(fh)
        cols = [c.strip() for c in (reader.fieldnames or [])]
        if "path" not in cols or "rating" not in cols:
            raise DataError(f"{p}:1: header must name columns path and rating [, prompt], got {cols}")
        reader.fieldnames = cols
        rows, bad = [], []
        for rec in reader:
            ln = reader.line_num
            f = (rec.get("path") or "").strip()
            fp = Path(f) if Path(f).is_absolute() else p.parent / f
            problems = []
            if not f or not fp.is_file():
                problems.append(f"file {str(fp)!r} missing")
            try:
                r = float((rec.get("rating") or "").strip())
                if not (math.isfinite(r) and 1.0 <= r <= 5.0):
                    problems.append(f"rating {rec.get('rating')!r} outside [1, 5]")
            except ValueError:
                problems.append(f"rating {rec.get('rating')!r} is not a number")
                r = float("nan")
            if problems:
                bad.append(f"row {ln}: " + "; ".join(problems))
                continue
            prompt = (rec.get("prompt") or "").strip() or None
            rows.append({"path": fp, "rating": r, "prompt": prompt})
    if bad:
        shown = "\n  ".join(bad[:20]) + (f"\n  ... and {len(bad) - 20} more" if len(bad) > 20 else "")
        raise DataError(f"ratings CSV {str(p)!r} has {len(bad)} bad row(s) (fix or remove them):\n  {shown}")
    if len(rows) < 8:
        raise DataError(f"ratings CSV {str(p)!r} has {len(rows)} rows; at least 8 are needed to train and validate")
    return rows


# ----------------------------------------------------------------------------------------------------------
# metrics (float64)


def plcc(pred: np.ndarray, target: np.ndarray) -> float:
    """Pearson linear correlation."""
    a, b = np.asarray(pred, np.float64), np.asarray(target, np.float64)
    a, b = a - a.mean(), b - b.mean()
    d = math.sqrt(float((a * a).sum() * (b * b).sum()))
    return float((a * b).sum() / d) if d > 0 else float("nan")


def _ranks(x: np.ndarray) -> np.ndarray:
    from scipy.stats import rankdata

    return rankdata(x)


def srcc(pred: np.ndarray, target: np.ndarray) -> float:
    """Spearman rank correlation (average ranks for ties)."""
    return plcc(_ranks(np.asarray(pred)), _ranks(np.asarray(target)))


# ----------------------------------------------------------------------------------------------------------
# head fitting


def _fit_kernel_ridge(z: torch.Tensor, y: torch.Tensor, bandwidth: float, ridge: float) -> tuple[torch.Tensor, float]:
    mean = float(y.mean())
    K = rbf_kernel(z, z, bandwidth)
    alpha = torch.linalg.solve(K + ridge * torch.eye(K.shape[0], dtype=K.dtype), y - mean)
    return alpha, mean


def _train_mlp(z: torch.Tensor, y: torch.Tensor, epochs: int, seed: int, lr: float = 3e-3, wd: float = 1e-3,
               zval: torch.Tensor | None = None, yval: torch.Tensor | None = None) -> tuple[MLPHead, list[float]]:
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    m = MLPHead(z.shape[1])
    opt = torch.optim.AdamW(m.parameters(), lr=lr, weight_decay=wd)
    z32, y32 = z.float(), y.float()
    n, bs = z.shape[0], 64
    curve: list[float] = []
    for _ in range(epochs):
        m.train()
        perm = torch.randperm(n, generator=g)
        for s in range(0, n, bs):
            i = perm[s : s + bs]
            loss = (m(z32[i]) - y32[i]).square().mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        if zval is not None and yval is not None:
            m.eval()
            with torch.no_grad():
                curve.append(float((m(zval.float()) - yval.float()).square().mean()))
    m.eval()
    return m, curve


# ----------------------------------------------------------------------------------------------------------
# training


def _group_split(groups: Sequence[str], fraction: float, salt: str) -> np.ndarray:
    """Boolean mask of the held-out share: a hash of (salt, group) below ``fraction`` (whole groups)."""
    def u(g: str) -> float:
        return int.from_bytes(hashlib.sha256(f"{salt}|{g}".encode()).digest()[:8], "big") / 2.0**64

    return np.array([u(g) < fraction for g in groups])


def _fit_head(head: str, z: torch.Tensor, y: torch.Tensor, zv: torch.Tensor, yv: torch.Tensor, seed: int) -> tuple[dict, dict]:
    """Choose hyper-parameters on (zv, yv), refit on (z, y) -> (params, hyper)."""
    d = torch.cdist(z[:500], z[:500])
    med = float(d[d > 0].median())
    if head == "nadaraya_watson":
        best = min(((float(((nadaraya_watson_predict(zv, z, y, med * f) - yv) ** 2).mean()), med * f) for f in (0.05, 0.1, 0.15, 0.25, 0.35, 0.5, 0.75, 1.0)))
        return {"train_z": z, "train_y": y}, {"bandwidth": best[1], "val_mse": best[0]}
    if head == "kernel_ridge":
        cands = []
        for f in (0.25, 0.5, 1.0, 2.0, 4.0):
            for lam in (1e-3, 1e-2, 1e-1, 1.0, 3.0, 10.0):
                a, m = _fit_kernel_ridge(z, y, med * f, lam)
                pred = rbf_kernel(zv, z, med * f) @ a + m
                cands.append((float(((pred - yv) ** 2).mean()), med * f, lam))
        mse, h, lam = min(cands)
        a, m = _fit_kernel_ridge(z, y, h, lam)
        return {"train_z": z, "alpha": a}, {"bandwidth": h, "ridge": lam, "y_mean": m, "val_mse": mse}
    _, curve = _train_mlp(z, y, 150, seed, zval=zv, yval=yv)
    epochs = int(np.argmin(curve)) + 1
    m, _ = _train_mlp(z, y, epochs, seed)
    params = {f"mlp.{k}": v.detach().clone() for k, v in m.state_dict().items()}
    return params, {"epochs": epochs, "hidden": 64, "val_mse": float(min(curve))}


def _embed_clips(encoder: Any, audio: torch.Tensor, sr: int) -> torch.Tensor:
    """``audio[N, 1, T]`` -> clip vectors ``[N, d]`` (mean over frames), one clip at a time."""
    out = []
    for i in range(audio.shape[0]):
        out.append(encoder.embed_audio(audio[i : i + 1], sr)[0].mean(dim=0))
    return torch.stack(out).to(torch.float64)


def _embed_musicnn_layers(encoder: Any, layers: Sequence[str], audio: torch.Tensor, sr: int) -> dict[str, torch.Tensor]:
    """Clip vectors of several musicnn layers from one forward pass per clip (same as ``_embed_clips``)."""
    out: dict[str, list[torch.Tensor]] = {la: [] for la in layers}
    for i in range(audio.shape[0]):
        res = encoder.forward_patches(encoder.log_mel_patches(audio[i : i + 1], sr)[0])
        for la in layers:
            out[la].append(res[la].mean(dim=0))
    return {la: torch.stack(v).to(torch.float64) for la, v in out.items()}


def _embed_all(labels: Sequence[str], sets: dict[str, torch.Tensor], sr: int, cache_dir: Path | None) -> tuple[dict, dict, dict]:
    """Embed every audio set with every encoder label -> (embeddings[label][set], encoders[label], errors[label]).

    musicnn labels that differ only in ``layer`` share one forward pass. With ``cache_dir``, embeddings are
    stored under a key of (encoder id, sha256 of the audio) and reused.
    """
    embs: dict[str, dict[str, torch.Tensor]] = {}
    encs: dict[str, Any] = {}
    errors: dict[str, str] = {}
    audio_keys = {k: hashlib.sha256(v.numpy().tobytes()).hexdigest()[:16] for k, v in sets.items()}
    for label in labels:
        name, opts = ENCODER_CHOICES[label]
        spec = EncoderSpec(name, dict(opts))
        try:
            enc = spec.build()
            _ = enc.id
        except (EncoderError, CheckpointError, ConfigError) as e:
            errors[label] = str(e)
            continue
        encs[label] = (spec, enc)
    todo = [la for la in encs]
    for label in list(todo):
        if label in embs:
            continue
        spec, enc = encs[label]
        group = [label]
        if spec.name == "musicnn":
            base = {k: v for k, v in spec.options.items() if k != "layer"}
            group = [la for la in todo if encs[la][0].name == "musicnn"
                     and {k: v for k, v in encs[la][0].options.items() if k != "layer"} == base and la not in embs]
        for la in group:
            embs[la] = {}
        for set_name, audio in sets.items():
            missing = []
            for la in group:
                f = cache_dir / f"{hashlib.sha256((encs[la][1].id + audio_keys[set_name]).encode()).hexdigest()[:24]}.pt" if cache_dir else None
                if f is not None and f.is_file():
                    embs[la][set_name] = torch.load(f, weights_only=True)
                else:
                    missing.append(la)
            if not missing:
                continue
            t0 = time.perf_counter()
            if spec.name == "musicnn":
                got = _embed_musicnn_layers(enc, [encs[la][1].layer for la in missing], audio, sr)
                got = {la: got[encs[la][1].layer] for la in missing}
            else:
                got = {label: _embed_clips(enc, audio, sr)}
            log.info("aesthetics: embedded %d clips (%s) with %s in %.1f s", audio.shape[0], set_name, missing, time.perf_counter() - t0)
            for la, v in got.items():
                embs[la][set_name] = v
                if cache_dir is not None:
                    cache_dir.mkdir(parents=True, exist_ok=True)
                    f = cache_dir / f"{hashlib.sha256((encs[la][1].id + audio_keys[set_name]).encode()).hexdigest()[:24]}.pt"
                    import io

                    from dragontune.utils import atomic_write_bytes

                    buf = io.BytesIO()
                    torch.save(v, buf)
                    atomic_write_bytes(f, buf.getvalue())
    return embs, {k: v for k, v in encs.items()}, errors


def degradation_set(rows: Sequence[dict], strengths: Sequence[float] = (0.25, 0.5, 0.75, 1.0), sample_rate: int = 16000) -> tuple[torch.Tensor, list[dict]]:
    """For each corpus row: its clean rendering and every (quality, strength) version of the same clip params.

    Returns ``audio[M, 1, T]`` and one dict per version (``group``, ``quality``, ``quality_strength``, ``rating``
    = the noise-free :func:`synthetic_rating`).
    """
    from dragontune.data.synth import QUALITIES, render_clip

    audio, info = [], []
    for g, row in enumerate(rows):
        versions = [("clean", 0.0)] + [(q, float(s)) for q in QUALITIES for s in strengths]
        for q, s in versions:
            params = dict(row)
            params.update(quality=q, quality_strength=s)
            audio.append(torch.from_numpy(render_clip(params, sample_rate)).to(torch.float32)[None])
            info.append({"group": g, "caption": row.get("caption", ""), "quality": q, "quality_strength": s,
                         "rating": synthetic_rating(q, s)})
    return torch.stack(audio), info


def per_prompt_srcc(pred: np.ndarray, target: np.ndarray, groups: Sequence[Any]) -> float:
    """Mean over groups (with >= 2 distinct targets) of the Spearman correlation inside the group."""
    groups = np.asarray(groups)
    vals = []
    for g in np.unique(groups):
        m = groups == g
        if m.sum() >= 2 and np.unique(target[m]).size >= 2:
            vals.append(srcc(pred[m], target[m]))
    return float(np.mean(vals)) if vals else float("nan")


def train_aesthetics(
    corpus_dir: str | os.PathLike = "data/corpus",
    out_path: str | os.PathLike | None = None,
    ratings_csv: str | os.PathLike | None = None,
    encoders: Sequence[str] = ("musicnn-penultimate", "musicnn-pooled", "clap-mini", "codec"),
    heads: Sequence[str] = HEADS,
    val_fraction: float = 0.15,
    noise_std: float = 0.3,
    eval_clips: int = 24,
    seed: int = 0,
    select: str = "auto",
    report_path: str | os.PathLike | None = None,
    cache_dir: str | os.PathLike | None = None,
    degenerate_every: int = 4,
) -> dict:
    """Train aesthetics heads on every (encoder, head) pair, report PLCC/SRCC, save the best; return the report.

    ``corpus_dir``: corpus with ``quality``/``quality_strength`` columns, rated by :func:`synthetic_rating`
    with ``noise_std`` (per-clip seed ``[seed, row index]``); ignored when ``ratings_csv`` (``path,rating``
    [``,prompt``], see :func:`read_ratings_csv`) is given. ``val_fraction``: held-out share, split by
    caption/prompt (a clip's prompt never crosses the split). Hyper-parameters are chosen on an inner split
    of the training part, then refit on all of it. ``eval_clips``: validation clips re-rendered clean and
    with every defect at strengths 0.25-1 for the per-prompt SRCC (synthetic corpus only). ``encoders``:
    labels from :data:`ENCODER_CHOICES`; ``heads``: from :data:`HEADS`. ``select``: ``"auto"`` (best mean
    of validation PLCC and per-prompt SRCC) or ``"<encoder>/<head>"``. ``out_path``: where the chosen
    predictor is written (default: the packaged asset); ``report_path``: optional JSON report.
    ``cache_dir``: optional folder for clip embeddings keyed by (encoder id, audio hash), so reruns with other
    heads or selections skip the embedding pass. ``degenerate_every``: every n-th corpus clip also gives one
    degenerate version (:func:`degenerate_version`, kinds in turn) rated ``clip(DEGENERATE_RATING + N(0,
    noise_std), 1, 5)``, in the same split as its clip (0: none; synthetic corpus only). PLCC/SRCC are reported
    on the corpus clips alone (comparable with a predictor trained without them); ``degenerate`` reports the
    validation split's degenerate versions per kind.
    """
    t0 = time.perf_counter()
    for e in encoders:
        if e not in ENCODER_CHOICES:
            raise ConfigError(f"unknown aesthetics encoder {e!r}; choose from {list(ENCODER_CHOICES)}")
    for h in heads:
        if h not in HEADS:
            raise ConfigError(f"unknown aesthetics head {h!r}; choose from {list(HEADS)}")
    if not 0.0 < val_fraction < 0.5:
        raise ConfigError(f"val_fraction={val_fraction} must be in (0, 0.5)")
    if isinstance(degenerate_every, bool) or not isinstance(degenerate_every, int) or degenerate_every < 0:
        raise ConfigError(f"degenerate_every={degenerate_every!r} must be a whole number >= 0 (0: no degenerate clips)")
    out = Path(out_path) if out_path is not None else default_aesthetics_path()
    from dragontune.audio import fit_length, load_audio

    sr_load = 16000
    if ratings_csv is not None:
        rows = read_ratings_csv(ratings_csv)
        audio = torch.stack([fit_length(load_audio(r["path"], sr_load, mono=True), _csv_len(rows, sr_load)) for r in rows])
        y_all = np.array([r["rating"] for r in rows])
        groups = [r["prompt"] or str(r["path"]) for r in rows]
        from dragontune.utils import sha256_file

        source = {"ratings_csv": str(ratings_csv), "ratings_csv_sha256": sha256_file(ratings_csv)}
        deg_rows: list[dict] = []
    else:
        from dragontune.data.dataset import AudioCaptionDataset

        ds = AudioCaptionDataset(corpus_dir, sample_rate=sr_load, duration=4.0)
        missing = [r.get("id") for r in ds.rows if "quality" not in r or "quality_strength" not in r]
        if missing:
            raise DataError(
                f"corpus {str(corpus_dir)!r}: {len(missing)} rows lack quality/quality_strength (e.g. {missing[:5]}); "
                "use a corpus from `dragontune synth` or pass ratings_csv"
            )
        audio = torch.stack([ds[i]["audio"] for i in range(len(ds))])
        y_all = np.array([
            synthetic_rating(r["quality"], r["quality_strength"], np.random.default_rng([int(seed), int(r.get("index", i))]), noise_std)
            for i, r in enumerate(ds.rows)
        ])
        groups = [r["caption"] for r in ds.rows]
        from dragontune.data.dataset import find_metadata
        from dragontune.utils import sha256_file

        source = {"corpus": str(corpus_dir), "corpus_metadata_sha256": sha256_file(find_metadata(corpus_dir)), "rating_formula": "clip(5 - 3.5 * w[quality] * strength + N(0, noise_std), 1, 5)",
                  "severity_weights": SEVERITY_WEIGHTS, "noise_std": noise_std}
        held = _group_split(groups, val_fraction, f"aesthetics-{seed}")
        deg_rows = [r for r, h in zip(ds.rows, held) if h][: int(eval_clips)]
    n_corpus = len(groups)
    bad_kind: list[str] = []
    bad_audio = None
    if ratings_csv is None and degenerate_every:
        picks = list(range(0, n_corpus, degenerate_every))
        extra, ys = [], []
        for j, i in enumerate(picks):
            rng = np.random.default_rng([int(seed), int(ds.rows[i].get("index", i)), 7])
            kind = DEGENERATE_KINDS[j % len(DEGENERATE_KINDS)]
            extra.append(degenerate_version(audio[i], kind, rng))
            ys.append(min(5.0, max(1.0, DEGENERATE_RATING + float(rng.normal(0.0, noise_std)))))
            bad_kind.append(kind)
        bad_audio = torch.stack(extra)
        y_all = np.concatenate([y_all, np.array(ys)])
        groups = groups + [groups[i] for i in picks]
        source.update(degenerate_every=degenerate_every, degenerate_kinds=list(DEGENERATE_KINDS),
                      degenerate_rating=DEGENERATE_RATING)
    is_bad = np.arange(len(groups)) >= n_corpus
    held = _group_split(groups, val_fraction, f"aesthetics-{seed}")
    tr_idx, va_idx = np.flatnonzero(~held), np.flatnonzero(held)
    inner = _group_split([groups[i] for i in tr_idx], 0.15, f"aesthetics-inner-{seed}")
    fit_idx, sel_idx = tr_idx[~inner], tr_idx[inner]
    if min(len(fit_idx), len(sel_idx), len(va_idx)) < 2:
        raise DataError(
            f"splitting {len(groups)} clips in {len(set(groups))} prompt groups by prompt gave {len(fit_idx)} fit, "
            f"{len(sel_idx)} selection and {len(va_idx)} validation clips; each needs at least 2: add clips or "
            f"prompts, or change val_fraction={val_fraction} / seed={seed}"
        )
    log.info("aesthetics: %d clips (%d degenerate): %d train (%d fit + %d select), %d validation", len(groups),
             int(is_bad.sum()), len(tr_idx), len(fit_idx), len(sel_idx), len(va_idx))
    va_clean, va_bad = va_idx[~is_bad[va_idx]], va_idx[is_bad[va_idx]]
    tr_corpus = tr_idx[~is_bad[tr_idx]]
    deg_audio, deg_info = (degradation_set(deg_rows, sample_rate=sr_load) if deg_rows else (None, []))
    y_t = torch.from_numpy(y_all).to(torch.float64)

    results: dict[str, dict] = {}
    fitted: dict[str, AestheticsPredictor] = {}
    sets = {"clips": audio} if deg_audio is None else {"clips": audio, "degradations": deg_audio}
    if bad_audio is not None:
        sets["degenerate"] = bad_audio
    embs, encs, errors = _embed_all(encoders, sets, sr_load, Path(cache_dir) if cache_dir is not None else None)
    for label, err in errors.items():
        log.warning("aesthetics: skipping encoder %s (%s)", label, err)
        results[label] = {"error": err}
    for label in encoders:
        if label not in encs:
            continue
        spec, enc = encs[label]
        emb = embs[label]["clips"]
        if "degenerate" in embs[label]:
            emb = torch.cat([emb, embs[label]["degenerate"]])
        emb_deg = embs[label].get("degradations")
        # standardised by the corpus clips only: silence's embedding must not stretch the scale of real music
        mean = emb[tr_corpus].mean(0)
        std = emb[tr_corpus].std(0).clamp(min=1e-6 * float(emb[tr_corpus].std(0).max()) + 1e-12)
        for head in heads:
            pred_sel = AestheticsPredictor(spec, head, mean, std, {}, {})
            z_all = pred_sel.standardise(emb)
            params, hyper = _fit_head(head, z_all[fit_idx], y_t[fit_idx], z_all[sel_idx], y_t[sel_idx], seed)
            params, hyper = _refit(head, params, hyper, z_all[tr_idx], y_t[tr_idx], seed)
            p = AestheticsPredictor(spec, head, mean, std, params, hyper, encoder_id=enc.id)
            p._encoder = enc
            pv = p.predict_embeddings(emb[va_clean]).numpy()
            r = {"plcc": plcc(pv, y_all[va_clean]), "srcc": srcc(pv, y_all[va_clean]), "hyper": hyper}
            if va_bad.size:
                r["degenerate"] = _degenerate_report(p.predict_embeddings(emb[va_bad]).numpy(),
                                                     [bad_kind[i - n_corpus] for i in va_bad], pv)
            if emb_deg is not None:
                pdg = p.predict_embeddings(emb_deg).numpy()
                tgt = np.array([d["rating"] for d in deg_info])
                grp = [d["group"] for d in deg_info]
                r["per_prompt_srcc"] = per_prompt_srcc(pdg, tgt, grp)
                r["clean_above_degraded"] = _clean_wins(pdg, deg_info)
            else:
                r["per_prompt_srcc"] = per_prompt_srcc(pv, y_all[va_clean], [groups[i] for i in va_clean])
            key = f"{label}/{head}"
            results[key] = r
            fitted[key] = p
            log.info("aesthetics %s: PLCC %.3f SRCC %.3f per-prompt SRCC %.3f", key, r["plcc"], r["srcc"], r["per_prompt_srcc"])
    if not fitted:
        raise EncoderError(f"no aesthetics encoder could be used: {json.dumps(results)}")

    def score(k: str) -> float:
        r = results[k]
        v = [x for x in (r["plcc"], r["per_prompt_srcc"]) if math.isfinite(x)]
        return float(np.mean(v)) if v else -math.inf

    if select == "auto":
        best = max(fitted, key=score)
    elif select in fitted:
        best = select
    else:
        raise ConfigError(f"select={select!r} is not one of the trained predictors {sorted(fitted)} (or 'auto')")
    report = {
        "chosen": best,
        "results": results,
        "n_clips": len(groups),
        "n_train": int(len(tr_idx)),
        "n_validation": int(len(va_clean)),
        "n_degenerate": {"train": int(is_bad[tr_idx].sum()), "validation": int(va_bad.size)},
        "n_degradation_versions": len(deg_info),
        "seed": int(seed),
        "source": source,
        "seconds": time.perf_counter() - t0,
    }
    chosen = fitted[best]
    chosen.meta = {"metrics": results[best], "training": {"source": source, "seed": seed, "val_fraction": val_fraction,
                                                            "command": TRAIN_COMMAND}}
    chosen.save(out)
    if report_path is not None:
        from dragontune.utils import atomic_write_json

        atomic_write_json(report_path, report)
    log.info("aesthetics: chose %s; wrote %s", best, out)
    return report


def _csv_len(rows: list[dict], sr: int) -> int:
    import soundfile as sf

    return max(int(round(sf.info(str(r["path"])).duration * sr)) for r in rows)


def _refit(head: str, params: dict, hyper: dict, z: torch.Tensor, y: torch.Tensor, seed: int) -> tuple[dict, dict]:
    """Refit the chosen hyper-parameters on all training clips."""
    if head == "nadaraya_watson":
        return {"train_z": z, "train_y": y}, hyper
    if head == "kernel_ridge":
        a, m = _fit_kernel_ridge(z, y, hyper["bandwidth"], hyper["ridge"])
        return {"train_z": z, "alpha": a}, dict(hyper, y_mean=m)
    m, _ = _train_mlp(z, y, int(hyper["epochs"]), seed)
    return {f"mlp.{k}": v.detach().clone() for k, v in m.state_dict().items()}, hyper


def _degenerate_report(pred: np.ndarray, kinds: Sequence[str], corpus_pred: np.ndarray) -> dict:
    """Per degenerate kind: mean and max predicted rating, and the share below the lowest-rated validation
    corpus clip (clean or degraded: a degenerate clip should rate below every real one)."""
    floor = float(corpus_pred.min())
    out: dict = {"corpus_min": floor, "corpus_mean": float(corpus_pred.mean())}
    for k in DEGENERATE_KINDS:
        v = pred[np.asarray(kinds) == k]
        if v.size:
            out[k] = {"n": int(v.size), "mean": float(v.mean()), "max": float(v.max()),
                      "below_corpus_min": float((v < floor).mean())}
    return out


def _clean_wins(pred: np.ndarray, info: list[dict]) -> dict:
    """Per quality and strength: share of clips whose degraded version scores below their clean version."""
    clean = {d["group"]: pred[i] for i, d in enumerate(info) if d["quality"] == "clean"}
    wins: dict[str, list[bool]] = {}
    for i, d in enumerate(info):
        if d["quality"] != "clean":
            for key in (d["quality"], f"{d['quality']}@{d['quality_strength']:g}"):
                wins.setdefault(key, []).append(bool(pred[i] < clean[d["group"]]))
    return {q: float(np.mean(v)) for q, v in sorted(wins.items())}
