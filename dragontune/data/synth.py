"""Procedural captioned-music corpus: deterministic, offline, fast (numpy only).

Each clip is one instrument playing a short phrase on a beat grid. Its caption is built from the
generation parameters (instrument, tempo, key/mode, contour, density, mood), so the caption -> audio
relation is strong and simple. A share of the clips carries a graded quality defect (noise, clipping,
detune, timing jitter, distortion) that the caption never mentions.

Public API::

    synth_corpus(out_dir, n, seed, options=None) -> Path     # audio/<id>.wav + metadata.jsonl + synth_config.json
    sample_params(rng, config=None) -> dict                   # one clip's parameters (pure given rng)
    make_caption(params, rng) -> str                          # caption for those parameters
    render_clip(params, sample_rate) -> np.ndarray [T] float  # pure given params

Clip ``i`` of a corpus depends only on ``(seed, i, options)``: its generator is
``np.random.default_rng([seed, i])``, so a corpus of 24 clips is a prefix of one of 2000.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from pathlib import Path

import numpy as np

from dragontune.config import from_dict, to_dict
from dragontune.errors import ConfigError
from dragontune.utils import atomic_write_json, atomic_write_text, ensure_writable_dir, log

INSTRUMENTS = ("pluck", "piano", "pad", "bass", "bell", "drums")
QUALITIES = ("noise", "clipping", "detune", "jitter", "distortion")
KEYS = ("C", "C#", "D", "Eb", "E", "F", "F#", "G", "Ab", "A", "Bb", "B")
MODES = ("major", "minor")
SCALES = {"major": (0, 2, 4, 5, 7, 9, 11), "minor": (0, 2, 3, 5, 7, 8, 10)}
# Named progressions as 0-based scale degrees of the chord roots (diatonic triads in the clip's mode).
PROGRESSIONS = {
    "I-IV-V-I": (0, 3, 4, 0),
    "I-V-vi-IV": (0, 4, 5, 3),
    "vi-IV-I-V": (5, 3, 0, 4),
    "I-vi-ii-V": (0, 5, 1, 4),
    "ii-V-I-I": (1, 4, 0, 0),
    "I-I-I-I": (0, 0, 0, 0),
}
CONTOURS = ("ascending", "descending", "arch", "valley", "static")
DENSITIES = {"sparse": 1, "medium": 2, "busy": 4}  # notes (or hat hits) per beat
TEMPO_WORDS = (("slow", 0.0, 90.0), ("moderate", 90.0, 130.0), ("fast", 130.0, 1e9))
# Mood is a fixed function of (mode, tempo word); drums (no mode) use tempo only.
MOODS = {
    ("minor", "slow"): "melancholic",
    ("minor", "moderate"): "mysterious",
    ("minor", "fast"): "tense",
    ("major", "slow"): "calm",
    ("major", "moderate"): "cheerful",
    ("major", "fast"): "upbeat",
    ("none", "slow"): "laid-back",
    ("none", "moderate"): "groovy",
    ("none", "fast"): "energetic",
}
# Genre is a fixed function of (instrument, tempo word).
GENRES = {
    "pluck": {"slow": "folk", "moderate": "acoustic", "fast": "bluegrass"},
    "piano": {"slow": "ballad", "moderate": "pop", "fast": "ragtime"},
    "pad": {"slow": "ambient", "moderate": "chillout", "fast": "trance"},
    "bass": {"slow": "dub", "moderate": "funk", "fast": "electro"},
    "bell": {"slow": "lullaby", "moderate": "music-box", "fast": "chiptune"},
    "drums": {"slow": "hip-hop", "moderate": "rock", "fast": "dance"},
}
# Lowest MIDI note of the melody scale for tonic C (shifted by the key, kept within +-6 semitones).
REGISTER = {"pluck": 55, "piano": 60, "pad": 48, "bass": 33, "bell": 76}


@dataclasses.dataclass
class SynthConfig:
    """Options of :func:`synth_corpus` (every field can be given in ``options``)."""

    sample_rate: int = 16000
    duration: float = 4.0  # seconds per clip: 4-12 beats at 60-180 BPM, 250 log-mel frames at hop 256
    degraded_fraction: float = 0.35  # share of clips with a quality defect
    strength_min: float = 0.15  # defect strength drawn uniformly in [strength_min, strength_max]
    strength_max: float = 1.0
    val_fraction: float = 0.1  # split by a hash of the caption
    test_fraction: float = 0.1
    instruments: list[str] = dataclasses.field(default_factory=lambda: list(INSTRUMENTS))
    qualities: list[str] = dataclasses.field(default_factory=lambda: list(QUALITIES))
    modes: list[str] = dataclasses.field(default_factory=lambda: list(MODES))
    tempo_min: float = 60.0
    tempo_max: float = 180.0
    bpm_in_caption: float = 0.5  # probability that the caption also states the BPM
    peak_dbfs: float = -1.0  # peak normalisation target (before and after defects)


def _check_choice(name: str, values: list[str], valid: tuple[str, ...]) -> None:
    import difflib

    if not values:
        raise ConfigError(f"synth option {name!r} must not be empty (valid: {', '.join(valid)})")
    for v in values:
        if v not in valid:
            close = difflib.get_close_matches(v, valid, n=1, cutoff=0.5)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise ConfigError(f"synth option {name}: unknown value {v!r}{hint} (valid: {', '.join(valid)})")


def make_config(options: dict | None = None) -> SynthConfig:
    """Build and validate a :class:`SynthConfig`; unknown keys raise ConfigError with a suggestion."""
    cfg = from_dict(SynthConfig, dict(options or {}))
    _check_choice("instruments", cfg.instruments, INSTRUMENTS)
    _check_choice("qualities", cfg.qualities, QUALITIES)
    _check_choice("modes", cfg.modes, MODES)
    if not 8000 <= cfg.sample_rate <= 96000:
        raise ConfigError(f"synth option sample_rate={cfg.sample_rate} must be in [8000, 96000]")
    if not 1.0 <= cfg.duration <= 30.0:
        raise ConfigError(f"synth option duration={cfg.duration} must be in [1, 30] seconds")
    if not 40.0 <= cfg.tempo_min <= cfg.tempo_max <= 240.0:
        raise ConfigError(f"synth options tempo_min={cfg.tempo_min}, tempo_max={cfg.tempo_max}: need 40 <= min <= max <= 240")
    for name in ("degraded_fraction", "val_fraction", "test_fraction", "bpm_in_caption"):
        v = getattr(cfg, name)
        if not 0.0 <= v <= 1.0:
            raise ConfigError(f"synth option {name}={v} must be in [0, 1]")
    if cfg.val_fraction + cfg.test_fraction >= 1.0:
        raise ConfigError("synth options val_fraction + test_fraction must be < 1")
    if not 0.0 < cfg.strength_min <= cfg.strength_max <= 1.0:
        raise ConfigError(f"synth options strength_min={cfg.strength_min}, strength_max={cfg.strength_max}: need 0 < min <= max <= 1")
    if not -20.0 <= cfg.peak_dbfs <= 0.0:
        raise ConfigError(f"synth option peak_dbfs={cfg.peak_dbfs} must be in [-20, 0]")
    return cfg


def tempo_word(bpm: float) -> str:
    for word, lo, hi in TEMPO_WORDS:
        if lo <= bpm < hi:
            return word
    raise ValueError(bpm)


# ----------------------------------------------------------------------------------------------------
# Parameters and captions
# ----------------------------------------------------------------------------------------------------


def sample_params(rng: np.random.Generator, config: SynthConfig | None = None) -> dict:
    """Draw one clip's generation parameters. Every field is JSON-serialisable; ``render_clip`` needs only these."""
    cfg = config or SynthConfig()
    instrument = str(cfg.instruments[int(rng.integers(len(cfg.instruments)))])
    tempo = round(float(rng.uniform(cfg.tempo_min, cfg.tempo_max)), 1)
    key = KEYS[int(rng.integers(12))]
    mode = str(cfg.modes[int(rng.integers(len(cfg.modes)))])
    progression = list(PROGRESSIONS)[int(rng.integers(len(PROGRESSIONS)))]
    contour = CONTOURS[int(rng.integers(len(CONTOURS)))]
    density = list(DENSITIES)[int(rng.integers(len(DENSITIES)))]
    degraded = bool(rng.random() < cfg.degraded_fraction)
    defect = str(cfg.qualities[int(rng.integers(len(cfg.qualities)))])
    strength = round(float(rng.uniform(cfg.strength_min, cfg.strength_max)), 3)
    render_seed = int(rng.integers(0, 2**31 - 1))
    if instrument == "drums":
        key, mode, progression, contour = "none", "none", "none", "none"
    elif instrument == "pad":
        contour = "none"  # sustained chords: no melody
    tw = tempo_word(tempo)
    return {
        "instrument": instrument,
        "tempo": tempo,
        "tempo_word": tw,
        "key": key,
        "mode": mode,
        "progression": progression,
        "contour": contour,
        "density": density,
        "mood": MOODS[(mode, tw)],
        "genre": GENRES[instrument][tw],
        "quality": defect if degraded else "clean",
        "quality_strength": strength if degraded else 0.0,
        "seed": render_seed,
        "duration": float(cfg.duration),
        "peak_dbfs": float(cfg.peak_dbfs),
    }


