"""A DiT over latent frames, patched along time, with joint audio-text attention.

- Noise level: ``c_noise = log(sigma) / 4`` -> sinusoidal embedding -> MLP -> adaptive layer norm
  (adaLN-Zero: shift, scale and gate, zero-initialised) in every block.
- Text: token embeddings from a frozen text encoder, projected to the model width. In every attention
  layer the audio queries attend to the concatenation [audio keys; learned null key; text keys], with the
  text padding mask. The learned null token is always visible, so a prompt whose mask is all False is the
  unconditional (null) condition used for classifier-free guidance and for condition dropout.
- Optionally (``pooled_text``) the masked mean of the projected text is added to the adaLN conditioning
  vector, with a learned null vector when the prompt is dropped.
- Optionally (``rope``) rotary position embeddings on the audio queries and keys (text and null keys are
  not rotated), so that attention can depend on the distance between frames directly: rhythm is a
  relation between positions a beat apart. The additive sinusoidal embedding of the input is kept.
- Optionally (``tempo_bins > 0``) tempo conditioning in two stages, text -> beat period -> audio. A small
  head reads the frozen text states (attention pooling) and classifies the beat period into ``tempo_bins``
  log-spaced bins between ``tempo_period_min`` and ``tempo_period_max`` latent frames; the period it predicts
  is the softmax-weighted geometric mean. The network then gets periodic features of that period: cosine and
  sine of ``2 pi h t / period`` for ``h = 1..tempo_harmonics`` over the frame index ``t``, added to the tokens
  (per patch, through a zero-initialised projection) and given to the refiner head at frame resolution; they
  are zero for the null condition. In pre-training, clips whose metadata has a tempo use their true period
  (teacher forcing, ``forward(..., tempo_frames=...)``) and the head is trained on it with a cross-entropy
  loss (``tempo_loss``); sampling and fine-tuning use the predicted period. Rhythm is periodic with a period
  the caption names ("slow", "120 BPM"): a transformer with absolute positions has to compute
  ``t mod period`` for every tempo, which the baseline-sized model did not learn from the text alone.
- Optionally (``refine_channels > 0``) a frame-level convolutional head refines the un-patched output.
  Without it the transformer predicts ``channels x patch`` values per token through a ``width``-dimensional
  state (320 values through 192 at the baseline size), so its output has rank <= width per token and it
  cannot remove the part of the noise outside that subspace: the denoising error then has a floor of about
  ``(1 - width / (channels x patch)) sigma^2`` at small sigma. The head sees the network input itself
  (``c_in x``) next to the transformer's output, so its prediction is full-rank; its last layer is
  zero-initialised (the model starts as the plain transformer) and it is modulated by the same noise/text
  conditioning vector as the blocks.
"""

from __future__ import annotations

import dataclasses
import math

import torch
import torch.nn.functional as F
from torch import nn


@dataclasses.dataclass
class DiTConfig:
    latent_channels: int = 64
    patch_size: int = 5
    width: int = 256
    depth: int = 6
    heads: int = 4
    mlp_ratio: float = 4.0
    text_dim: int = 384
    pooled_text: bool = True
    noise_freqs: int = 128
    refine_channels: int = 0   # frame-level conv head width; 0 = none
    refine_kernel: int = 5     # its kernel size along time (odd)
    rope: bool = False         # rotary position embedding on audio queries/keys
    rope_theta: float = 1000.0  # its base period (in tokens)
    tempo_bins: int = 0              # bins of the text -> beat-period classifier; 0 = no tempo conditioning
    tempo_period_min: float = 18.0   # shortest beat period in latent frames (18 frames at 62.5 frames/s = 208 BPM)
    tempo_period_max: float = 70.0   # longest (70 frames = 54 BPM)
    tempo_harmonics: int = 4         # harmonics of the beat frequency given to the network (sub-beats 2, 3, 4)


def beat_period_frames(bpm, frames_per_second: float):
    """Beats per minute <-> beat period in latent frames (the same map both ways): ``60 * fps / x``."""
    return 60.0 * frames_per_second / bpm


def sinusoidal(x: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding of a float tensor ``x[...]`` -> ``[..., dim]`` (cos, sin halves)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=x.device, dtype=torch.float32) / half)
    args = x.float()[..., None] * freqs
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


