"""Pre-training of the text-to-audio DiT on a captioned corpus (EDM loss).

One linear loop, every knob a documented config field. Exact resume on CPU: model, optimizer, EMA,
data order (epoch permutations derived from the seed) and the training RNG state are checkpointed, so a
resumed run ends with exactly the weights of an uninterrupted one.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import time
from pathlib import Path

import torch

from dragontune.config import to_dict
from dragontune.data.corpus import DataConfig, ensure_corpus
from dragontune.optim import OptimConfig, flatten_optimizer, unflatten_optimizer
from dragontune.errors import ConfigError
from dragontune.models.checkpoint import ModelSpec, load_state_strict, save_model
from dragontune.models.dit import DiT, DiTConfig, beat_period_frames
from dragontune.models.edm import EDMDenoiser, P_MEAN, P_STD, count_params, denoising_loss, sample_sigma
from dragontune.utils import atomic_write_json, log, resolve_device


@dataclasses.dataclass
class CodecConfig:
    sample_rate: int = 16000
    n_fft: int = 1024
    hop_length: int = 256
    n_mels: int = 64
    griffin_lim_iters: int = 32


@dataclasses.dataclass
class PretrainConfig:
    out_dir: str = "runs/pretrain"
    seed: int = 0
    device: str = "auto"              # auto | cpu | cuda | cuda:N
    precision: str = "auto"           # auto (bf16 autocast on CUDA, fp32 on CPU) | fp32 | bf16
    threads: int = 0                  # torch CPU threads (0 = leave default)
    steps: int = 2000
    batch_size: int = 32
    cond_dropout: float = 0.1         # share of training samples with the prompt replaced by the null condition
    tempo_loss_weight: float = 0.1    # weight of the tempo head's cross-entropy (model.tempo_bins > 0)
    p_mean: float = P_MEAN
    p_std: float = P_STD
    ema_halflife_steps: float = 200.0
    text_encoder: str = "minilm"
    text_cache: str = ""              # optional precomputed text-encoder outputs (dragontune text-cache); replaces the encoder
    log_every: int = 50
    val_every: int = 500
    val_samples: int = 64
    sample_every: int = 0             # 0 = only at the end
    sample_prompts: list[str] = dataclasses.field(default_factory=lambda: [
        "a slow calm piano melody in C major",
        "fast energetic drum kit groove at 160 BPM",
    ])
    sample_steps: int = 25
    sample_cfg: float = 3.0
    ckpt_every: int = 500
    keep_checkpoints: int = 2
    model: DiTConfig = dataclasses.field(default_factory=DiTConfig)
    codec: CodecConfig = dataclasses.field(default_factory=CodecConfig)
    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    optim: OptimConfig = dataclasses.field(default_factory=OptimConfig)


# ----------------------------------------------------------------------------------------------------------
# data preparation


def load_split(data: DataConfig, split: str, sample_rate: int):
    """``(audio[N, 1, T], captions, rows)`` of one split; ``rows`` are the metadata rows."""
    from dragontune.data.dataset import AudioCaptionDataset

    ds = AudioCaptionDataset(ensure_corpus(data), sample_rate=sample_rate, duration=data.duration, split=split,
                             filter=data.filter or None)
    if len(ds) == 0:
        raise ConfigError(f"corpus {data.corpus!r} has no clips in split {split!r} (filter {data.filter!r})")
    return (*ds.load_all(), ds.rows)


def tempo_frames_of(rows: list[dict], frames_per_second: float) -> torch.Tensor:
    """Beat period in latent frames from each row's ``tempo`` (or ``bpm``) in BPM; NaN where it is absent.

    A value that is present but not a positive number is an error naming the clip.
    """
    from dragontune.errors import DataError

    out = []
    for r in rows:
        bpm = r.get("tempo", r.get("bpm"))
        if bpm is None or (isinstance(bpm, str) and not bpm.strip()):
            out.append(float("nan"))
            continue
        try:
            value = float(bpm)
        except (TypeError, ValueError):
            value = float("nan")
        if not (math.isfinite(value) and value > 0):
            raise DataError(f"clip {r.get('file', r.get('id'))!r}: tempo {bpm!r} is not a positive number of beats "
                            "per minute; fix it or leave the field empty (unknown tempo)")
        out.append(beat_period_frames(value, frames_per_second))
    return torch.tensor(out, dtype=torch.float32)


@torch.no_grad()
def encode_latents(codec, audio: torch.Tensor, chunk: int = 64) -> torch.Tensor:
    return torch.cat([codec.encode(audio[i:i + chunk]) for i in range(0, audio.shape[0], chunk)])


class TextTable:
    """Frozen text-encoder outputs for a fixed list of captions, gathered and padded per batch."""

    def __init__(self, text_encoder, captions: list[str], chunk: int = 64):
        self.index = {c: i for i, c in enumerate(dict.fromkeys(captions))}
        uniq = list(self.index)
        self.rows: list[torch.Tensor] = []
        for i in range(0, len(uniq), chunk):
            h, m = text_encoder.encode(uniq[i:i + chunk])
            for j in range(h.shape[0]):
                self.rows.append(h[j, : int(m[j].sum())].float().cpu())
        self.caption_ids = torch.tensor([self.index[c] for c in captions])

    def batch(self, clip_idx: torch.Tensor, device) -> dict[str, torch.Tensor]:
        rows = [self.rows[int(self.caption_ids[i])] for i in clip_idx]
        L = max(r.shape[0] for r in rows)
        text = torch.zeros(len(rows), L, rows[0].shape[1])
        mask = torch.zeros(len(rows), L, dtype=torch.bool)
        for j, r in enumerate(rows):
            text[j, : r.shape[0]] = r
            mask[j, : r.shape[0]] = True
        return {"text": text.to(device), "text_mask": mask.to(device)}


# ----------------------------------------------------------------------------------------------------------
# checkpoint state


def save_training_state(run, step: int, epoch: int, pos: int, net, ema, opt, gen: torch.Generator,
                        spec: ModelSpec, keep: int, extra: dict | None = None) -> Path:
    """Checkpoint ``step-NNNNNNN``: EMA model (the model to use) and the state to resume exactly."""
    model_t = {f"net.{k}": v for k, v in ema.state_dict().items()}
    tensors, ometa = flatten_optimizer(opt)
    tensors.update({f"net.{k}": v for k, v in net.state_dict().items()})
    tensors["rng.train"] = gen.get_state()
    meta = {"step": step, "epoch": epoch, "pos": pos, "optim": ometa, "extra": extra or {}}
    return run.save_checkpoint(f"step-{step:07d}", {"model": (model_t, spec.to_metadata()),
                                                     "state": (tensors, {"state": json.dumps(meta, default=str)})},
                               {"step": step}, keep=keep, fault_tag=f"pretrain:{step}")


def load_training_state(run):
    """``(ema tensors, ema metadata, state tensors, state meta)`` of the latest checkpoint, or None."""
    ck = run.load_checkpoint()
    if ck is None:
        return None
    _, parts = ck
    (ema_t, ema_meta), (tensors, meta) = parts["model"], parts["state"]
    return ema_t, ema_meta, tensors, json.loads(meta["state"])


# ----------------------------------------------------------------------------------------------------------
# the loop


def pretrain(cfg: PretrainConfig, resume: bool = False, overwrite: bool = False) -> Path:
    """Pre-train a text-to-audio DiT; returns the path of the final EMA model checkpoint.

    ``resume`` continues the run in ``cfg.out_dir`` (its config must match); ``overwrite`` replaces a run there.
    """
    from tqdm.auto import tqdm

    from dragontune.checks import check_pretrain
    from dragontune.codecs import LogMelCodec, codec_from_config, fit_scale
    from dragontune.rundir import RunDir, disk_full_guard, fault_point
    from dragontune.text import build_text_encoder

    check_pretrain(cfg)
    run = RunDir.open(cfg.out_dir, to_dict(cfg), kind="pretrain", resume=resume, overwrite=overwrite)
    out = run.path
    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)
    device = resolve_device(cfg.device)
    use_bf16 = (cfg.precision == "bf16") or (cfg.precision == "auto" and device.type == "cuda")

    # -- data, codec, text
    sr = cfg.codec.sample_rate
    audio, captions, rows = load_split(cfg.data, cfg.data.train_split, sr)
    tempo_frames = None  # tempo labels are read (and checked) only for a model with tempo conditioning
    if cfg.model.tempo_bins > 0:
        tempo_frames = tempo_frames_of(rows, sr / cfg.codec.hop_length)
        known = int(torch.isfinite(tempo_frames).sum())
        log.info("tempo conditioning: %d of %d training clips have a tempo in their metadata", known, len(rows))
        if known == 0:
            raise ConfigError(f"model.tempo_bins={cfg.model.tempo_bins} but no training clip of {cfg.data.corpus!r} "
                              "has a 'tempo' (or 'bpm') value in its metadata; add one or set model.tempo_bins=0")
    resumed = load_training_state(run) if resume else None
    if resume and resumed is None:
        log.info("--resume: %s has no checkpoint yet; starting from step 0", out)
    run.truncate_metrics("step", resumed[3]["step"] if resumed is not None else 0)
    if resumed is not None:
        codec = codec_from_config(json.loads(resumed[1]["codec"]))
    else:
        codec = fit_scale(LogMelCodec(**dataclasses.asdict(cfg.codec)),
                          (audio[i:i + 64] for i in range(0, audio.shape[0], 64)))
    latents = encode_latents(codec, audio)
    del audio
    F = latents.shape[-1]
    if F % cfg.model.patch_size:
        raise ConfigError(f"latent length {F} frames (duration {cfg.data.duration}s) is not a multiple of "
                          f"model.patch_size={cfg.model.patch_size}; change one of them")
    if cfg.model.latent_channels != codec.latent_channels:
        raise ConfigError(f"model.latent_channels={cfg.model.latent_channels} but the codec has "
                          f"{codec.latent_channels} channels (codec.n_mels); make them equal")
    if cfg.text_cache:
        from dragontune.text_cache import CachedTextEncoder

        text_encoder = CachedTextEncoder(cfg.text_cache)
        text_spec = text_encoder.spec
    else:
        text_encoder, text_spec = build_text_encoder(cfg.text_encoder), cfg.text_encoder
    if cfg.model.text_dim != text_encoder.dim:
        raise ConfigError(f"model.text_dim={cfg.model.text_dim} but text encoder {cfg.text_encoder!r} has "
                          f"dim {text_encoder.dim}; make them equal")
    table = TextTable(text_encoder, captions)
    val = None
    if cfg.val_every > 0 and cfg.val_samples > 0:
        va, vc, _ = load_split(cfg.data, cfg.data.val_split, sr)
        n = min(cfg.val_samples, va.shape[0])
        vg = torch.Generator().manual_seed(12345)
        vsig = sample_sigma(n, vg, cfg.p_mean, cfg.p_std)
        vl = encode_latents(codec, va[:n])
        val = (vl, TextTable(text_encoder, vc[:n]), vsig, torch.randn(vl.shape, generator=vg))
    spec = ModelSpec(model=cfg.model, codec=codec.config(), text_encoder=text_spec,
                     text_encoder_id=text_encoder.id, latent_frames=F,
                     extra={"pretrain_config": to_dict(cfg)})

    # -- model, EMA, optimizer, RNG
    torch.manual_seed(cfg.seed)
    net = DiT(cfg.model).to(device)
    ema = copy.deepcopy(net).eval()
    for p in ema.parameters():
        p.requires_grad_(False)
    opt = torch.optim.Adam(net.parameters(), lr=cfg.optim.lr, betas=(cfg.optim.beta1, cfg.optim.beta2),
                           weight_decay=cfg.optim.weight_decay)
    gen = torch.Generator().manual_seed(cfg.seed)
    step, epoch, pos = 0, 0, 0
    if resumed is not None:
        ema_t, _, tensors, meta = resumed
        load_state_strict(net, {k[4:]: v for k, v in tensors.items() if k.startswith("net.")}, str(out))
        load_state_strict(ema, {k[4:]: v for k, v in ema_t.items() if k.startswith("net.")}, str(out))
        opt.load_state_dict(unflatten_optimizer(tensors, meta["optim"]))
        gen.set_state(tensors["rng.train"])
        step, epoch, pos = meta["step"], meta["epoch"], meta["pos"]
        log.info("resumed from step %d", step)
    denoiser = EDMDenoiser(net)
    N = latents.shape[0]
    B = min(cfg.batch_size, N)
    log.info("pretrain: %d clips, latent %s, %.2fM params, batch %d, %d steps, device %s%s",
             N, tuple(latents.shape[1:]), count_params(net) / 1e6, B, cfg.steps, device,
             " (bf16 autocast)" if use_bf16 else "")

    def perm(ep: int) -> torch.Tensor:
        return torch.randperm(N, generator=torch.Generator().manual_seed(cfg.seed * 100003 + ep))

    order = perm(epoch)
    t_last, losses, tempo_losses = time.time(), [], []
    bar = tqdm(total=cfg.steps, initial=step, desc="pretrain", dynamic_ncols=True, disable=None)
    net.train()
    while step < cfg.steps:
        if pos + B > N:
            epoch, pos = epoch + 1, 0
            order = perm(epoch)
        idx = order[pos:pos + B]
        pos += B
        x0 = latents[idx].to(device)
        cond = table.batch(idx, device)
        drop = torch.rand(B, generator=gen) < cfg.cond_dropout
        cond["text_mask"] = cond["text_mask"] & ~drop.to(device)[:, None]
        sigma = sample_sigma(B, gen, cfg.p_mean, cfg.p_std, device)
        noise = torch.randn(x0.shape, generator=gen).to(device)
        lr = cfg.optim.lr * min(1.0, (step + 1) / max(1, cfg.optim.warmup_steps))
        for g in opt.param_groups:
            g["lr"] = lr
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_bf16):
            if net.tempo is not None:  # teacher forcing with the true periods; the head learns to predict them
                tf = tempo_frames[idx].to(device)
                loss = denoising_loss(denoiser, x0, noise, sigma, {**cond, "tempo_frames": tf}).mean()
                t_loss = net.tempo_loss(cond["text"], cond["text_mask"], tf).mean()
                tempo_losses.append(float(t_loss.detach()))
            else:
                loss = denoising_loss(denoiser, x0, noise, sigma, cond).mean()
                t_loss = None
        opt.zero_grad(set_to_none=True)
        (loss if t_loss is None else loss + cfg.tempo_loss_weight * t_loss).backward()
        gnorm = torch.nn.utils.clip_grad_norm_(net.parameters(), cfg.optim.grad_clip if cfg.optim.grad_clip > 0
                                               else float("inf"))
        opt.step()
        step += 1
        fault_point(f"pretrain:{step}")
        decay = min(0.5 ** (1.0 / max(cfg.ema_halflife_steps, 1e-8)), (1 + step) / (10 + step))
        with torch.no_grad():
            for pe, pn in zip(ema.parameters(), net.parameters()):
                pe.lerp_(pn.detach(), 1 - decay)
        losses.append(float(loss.detach()))
        bar.update(1)
        rec = None
        if step % cfg.log_every == 0 or step == cfg.steps:
            now = time.time()
            rec = {"step": step, "epoch": epoch, "loss": sum(losses) / len(losses), "grad_norm": float(gnorm),
                   "lr": lr, "steps_per_s": len(losses) / max(now - t_last, 1e-9)}
            if tempo_losses:
                rec["tempo_loss"] = sum(tempo_losses) / len(tempo_losses)
            t_last, losses, tempo_losses = now, [], []
        if val is not None and (step % cfg.val_every == 0 or step == cfg.steps):
            rec = rec or {"step": step}
            rec["val_loss"] = validation_loss(EDMDenoiser(ema), val, device)
        if rec is not None:
            run.append_metrics(rec)
            bar.set_postfix({k: f"{v:.4g}" for k, v in rec.items() if k in ("loss", "val_loss")})
            log.info("step %d %s", step, " ".join(f"{k}={v:.4g}" for k, v in rec.items() if k != "step"))
        if step % cfg.ckpt_every == 0 or step == cfg.steps:
            save_training_state(run, step, epoch, pos, net, ema, opt, gen, spec, cfg.keep_checkpoints)
        if cfg.sample_every > 0 and step % cfg.sample_every == 0 and step != cfg.steps:
            write_samples(out / "samples" / f"step-{step:07d}", ema, spec, codec, text_encoder, cfg, device)
    bar.close()
    final = out / "model.safetensors"
    with disk_full_guard(str(final), "the last checkpoint is complete (resume to write the final model)"):
        save_model(final, ema, spec)
        write_samples(out / "samples" / "final", ema, spec, codec, text_encoder, cfg, device)
    run.close()
    log.info("pretrain done: %s", final)
    return final


@torch.no_grad()
def validation_loss(denoiser, val, device) -> float:
    lat, table, sig, noise = val
    tot = 0.0
    for i in range(0, lat.shape[0], 32):
        idx = torch.arange(i, min(i + 32, lat.shape[0]))
        cond = table.batch(idx, device)
        tot += float(denoising_loss(denoiser, lat[idx].to(device), noise[idx].to(device), sig[idx].to(device),
                                    cond).sum())
    return tot / lat.shape[0]


def write_samples(folder: Path, net, spec, codec, text_encoder, cfg: PretrainConfig, device) -> None:
    from dragontune.audio import save_wav
    from dragontune.generate import SamplerConfig, generate_latents
    from dragontune.models.checkpoint import T2AModel

    was = net.training
    net.eval()
    model = T2AModel(net, spec, codec, text_encoder, device)
    prompts = list(cfg.sample_prompts)
    lat = generate_latents(model, prompts, list(range(len(prompts))),
                           SamplerConfig(steps=cfg.sample_steps, cfg=cfg.sample_cfg), disable=True)
    audio = model.decode(lat)
    folder.mkdir(parents=True, exist_ok=True)
    for i, p in enumerate(prompts):
        save_wav(folder / f"{i:02d}.wav", audio[i], codec.sample_rate)
    atomic_write_json(folder / "prompts.json", prompts)
    net.train(was)
