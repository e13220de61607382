"""Embedding throughput of dragontune's encoders: clips per second for 4 s clips at 16 kHz, batch 16.

Encoders: ``codec`` (default LogMelCodec), ``musicnn`` (MTT, penultimate), ``aisfx``, and ``clap-mini`` if
its weights exist. (``clap-hf`` needs a real checkpoint, which cannot be had offline; a tiny random one
would time nothing useful.) Each encoder embeds one warm-up batch, then ``--repeats`` timed batches; the
median batch time gives clips/s. Absolute figures: they depend on the machine and its load, both of which
are written with the results to ``benchmarks/results/encoders.md`` (``--out``).

    python benchmarks/bench_encoders.py [--device cpu|cuda] [--threads N] [--repeats 3] [--batch 16]

musicnn has no device option and always runs on the CPU; the others run their network on ``--device``
(front-ends that resample run on the CPU).
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import sys
import time
from pathlib import Path


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu", help="cpu or cuda")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch's default)")
    ap.add_argument("--repeats", type=int, default=3, help="timed batches per encoder (after one warm-up batch)")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--seconds", type=float, default=4.0, help="clip length")
    ap.add_argument("--only", nargs="*", default=None, help="subset of: codec musicnn aisfx clap-mini")
    ap.add_argument("--corpus", default=None,
                    help="also measure leave-one-out 1-NN instrument accuracy on a synth corpus directory "
                         "(metadata.jsonl + audio/), as a sanity check that the embeddings are meaningful")
    ap.add_argument("--per-class", type=int, default=8, help="clips per instrument for --corpus")
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent / "results" / "encoders.md"))
    return ap


ARGS = _parser().parse_args()
if ARGS.threads:
    for _v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[_v] = str(ARGS.threads)

import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from dragontune.errors import DragontuneError  # noqa: E402
from dragontune.utils import atomic_write_text  # noqa: E402

SR = 16000


def cpu_model() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_line(device: torch.device) -> str:
    dev = f"{torch.cuda.get_device_name(device)}" if device.type == "cuda" else "CPU"
    return (
        f"{dev}; CPU {cpu_model()}, {os.cpu_count()} logical cores, torch {torch.__version__} "
        f"with {torch.get_num_threads()} intra-op threads, Python {platform.python_version()}"
    )


def make_clips(n: int, seconds: float) -> torch.Tensor:
    """Deterministic test music-ish clips ``[n, 1, T]``: a few harmonic tones plus a little noise."""
    g = torch.Generator().manual_seed(0)
    t = torch.arange(int(seconds * SR)) / SR
    rows = []
    for i in range(n):
        f = 110.0 * 2 ** (i % 24 / 12)
        x = sum(torch.sin(2 * torch.pi * f * k * t) / k for k in range(1, 5))
        rows.append(0.2 * x * (0.6 + 0.4 * torch.sin(2 * torch.pi * 2 * t)) + 0.01 * torch.randn(t.numel(), generator=g))
    return torch.stack(rows)[:, None].float()


def build(name: str, device: torch.device):
    if name == "codec":
        from dragontune.codecs import LogMelCodec
        from dragontune.encoders.codec import CodecEncoder

        return CodecEncoder(LogMelCodec()), "cpu"
    if name == "musicnn":
        from dragontune.encoders.musicnn import MusicnnEncoder

        return MusicnnEncoder("MTT_musicnn", "penultimate"), "cpu"
    if name == "aisfx":
        from dragontune.encoders.aisfx import AisfxEncoder

        return AisfxEncoder(device=device), str(device)
    if name == "clap-mini":
        from dragontune.encoders.clap_mini import ClapMiniEncoder, default_clap_mini_path

        if not default_clap_mini_path().is_file():
            raise FileNotFoundError(f"{default_clap_mini_path()} missing")
        return ClapMiniEncoder(device=device), str(device)
    raise ValueError(name)


def corpus_sample(corpus: str, per_class: int) -> tuple[torch.Tensor, list[str]]:
    """The first ``per_class`` clips of every instrument in a synth corpus (metadata order) -> audio, labels."""
    import json

    from dragontune.audio import load_audio

    root = Path(corpus)
    rows = [json.loads(line) for line in (root / "metadata.jsonl").read_text().splitlines() if line.strip()]
    picked: dict[str, list[dict]] = {}
    for r in rows:
        lst = picked.setdefault(r["instrument"], [])
        if len(lst) < per_class:
            lst.append(r)
    chosen = [r for inst in sorted(picked) for r in picked[inst]]
    audio = torch.stack([load_audio(root / r["file"], SR) for r in chosen])
    return audio, [r["instrument"] for r in chosen]


def nn_accuracy(emb: torch.Tensor, labels: list[str]) -> float:
    """Leave-one-out 1-nearest-neighbour accuracy under cosine similarity (float64)."""
    e = torch.nn.functional.normalize(emb.to(torch.float64), dim=-1)
    sim = e @ e.T
    sim.fill_diagonal_(-float("inf"))
    nearest = sim.argmax(dim=1).tolist()
    return sum(labels[i] == labels[j] for i, j in enumerate(nearest)) / len(labels)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main() -> None:
    device = torch.device(ARGS.device)
    if ARGS.threads:
        torch.set_num_threads(ARGS.threads)
    clips = make_clips(ARGS.batch, ARGS.seconds)
    names = ARGS.only or ["codec", "musicnn", "aisfx", "clap-mini"]
    load_before = os.getloadavg()
    rows, skipped = [], []
    for name in names:
        try:
            enc, ran_on = build(name, device)
            t0 = time.perf_counter()
            frames = enc.embed_audio(clips, SR)  # warm-up (loads weights)
            first = time.perf_counter() - t0
        except (ImportError, FileNotFoundError, DragontuneError) as e:
            skipped.append(f"{name}: {e}")
            print(f"skip {name}: {e}", flush=True)
            continue
        times = []
        for _ in range(ARGS.repeats):
            sync(device)
            t0 = time.perf_counter()
            enc.embed_audio(clips, SR)
            sync(device)
            times.append(time.perf_counter() - t0)
        med = statistics.median(times)
        row = {
            "encoder": name if name != "musicnn" else "musicnn (MTT, penultimate)",
            "device": ran_on,
            "frames": f"{frames[0].shape[0]} x {frames[0].shape[1]}",
            "clips_s": ARGS.batch / med,
            "ms_clip": 1000 * med / ARGS.batch,
            "first": first,
            "spread": (min(times), max(times)),
        }
        if ARGS.corpus:
            audio, labels = corpus_sample(ARGS.corpus, ARGS.per_class)
            clip_emb = torch.cat([enc.embed_clip(audio[i : i + ARGS.batch], SR) for i in range(0, len(labels), ARGS.batch)])
            row["nn_acc"] = nn_accuracy(clip_emb, labels)
            row["n_classes"] = len(set(labels))
            row["n_clips"] = len(labels)
            print(f"{name}: 1-NN instrument accuracy {row['nn_acc']:.3f} on {len(labels)} clips", flush=True)
        rows.append(row)
        print(f"{row['encoder']}: {row['clips_s']:.1f} clips/s ({row['ms_clip']:.1f} ms/clip; batches "
              f"{', '.join(f'{x:.2f}' for x in times)} s; first batch {first:.2f} s)", flush=True)
    load_after = os.getloadavg()

    cmd = "python benchmarks/bench_encoders.py " + " ".join(sys.argv[1:])
    lines = [
        "# Encoder throughput",
        "",
        f"Command: `{cmd.strip()}` ({datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC).",
        f"Machine: {machine_line(device)}.",
        f"Load average (1/5/15 min) before: {load_before[0]:.2f}/{load_before[1]:.2f}/{load_before[2]:.2f}, "
        f"after: {load_after[0]:.2f}/{load_after[1]:.2f}/{load_after[2]:.2f} on {os.cpu_count()} cores "
        "(a load above the core count means other processes shared the CPU and the figures are lower bounds).",
        "",
        f"{ARGS.batch} clips of {ARGS.seconds:g} s at {SR} Hz per batch; median of {ARGS.repeats} timed batches "
        "after one warm-up batch (which also loads the weights).",
        "",
        "| encoder | device | frames per clip | clips/s | ms/clip | batch time min-max (s) | first batch (s) |",
        "|---|---|---|---:|---:|---|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['encoder']} | {r['device']} | {r['frames']} | {r['clips_s']:.1f} | {r['ms_clip']:.1f} | "
            f"{r['spread'][0]:.2f}-{r['spread'][1]:.2f} | {r['first']:.2f} |"
        )
    if skipped:
        lines += ["", "Skipped: " + "; ".join(skipped) + "."]
    acc = [r for r in rows if "nn_acc" in r]
    if acc:
        r0 = acc[0]
        lines += [
            "",
            f"Sanity check on `{ARGS.corpus}`: leave-one-out 1-nearest-neighbour instrument accuracy (cosine of "
            f"clip-mean embeddings) over the first {ARGS.per_class} clips of each of {r0['n_classes']} instruments "
            f"({r0['n_clips']} clips; chance ~ {1 / r0['n_classes']:.2f}).",
            "",
            "| encoder | 1-NN instrument accuracy |",
            "|---|---:|",
        ] + [f"| {r['encoder']} | {r['nn_acc']:.3f} |" for r in acc]
    text = "\n".join(lines) + "\n"
    atomic_write_text(ARGS.out, text)
    print(f"wrote {ARGS.out}")


if __name__ == "__main__":
    main()