def rope_tables(n: int, head_dim: int, theta: float, device, dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin tables ``[n, head_dim / 2]`` for rotary embeddings of positions ``0..n-1``."""
    if head_dim % 2:
        raise ValueError(f"rotary embeddings need an even head dimension, got {head_dim}")
    inv = theta ** (-torch.arange(0, head_dim // 2, device=device, dtype=torch.float32) / (head_dim // 2))
    ang = torch.arange(n, device=device, dtype=torch.float32)[:, None] * inv
    return ang.cos().to(dtype), ang.sin().to(dtype)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate pairs (first half, second half) of the last dim of ``x[B, n, h, dh]`` by position."""
    a, b = x.chunk(2, dim=-1)
    c, s = cos[:, None], sin[:, None]
    return torch.cat([a * c - b * s, a * s + b * c], dim=-1)


class Block(nn.Module):
    def __init__(self, cfg: DiTConfig):
        super().__init__()
        d, h = cfg.width, cfg.heads
        if d % h:
            raise ValueError(f"model width {d} must be divisible by heads {h}")
        self.heads = h
        self.norm1 = nn.LayerNorm(d, elementwise_affine=False, eps=1e-6)
        self.qkv = nn.Linear(d, 3 * d)
        self.text_kv = nn.Linear(d, 2 * d)
        self.q_norm = RMSNorm(d // h)
        self.k_norm = RMSNorm(d // h)
        self.proj = nn.Linear(d, d)
        self.norm2 = nn.LayerNorm(d, elementwise_affine=False, eps=1e-6)
        hidden = int(d * cfg.mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(d, hidden), nn.GELU(approximate="tanh"), nn.Linear(hidden, d))
        self.ada = nn.Linear(d, 6 * d)
        nn.init.zeros_(self.ada.weight)
        nn.init.zeros_(self.ada.bias)

    def forward(
        self, x: torch.Tensor, c: torch.Tensor, text: torch.Tensor, key_mask: torch.Tensor,
        rope: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        B, N, D = x.shape
        h = self.heads
        sh1, sc1, g1, sh2, sc2, g2 = self.ada(F.silu(c))[:, None].chunk(6, dim=-1)
        y = self.norm1(x) * (1 + sc1) + sh1
        q, k, v = self.qkv(y).view(B, N, 3, h, D // h).unbind(2)
        tk, tv = self.text_kv(text).view(B, text.shape[1], 2, h, D // h).unbind(2)
        q, k, tk = self.q_norm(q), self.k_norm(k), self.k_norm(tk)
        if rope is not None:
            q, k = apply_rope(q, *rope), apply_rope(k, *rope)
        k = torch.cat([k, tk], dim=1)
        v = torch.cat([v, tv], dim=1)
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))  # [B, h, tokens, dh]
        a = F.scaled_dot_product_attention(q, k, v, attn_mask=key_mask[:, None, None, :])
        a = a.transpose(1, 2).reshape(B, N, D)
        x = x + g1 * self.proj(a)
        y = self.norm2(x) * (1 + sc2) + sh2
        return x + g2 * self.mlp(y)


class ConvRefiner(nn.Module):
    """Frame-level head: ``out + conv(cat[c_in x, out])``, FiLM-modulated by the conditioning vector."""

    def __init__(self, channels: int, hidden: int, kernel: int, cond_dim: int, extra: int = 0):
        super().__init__()
        if kernel < 1 or kernel % 2 == 0:
            raise ValueError(f"refine_kernel={kernel} must be a positive odd number")
        pad = kernel // 2
        self.conv1 = nn.Conv1d(2 * channels + extra, hidden, kernel, padding=pad)
        self.conv2 = nn.Conv1d(hidden, hidden, kernel, padding=pad)
        self.conv_out = nn.Conv1d(hidden, channels, 1)
        self.film = nn.Linear(cond_dim, 4 * hidden)
        for m in (self.film, self.conv_out):
            nn.init.zeros_(m.weight)
            nn.init.zeros_(m.bias)

    def forward(
        self, x_in: torch.Tensor, out: torch.Tensor, c: torch.Tensor, extra: torch.Tensor | None = None
    ) -> torch.Tensor:
        sc1, sh1, sc2, sh2 = self.film(F.silu(c))[..., None].chunk(4, dim=1)
        y = self.conv1(torch.cat([x_in, out] if extra is None else [x_in, out, extra], dim=1))
        y = F.gelu(y * (1 + sc1) + sh1, approximate="tanh")
        y = self.conv2(y)
        y = F.gelu(y * (1 + sc2) + sh2, approximate="tanh")
        return out + self.conv_out(y)


class TempoHead(nn.Module):
    """Text states -> beat-period logits over log-spaced bins; periodic features of a period.

    ``logits(text[B, L, text_dim], mask[B, L]) -> [B, bins]``, ``period(logits) -> [B]`` (frames),
    ``features(period[B], frames, on[B]) -> [B, 2 x harmonics, frames]``.
    """

    def __init__(self, text_dim: int, hidden: int, bins: int, p_min: float, p_max: float, harmonics: int):
        super().__init__()
        if bins < 2 or not 1.0 < p_min < p_max or harmonics < 1:
            raise ValueError(
                f"tempo conditioning: need tempo_bins >= 2, 1 < tempo_period_min < tempo_period_max and "
                f"tempo_harmonics >= 1 (got {bins}, {p_min}, {p_max}, {harmonics})"
            )
        self.harmonics = harmonics
        self.register_buffer(
            "log_periods", torch.linspace(math.log(p_min), math.log(p_max), bins), persistent=False
        )
        self.norm = nn.LayerNorm(text_dim)
        self.score = nn.Linear(text_dim, 1)
        self.mlp = nn.Sequential(nn.Linear(2 * text_dim, hidden), nn.SiLU(), nn.Linear(hidden, bins))

    @property
    def features_dim(self) -> int:
        return 2 * self.harmonics

    def logits(self, text: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        t = self.norm(text.float())
        w = mask.float()[..., None]
        mean = (t * w).sum(1) / w.sum(1).clamp_min(1)
        score = self.score(t).masked_fill(~mask[..., None], float("-inf"))
        att = torch.nan_to_num(score.softmax(1), nan=0.0)  # an all-masked (null) prompt gives zeros
        return self.mlp(torch.cat([mean, (att * t).sum(1)], dim=-1))

    def period(self, logits: torch.Tensor) -> torch.Tensor:
        return torch.exp((logits.softmax(-1) * self.log_periods).sum(-1))

    def nll(self, logits: torch.Tensor, period: torch.Tensor) -> torch.Tensor:
        """Cross-entropy against a Gaussian (in log period, one bin wide) around ``period``; 0 where it is NaN."""
        known = torch.isfinite(period)
        lp = torch.log(torch.where(known, period, torch.ones_like(period)))
        width = self.log_periods[1] - self.log_periods[0]
        target = (-0.5 * ((self.log_periods[None] - lp[:, None]) / width) ** 2).softmax(-1)
        ce = -(target * logits.float().log_softmax(-1)).sum(-1)
        return torch.where(known, ce, torch.zeros_like(ce))

    def features(self, period: torch.Tensor, frames: int, on: torch.Tensor) -> torch.Tensor:
        t = torch.arange(frames, device=period.device, dtype=torch.float32)
        h = torch.arange(1, self.harmonics + 1, device=period.device, dtype=torch.float32)
        phase = 2 * math.pi * h[None, :, None] * t[None, None, :] / period.float()[:, None, None]  # [B, H, T]
        return torch.cat([torch.cos(phase), torch.sin(phase)], dim=1) * on.float()[:, None, None]


class DiT(nn.Module):
    """``forward(x[B, C, F], c_noise[B], text[B, L, text_dim], text_mask[B, L]) -> [B, C, F]``."""

    def __init__(self, cfg: DiTConfig):
        super().__init__()
        self.cfg = cfg
        d, p, C = cfg.width, cfg.patch_size, cfg.latent_channels
        self.patch_in = nn.Linear(C * p, d)
        self.noise_mlp = nn.Sequential(nn.Linear(cfg.noise_freqs, d), nn.SiLU(), nn.Linear(d, d))
        self.text_in = nn.Sequential(nn.LayerNorm(cfg.text_dim), nn.Linear(cfg.text_dim, d))
        self.null_token = nn.Parameter(torch.randn(1, 1, d) * 0.02)
        if cfg.pooled_text:
            self.pool_mlp = nn.Sequential(nn.Linear(d, d), nn.SiLU(), nn.Linear(d, d))
            self.null_pooled = nn.Parameter(torch.zeros(1, d))
        self.blocks = nn.ModuleList([Block(cfg) for _ in range(cfg.depth)])
        self.norm_out = nn.LayerNorm(d, elementwise_affine=False, eps=1e-6)
        self.ada_out = nn.Linear(d, 2 * d)
        self.patch_out = nn.Linear(d, C * p)
        for m in (self.ada_out, self.patch_out):
            nn.init.zeros_(m.weight)
            nn.init.zeros_(m.bias)
        self.tempo = None
        extra = 0
        if cfg.tempo_bins > 0:
            self.tempo = TempoHead(cfg.text_dim, d, cfg.tempo_bins, cfg.tempo_period_min, cfg.tempo_period_max,
                                   cfg.tempo_harmonics)
            self.tempo_in = nn.Linear(self.tempo.features_dim * p, d)
            nn.init.zeros_(self.tempo_in.weight)
            nn.init.zeros_(self.tempo_in.bias)
            extra = self.tempo.features_dim
        self.refine = (
            ConvRefiner(C, cfg.refine_channels, cfg.refine_kernel, d, extra) if cfg.refine_channels > 0 else None
        )
        #: activation checkpointing of the blocks in training (recomputed in backward: less memory, more time)
        self.grad_checkpointing = False

    def _condition(self, c_noise, text, text_mask, dtype):
        """Conditioning vector (noise level + pooled text), projected text tokens and the boolean text mask."""
        c = self.noise_mlp(sinusoidal(c_noise, self.cfg.noise_freqs).to(dtype))
        t = self.text_in(text.to(dtype))
        mask = text_mask.bool()
        if self.cfg.pooled_text:
            w = mask.to(t.dtype)[..., None]
            cnt = w.sum(1)
            pooled = (t * w).sum(1) / cnt.clamp_min(1)
            has = (cnt > 0).to(t.dtype)
            pooled = has * pooled + (1 - has) * self.null_pooled.to(t.dtype)
            c = c + self.pool_mlp(pooled)
        return c, t, mask

    def _require_tempo(self) -> TempoHead:
        if self.tempo is None:
            raise ValueError("this model has no tempo conditioning (model.tempo_bins = 0)")
        return self.tempo

    @torch.no_grad()
    def predict_tempo_frames(self, text: torch.Tensor, text_mask: torch.Tensor) -> torch.Tensor:
        """The beat period (latent frames) the model reads from each prompt, ``[B]``."""
        head = self._require_tempo()
        return head.period(head.logits(text, text_mask.bool()))

    def tempo_loss(self, text: torch.Tensor, text_mask: torch.Tensor, tempo_frames: torch.Tensor) -> torch.Tensor:
        """Per-sample cross-entropy of the tempo head against the true period (0 where unknown or dropped)."""
        head = self._require_tempo()
        mask = text_mask.bool()
        period = torch.where(mask.any(1), tempo_frames.float(), torch.full_like(tempo_frames.float(), float("nan")))
        return head.nll(head.logits(text, mask), period)

    def forward(
        self, x: torch.Tensor, c_noise: torch.Tensor, text: torch.Tensor, text_mask: torch.Tensor,
        tempo_frames: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``tempo_frames[B]`` (pre-training only): true beat periods, NaN where unknown -> predicted from text."""
        B, C, Fr = x.shape
        p = self.cfg.patch_size
        if C != self.cfg.latent_channels:
            raise ValueError(f"latent has {C} channels, model expects {self.cfg.latent_channels}")
        if Fr % p:
            raise ValueError(f"latent length {Fr} frames is not a multiple of the patch size {p}")
        n = Fr // p
        tokens = x.view(B, C, n, p).permute(0, 2, 1, 3).reshape(B, n, C * p)
        h = self.patch_in(tokens)
        pos = sinusoidal(torch.arange(n, device=x.device, dtype=torch.float32), h.shape[-1])
        h = h + pos.to(h.dtype)
        c, t, mask = self._condition(c_noise, text, text_mask, h.dtype)
        periodic = None
        if self.tempo is not None:
            period = self.tempo.period(self.tempo.logits(text, mask))
            if tempo_frames is not None:
                tf = tempo_frames.to(period)
                period = torch.where(torch.isfinite(tf), tf, period)
            periodic = self.tempo.features(period, Fr, mask.any(1)).to(h.dtype)  # [B, 2H, Fr]
            h = h + self.tempo_in(periodic.view(B, -1, n, p).permute(0, 2, 1, 3).reshape(B, n, -1))
        t = torch.cat([self.null_token.to(t.dtype).expand(B, 1, -1), t], dim=1)
        key_mask = torch.cat(
            [torch.ones(B, n + 1, dtype=torch.bool, device=x.device), mask], dim=1
        )
        rope = (
            rope_tables(n, h.shape[-1] // self.cfg.heads, self.cfg.rope_theta, x.device, h.dtype)
            if self.cfg.rope else None
        )
        for blk in self.blocks:
            if self.grad_checkpointing and torch.is_grad_enabled():
                from torch.utils.checkpoint import checkpoint

                h = checkpoint(blk, h, c, t, key_mask, rope, use_reentrant=False)
            else:
                h = blk(h, c, t, key_mask, rope)
        sh, sc = self.ada_out(F.silu(c))[:, None].chunk(2, dim=-1)
        h = self.norm_out(h) * (1 + sc) + sh
        out = self.patch_out(h).view(B, n, C, p).permute(0, 2, 1, 3).reshape(B, C, Fr)
        if self.refine is not None:
            out = self.refine(x.to(out.dtype), out, c, periodic)
        return out