_INSTR_WORDS = {
    "pluck": ["plucked guitar", "plucked strings", "acoustic guitar", "plucked string", "fingerpicked guitar"],
    "piano": ["piano", "grand piano", "piano keys", "acoustic piano"],
    "pad": ["synth pad", "warm pad", "ambient synth pad", "analog pad"],
    "bass": ["bass", "synth bass", "bass guitar", "deep bass"],
    "bell": ["bells", "FM bells", "chimes", "glockenspiel-like bells", "bell synth"],
    "drums": ["drum kit", "drums", "drum machine", "acoustic drums"],
}
_PART_WORDS = {
    "pluck": ["arpeggios", "arpeggio", "picking pattern", "melody"],
    "piano": ["melody", "tune", "piece", "phrase"],
    "pad": ["chords", "pulsing chords", "chord progression", "sustained chords"],
    "bass": ["line", "riff", "groove", "line"],
    "bell": ["melody", "motif", "tune", "chime melody"],
    "drums": ["beat", "groove", "drum pattern", "rhythm"],
}
_TEMPO_SYN = {
    "slow": ["slow", "slow", "slow-paced", "unhurried"],
    "moderate": ["moderate", "mid-tempo", "medium-tempo", "moderately paced"],
    "fast": ["fast", "fast", "up-tempo", "quick"],
}
_TEMPO_PHRASE = {
    "slow": ["slow tempo", "slow pace", "a slow tempo"],
    "moderate": ["moderate tempo", "medium pace", "a mid-tempo pace"],
    "fast": ["fast tempo", "quick pace", "an up-tempo pace"],
}
_MOOD_SYN = {
    "melancholic": ["melancholic", "sad", "somber", "melancholy"],
    "mysterious": ["mysterious", "brooding", "moody", "dark"],
    "tense": ["tense", "urgent", "dramatic", "driving"],
    "calm": ["calm", "peaceful", "relaxed", "serene"],
    "cheerful": ["cheerful", "warm", "happy", "bright"],
    "upbeat": ["upbeat", "joyful", "lively", "danceable"],
    "laid-back": ["laid-back", "relaxed", "chilled", "lazy"],
    "groovy": ["groovy", "steady", "solid", "funky"],
    "energetic": ["energetic", "driving", "punchy", "high-energy"],
}
_DENSITY_SYN = {
    "sparse": ["sparse", "spacious", "minimal", "sparse"],
    "medium": ["steady", "moderately busy", "flowing", "even"],
    "busy": ["busy", "dense", "rapid", "busy"],
}
_CONTOUR_SYN = {
    "ascending": ["ascending", "rising", "climbing", "upward"],
    "descending": ["descending", "falling", "downward", "sinking"],
    "arch": ["arching", "rise-and-fall", "arch-shaped", "rising then falling"],
    "valley": ["dipping", "fall-and-rise", "valley-shaped", "falling then rising"],
    "static": ["repeated-note", "static", "one-note", "monotone"],
}


