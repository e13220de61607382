"""Measurable musical descriptors of a clip: onset envelope, tempo, onset rate, spectral centroid.

Pure numpy (float64). Inputs may be numpy arrays or torch tensors of shape ``[T]``, ``[1, T]`` or
``[C, T]`` (channels are averaged). Designed to survive smeared audio (e.g. decoded through a
Griffin-Lim log-mel codec): the onset envelope is a log-mel spectral flux with a local-mean
high-pass, and the tempo is the autocorrelation peak of that envelope, not a beat tracker.
"""

from __future__ import annotations

import numpy as np

from dragontune.errors import AudioError

HOP_SECONDS = 0.01  # onset envelope frame hop (100 frames/s)
WIN_SECONDS = 0.04  # STFT window for the onset envelope
N_MELS = 40
# Compression log1p(gain * mel / max) of the spectrogram behind the onset envelope. Measured on the
# synthetic corpus, raw and after the log-mel Griffin-Lim codec (docs/corpus.md): nearly linear (1)
# is best for tempo, stronger (10) with a 0.2 threshold is best for counting onsets.
TEMPO_LOG_GAIN = 1.0
ONSET_LOG_GAIN = 10.0
TEMPO_RANGE = (50.0, 200.0)


def _mono(audio, name: str = "audio") -> np.ndarray:
    if hasattr(audio, "detach"):
        audio = audio.detach().cpu().double().numpy()
    x = np.asarray(audio, dtype=np.float64)
    if x.ndim == 2:
        x = x.mean(axis=0)
    if x.ndim != 1:
        raise AudioError(f"{name}: expected [T] or [C, T] audio, got shape {tuple(np.shape(audio))}")
    if x.size == 0:
        raise AudioError(f"{name}: audio is empty")
    if not np.isfinite(x).all():
        raise AudioError(f"{name}: audio contains NaN or Inf values")
    return x


