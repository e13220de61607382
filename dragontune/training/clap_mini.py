"""Training of ``clap-mini`` (symmetric InfoNCE with a learnable temperature) and its retrieval metrics.

The model, its checkpoint format and the encoder that uses it at scoring time are in
:mod:`dragontune.encoders.clap_mini`.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from pathlib import Path
from typing import Any, Sequence

import torch
import torch.nn.functional as F

from dragontune.encoders.clap_mini import (ClapMiniConfig, ClapMiniModel, TRAIN_COMMAND, clip_windows,
                                           default_clap_mini_path, mean_pool)
from dragontune.errors import ConfigError, DataError
from dragontune.utils import dumps_strict, log, save_safetensors_atomic, sha256_file

__all__ = ["train_clap", "retrieval_metrics"]


def retrieval_metrics(audio_emb: torch.Tensor, text_emb: torch.Tensor, ks: Sequence[int] = (1, 5, 10)) -> dict:
    """Recall@k both ways for paired unit vectors ``[N, d]`` (item i matches item i), plus chance levels.

    Ties count against the query (a target ranks below every candidate with an equal or higher score).
    """
    sim = text_emb.to(torch.float64) @ audio_emb.to(torch.float64).T  # [text, audio]
    n = sim.shape[0]
    out: dict[str, float] = {"n": float(n)}
    for name, s in (("text_to_audio", sim), ("audio_to_text", sim.T)):
        diag = s.diagonal()[:, None]
        rank = (s >= diag).sum(dim=1) - 1  # 0 = best; other candidates scoring >= the target rank above it
        for k in ks:
            out[f"{name}_r@{k}"] = float((rank < k).double().mean())
        out[f"{name}_median_rank"] = float(rank.double().median() + 1)
    for k in ks:
        out[f"chance_r@{k}"] = min(1.0, k / n)
    return out


def _load_corpus_features(corpus_dir: Path, cfg: ClapMiniConfig, splits: Sequence[str], duration: float) -> dict[str, Any]:
    """Whole-clip log-mels ``[N, n_mels, frames]`` (clips cropped/padded to ``duration``) and captions per split."""
    from dragontune.data.dataset import AudioCaptionDataset

    codec = cfg.codec()
    out: dict[str, Any] = {}
    for split in splits:
        ds = AudioCaptionDataset(corpus_dir, sample_rate=cfg.sample_rate, duration=duration, split=split)
        if len(ds) == 0:
            raise DataError(f"corpus {str(corpus_dir)!r} has no clips in split {split!r}")
        mels = [codec.log_mel(ds[i]["audio"][None])[0] for i in range(len(ds))]
        out[split] = (torch.stack(mels), ds.captions)
    return out


def train_clap(
    corpus_dir: str | os.PathLike = "data/corpus",
    out_path: str | os.PathLike | None = None,
    steps: int = 600,
    batch: int = 128,
    seed: int = 0,
    lr: float = 1e-3,
    weight_decay: float = 0.01,
    warmup: int = 100,
    gain_db: float = 6.0,
    time_mask: int = 16,
    eval_split: str = "test",
    duration: float = 4.0,
    text_encoder: str = "minilm",
    threads: int | None = None,
    progress: bool = True,
) -> dict:
    """Train clap-mini on the ``train`` split of a captioned corpus; write the checkpoint; return metrics.

    ``corpus_dir``: a corpus folder with a ``split`` column (e.g. from ``dragontune synth``); clips are
    cropped/padded to ``duration`` seconds and each step takes one random 2 s window of each clip.
    ``out_path``: the ``.safetensors`` to write (default: the packaged asset path).
    ``steps``/``batch``/``lr``/``weight_decay``/``warmup``: AdamW with linear warm-up and cosine decay.
    ``gain_db``: random gain augmentation (uniform in +-gain_db, applied to the log-mel). ``time_mask``:
    width in frames of one random zeroed time band per clip (0 = off). ``eval_split``: split on which
    recall@k is reported (text->audio and audio->text, with chance level). ``threads``: torch intra-op
    threads for the run (default: leave as is). Deterministic for a given seed and thread count.
    """
    from dragontune.text import build_text_encoder

    t_start = time.perf_counter()
    corpus = Path(corpus_dir)
    out = Path(out_path) if out_path is not None else default_clap_mini_path()
    if int(steps) < 1 or int(batch) < 2:
        raise ConfigError(f"train_clap needs steps >= 1 and batch >= 2, got steps={steps}, batch={batch}")
    if threads is not None:
        torch.set_num_threads(int(threads))
    cfg = ClapMiniConfig()
    feats = _load_corpus_features(corpus, cfg, ["train", eval_split], duration)
    mel_tr, cap_tr = feats["train"]
    mel_ev, cap_ev = feats[eval_split]
    if mel_tr.shape[-1] < cfg.window_frames:
        raise ConfigError(f"duration={duration} s gives {mel_tr.shape[-1]} frames, fewer than the {cfg.window_frames}-frame window")
    if len(cap_tr) < batch:
        raise DataError(f"train split of {str(corpus)!r} has {len(cap_tr)} clips, fewer than batch={batch}; lower batch")
    log.info("clap-mini: %d train clips, %d %s clips (features in %.1f s)", len(cap_tr), len(cap_ev), eval_split, time.perf_counter() - t_start)

    text = build_text_encoder(text_encoder)
    with torch.no_grad():
        txt_tr = torch.cat([mean_pool(*text.encode(cap_tr[i : i + 256])) for i in range(0, len(cap_tr), 256)])
        txt_ev = torch.cat([mean_pool(*text.encode(cap_ev[i : i + 256])) for i in range(0, len(cap_ev), 256)])
    cfg = dataclasses.replace(cfg, text_dim=int(txt_tr.shape[1]))

    torch.manual_seed(int(seed))
    gen = torch.Generator().manual_seed(int(seed))
    model = ClapMiniModel(cfg)
    model.mel_mean.copy_(mel_tr.mean(dim=(0, 2)))
    model.mel_std.copy_(mel_tr.std(dim=(0, 2)).clamp(min=1e-3))
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2 and n != "audio.pos"]
    no_decay = [p for n, p in model.named_parameters() if not (p.dim() >= 2 and n != "audio.pos")]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}], lr=lr)

    def lr_at(step: int) -> float:
        if step < warmup:
            return lr * (step + 1) / warmup
        return lr * 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, steps - warmup)))

    n = len(cap_tr)
    order = torch.randperm(n, generator=gen)
    pos = 0
    it: Any = range(int(steps))
    if progress:
        from tqdm import tqdm

        it = tqdm(it, desc="train clap-mini", unit="step")
    losses = []
    model.train()
    ln10 = math.log(10.0)
    for step in it:
        if pos + batch > n:
            order, pos = torch.randperm(n, generator=gen), 0
        idx = order[pos : pos + batch]
        pos += batch
        off = torch.randint(0, mel_tr.shape[-1] - cfg.window_frames + 1, (batch,), generator=gen)
        mel = torch.stack([mel_tr[i, :, o : o + cfg.window_frames] for i, o in zip(idx.tolist(), off.tolist())])
        if gain_db > 0:  # gain g on the waveform scales the magnitude: log-mel shifts by ln(g) (above the floor)
            g = (torch.rand(batch, 1, 1, generator=gen) * 2 - 1) * gain_db / 20 * ln10
            mel = mel + g
        if time_mask > 0:
            start = torch.randint(0, cfg.window_frames - time_mask, (batch,), generator=gen)
            t = torch.arange(cfg.window_frames)[None]
            m = (t >= start[:, None]) & (t < start[:, None] + time_mask)
            mel = torch.where(m[:, None, :], model.mel_mean[None, :, None], mel)
        for grp in opt.param_groups:
            grp["lr"] = lr_at(step)
        a = model.audio_embed(mel)
        tx = model.text_embed(txt_tr[idx])
        scale = model.logit_scale.clamp(max=math.log(100.0)).exp()
        logits = scale * tx @ a.T
        temp = 1 / float(scale.detach())
        target = torch.arange(batch)
        loss = 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
        opt.step()
        losses.append(float(loss.detach()))
        if progress and step % 20 == 0:
            it.set_postfix(loss=f"{sum(losses[-20:]) / len(losses[-20:]):.3f}", temp=f"{temp:.4f}")
        if step % 100 == 0 or step == steps - 1:
            log.info("clap-mini step %d loss %.4f temperature %.4f", step, losses[-1], temp)
    model.eval()
    with torch.no_grad():  # clip vector = normalised mean of the window embeddings, as ClapMiniEncoder gives
        a_ev = torch.stack([F.normalize(model.audio_embed(clip_windows(m, cfg)).mean(0), dim=0) for m in mel_ev])
        t_ev = model.text_embed(txt_ev)
    metrics = retrieval_metrics(a_ev, t_ev)
    metrics["eval_split"] = eval_split
    metrics["final_loss"] = sum(losses[-20:]) / len(losses[-20:])
    metrics["temperature"] = float(1 / model.logit_scale.detach().clamp(max=math.log(100.0)).exp())
    metrics["train_clips"] = n
    metrics["train_seconds"] = time.perf_counter() - t_start
    from dragontune.data.dataset import find_metadata

    options = dict(
        corpus_dir=str(corpus), corpus_metadata_sha256=sha256_file(find_metadata(corpus)), steps=int(steps), batch=int(batch), seed=int(seed), lr=lr, weight_decay=weight_decay,
        warmup=warmup, gain_db=gain_db, time_mask=time_mask, eval_split=eval_split, duration=duration, text_encoder=text_encoder,
        threads=torch.get_num_threads(),
    )
    meta = {
        "format": "dragontune-clap-mini-v1",
        "config": json.dumps(dataclasses.asdict(cfg), sort_keys=True),
        "training": json.dumps(options, sort_keys=True),
        "command": TRAIN_COMMAND + f" --steps {steps} --batch {batch} --seed {seed}",
        "metrics": dumps_strict(metrics, sort_keys=True),
        "text_encoder": text.id,
    }
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    save_safetensors_atomic(state, out, meta)
    log.info("clap-mini: wrote %s; %s", out, json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in metrics.items()}))
    return metrics
