"""LoRA adapters through peft, and the DRAGON reference as the same module with its adapters disabled.

``add_lora(model, settings)`` wraps the model's denoising network (the in-project DiT, or a diffusers
transformer) in a ``peft`` model: the base weights are frozen, low-rank adapters on the named ``nn.Linear``
projections train. The adapters start at zero (peft's default init of ``lora_B``), so the policy starts equal to
the base. :class:`AdaptersOffReference` is the frozen reference without a second copy of the weights: every call
runs the policy's own module inside ``peft``'s ``disable_adapter()``, which computes the base layers only.

Adapters are saved by peft itself (``adapter_model.safetensors`` + ``adapter_config.json``, loadable by
``peft.PeftModel.from_pretrained``) with ``dragontune_adapter.json`` beside them: the hash of the base weights they
were trained on, checked before loading onto another base.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shutil
import tempfile
from pathlib import Path

import torch
from torch import nn

from dragontune.errors import CheckpointError, ConfigError
from dragontune.models.interface import DiffusionModel
from dragontune.utils import sha256_tensors

ADAPTER_INFO = "dragontune_adapter.json"
FORMAT = "dragontune-lora-1"

#: default targets: attention and MLP projections of each model family (module-name suffixes)
DEFAULT_TARGETS = {
    "dit": ["qkv", "text_kv", "proj", "mlp.0", "mlp.2"],
    "stable_audio": ["to_q", "to_k", "to_v", "to_out.0", "ff.net.0.proj", "ff.net.2"],
}


@dataclasses.dataclass
class LoraSettings:
    rank: int = 0                 # 0 = no LoRA: the whole network trains
    alpha: float = 0.0            # scale alpha / rank; 0 = alpha equal to the rank (scale 1)
    targets: list[str] = dataclasses.field(default_factory=list)  # module-name suffixes; [] = the family's default

    @property
    def enabled(self) -> bool:
        return self.rank > 0

    def check(self, prefix: str = "lora.") -> None:
        if isinstance(self.rank, bool) or not isinstance(self.rank, int) or self.rank < 0:
            raise ConfigError(f"{prefix}rank={self.rank!r} must be an integer >= 0 (0 = no LoRA, full fine-tuning)")
        if not (isinstance(self.alpha, (int, float)) and self.alpha >= 0):
            raise ConfigError(f"{prefix}alpha={self.alpha!r} must be >= 0 (0 = equal to the rank)")
        if not isinstance(self.targets, list) or not all(isinstance(t, str) and t for t in self.targets):
            raise ConfigError(f"{prefix}targets={self.targets!r} must be a list of module names (e.g. [to_q, to_v])")


def linear_names(module: nn.Module) -> list[str]:
    return [n for n, m in module.named_modules() if isinstance(m, nn.Linear)]


def _matches(name: str, target: str) -> bool:
    return name == target or name.endswith("." + target)


def base_fingerprint(module: nn.Module) -> str:
    """Hash of the base weights of ``module`` (a peft wrapper's frozen base, or a plain module)."""
    state = module.state_dict()
    if hasattr(module, "get_base_model"):
        state = {k.replace(".base_layer", ""): v for k, v in state.items() if "lora_" not in k}
        state = {k.removeprefix("base_model.model."): v for k, v in state.items()}
    return sha256_tensors(state)


def add_lora(model: DiffusionModel, settings: LoraSettings, family: str, seed: int = 0) -> None:
    """Wrap ``model``'s network in peft LoRA adapters (in place).

    peft draws ``lora_A`` from the global RNG; it is drawn here from ``seed`` (the global RNG state is restored),
    so two processes of one run start from the same adapters and a resumed run replays an uninterrupted one."""
    from peft import LoraConfig, get_peft_model

    settings.check()
    net = model.lora_target_module()
    targets = list(settings.targets) or DEFAULT_TARGETS[family]
    names = linear_names(net)
    unmatched = [t for t in targets if not any(_matches(n, t) for n in names)]
    if unmatched:
        shown = sorted({n.split(".")[-1] if n.split(".")[-1] not in ("0", "1", "2") else ".".join(n.split(".")[-2:])
                        for n in names})
        raise ConfigError(
            f"lora.targets {unmatched} match no linear module of this model; its linear modules end in: "
            f"{', '.join(shown)} (full names such as {names[0] if names else '-'}); name some of these")
    fp = base_fingerprint(net)
    cfg = LoraConfig(r=settings.rank, lora_alpha=settings.alpha or settings.rank, target_modules=targets,
                     lora_dropout=0.0, bias="none")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        peft_net = get_peft_model(net, cfg)
    model.set_net(peft_net)
    model.lora = {"rank": settings.rank, "alpha": float(settings.alpha or settings.rank), "targets": targets,
                  "family": family, "base": fp}


def has_lora(model: DiffusionModel) -> bool:
    return getattr(model, "lora", None) is not None


def adapter_state(model: DiffusionModel) -> dict[str, torch.Tensor]:
    from peft import get_peft_model_state_dict

    return {k: v.detach().clone() for k, v in get_peft_model_state_dict(model.trainable).items()}


def load_adapter_state(model: DiffusionModel, state: dict[str, torch.Tensor], source: str) -> None:
    from peft import set_peft_model_state_dict

    own = adapter_state(model)
    if set(own) != set(state) or any(tuple(own[k].shape) != tuple(state[k].shape) for k in own):
        diff = sorted(set(own) ^ set(state))[:6]
        raise CheckpointError(
            f"LoRA adapters in {source!r} do not match this model's adapters (rank/targets differ; differing keys: "
            f"{diff or 'shapes'}); use the lora settings they were trained with")
    set_peft_model_state_dict(model.trainable, state)


def lora_metadata(model: DiffusionModel) -> dict[str, str]:
    return {"format": FORMAT, "lora": json.dumps(model.lora, sort_keys=True)}


def check_same_lora(model: DiffusionModel, meta: dict[str, str], source: str) -> None:
    """Refuse a checkpoint whose LoRA settings or base differ from this model's."""
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"{source!r} holds a full model, but this run trains LoRA adapters; resume with the "
                              "lora settings the run was started with")
    theirs = json.loads(meta["lora"])
    if theirs != model.lora:
        raise CheckpointError(f"{source!r} has LoRA settings {theirs}, this run {model.lora}; resume with the "
                              "settings it was started with, or start a new run")


