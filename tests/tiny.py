"""Tiny real components for end-to-end tests: a small corpus, codec and DiT saved as a model checkpoint."""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from dragontune.codecs import LogMelCodec, fit_scale
from dragontune.models.checkpoint import ModelSpec, save_model
from dragontune.models.dit import DiT, DiTConfig

SR = 16000
DURATION = 1.0
TINY_CODEC = dict(sample_rate=SR, n_fft=256, hop_length=128, n_mels=16, griffin_lim_iters=2)
TINY_DIT = DiTConfig(latent_channels=16, patch_size=5, width=32, depth=2, heads=2, text_dim=384, noise_freqs=16)


def tiny_corpus(root: Path, n: int = 12) -> Path:
    from dragontune.data.synth import synth_corpus

    if not (root / "metadata.jsonl").is_file():
        synth_corpus(root, n=n, seed=0)
    return root


def tiny_baseline(path: Path, corpus: Path, seed: int = 0, cfg: DiTConfig = TINY_DIT) -> Path:
    """A randomly initialised (slightly perturbed from zero-init) tiny model with a codec fitted on ``corpus``."""
    from dragontune.audio import fit_length, load_audio

    wavs = sorted((corpus / "audio").glob("*.wav"))[:8]
    audio = torch.stack([fit_length(load_audio(w, SR), int(SR * DURATION)) for w in wavs])
    codec = fit_scale(LogMelCodec(**TINY_CODEC), [audio])
    torch.manual_seed(seed)
    net = DiT(cfg)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.02 * torch.randn_like(p))
    F = codec.latent_frames(int(SR * DURATION))
    spec = ModelSpec(model=cfg, codec=codec.config(), text_encoder="minilm", latent_frames=F)
    save_model(path, net, spec)
    return path


def write_prompts(path: Path, prompts: list[str]) -> Path:
    path.write_text("\n".join(prompts) + "\n")
    return path


class Notes(logging.Handler):
    """Collects the messages of the log records it receives (attach to the "dragontune" logger)."""

    def __init__(self):
        super().__init__()
        self.lines = []

    def emit(self, record):
        self.lines.append(record.getMessage())
