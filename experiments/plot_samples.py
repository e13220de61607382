"""Log-mel spectrograms of real test clips next to generations from one or more checkpoints.

    python experiments/plot_samples.py --out docs/baseline/samples.png CKPT [CKPT ...] [--labels A B ...]

Picks the first clean test-split caption for each (instrument, tempo word) in ``--instruments`` x {slow, fast};
every model generates it with seed 0 (25-step DPM++ 2M, CFG 3).
"""

from __future__ import annotations

import argparse

import matplotlib
import torch

from dragontune.audio import fit_length, load_audio
from dragontune.data.dataset import filter_rows, load_metadata
from dragontune.generate import SamplerConfig, generate_latents
from dragontune.models.checkpoint import load_model

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("checkpoints", nargs="+")
    ap.add_argument("--labels", nargs="*")
    ap.add_argument("--corpus", default="data/corpus")
    ap.add_argument("--instruments", nargs="+", default=["drums", "piano", "pluck"])
    ap.add_argument("--cfg", type=float, default=3.0)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    labels = args.labels or args.checkpoints
    rows = filter_rows(load_metadata(args.corpus), {"split": "test", "quality": "clean"})
    pick = [next(r for r in rows if r["instrument"] == i and r["tempo_word"] == w)
            for i in args.instruments for w in ("slow", "fast")]
    cols = []
    for ck in args.checkpoints:
        model = load_model(ck)
        cols.append(generate_latents(model, [r["caption"] for r in pick], [0] * len(pick),
                                     SamplerConfig(steps=25, cfg=args.cfg)))
    n = model.codec.num_samples(model.latent_shape[1])
    real = torch.stack([fit_length(load_audio(f"{args.corpus}/{r['file']}", model.sample_rate), n) for r in pick])
    cols.insert(0, model.codec.encode(real))
    names = ["corpus clip"] + list(labels)
    fig, ax = plt.subplots(len(pick), len(cols), figsize=(4 * len(cols), 1.9 * len(pick)), squeeze=False)
    lo, hi = float(cols[0].min()), float(cols[0].max())
    for i, r in enumerate(pick):
        for j, lat in enumerate(cols):
            ax[i, j].imshow(lat[i].numpy(), aspect="auto", origin="lower", vmin=lo, vmax=hi)
            ax[i, j].set_xticks([])
            ax[i, j].set_yticks([])
            if i == 0:
                ax[i, j].set_title(names[j], fontsize=10)
        ax[i, 0].set_ylabel(f"{r['instrument']}\n{r['tempo']:.0f} BPM", fontsize=9)
        ax[i, -1].text(1.02, 0.5, r["caption"][:60], transform=ax[i, -1].transAxes, fontsize=7, va="center")
    plt.tight_layout()
    plt.savefig(args.out, dpi=60, bbox_inches="tight")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