def save_adapters(model: DiffusionModel, out_dir: str | os.PathLike, base_source: str) -> Path:
    """Write the adapters in peft's format into ``out_dir`` (atomically: a temporary folder renamed)."""
    out = Path(out_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        model.trainable.save_pretrained(str(tmp), safe_serialization=True)
        (tmp / ADAPTER_INFO).write_text(json.dumps({"format": FORMAT, "base_source": str(base_source),
                                                    **model.lora}, indent=1, sort_keys=True))
        old = None
        if out.exists():
            old = out.with_name(f".{out.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(out, old)
        os.replace(tmp, out)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def read_adapter_info(adapter_dir: str | os.PathLike) -> dict:
    d = Path(adapter_dir)
    need = [ADAPTER_INFO, "adapter_config.json", "adapter_model.safetensors"]
    missing = [n for n in need if not (d / n).is_file()]
    if missing:
        raise CheckpointError(f"{str(d)!r} is not a dragontune LoRA adapter folder: missing {', '.join(missing)} "
                              "(written by `dragontune finetune` with lora.rank > 0, as RUN/adapter)")
    return json.loads((d / ADAPTER_INFO).read_text())


def load_adapters(model: DiffusionModel, adapter_dir: str | os.PathLike, trainable: bool = False) -> None:
    """Load saved adapters onto ``model`` (refused when they were trained on different base weights)."""
    from peft import PeftModel

    info = read_adapter_info(adapter_dir)
    net = model.lora_target_module()
    fp = base_fingerprint(net)
    if info["base"] != fp:
        raise CheckpointError(
            f"the adapters in {str(adapter_dir)!r} were trained on base {info['base_source']!r} (weights "
            f"{info['base'][:12]}), but this model's weights are {fp[:12]}; load them onto the base they were trained on")
    peft_net = PeftModel.from_pretrained(net, str(adapter_dir), is_trainable=trainable)
    model.set_net(peft_net)
    model.lora = {k: info[k] for k in ("rank", "alpha", "targets", "family", "base")}


def merge_adapters(model: DiffusionModel) -> None:
    """Fold the adapters into the base weights (in place); the model is then a plain network again."""
    model.set_net(model.trainable.merge_and_unload())
    model.lora = None


class AdaptersOffReference(DiffusionModel):
    """The frozen reference as a view of the LoRA policy with its adapters disabled (no weight copy)."""

    def __init__(self, policy: DiffusionModel):
        if not has_lora(policy):
            raise ConfigError("reference=adapters_off needs LoRA adapters on the policy (lora.rank > 0); use "
                              "reference=copy for full fine-tuning")
        self.policy = policy
        self.device = policy.device
        self.codec = policy.codec

    @contextlib.contextmanager
    def _off(self):
        with self.policy.trainable.disable_adapter():
            yield

    def cond(self, prompts):
        return self.policy.cond(prompts)

    def null_cond(self, cond):
        return self.policy.null_cond(cond)

    def drop_condition(self, cond, drop):
        return self.policy.drop_condition(cond, drop)

    @property
    def denoiser(self):
        inner = self.policy.denoiser

        def denoise(x, sigma, **cond):
            with self._off():
                return inner(x, sigma, **cond)
        return denoise

    def denoising_error(self, x0, noise, sigma, cond):
        with self._off():
            return self.policy.denoising_error(x0, noise, sigma, cond)

    def train_sigma(self, n, generator, p_mean, p_std):
        return self.policy.train_sigma(n, generator, p_mean, p_std)

    def sampling_schedule(self, sc):
        return self.policy.sampling_schedule(sc)

    @property
    def latent_shape(self):
        return self.policy.latent_shape

    def decode(self, latents):
        return self.policy.decode(latents)

    def encode(self, audio):
        return self.policy.encode(audio)

    @property
    def trainable(self) -> nn.Module:
        return self.policy.trainable

    def parameters(self):
        return iter(())

    def fingerprint_state(self) -> dict[str, torch.Tensor]:
        return {k: v for k, v in self.policy.trainable.state_dict().items() if "lora_" not in k}

    def full_state(self):
        raise CheckpointError("the adapters-off reference is a view of the policy; it has no state of its own")

    load_full_state = save_full = full_state

    def __getattr__(self, name):  # model-specific extras (tempo_frames, spec, ...) of the base
        if name == "policy":
            raise AttributeError(name)
        return getattr(self.policy, name)


def make_reference(policy: DiffusionModel, mode: str) -> DiffusionModel:
    """The frozen DRAGON reference: ``copy`` (a frozen deep copy) or ``adapters_off`` (LoRA only)."""
    if mode == "auto":
        mode = "adapters_off" if has_lora(policy) else "copy"
    if mode == "adapters_off":
        return AdaptersOffReference(policy)
    if mode == "copy":
        return policy.copy_frozen()
    raise ConfigError(f"reference={mode!r} must be auto, copy or adapters_off")