def _pick(rng: np.random.Generator, words: list[str]) -> str:
    return words[int(rng.integers(len(words)))]


def make_caption(params: dict, rng: np.random.Generator, bpm_prob: float = 0.5) -> str:
    """A varied caption stating instrument, tempo word (sometimes BPM), key/mode, contour, density and mood."""
    inst = params["instrument"]
    instr = _pick(rng, _INSTR_WORDS[inst])
    part = _pick(rng, _PART_WORDS[inst])
    tw = _pick(rng, _TEMPO_SYN[params["tempo_word"]])
    tphrase = _pick(rng, _TEMPO_PHRASE[params["tempo_word"]])
    mood = _pick(rng, _MOOD_SYN[params["mood"]])
    dens = _pick(rng, _DENSITY_SYN[params["density"]])
    genre = params["genre"]
    bpm_p = float(rng.random())
    bpm = f"{int(round(params['tempo']))} BPM"
    with_bpm = bpm_p < bpm_prob
    template = int(rng.integers(5))
    art = "" if part.endswith("s") else "a "
    if inst == "drums":
        forms = [
            f"a {tw} {mood} {genre} {instr} {part}, {dens}",
            f"{dens} {tw} {instr} {part} with a {mood} feel",
            f"{mood} {genre} {part} on {instr}, {tphrase}, {dens} hi-hats",
            f"{tw} {dens} {instr} {part}, {mood}",
            f"a {mood} {tw} {part} played on {instr}, {dens}",
        ]
        cap = forms[template]
    else:
        kk = f"{params['key']} {params['mode']}"
        cont = "" if params["contour"] == "none" else _pick(rng, _CONTOUR_SYN[params["contour"]])
        cont_sp = f"{cont} " if cont else ""
        forms = [
            f"{art}{tw} {mood} {instr} {cont_sp}{part} in {kk}",
            f"{tw} {mood} {instr} {part}, {kk}, {dens}",
            f"{mood} {genre} track with {dens} {cont_sp}{instr} {part}, {tphrase}, key of {kk}",
            f"{dens} {cont_sp}{instr} {part} in {kk}, {tw} and {mood}",
            f"{art}{dens} {tw} {instr} {part} with a {params['progression']} progression in {kk}, {mood} feel",
        ]
        cap = forms[template]
    if with_bpm:
        cap = f"{cap} at {bpm}" if template % 2 == 0 else f"{cap}, {bpm}"
    return cap[0].upper() + cap[1:] if template in (1, 3) else cap


