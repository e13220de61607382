"""Do the learned rewards rate degenerate audio below clean corpus clips?

    python experiments/degenerate_audio.py [--corpus data/corpus] [--n 32] [--rewards aesthetics clap_score tag_score]
        [--aesthetics PATH] [--unseen]

Takes ``n`` clean corpus clips spread over the corpus (every k-th clean clip), or with ``--unseen`` the first ``n``
clips of another corpus seed (``clip_row(i, 2024, ...)``, as in ``tests/test_degenerate_audio.py``), with their own
captions as prompts,
and scores them and five degenerate versions of each: digital silence, the clip 60 dB down, the clip +36 dB and
hard-clipped at full scale, Gaussian white noise at RMS 0.3 (clipped to +-1) and uniform full-scale noise. Prints,
per reward and kind, the mean and max score and how many versions score below their own clean clip.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import soundfile as sf
import torch

from dragontune.codecs import LogMelCodec
from dragontune.rewards.base import ScoringBatch
from dragontune.rewards.registry import RewardContext, build_reward

KINDS = ("silence", "quiet-60dB", "clip+36dB", "gauss-rms0.3", "uniform-full")


def degrade(clean: torch.Tensor, kind: str) -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    if kind == "silence":
        return torch.zeros_like(clean)
    if kind == "quiet-60dB":
        return clean * 10 ** (-60 / 20)
    if kind == "clip+36dB":
        return (clean * 10 ** (36 / 20)).clamp(-1, 1)
    if kind == "gauss-rms0.3":
        return (0.3 * torch.randn(clean.shape, generator=g)).clamp(-1, 1)
    return torch.rand(clean.shape, generator=g) * 2 - 1


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--corpus", default="data/corpus")
    ap.add_argument("--n", type=int, default=32)
    ap.add_argument("--rewards", nargs="+", default=["aesthetics", "clap_score", "tag_score"])
    ap.add_argument("--aesthetics", default=None, help="aesthetics predictor (default: the packaged one)")
    ap.add_argument("--unseen", action="store_true", help="clips rendered from another corpus seed (2024)")
    args = ap.parse_args()
    if args.unseen:
        import numpy as np

        from dragontune.data.synth import clip_row, make_config, render_clip

        sr = 16000
        cfg = make_config({"degraded_fraction": 0.0})
        picked = [clip_row(i, 2024, cfg) for i in range(args.n)]
        clean = torch.from_numpy(np.stack([render_clip(r, sr) for r in picked])).float()[:, None]
        print(f"{len(picked)} unseen clean clips ({', '.join(r['instrument'] for r in picked)})")
    else:
        corpus = Path(args.corpus)
        rows = [json.loads(x) for x in (corpus / "metadata.jsonl").read_text().splitlines() if x.strip()]
        clean_rows = [r for r in rows if r["quality"] == "clean"]
        step = max(1, len(clean_rows) // args.n)
        picked = clean_rows[::step][: args.n]
        clean = torch.stack([torch.from_numpy(sf.read(corpus / r["file"], dtype="float32")[0])[None] for r in picked])
        sr = int(picked[0]["sample_rate"])
        print(f"{len(picked)} clean clips (every {step}th of {len(clean_rows)}), {clean.shape[-1] / sr:.1f} s at {sr} Hz")
    prompts = [r["caption"] for r in picked]
    print("| reward | clean mean (min) | " + " | ".join(KINDS) + " |")
    print("|---|---|" + "---|" * len(KINDS))
    ctx = RewardContext(codec=LogMelCodec())
    for name in args.rewards:
        spec = {"name": name}
        if name == "aesthetics" and args.aesthetics:
            spec["path"] = args.aesthetics
        reward = build_reward(spec, ctx)

        def score(a: torch.Tensor) -> torch.Tensor:
            with torch.no_grad():
                return reward(ScoringBatch(audio=a, sample_rate=sr, prompts=prompts)).scores

        c = score(clean)
        cells = []
        for kind in KINDS:
            d = score(degrade(clean, kind))
            cells.append(f"{float(d.min()):.3f}-{float(d.max()):.3f}, mean {float(d.mean()):.3f}; below own clean "
                         f"{int((d < c).sum())}/{len(c)}, by >= {float((c - d).min()):.3f}")
        print(f"| {name} | {float(c.min()):.3f}-{float(c.max()):.3f}, mean {float(c.mean()):.3f} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
