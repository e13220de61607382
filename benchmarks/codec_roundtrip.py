"""Round-trip quality and speed of the log-mel codec (encode -> decode) for several inverse settings.

    python benchmarks/codec_roundtrip.py [--clips 64] [--seconds 4] [--source auto|corpus|signals] [--out FILE]

Reports, per setting: log-spectral distance (dB, linear STFT), mel distance (dB, the codec's own log-mel,
i.e. how well decode(z) re-encodes to z), waveform SNR (dB, for information: Griffin-Lim phase is not the
original phase) and decode speed; plus encode speed. ``--source corpus`` uses
``dragontune.data.synth.synth_corpus`` clips; ``signals`` uses the built-in musical test signals below.
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dragontune.codecs import LogMelCodec, fit_scale, log_spectral_distance, mel_distance, snr_db  # noqa: E402


def musical_signals(n: int, seconds: float, sample_rate: int = 16000, seed: int = 0) -> torch.Tensor:
    """``[n, 1, T]`` synthetic music: a melody of harmonic notes (ADSR, vibrato), a chord pad, kick and hi-hat."""
    T = int(seconds * sample_rate)
    t = np.arange(T) / sample_rate
    out = np.zeros((n, T))
    for i in range(n):
        rng = np.random.default_rng(seed * 100003 + i)
        x = np.zeros(T)
        bpm = rng.uniform(80, 160)
        beat = 60.0 / bpm
        root = 110.0 * 2 ** (rng.integers(0, 12) / 12)
        scale = np.array([0, 2, 4, 5, 7, 9, 11, 12])
        # melody
        n_h = rng.integers(3, 9)
        decay = rng.uniform(0.5, 1.5)
        pos = 0.0
        while pos < seconds:
            dur = beat * rng.choice([0.5, 1.0, 2.0])
            f0 = root * 2 * 2 ** (scale[rng.integers(0, len(scale))] / 12)
            m = (t >= pos) & (t < pos + dur)
            tt = t[m] - pos
            env = np.minimum(tt / 0.01, 1.0) * np.exp(-tt * 3.0 / dur)
            vib = 1 + 0.004 * np.sin(2 * np.pi * 5.5 * tt)
            note = sum(np.sin(2 * np.pi * f0 * k * vib * tt) / k**decay for k in range(1, n_h + 1) if f0 * k < 7500)
            x[m] += 0.25 * env * note
            pos += dur
        # pad: a sustained triad
        for semi in (0, 4, 7):
            f = root * 2 ** (semi / 12)
            x += 0.06 * np.sin(2 * np.pi * f * t + rng.uniform(0, 2 * np.pi)) * (0.6 + 0.4 * np.sin(2 * np.pi * 0.25 * t))
        # drums
        for b in np.arange(0.0, seconds, beat):
            k0 = int(b * sample_rate)
            L = min(T - k0, int(0.25 * sample_rate))
            tt = np.arange(L) / sample_rate
            x[k0 : k0 + L] += 0.5 * np.sin(2 * np.pi * (50 * tt + 60 * (1 - np.exp(-tt * 30)) / 30)) * np.exp(-tt * 12)
            h0 = int((b + beat / 2) * sample_rate)
            if h0 < T:
                L = min(T - h0, int(0.06 * sample_rate))
                noise = rng.standard_normal(L)
                noise = np.diff(noise, prepend=0.0)  # brighter
                x[h0 : h0 + L] += 0.08 * noise * np.exp(-np.arange(L) / sample_rate * 60)
        out[i] = x / max(1e-9, np.abs(x).max()) * 0.8
    return torch.from_numpy(out).to(torch.float32)[:, None]


def load_corpus(n: int, seconds: float, sample_rate: int) -> torch.Tensor:
    from dragontune.audio import fit_length, load_audio
    from dragontune.data.synth import synth_corpus

    root = Path(tempfile.mkdtemp(prefix="codec-bench-"))
    synth_corpus(root, n, 0)
    wavs = sorted(root.rglob("*.wav"))[:n]
    if not wavs:
        raise RuntimeError(f"synth_corpus wrote no .wav files under {root}")
    clips = [fit_length(load_audio(w, sample_rate, mono=True), int(seconds * sample_rate)) for w in wavs]
    return torch.stack(clips)


def evaluate(codec: LogMelCodec, audio: torch.Tensor, batch: int) -> dict:
    lat = codec.encode(audio)
    outs = []
    rates = []  # per-batch clips/s; the best batch is the least disturbed by other processes
    for i in range(0, len(lat), batch):
        t0 = time.perf_counter()
        outs.append(codec.decode(lat[i : i + batch]))
        rates.append(len(outs[-1]) / (time.perf_counter() - t0))
    rec = torch.cat(outs)
    return {
        "lsd_db": log_spectral_distance(audio, rec).mean().item(),
        "mel_db": mel_distance(codec, audio, rec).mean().item(),
        "snr_db": snr_db(audio, rec).mean().item(),
        "decode_clips_per_s": max(rates),
    }


def timing(audio: torch.Tensor, device: str, batch: int, reps: int) -> None:
    """Print best-of-``reps`` encode/decode clips/s of the default codec on ``device`` for several GL counts."""
    dev = torch.device(device)
    x = audio[:batch].to(dev)

    def best(fn) -> float:
        fn()  # warm-up (allocations, cuFFT plans)
        out = math.inf
        for _ in range(reps):
            if dev.type == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            fn()
            if dev.type == "cuda":
                torch.cuda.synchronize()
            out = min(out, time.perf_counter() - t0)
        return out

    base = LogMelCodec()
    z = base.encode(x)
    print(f"device={device} threads={torch.get_num_threads()} batch={len(x)} clip={x.shape[-1] / base.sample_rate:g} s")
    print(f"  encode: {len(x) / best(lambda: base.encode(x)):.1f} clips/s")
    for gl in (8, 16, 32, 64):
        c = base.replace(griffin_lim_iters=gl)
        print(f"  decode griffin_lim_iters={gl}: {len(x) / best(lambda: c.decode(z)):.1f} clips/s")
    a, b = base.decode(z), base.decode(z)
    print(f"  decode twice bit-identical: {torch.equal(a, b)}")
    if dev.type != "cpu":
        ref = base.decode(z.cpu())
        print(f"  max |decode({device}) - decode(cpu)|: {(a.cpu() - ref).abs().max().item():.2e}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clips", type=int, default=64)
    ap.add_argument("--seconds", type=float, default=4.0)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--source", choices=["auto", "corpus", "signals"], default="auto")
    ap.add_argument("--quick", action="store_true", help="fewer settings")
    ap.add_argument("--out", type=str, default=None, help="write results as JSON here")
    ap.add_argument("--timing-only", action="store_true", help="only time encode/decode on --device")
    ap.add_argument("--device", type=str, default="cpu")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    ap.add_argument("--reps", type=int, default=5)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.timing_only:
        timing(musical_signals(args.batch, args.seconds), args.device, args.batch, args.reps)
        return

    torch.manual_seed(0)
    base = LogMelCodec()
    source = args.source
    if source == "auto":
        try:
            import dragontune.data.synth  # noqa: F401

            source = "corpus"
        except ImportError:
            source = "signals"
    audio = load_corpus(args.clips, args.seconds, base.sample_rate) if source == "corpus" else musical_signals(
        args.clips, args.seconds, base.sample_rate
    )
    print(f"source={source} clips={len(audio)} seconds={args.seconds} threads={torch.get_num_threads()}")
    codec = fit_scale(base, [audio[i : i + args.batch] for i in range(0, len(audio), args.batch)])
    lat = codec.encode(audio)
    print(f"fitted shift={codec.shift:.4f} scale={codec.scale:.4f}; latent mean={lat.mean():.4f} std={lat.std():.4f}")

    # encode speed: best of several passes over one batch
    x = audio[: args.batch]
    best = math.inf
    for _ in range(10):
        t0 = time.perf_counter()
        codec.encode(x)
        best = min(best, time.perf_counter() - t0)
    enc_rate = len(x) / best
    print(f"encode: {enc_rate:.1f} clips/s ({args.seconds:g} s clips, batch {args.batch})")

    settings = []
    iters = [8, 16, 32, 64] if not args.quick else [16, 32]
    for inv, inv_iters in [("pinv", 0), ("nnls", 8), ("nnls", 32), ("nnls", 128)] if not args.quick else [("pinv", 0), ("nnls", 8)]:
        for gl in iters:
            settings.append(dict(inverse=inv, inverse_iters=inv_iters, griffin_lim_iters=gl))
    settings += [
        dict(inverse="nnls", inverse_iters=8, griffin_lim_iters=32, gl_momentum=0.0),  # plain Griffin-Lim
        dict(inverse="nnls", inverse_iters=8, griffin_lim_iters=32, init_phase="zero"),
        dict(inverse="nnls", inverse_iters=8, griffin_lim_iters=0),
    ]
    rows = []
    for s in settings:
        c = codec.replace(**s)
        r = evaluate(c, audio, args.batch)
        r.update(s)
        rows.append(r)
        print(
            f"{s}: LSD {r['lsd_db']:.2f} dB  mel {r['mel_db']:.2f} dB  SNR {r['snr_db']:.2f} dB  "
            f"decode {r['decode_clips_per_s']:.1f} clips/s",
            flush=True,
        )
    result = {
        "source": source,
        "clips": len(audio),
        "seconds": args.seconds,
        "batch": args.batch,
        "torch_threads": torch.get_num_threads(),
        "machine": f"{platform.machine()} {platform.processor() or ''} {os.cpu_count()} cpus".strip(),
        "encode_clips_per_s": enc_rate,
        "shift": codec.shift,
        "scale": codec.scale,
        "rows": rows,
    }
    if args.out:
        from dragontune.utils import atomic_write_json

        atomic_write_json(args.out, result)


if __name__ == "__main__":
    main()