# ----------------------------------------------------------------------------------------------------
# Rendering
# ----------------------------------------------------------------------------------------------------

_TL = 4096  # wavetable length
_TABLES: dict[str, np.ndarray] = {}


def _table(name: str) -> np.ndarray:
    """Single-cycle wavetables (harmonic amplitude laws), built once."""
    if name not in _TABLES:
        ph = np.arange(_TL) / _TL
        laws = {
            "saw": [(k, 1.0 / k) for k in range(1, 11)],
            "piano_bright": [(k, 1.0 / k**1.1) for k in range(1, 11)],
            "piano_dull": [(1, 1.0), (2, 0.35), (3, 0.12), (4, 0.05)],
            "bass": [(1, 1.0), (2, 0.5), (3, 0.18), (4, 0.08), (5, 0.03)],
        }
        w = np.zeros(_TL)
        for k, a in laws[name]:
            w += a * np.sin(2 * np.pi * k * ph)
        _TABLES[name] = w / np.abs(w).max()
    return _TABLES[name]


def _osc(name: str, f0: float, t: np.ndarray, phase0: float = 0.0) -> np.ndarray:
    idx = (((f0 * t + phase0) % 1.0) * _TL).astype(np.int64) % _TL
    return _table(name)[idx]


def _midi_hz(m: float) -> float:
    return 440.0 * 2.0 ** ((m - 69.0) / 12.0)


