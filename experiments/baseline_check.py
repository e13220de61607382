"""Does the baseline follow its captions? Measurable checks on held-out (test-split) captions.

    python experiments/baseline_check.py [--checkpoint PATH] [--n 120] [--steps 25] [--cfg 3]

For each test caption the model generates one clip (seed = index); we measure on the decoded audio
(1) the estimated tempo vs the tempo the caption's clip was synthesised at (Spearman correlation and the
share within +-8 %, octave errors counted apart), (2) the spectral centroid per instrument, and compare
with the same measurements on the real corpus clips of those captions decoded through the codec (the
ceiling the codec allows). Prints a markdown section.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from scipy.stats import spearmanr

from dragontune.audio import fit_length, load_audio
from dragontune.data.analysis import estimate_tempo, onset_rate, spectral_centroid
from dragontune.data.dataset import filter_rows, load_metadata
from dragontune.generate import SamplerConfig, generate_latents
from dragontune.models.checkpoint import load_model
from dragontune.models.dit import beat_period_frames


def tempo_stats(est, ref):
    est, ref = np.asarray(est), np.asarray(ref)
    ok = np.isfinite(est)
    r = est[ok] / ref[ok]
    within = np.mean(np.abs(r - 1) <= 0.08)
    octave = np.mean((np.abs(r - 2) <= 0.16) | (np.abs(r - 0.5) <= 0.04))
    rho = spearmanr(est[ok], ref[ok]).statistic
    return rho, within, octave, ok.mean()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--checkpoint", default=None)
    ap.add_argument("--corpus", default="data/corpus")
    ap.add_argument("--n", type=int, default=120)
    ap.add_argument("--steps", type=int, default=25)
    ap.add_argument("--cfg", type=float, default=3.0)
    ap.add_argument("--bpm-sweep", type=float, nargs="*", default=None,
                    help="also generate the first 40 captions at each of these explicit tempi (sample --bpm)")
    args = ap.parse_args()
    rows = filter_rows(load_metadata(args.corpus), {"split": "test", "quality": "clean"})[: args.n]
    model = load_model(args.checkpoint)
    sr = model.sample_rate
    t0 = time.time()
    lat = generate_latents(model, [r["caption"] for r in rows], list(range(len(rows))),
                           SamplerConfig(steps=args.steps, cfg=args.cfg, batch_size=32))
    gen = model.decode(lat)
    t_gen = time.time() - t0
    real = torch.stack([fit_length(load_audio(f"{args.corpus}/{r['file']}", sr), gen.shape[-1]) for r in rows])
    real_rt = model.decode(model.codec.encode(real))
    out = {}
    for name, audio in (("generated", gen), ("corpus clip through codec", real_rt)):
        tempo = [estimate_tempo(a[0].numpy(), sr) for a in audio]
        cent = [spectral_centroid(a[0].numpy(), sr) for a in audio]
        rate = [onset_rate(a[0].numpy(), sr) for a in audio]
        out[name] = (tempo, cent, rate)
    ref_tempo = [r["tempo"] for r in rows]
    insts = sorted({r["instrument"] for r in rows})
    print(f"### Baseline prompt adherence ({len(rows)} clean test-split captions, {args.steps}-step DPM++ 2M, CFG {args.cfg})\n")
    print(f"Command: `python experiments/baseline_check.py --n {args.n} --steps {args.steps} --cfg {args.cfg}` "
          f"({t_gen:.0f} s to generate and decode on this CPU).\n")
    words = ("slow", "moderate", "fast")
    print("| audio | tempo Spearman vs caption | within ±8 % | octave errors | onset-rate Spearman vs caption | "
          + " | ".join(f"onsets/s {w}" for w in words) + " | "
          + " | ".join(f"centroid {i} (Hz)" for i in insts) + " |")
    print("|---|---|---|---|---|" + "---|" * (len(words) + len(insts)))
    for name, (tempo, cent, rate) in out.items():
        rho, within, octave, _ = tempo_stats(tempo, ref_tempo)
        rate_rho = spearmanr(rate, ref_tempo).statistic
        per_w = [np.mean([q for q, r in zip(rate, rows) if r["tempo_word"] == w]) for w in words]
        per = [np.mean([c for c, r in zip(cent, rows) if r["instrument"] == i]) for i in insts]
        print(f"| {name} | {rho:.3f} | {100 * within:.0f} % | {100 * octave:.0f} % | {rate_rho:.3f} | "
              + " | ".join(f"{q:.1f}" for q in per_w) + " | "
              + " | ".join(f"{p:.0f}" for p in per) + " |")
    cg, cr = np.array(out["generated"][1]), np.array(out["corpus clip through codec"][1])
    tg = np.array(out["generated"][0])
    lab = np.array([r["instrument"] for r in rows])
    for inst in insts:  # tempo adherence per instrument
        ok = (lab == inst) & np.isfinite(tg)
        if ok.sum() >= 5:
            print(f"\nTempo Spearman for {inst} captions ({ok.sum()} clips): "
                  f"{spearmanr(tg[ok], np.array(ref_tempo)[ok]).statistic:.3f}", end="")
    print()
    # instrument identification from the centroid: nearest class mean of the real clips
    means = {i: np.log(cr[lab == i]).mean() for i in insts}
    pred = np.array([min(insts, key=lambda i: abs(np.log(c) - means[i])) for c in cg])
    print(f"\nInstrument from the generated clip's centroid alone (nearest real-clip class mean in log-Hz): "
          f"{100 * np.mean(pred == lab):.0f} % correct over {len(insts)} instruments (chance {100 / len(insts):.0f} %).")
    cors = spearmanr(cg, cr).statistic
    print(f"Spearman correlation of generated vs real centroid per caption: {cors:.3f}.")
    if model.net.tempo is not None:  # stage 1 of the tempo conditioning: the period read from the text
        fps = sr / model.codec.hop_length
        periods = model.net.predict_tempo_frames(**model.cond([r["caption"] for r in rows])).numpy()
        bpm = beat_period_frames(periods, fps)
        r = bpm / np.array(ref_tempo)
        print(f"Tempo read from the caption by the model's tempo head: Spearman {spearmanr(bpm, ref_tempo).statistic:.3f} "
              f"with the clip's tempo, {100 * np.mean(np.abs(r - 1) <= 0.08):.0f} % within ±8 %.")
        est = np.array(out["generated"][0])
        ok = np.isfinite(est)
        print(f"Generated clip's estimated tempo vs the tempo the head read: Spearman "
              f"{spearmanr(est[ok], bpm[ok]).statistic:.3f}, {100 * np.mean(np.abs(est[ok] / bpm[ok] - 1) <= 0.08):.0f} % "
              "within ±8 %.")
    if args.bpm_sweep:
        sub = rows[:40]
        print(f"\nExplicit tempo (`generate_latents(..., bpm=B)`, `dragontune sample --bpm B`) on {len(sub)} captions:\n")
        print("| requested BPM | median estimated BPM | within ±8 % | octave errors |")
        print("|---|---|---|---|")
        for b in args.bpm_sweep:
            lat = generate_latents(model, [r["caption"] for r in sub], list(range(len(sub))),
                                   SamplerConfig(steps=args.steps, cfg=args.cfg, batch_size=32), bpm=b)
            est = np.array([estimate_tempo(a[0].numpy(), sr) for a in model.decode(lat)])
            r = est[np.isfinite(est)] / b
            within = np.mean(np.abs(r - 1) <= 0.08)
            octave = np.mean((np.abs(r - 2) <= 0.16) | (np.abs(r - 0.5) <= 0.04))
            print(f"| {b:g} | {np.nanmedian(est):.1f} | {100 * within:.0f} % | {100 * octave:.0f} % |")


if __name__ == "__main__":
    main()