def _stft_mag(x: np.ndarray, n_fft: int, hop: int) -> np.ndarray:
    """Magnitude STFT, Hann window, centred (reflect-free zero padding). Returns [frames, n_fft//2+1]."""
    pad = n_fft // 2
    xp = np.concatenate([np.zeros(pad), x, np.zeros(pad)])
    n_frames = 1 + max(0, (len(xp) - n_fft) // hop)
    idx = np.arange(n_fft)[None, :] + hop * np.arange(n_frames)[:, None]
    frames = xp[idx] * np.hanning(n_fft + 1)[:-1][None, :]
    return np.abs(np.fft.rfft(frames, axis=1))


def _mel_fb(sr: float, n_fft: int, n_mels: int, fmin: float = 30.0, fmax: float | None = None) -> np.ndarray:
    fmax = fmax or sr / 2
    mel = lambda f: 2595.0 * np.log10(1.0 + f / 700.0)  # noqa: E731
    imel = lambda m: 700.0 * (10 ** (m / 2595.0) - 1.0)  # noqa: E731
    pts = imel(np.linspace(mel(fmin), mel(fmax), n_mels + 2))
    freqs = np.linspace(0, sr / 2, n_fft // 2 + 1)
    fb = np.zeros((n_mels, len(freqs)))
    for m in range(n_mels):
        lo, c, hi = pts[m], pts[m + 1], pts[m + 2]
        fb[m] = np.clip(np.minimum((freqs - lo) / (c - lo), (hi - freqs) / (hi - c)), 0, None)
    return fb


def onset_envelope(audio, sr: int, log_gain: float = ONSET_LOG_GAIN) -> tuple[np.ndarray, float]:
    """Spectral-flux onset strength. Returns ``(envelope [frames] >= 0, frames_per_second)``.

    Log-compressed mel magnitudes, positive first difference summed over bands, minus a 0.5 s moving
    average, half-wave rectified.
    """
    x = _mono(audio)
    hop = max(1, int(round(sr * HOP_SECONDS)))
    n_fft = 1 << int(np.ceil(np.log2(sr * WIN_SECONDS)))
    mag = _stft_mag(x, n_fft, hop)
    mel = mag @ _mel_fb(sr, n_fft, N_MELS).T
    ref = max(float(mel.max()), 1e-12)
    logm = np.log1p(log_gain * mel / ref)
    flux = np.maximum(0.0, np.diff(logm, axis=0)).sum(axis=1)
    flux = np.concatenate([[0.0], flux])
    fps = sr / hop
    w = max(1, int(round(0.5 * fps)))
    local = np.convolve(flux, np.ones(w) / w, mode="same")
    return np.maximum(0.0, flux - local), fps


def estimate_tempo(audio, sr: int, bpm_range: tuple[float, float] = TEMPO_RANGE) -> float:
    """Tempo in BPM: the highest autocorrelation peak of the onset envelope within ``bpm_range``.

    The peak lag is refined by parabolic interpolation. Returns NaN for audio without onsets
    (silence or a steady tone) or too short to hold one period of the slowest tempo.
    """
    env, fps = onset_envelope(audio, sr, log_gain=TEMPO_LOG_GAIN)
    e = env - env.mean()
    n = len(e)
    if n < 3 or float(np.dot(e, e)) <= 1e-12:
        return float("nan")
    ac = np.correlate(e, e, mode="full")[n - 1 :] / float(np.dot(e, e))
    lo = max(2, int(np.floor(60.0 * fps / bpm_range[1])))
    hi = min(n - 2, int(np.ceil(60.0 * fps / bpm_range[0])))
    if hi <= lo:
        return float("nan")
    # local maxima only (a lag on the decaying shoulder of lag 0 is not a period)
    cand = [i for i in range(lo, hi + 1) if ac[i] >= ac[i - 1] and ac[i] >= ac[i + 1]]
    if not cand:
        return float("nan")
    best = max(cand, key=lambda i: ac[i])
    if ac[best] <= 0:
        return float("nan")
    a, b, c = ac[best - 1], ac[best], ac[best + 1]
    den = a - 2 * b + c
    shift = 0.5 * (a - c) / den if den < 0 else 0.0
    return float(60.0 * fps / (best + float(np.clip(shift, -0.5, 0.5))))


def onset_times(audio, sr: int, min_gap: float = 0.05, threshold: float = 0.2) -> np.ndarray:
    """Onset times in seconds: local maxima of the onset envelope above ``threshold`` x its 99th percentile,
    at least ``min_gap`` seconds apart (the larger peak wins)."""
    env, fps = onset_envelope(audio, sr)
    if len(env) < 3:
        return np.zeros(0)
    top = float(np.percentile(env, 99))
    if top <= 1e-9:
        return np.zeros(0)
    peaks = np.flatnonzero((env[1:-1] > env[:-2]) & (env[1:-1] >= env[2:]) & (env[1:-1] > threshold * top)) + 1
    gap = max(1, int(round(min_gap * fps)))
    kept: list[int] = []
    for p in peaks[np.argsort(-env[peaks], kind="stable")]:
        if all(abs(p - q) >= gap for q in kept):
            kept.append(int(p))
    return np.sort(np.array(kept, dtype=np.float64)) / fps


def onset_rate(audio, sr: int) -> float:
    """Onsets per second (see :func:`onset_times`)."""
    x = _mono(audio)
    return float(len(onset_times(x, sr)) / (len(x) / sr))


def spectral_centroid(audio, sr: int, n_fft: int = 1024, hop: int = 256) -> float:
    """Spectral centroid in Hz: per-frame magnitude centroid, averaged with frame energy as weight.

    Returns NaN for silent audio.
    """
    x = _mono(audio)
    mag = _stft_mag(x, n_fft, hop)
    freqs = np.linspace(0, sr / 2, n_fft // 2 + 1)
    msum = mag.sum(axis=1)
    energy = (mag**2).sum(axis=1)
    ok = msum > 1e-12
    if not ok.any():
        return float("nan")
    cent = (mag[ok] @ freqs) / msum[ok]
    return float(np.sum(cent * energy[ok]) / np.sum(energy[ok]))


def descriptor_report(root, quality: str = "clean", limit: int | None = None, audio=None) -> dict:
    """How well the descriptors recover a synthetic corpus's parameters (``metadata.jsonl`` rows).

    Over the rows with the given ``quality`` (``None``: all): Spearman correlation and share within
    8 % of estimated vs requested tempo; Spearman of onset rate vs notes per second
    (tempo / 60 x notes per beat); mean spectral centroid per instrument (all rows). ``audio``
    optionally replaces the files (``[N, T]`` array aligned with the first N rows, e.g. codec output).
    """
    import json
    from pathlib import Path

    import soundfile as sf
    from scipy.stats import spearmanr

    root = Path(root)
    rows = [json.loads(line) for line in (root / "metadata.jsonl").read_text().splitlines() if line.strip()]
    rows = rows[:limit] if limit else rows
    per_beat = {"sparse": 1, "medium": 2, "busy": 4}
    req, est, rate_exp, rate_got, cents = [], [], [], [], {}
    for i, r in enumerate(rows):
        if audio is not None:
            x, sr = np.asarray(audio[i], dtype=np.float64), int(r.get("sample_rate", 16000))
        else:
            x, sr = sf.read(str(root / r["file"]), dtype="float64")
        cents.setdefault(r["instrument"], []).append(spectral_centroid(x, sr))
        if quality is not None and r["quality"] != quality:
            continue
        req.append(float(r["tempo"]))
        est.append(estimate_tempo(x, sr))
        rate_exp.append(float(r["tempo"]) / 60.0 * per_beat[r["density"]])
        rate_got.append(onset_rate(x, sr))
    req_a, est_a = np.array(req), np.array(est)
    return {
        "n": len(req),
        "tempo_spearman": float(spearmanr(req_a, est_a)[0]),
        "tempo_within_8pct": float(np.mean(np.abs(est_a / req_a - 1) < 0.08)),
        "tempo_half": float(np.mean(np.abs(est_a / req_a - 0.5) < 0.04)),
        "tempo_double": float(np.mean(np.abs(est_a / req_a - 2.0) < 0.16)),
        "onset_rate_spearman": float(spearmanr(rate_exp, rate_got)[0]),
        "onset_rate_median_ratio": float(np.median(np.array(rate_got) / np.array(rate_exp))),
        "centroid_hz": {k: float(np.mean(v)) for k, v in sorted(cents.items())},
    }


if __name__ == "__main__":  # python -m dragontune.data.analysis CORPUS_DIR [LIMIT]
    import json as _json
    import sys

    print(_json.dumps(descriptor_report(sys.argv[1], limit=int(sys.argv[2]) if len(sys.argv) > 2 else None), indent=2))
