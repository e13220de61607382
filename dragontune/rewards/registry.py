"""Rewards by name from config: ``build_reward(spec, context)``.

``spec`` is a dict such as::

    {"name": "per_song_fad", "encoder": "codec",
     "exemplars": {"corpus": "data/corpus", "filter": "instrument=piano,quality=clean"}}
    {"name": "centroid", "encoder": {"name": "clap-mini"}, "exemplars": {"texts": ["warm piano"]}}
    {"name": "vendi", "encoder": "musicnn", "q": 1.0}
    {"name": "weighted", "components": [{"weight": 1.0, "name": "per_song_fad", ...}, {"weight": 0.1, ...}]}

or just a name. Model-based rewards (``aesthetics``, ``clap_score``) are registered by their own module
(imported on first use) through :func:`register_reward`.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Callable, Mapping

import torch

from dragontune.encoders.base import Encoder
from dragontune.encoders.registry import get_encoder, load_entry
from dragontune.errors import RewardError
from dragontune.rewards.base import Reward, RewardResult, ScoringBatch
from dragontune.rewards.builtin import (
    CentroidReward,
    FADReward,
    KADReward,
    PerSongFADReward,
    VendiReward,
    WeightedReward,
)
from dragontune.rewards.exemplars import ExemplarSet, ExemplarStats


@dataclasses.dataclass
class RewardContext:
    """What reward factories may need from the caller."""

    #: the generator's codec (for the ``codec`` encoder)
    codec: Any = None
    #: device for metric computation (embeddings are moved there, statistics in float64)
    device: str | torch.device = "cpu"
    #: exemplar-statistics cache directory (default: $DRAGONTUNE_CACHE/exemplars or ~/.cache/dragontune/exemplars)
    cache_dir: str | os.PathLike | None = None
    #: relative exemplar paths resolve against this directory (default: the working directory)
    base_dir: str | os.PathLike | None = None
    #: encoders built so far, shared between rewards: (name, options) -> Encoder
    encoders: dict = dataclasses.field(default_factory=dict)

    def encoder(self, spec: str | Mapping[str, Any]) -> Encoder:
        """Build (once) the encoder described by ``"name"`` or ``{"name": ..., **options}``."""
        if isinstance(spec, Encoder):
            return spec
        if isinstance(spec, str):
            name, opts = spec, {}
        elif isinstance(spec, Mapping) and "name" in spec:
            opts = {k: v for k, v in spec.items() if k != "name"}
            name = spec["name"]
        else:
            raise RewardError(f"encoder must be a name or a dict with 'name'; got {spec!r}")
        key = (name, repr(sorted(opts.items())))
        if key not in self.encoders:
            self.encoders[key] = get_encoder(name, self, **opts)
        return self.encoders[key]

    def exemplar_stats(self, spec: Mapping[str, Any] | ExemplarSet | ExemplarStats, encoder: Encoder) -> ExemplarStats:
        if isinstance(spec, ExemplarStats):
            return spec
        es = spec if isinstance(spec, ExemplarSet) else ExemplarSet.from_spec(spec, base_dir=self.base_dir)
        return es.stats(encoder, cache_dir=self.cache_dir)


#: factory(spec_without_name, context) -> Reward
RewardFactory = Callable[[dict, RewardContext], Reward]

_REWARDS: dict[str, RewardFactory] = {}
#: model-based rewards: "module:factory", imported on first use (importing the module registers nothing)
_LAZY: dict[str, str] = {
    "aesthetics": "dragontune.rewards.model:aesthetics_factory",
    "clap_score": "dragontune.rewards.model:clap_score_factory",
    "tag_score": "dragontune.rewards.model:tag_score_factory",
}


#: reward name -> reward class, for checks before any model is loaded (plugins may leave theirs unknown)
_CLASSES: dict[str, str] = {name: "instance" for name in _LAZY}  # model-based rewards score single clips


def register_reward(name: str, factory: RewardFactory, *, overwrite: bool = False,
                    reward_class: str | None = None) -> None:
    """Register ``factory(spec, context) -> Reward`` under ``name`` (``spec`` without its ``name`` key).
    ``reward_class`` (instance | instance_to_dist | dist_to_dist), when given, lets a config be checked
    before the reward is built."""
    if name in _REWARDS and not overwrite:
        raise RewardError(f"reward {name!r} is already registered")
    _REWARDS[name] = factory
    if reward_class is not None:
        _CLASSES[name] = reward_class


def reward_class_of(spec: str | Mapping[str, Any]) -> str | None:
    """The class of the reward ``spec`` would build, without building it; None when it is not known
    beforehand (an unknown name, or a plugin registered without its class)."""
    if isinstance(spec, str):
        spec = {"name": spec}
    if not isinstance(spec, Mapping):
        return None
    name = spec.get("name")
    if name == "weighted":
        classes = [reward_class_of(c) for c in spec.get("components") or []]
        if not classes or None in classes:
            return None
        return max(classes, key=WeightedReward.CLASS_ORDER.index)
    return _CLASSES.get(name)


def known_rewards() -> list[str]:
    return sorted(set(_REWARDS) | set(_LAZY) | {"weighted"})


def check_options(spec: dict, allowed: set[str], name: str) -> None:
    """Refuse options of reward ``name`` outside ``allowed``, suggesting the closest allowed one."""
    unknown = sorted(set(spec) - allowed)
    if unknown:
        import difflib

        hints = [f"{u!r} (did you mean {m[0]!r}?)" if (m := difflib.get_close_matches(u, allowed, 1)) else repr(u)
                 for u in unknown]
        raise RewardError(f"reward {name!r}: unknown option(s) {', '.join(hints)}; allowed: {sorted(allowed)}")


def build_reward(spec: str | Mapping[str, Any], context: RewardContext | None = None) -> Reward:
    """Build a :class:`Reward` from a name or a config dict (see the module docstring)."""
    ctx = context if context is not None else RewardContext()
    if isinstance(spec, str):
        spec = {"name": spec}
    if not isinstance(spec, Mapping) or "name" not in spec:
        raise RewardError(f"a reward spec needs a 'name'; got {spec!r}. Known rewards: {', '.join(known_rewards())}")
    spec = dict(spec)
    name = spec.pop("name")
    if name == "weighted":
        check_options(spec, {"components"}, name)
        comps = spec.get("components") or []
        pairs = []
        for c in comps:
            c = dict(c)
            w = c.pop("weight", 1.0)
            pairs.append((float(w), build_reward(c, ctx)))
        return WeightedReward(pairs)
    if name not in _REWARDS and name in _LAZY:
        try:
            _REWARDS[name] = load_entry(_LAZY[name])
        except ImportError as e:
            raise RewardError(
                f"reward {name!r} is model-based and its implementation ({_LAZY[name]}) is not available "
                f"(importing it failed: {e}); available rewards: {', '.join(sorted(_REWARDS))}"
            ) from None
    if name not in _REWARDS:
        raise RewardError(f"unknown reward {name!r}; known rewards: {', '.join(known_rewards())}")
    return _REWARDS[name](spec, ctx)


# -- built-in factories ------------------------------------------------------------------------------------


def _embedding_factory(cls: type, extra: set[str], exemplars: bool = True) -> RewardFactory:
    def factory(spec: dict, ctx: RewardContext) -> Reward:
        name = cls.name
        check_options(spec, {"encoder", "exemplars", "device"} | extra, name)
        if "encoder" not in spec:
            raise RewardError(f"reward {name!r} needs an 'encoder' (e.g. 'codec', 'musicnn')")
        enc = ctx.encoder(spec["encoder"])
        ex = None
        if exemplars:
            if "exemplars" not in spec:
                raise RewardError(f"reward {name!r} needs 'exemplars' (audio_dir, files, corpus + filter, or texts)")
            ex = ctx.exemplar_stats(spec["exemplars"], enc)
        elif "exemplars" in spec:
            raise RewardError(f"reward {name!r} takes no exemplars")
        kw = {k: spec[k] for k in extra if k in spec}
        return cls(enc, ex, device=spec.get("device", ctx.device), **kw)

    return factory


register_reward("per_song_fad", _embedding_factory(PerSongFADReward, set()), reward_class=PerSongFADReward.reward_class)
register_reward("fad", _embedding_factory(FADReward, {"pooling"}), reward_class=FADReward.reward_class)
register_reward("kad", _embedding_factory(KADReward, {"bandwidth"}), reward_class=KADReward.reward_class)
register_reward("vendi", _embedding_factory(VendiReward, {"q"}, exemplars=False), reward_class=VendiReward.reward_class)
register_reward("centroid", _embedding_factory(CentroidReward, set()), reward_class=CentroidReward.reward_class)


# -- scoring helpers for the CLI --------------------------------------------------------------------------


def score_audio(reward: Reward, audio: torch.Tensor, sample_rate: int, prompts: list[str] | None = None) -> RewardResult:
    """Score ``audio[N, C, T]`` (or ``[C, T]`` / ``[T]`` for one clip) in memory."""
    if audio.dim() == 1:
        audio = audio[None, None]
    elif audio.dim() == 2:
        audio = audio[None]
    prompts = list(prompts) if prompts is not None else [""] * audio.shape[0]
    with torch.no_grad():
        return reward(ScoringBatch(audio=audio.float(), sample_rate=int(sample_rate), prompts=prompts))


def format_result_table(result: RewardResult, labels: list[str] | None = None, digits: int = 4) -> str:
    """Plain-text table: one row per sample (label, score, credit) and the set score if any."""
    n = result.scores.shape[0]
    labels = labels if labels is not None else [str(i) for i in range(n)]
    w = max([len("sample")] + [len(s) for s in labels])
    has_credit = result.credit is not None
    head = f"{'sample':<{w}}  {'score':>12}" + (f"  {'credit':>12}" if has_credit else "")
    lines = [f"reward: {result.name}", head, "-" * len(head)]
    for i in range(n):
        row = f"{labels[i]:<{w}}  {float(result.scores[i]):>12.{digits}f}"
        if has_credit:
            row += f"  {float(result.credit[i]):>12.{digits}f}"  # type: ignore[index]
        lines.append(row)
    lines.append("-" * len(head))
    if result.set_score is not None:
        lines.append(f"{'set score':<{w}}  {result.set_score:>12.{digits}f}")
    else:
        fin = result.scores[torch.isfinite(result.scores)]
        lines.append(f"{'mean':<{w}}  {float(fin.mean()) if fin.numel() else float('nan'):>12.{digits}f}")
    return "\n".join(lines)

