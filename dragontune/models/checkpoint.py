"""Model checkpoints (safetensors + JSON metadata) and the text-to-audio model bundle.

A model checkpoint is one safetensors file holding the network weights under ``net.*`` and, in its
metadata, everything needed to rebuild the model: the DiT config, the codec config (including the latent
scale fitted on the corpus), the text encoder spec and id, and the latent length.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import torch
from torch import nn

from dragontune.errors import CheckpointError
from dragontune.models.dit import DiT, DiTConfig, beat_period_frames
from dragontune.models.edm import EDMDenoiser, denoising_loss, sample_sigma
from dragontune.models.interface import DiffusionModel
from dragontune.utils import dumps_strict, load_safetensors, save_safetensors_atomic

FORMAT = "dragontune-t2a-1"
PACKAGE_BASELINE = Path(__file__).resolve().parent.parent / "assets" / "baseline.safetensors"


@dataclasses.dataclass
class ModelSpec:
    model: DiTConfig
    codec: dict
    text_encoder: str = "minilm"
    text_encoder_id: str = ""
    latent_frames: int = 250
    extra: dict = dataclasses.field(default_factory=dict)

    def to_metadata(self) -> dict[str, str]:
        return {
            "format": FORMAT,
            "model": json.dumps(dataclasses.asdict(self.model), sort_keys=True),
            "codec": json.dumps(self.codec, sort_keys=True),
            "text_encoder": self.text_encoder,
            "text_encoder_id": self.text_encoder_id,
            "latent_frames": str(self.latent_frames),
            "extra": dumps_strict(self.extra, sort_keys=True, default=str),
        }

    @classmethod
    def from_metadata(cls, meta: dict[str, str], path: str) -> "ModelSpec":
        if meta.get("format") != FORMAT:
            raise CheckpointError(
                f"{path!r} is not a dragontune model checkpoint (metadata format={meta.get('format')!r}, "
                f"expected {FORMAT!r}); pass a file written by `dragontune pretrain` or `dragontune finetune`"
            )
        try:
            return cls(
                model=DiTConfig(**json.loads(meta["model"])),
                codec=json.loads(meta["codec"]),
                text_encoder=meta["text_encoder"],
                text_encoder_id=meta.get("text_encoder_id", ""),
                latent_frames=int(meta["latent_frames"]),
                extra=json.loads(meta.get("extra", "{}")),
            )
        except (KeyError, TypeError, ValueError) as e:
            raise CheckpointError(f"checkpoint {path!r} has malformed metadata ({e}); it cannot be loaded") from None


def load_state_strict(module: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """Load ``state`` into ``module`` requiring identical keys and shapes; otherwise list the differences."""
    own = module.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shape = sorted(k for k in set(own) & set(state) if tuple(own[k].shape) != tuple(state[k].shape))
    if missing or unexpected or shape:
        def fmt(keys, extra=None):
            shown = keys[:12]
            s = ", ".join((f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}" if extra else k) for k in shown)
            return s + (f" (+{len(keys) - 12} more)" if len(keys) > 12 else "")
        parts = []
        if missing:
            parts.append(f"missing keys: {fmt(missing)}")
        if unexpected:
            parts.append(f"unexpected keys: {fmt(unexpected)}")
        if shape:
            parts.append(f"shape mismatch (checkpoint vs model): {fmt(shape, True)}")
        raise CheckpointError(
            f"checkpoint {source!r} does not match this model architecture; " + "; ".join(parts)
            + ". Use the config the checkpoint was trained with (its metadata holds it) or another checkpoint."
        )
    module.load_state_dict(state, strict=True)


def save_model(path: str | os.PathLike, net: nn.Module, spec: ModelSpec, dtype: torch.dtype | None = None) -> None:
    tensors = {f"net.{k}": (v.to(dtype) if dtype is not None and v.is_floating_point() else v)
               for k, v in net.state_dict().items()}
    save_safetensors_atomic(tensors, path, spec.to_metadata())


def read_model_file(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], ModelSpec]:
    p = Path(path)
    if not p.is_file():
        raise CheckpointError(
            f"model checkpoint {str(p)!r} does not exist; train one with `dragontune pretrain configs/baseline.yaml` "
            f"or use the committed baseline ({PACKAGE_BASELINE})"
        )
    try:
        tensors, meta = load_safetensors(p)
    except Exception as e:
        raise CheckpointError(f"model checkpoint {str(p)!r} could not be read ({e}); it is corrupt or not safetensors") from None
    spec = ModelSpec.from_metadata(meta, str(p))
    from dragontune.rundir import check_finite

    check_finite(tensors, str(p))  # a diverged run's weights: refuse here, not later at the output WAV
    state = {k[4:]: v.float() if v.is_floating_point() else v for k, v in tensors.items() if k.startswith("net.")}
    return state, spec


def build_net(spec: ModelSpec, state: dict[str, torch.Tensor] | None = None, source: str = "") -> DiT:
    net = DiT(spec.model)
    if state is not None:
        load_state_strict(net, state, source)
    return net


class T2AModel(DiffusionModel):
    """The in-project text-to-audio diffusion model: network + EDM denoiser + codec + text encoder.

    ``cond(prompts)`` returns the conditioning dict for the denoiser; ``null_cond(cond)`` the matching
    unconditional one (all text masked: only the learned null token is visible). Implements
    :class:`dragontune.models.interface.DiffusionModel`. ``net`` is the DiT, or a peft wrapper of it when LoRA
    adapters were added (:func:`dragontune.models.lora.add_lora`).
    """

    family = "dit"

    def __init__(self, net: DiT, spec: ModelSpec, codec=None, text_encoder=None, device="cpu"):
        from dragontune.codecs import codec_from_config
        from dragontune.text import build_text_encoder

        self.spec = spec
        self.device = torch.device(device)
        self.net = net.to(self.device)
        self._denoiser = EDMDenoiser(self.net)
        self.codec = codec if codec is not None else codec_from_config(spec.codec)
        self.text_encoder = text_encoder if text_encoder is not None else build_text_encoder(spec.text_encoder)
        self.lora = None      # LoRA settings and base hash once adapters are added (models/lora.py)
        self.source = ""      # the file it was loaded from

    @property
    def latent_shape(self) -> tuple[int, int]:
        return (self.spec.model.latent_channels, self.spec.latent_frames)

    @property
    def sample_rate(self) -> int:
        return self.codec.sample_rate

    def cond(self, prompts) -> dict[str, torch.Tensor]:
        hidden, mask = self.text_encoder.encode(list(prompts))
        return {"text": hidden.to(self.device), "text_mask": mask.to(self.device)}

    @staticmethod
    def null_cond(cond: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        # other keys (e.g. ``tempo_frames``) are kept: the model ignores them for an empty prompt
        return {**cond, "text": torch.zeros_like(cond["text"]), "text_mask": torch.zeros_like(cond["text_mask"])}

    def drop_condition(self, cond: dict[str, torch.Tensor], drop: torch.Tensor) -> dict[str, torch.Tensor]:
        # a dropped prompt has an all-False mask: the model then sees only its learned null token
        return {**cond, "text_mask": cond["text_mask"] & ~drop.to(cond["text_mask"].device)[:, None]}

    @property
    def denoiser(self) -> EDMDenoiser:
        return self._denoiser

    def set_net(self, net: nn.Module) -> None:
        """Replace the network (e.g. by its LoRA-wrapped self); the denoiser follows."""
        self.net = net.to(self.device)
        self._denoiser = EDMDenoiser(self.net)

    def denoising_error(self, x0, noise, sigma, cond) -> torch.Tensor:
        return denoising_loss(self._denoiser, x0, noise, sigma, cond)

    def train_sigma(self, n: int, generator: torch.Generator, p_mean: float, p_std: float) -> torch.Tensor:
        return sample_sigma(n, generator, p_mean, p_std)

    def sampling_schedule(self, sc) -> dict:
        return {"kind": "karras", "sigma_min": sc.sigma_min, "sigma_max": sc.sigma_max, "rho": sc.rho}

    @property
    def trainable(self) -> nn.Module:
        return self.net

    def lora_target_module(self) -> nn.Module:
        return self.net

    def set_grad_checkpointing(self, on: bool) -> None:
        base = self.net.get_base_model() if hasattr(self.net, "get_base_model") else self.net
        base.grad_checkpointing = bool(on)

    def full_state(self) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
        """The full network (``net.*``) and its spec, as a model checkpoint holds them."""
        return {f"net.{k}": v for k, v in self.net.state_dict().items()}, self.spec.to_metadata()

    def load_full_state(self, tensors: dict[str, torch.Tensor], meta: dict[str, str], source: str) -> None:
        state = {k[4:]: v for k, v in tensors.items() if k.startswith("net.")}
        load_state_strict(self.net, state, source)

    full_artifact = "model.safetensors"

    def save_full(self, path: str | os.PathLike) -> None:
        save_model(path, self.net, self.spec)

    def tempo_frames(self, bpm: float) -> float:
        """Beat period in latent frames for ``bpm``; errors if the model has no tempo conditioning or it is out of range."""
        from dragontune.errors import ConfigError

        head = self.net.tempo
        if head is None:
            raise ConfigError("this checkpoint has no tempo conditioning (model.tempo_bins = 0), so it cannot take a "
                              "BPM; use a model pre-trained with tempo conditioning (e.g. the committed baseline)")
        fps = self.sample_rate / self.codec.hop_length
        lo, hi = (float(v) for v in torch.exp(head.log_periods[[0, -1]]))
        bpm = float(bpm)
        if not (bpm > 0 and lo <= beat_period_frames(bpm, fps) <= hi):
            raise ConfigError(f"bpm={bpm:g} is outside this model's tempo range "
                              f"{beat_period_frames(hi, fps):.0f}-{beat_period_frames(lo, fps):.0f} BPM")
        return beat_period_frames(bpm, fps)

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        return self.codec.decode(latents.float())

    def copy_frozen(self) -> "T2AModel":
        """A frozen deep copy (eval mode, no grad) sharing codec and text encoder: the DRAGON reference."""
        import copy

        net = copy.deepcopy(self.net).eval()
        for p in net.parameters():
            p.requires_grad_(False)
        return T2AModel(net, self.spec, self.codec, self.text_encoder, self.device)


def load_model(path: str | os.PathLike | None = None, device="cpu", text_encoder=None) -> T2AModel:
    """Load a model checkpoint (default: the committed baseline shipped with the package)."""
    path = Path(path) if path is not None else PACKAGE_BASELINE
    state, spec = read_model_file(path)
    net = build_net(spec, state, str(path))
    model = T2AModel(net, spec, text_encoder=text_encoder, device=device)
    model.source = str(path)
    return model