def _degree_midi(deg: int, base: int, mode: str) -> int:
    sc = SCALES[mode]
    return base + 12 * (deg // 7) + sc[deg % 7]


def _events(params: dict, rng: np.random.Generator) -> list[dict]:
    """Note events on the beat grid: time, duration slot, MIDI pitch, velocity, chord index."""
    inst, tempo, dur = params["instrument"], float(params["tempo"]), float(params["duration"])
    npb = DENSITIES[params["density"]]
    beat = 60.0 / tempo
    step = beat / npb
    n_steps = int(np.floor((dur - 0.08) / step)) + 1
    beats_total = dur / beat
    chord_beats = max(1, int(round(beats_total / 4)))
    prog = PROGRESSIONS.get(params["progression"], (0, 0, 0, 0))
    contour = params["contour"]
    key_shift = KEYS.index(params["key"]) if params["key"] in KEYS else 0
    if key_shift > 6:
        key_shift -= 12
    base = REGISTER.get(inst, 60) + key_shift
    span = 7
    out = []
    for k in range(n_steps):
        t = k * step
        sub = k % npb
        beat_idx = k // npb
        chord = prog[(beat_idx // chord_beats) % len(prog)]
        vel = (1.0 if sub == 0 else (0.5 if (npb == 4 and sub == 2) or npb == 2 else 0.35)) * float(rng.uniform(0.9, 1.0))
        ev = {"t": t, "slot": step, "vel": vel, "chord": chord, "beat_idx": beat_idx, "sub": sub}
        if inst in ("pluck", "piano", "bass", "bell"):
            u = k / max(1, n_steps - 1)
            shape = {"ascending": u, "descending": 1 - u, "arch": 1 - abs(2 * u - 1), "valley": abs(2 * u - 1), "static": 0.5}[contour]
            deg = int(round(span * shape))
            snap_all = inst in ("pluck", "bass")
            if contour != "static" and (snap_all or sub == 0):
                tones = [chord + o for o in (-7, -5, -3, 0, 2, 4, 7, 9, 11)]
                deg = min(tones, key=lambda d: (abs(d - deg), d))
            ev["midi"] = _degree_midi(deg, base, params["mode"])
        out.append(ev)
    return out


def _karplus_strong(f0: float, n: int, sr: int, burst: np.ndarray, decay: float) -> np.ndarray:
    """Karplus-Strong string: delay line + two-point average, computed a period-block at a time."""
    L = max(2, int(round(sr / f0 - 0.5)))
    y = np.zeros(n + L + 1)
    y[: L + 1] = burst[: L + 1]
    i = L + 1
    while i < n + L + 1:
        j = min(i + L, n + L + 1)
        y[i:j] = decay * 0.5 * (y[i - L : j - L] + y[i - L - 1 : j - L - 1])
        i = j
    return y[:n]


def _env_ar(n: int, sr: int, attack: float, tau: float, release_at: int, release: float) -> np.ndarray:
    t = np.arange(n) / sr
    env = np.minimum(1.0, t / max(attack, 1e-4)) * np.exp(-t / tau)
    rel = max(1, int(release * sr))
    if release_at < n:
        tail = np.clip(1.0 - (np.arange(n - release_at)) / rel, 0.0, 1.0)
        env[release_at:] *= tail
    return env


def _render_note(inst: str, f0: float, n: int, slot_n: int, sr: int, rng: np.random.Generator, cache: dict) -> np.ndarray:
    t = np.arange(n) / sr
    if inst == "piano":
        tau = 0.9 * (262.0 / f0) ** 0.3
        env = _env_ar(n, sr, 0.003, tau, slot_n, 0.08)
        w = np.exp(-t / 0.15)
        return env * (w * _osc("piano_bright", f0, t) + (1 - w) * _osc("piano_dull", f0, t))
    if inst == "bell":
        env = _env_ar(n, sr, 0.001, 0.8, n, 0.05)
        index = 2.5 * np.exp(-t / 0.25) + 0.6
        return env * np.sin(2 * np.pi * f0 * t + index * np.sin(2 * np.pi * 3.5 * f0 * t))
    if inst == "bass":
        env = _env_ar(n, sr, 0.008, 0.7, int(slot_n * 0.9), 0.04)
        return env * _osc("bass", f0, t)
    if inst == "pluck":
        key = round(f0, 3)
        if key not in cache:
            L = max(2, int(round(sr / f0 - 0.5)))
            burst = rng.uniform(-1, 1, L + 1)
            burst = 0.5 * (burst + np.roll(burst, 1))
            cache[key] = _karplus_strong(f0, int(1.6 * sr), sr, burst, 0.996)
        y = cache[key][:n].copy()
        fade = min(n, int(0.03 * sr))
        y[n - fade :] *= np.linspace(1, 0, fade)
        return y
    raise ValueError(inst)


def _drum_sounds(sr: int, rng: np.random.Generator, cents: np.ndarray) -> dict:
    def kick(c):
        n = int(0.35 * sr)
        t = np.arange(n) / sr
        f = 2 ** (c / 1200) * (48 + 110 * np.exp(-t / 0.04))
        return np.sin(2 * np.pi * np.cumsum(f) / sr) * np.exp(-t / 0.12) * np.minimum(1, t / 0.001)

    def snare(c):
        n = int(0.25 * sr)
        t = np.arange(n) / sr
        noise = rng.standard_normal(n)
        noise = noise - np.concatenate([[0.0], noise[:-1]]) * 0.6
        tone = np.sin(2 * np.pi * 190 * 2 ** (c / 1200) * t)
        return (0.55 * noise / 2.0 * np.exp(-t / 0.09) + 0.6 * tone * np.exp(-t / 0.05)) * np.minimum(1, t / 0.001)

    def hat():
        n = int(0.07 * sr)
        t = np.arange(n) / sr
        noise = rng.standard_normal(n)
        hp = noise - np.concatenate([[0.0], noise[:-1]])
        hp = hp - np.concatenate([[0.0], hp[:-1]])
        return 0.25 * hp / 4.0 * np.exp(-t / 0.02)

    return {"kick": kick(cents[0]), "snare": snare(cents[1]), "hat": hat()}


def _add(buf: np.ndarray, start: int, x: np.ndarray) -> None:
    if start >= len(buf) or start + len(x) <= 0:
        return
    if start < 0:
        x, start = x[-start:], 0
    end = min(len(buf), start + len(x))
    buf[start:end] += x[: end - start]


def _apply_defect(x: np.ndarray, quality: str, s: float, sr: int, rng: np.random.Generator) -> np.ndarray:
    if quality == "noise":
        snr_db = 30.0 - 30.0 * s  # strength 0.15 -> 25.5 dB, 1 -> 0 dB
        rms = np.sqrt(np.mean(x**2))
        return x + rng.standard_normal(len(x)) * rms * 10 ** (-snr_db / 20)
    if quality == "clipping":
        gain_db = 3.0 + 21.0 * s  # hard clip after 3..24 dB of gain
        return np.clip(x * 10 ** (gain_db / 20), -1.0, 1.0)
    if quality == "distortion":
        drive = 1.0 + 9.0 * s
        y = np.tanh(drive * x) / np.tanh(drive)
        hold = 1 + int(round(3 * s))  # sample-and-hold decimation
        if hold > 1:
            y = np.repeat(y[::hold], hold)[: len(x)]
        bits = 12.0 - 8.0 * s  # bit-crush: 12 bits at strength 0 down to 4 bits
        q = 2.0 ** (bits - 1)
        return np.round(y * q) / q
    return x  # detune and jitter act on note events during rendering


def render_clip(params: dict, sample_rate: int) -> np.ndarray:
    """Render one clip (float64 mono, ``duration * sample_rate`` samples, peak at ``peak_dbfs``)."""
    sr = int(sample_rate)
    inst = params["instrument"]
    if inst not in INSTRUMENTS:
        raise ConfigError(f"render_clip: unknown instrument {inst!r} (valid: {', '.join(INSTRUMENTS)})")
    if params["quality"] not in ("clean", *QUALITIES):
        raise ConfigError(f"render_clip: unknown quality {params['quality']!r} (valid: clean, {', '.join(QUALITIES)})")
    n_total = int(round(float(params["duration"]) * sr))
    rng = np.random.default_rng(int(params["seed"]))
    defect_rng = np.random.default_rng([int(params["seed"]), 1])
    q, s = params["quality"], float(params["quality_strength"])
    events = _events(params, rng)
    n_ev = len(events)
    # Defect draws come from their own stream so that clean and defective clips share the same notes.
    jitter = defect_rng.standard_normal(n_ev) * (0.045 * s if q == "jitter" else 0.0)
    cents = defect_rng.standard_normal(n_ev * 4 + 8) * (45.0 * s if q == "detune" else 0.0)
    buf = np.zeros(n_total + 1)
    cache: dict = {}
    if inst == "drums":
        snd = _drum_sounds(sr, rng, cents[:2])
        npb = DENSITIES[params["density"]]
        for i, ev in enumerate(events):
            start = int(round((ev["t"] + jitter[i]) * sr))
            # every beat: kick + hat (snare added on beats 2 and 4); sub-beats: softer hats only
            if ev["sub"] == 0:
                _add(buf, start, ev["vel"] * snd["kick"])
                _add(buf, start, 2.0 * ev["vel"] * snd["hat"])
                if ev["beat_idx"] % 2 == 1:
                    _add(buf, start, 0.35 * ev["vel"] * snd["snare"])
            else:
                _add(buf, start, ev["vel"] * snd["hat"] * 2.0)
    elif inst == "pad":
        beat = 60.0 / float(params["tempo"])
        t = np.arange(n_total + 1) / sr
        # chords: one per chord change, slow attack, release overlapping the next
        changes = [ev for i, ev in enumerate(events) if i == 0 or ev["chord"] != events[i - 1]["chord"]]
        key_shift = KEYS.index(params["key"])
        if key_shift > 6:
            key_shift -= 12
        base = REGISTER["pad"] + key_shift
        for ci, ev in enumerate(changes):
            t0 = ev["t"]
            t1 = changes[ci + 1]["t"] if ci + 1 < len(changes) else float(params["duration"]) + 0.5
            n = int((t1 - t0 + 0.3) * sr)
            tt = np.arange(n) / sr
            env = np.minimum(1.0, tt / min(0.35, (t1 - t0) / 2)) * np.clip((t1 - t0 + 0.3 - tt) / 0.3, 0, 1)
            sig = np.zeros(n)
            for vi, d in enumerate((0, 2, 4)):
                f0 = _midi_hz(_degree_midi(ev["chord"] + d, base, params["mode"]) + cents[ci * 3 + vi] / 100)
                for det in (-7.0, 0.0, 7.0):
                    sig += _osc("saw", f0 * 2 ** (det / 1200), tt, float(rng.random()))
            _add(buf, int(round(t0 * sr)), env * sig / 9.0)
        # beat-synchronous swell so the tempo (and density) are audible; accent on beats; onsets jittered
        npb = DENSITIES[params["density"]]
        step = beat / npb
        onsets = np.array([ev["t"] for ev in events]) + jitter
        order = np.argsort(onsets, kind="stable")
        onsets = onsets[order]
        acc_ev = np.array([1.0 if events[j]["sub"] == 0 else 0.45 for j in order])
        k = np.searchsorted(onsets, t, side="right") - 1
        since = np.where(k >= 0, t - onsets[np.maximum(k, 0)], 0.0)
        acc = np.where(k >= 0, acc_ev[np.maximum(k, 0)], 0.0)
        gate = 0.35 + 0.65 * acc * np.exp(-since / (0.35 * step)) * np.minimum(1.0, since / 0.006)
        buf *= gate
    else:
        times = [ev["t"] + jitter[i] for i, ev in enumerate(events)]
        ring = {"piano": 0.5, "bell": 0.9, "bass": 0.05, "pluck": 0.35}[inst]
        for i, ev in enumerate(events):
            f0 = _midi_hz(ev["midi"] + cents[i] / 100)
            slot_n = int(ev["slot"] * sr)
            n = int(min(1.5, ev["slot"] + ring) * sr)
            x = _render_note(inst, f0, n, slot_n, sr, rng, cache)
            _add(buf, int(round(times[i] * sr)), ev["vel"] * x)
        if inst == "piano":  # soft left-hand triad of the current chord on every beat
            key_shift = KEYS.index(params["key"])
            if key_shift > 6:
                key_shift -= 12
            base = REGISTER["piano"] - 12 + key_shift
            for i, ev in enumerate(events):
                if ev["sub"] != 0:
                    continue
                for vi, d in enumerate((0, 2, 4)):
                    f0 = _midi_hz(_degree_midi(ev["chord"] + d, base, params["mode"]) + cents[n_ev + (i * 3 + vi) % (3 * n_ev)] / 100)
                    x = _render_note("piano", f0, int(min(1.5, 60.0 / float(params["tempo"]) + 0.5) * sr), int(60.0 / float(params["tempo"]) * sr), sr, rng, cache)
                    _add(buf, int(round(times[i] * sr)), 0.3 * x)
    x = buf[:n_total]
    target = 10 ** (float(params["peak_dbfs"]) / 20)
    x = _normalise(x, target)
    if q in ("noise", "clipping", "distortion"):
        x = _normalise(_apply_defect(x, q, s, sr, defect_rng), target)
    return x


def _normalise(x: np.ndarray, target: float) -> np.ndarray:
    peak = float(np.max(np.abs(x)))
    if not np.isfinite(peak) or peak <= 1e-9:
        raise ValueError("rendered clip is silent or non-finite (a synth bug)")
    return x * (target / peak)


# ----------------------------------------------------------------------------------------------------
# Corpus
# ----------------------------------------------------------------------------------------------------


def split_of(caption: str, val_fraction: float, test_fraction: float) -> str:
    """Split from a hash of the caption: equal captions always land in the same split."""
    u = int.from_bytes(hashlib.sha256(caption.encode("utf-8")).digest()[:8], "big") / 2.0**64
    if u < test_fraction:
        return "test"
    if u < test_fraction + val_fraction:
        return "val"
    return "train"


def clip_row(index: int, seed: int, cfg: SynthConfig) -> dict:
    """Metadata row of clip ``index`` of the corpus with ``seed`` (without rendering it)."""
    rng = np.random.default_rng([int(seed), int(index)])
    params = sample_params(rng, cfg)
    cap_rng = np.random.default_rng([int(seed), int(index), 2])
    caption = make_caption(params, cap_rng, cfg.bpm_in_caption)
    cid = f"clip{index:06d}"
    row = dict(params)
    row.update(
        id=cid,
        file=f"audio/{cid}.wav",
        caption=caption,
        split=split_of(caption, cfg.val_fraction, cfg.test_fraction),
        index=int(index),
        corpus_seed=int(seed),
        sample_rate=int(cfg.sample_rate),
    )
    return row


def _write_wav(path: Path, x: np.ndarray, sr: int) -> None:
    """16-bit PCM mono WAV, atomically; the same bytes as ``dragontune.audio.save_wav`` of ``x`` as float32
    (that function's torch checks cost ~50 ms a clip on a busy 2-core machine, 5x the rendering)."""
    import io

    import soundfile as sf

    from dragontune.utils import atomic_write_bytes

    a = x.astype(np.float32)
    if not np.isfinite(a).all():
        raise ValueError(f"rendered audio for {str(path)!r} is not finite (a synth bug)")
    n_clip = int((np.abs(a) > 1.0).sum())
    if n_clip:  # rendering normalises the peak to peak_dbfs, so this is a synth bug if it happens
        log.warning("%s: %d of %d rendered samples are beyond full scale and were clipped", path, n_clip, a.size)
    buf = io.BytesIO()
    sf.write(buf, np.clip(a, -1.0, 1.0)[:, None], sr, subtype="PCM_16", format="WAV")
    atomic_write_bytes(path, buf.getvalue())


def synth_corpus(out_dir: str | Path, n: int, seed: int, options: dict | None = None, progress: bool = False) -> Path:
    """Write ``n`` clips to ``out_dir/audio/<id>.wav`` plus ``metadata.jsonl`` and ``synth_config.json``.

    Deterministic: the same ``(n, seed, options)`` gives byte-identical files. Returns ``out_dir``.
    """
    cfg = make_config(options)
    if int(n) < 1:
        raise ConfigError(f"synth corpus size n={n} must be >= 1")
    out = ensure_writable_dir(out_dir)
    (out / "audio").mkdir(exist_ok=True)
    rows = []
    t0 = time.perf_counter()
    it = range(int(n))
    if progress:
        from tqdm import tqdm

        it = tqdm(it, desc="synth corpus", unit="clip")
    for i in it:
        row = clip_row(i, seed, cfg)
        x = render_clip(row, cfg.sample_rate)
        _write_wav(out / row["file"], x, cfg.sample_rate)
        rows.append(row)
    atomic_write_text(out / "metadata.jsonl", "".join(json.dumps(r, sort_keys=True) + "\n" for r in rows))
    atomic_write_json(out / "synth_config.json", {"n": int(n), "seed": int(seed), "config": to_dict(cfg)})
    log.info("synthesised %d clips into %s in %.1f s", n, out, time.perf_counter() - t0)
    return out
