"""Recipes per reward class: which D+/D- builder and loss `finetune` uses when the config says ``auto``.

With only ``reward.*`` set, a run picks what was measured to work for that reward's class (docs/results.md,
docs/dragon.md hold the runs behind each row). A builder or loss the user set explicitly is kept as it is and
checked by :func:`dragontune.dragon.builders.validate_combination` (refusal is only for explicit choices).

    reward class       builder   loss   lr               why
    instance           paired    dpo    optim.lr         best vs worst of K samples per prompt; the demo's recipe
    instance_to_dist   paired    dpo    optim.lr         same (per-song FAD, centroid)
    dist_to_dist       pool      dpo    set_reward_lr    credit = change of the set reward of a pool of recent
                                                         generations (>= 256 clips) when the sample joins it;
                                                         within-prompt best vs worst. At the per-sample rewards'
                                                         lr 5e-5 full-set FAD toward the calm exemplars degraded
                                                         the model; at 2e-5 it improved (docs/results.md)

A reward can have its own entry in the table (``reward_recipes`` of the config, by reward name, builder ``auto``;
default :data:`REWARD_RECIPES`), setting its ``lr``, its ``batch_per_update`` and the paired builder's options
(``all_pairs``, ``margin``; the user's ``builder_options`` win):

- ``clap_score``: lr 2e-5. Its preferences are prompt-specific (which of four clips matches its own caption
  better) and weak against the drift every fine-tune causes on it (in docs/results.md every run lowers it as a
  side effect); at optim.lr 5e-5 it got worse on held-out prompts (28 % and, with K = 8, 38 % of prompts), at
  2e-5 it did not.
- ``aesthetics``: every pair of a prompt's four samples (``all_pairs``: up to 6 instead of best vs worst) and 32
  pairs per step instead of 8 (a round's training is ~15 % of its time). Chosen on the validation prompts (three
  training seeds: 69 % of prompts improved against 47 % for best vs worst at 8 pairs per step); on the test
  prompts 72 % against 47 % (docs/results.md). For the rest of the class it was not chosen on validation
  prompts, and on the test prompts (three seeds each) it was mixed: ``clap_score`` 56 % against 54 %, per-song
  FAD codec/calm 83 % against 90 %, the other per-song FADs and the centroid 2-7 points higher; so it is this
  reward's entry, not the class's.

With one sample per prompt (``k_per_prompt=1``) pairs are impossible: ``auto`` then takes KTO with labels
against the batch median instead of the paired DPO row, in the variant that kept learning here
(:data:`KTO_RECIPE`: loss-averse log-sigmoid value function, reference point = the step's mean implicit reward,
one sigma and noise draw per step) at ``kto_lr`` (1e-5). Diffusion-KTO as published (sigmoid, z clamped at 0)
saturated and made the model worse at every learning rate tried (docs/dragon.md, "KTO"). An explicit
``loss: kto`` keeps the config's own ``kto_*`` values.
"""

from __future__ import annotations

import dataclasses

from dragontune.errors import ConfigError

AUTO = "auto"

#: the KTO settings the table uses when it picks KTO (measured in docs/dragon.md, "KTO")
KTO_RECIPE = {"kto_utility": "log_sigmoid", "kto_reference": "mean", "kto_noise": "shared"}

#: reward name -> its entries of the recipe (the default of ``DragonConfig.reward_recipes``; measured in
#: docs/results.md): ``lr``, ``batch_per_update`` and the paired builder's options
REWARD_RECIPES = {"clap_score": {"lr": 2e-5}, "aesthetics": {"all_pairs": True, "batch_per_update": 32}}

#: what an entry of ``reward_recipes`` may set
REWARD_RECIPE_KEYS = ("lr", "batch_per_update", "all_pairs", "margin")
_BUILDER_KEYS = ("all_pairs", "margin")

#: reward class -> (builder, loss)
RECIPES = {
    "instance": ("paired", "dpo"),
    "instance_to_dist": ("paired", "dpo"),
    "dist_to_dist": ("pool", "dpo"),
}


@dataclasses.dataclass
class Recipe:
    builder: str
    loss: str
    options: dict
    #: True when at least one of builder / loss came from the table
    chosen: bool
    #: learning rate of the recipe (None: the config's optim.lr)
    lr: float | None = None
    #: config fields the recipe sets (the KTO variant, a reward's batch_per_update), {} when none
    settings: dict = dataclasses.field(default_factory=dict)
    #: what the user should know about this choice (logged as a warning), "" when nothing
    warning: str = ""

    def describe(self) -> str:
        opts = f" {self.options}" if self.options else ""
        sets = "".join(f" {k}={v}" for k, v in self.settings.items())
        lr = f" lr={self.lr:g}" if self.lr is not None else ""
        return f"builder={self.builder} loss={self.loss}{opts}{sets}{lr}"


def resolve_recipe(reward_class: str, builder: str, loss: str, k_per_prompt: int, options: dict | None,
                   set_reward_lr: float = 0.0, kto_lr: float = 0.0, reward_name: str | None = None,
                   reward_recipes: dict | None = None) -> Recipe:
    """Fill ``auto`` builder / loss from :data:`RECIPES` for ``reward_class``; explicit values stay. With an
    ``auto`` builder, a set reward trains at ``set_reward_lr`` and a reward named in ``reward_recipes`` with its
    entry (its lr; its batch and builder options where its class's row is used); when ``auto`` loss becomes KTO,
    it trains with :data:`KTO_RECIPE` at ``kto_lr`` (any lr 0: the config's optim.lr)."""
    if reward_class not in RECIPES:
        raise ConfigError(f"unknown reward class {reward_class!r}; known: {', '.join(RECIPES)}")
    opts = dict(options or {})
    table_builder, table_loss = RECIPES[reward_class]
    chosen = builder == AUTO or loss == AUTO
    b = table_builder if builder == AUTO else builder
    if loss == AUTO:
        if b == "unpaired":  # an explicit unpaired builder labels samples: KTO is its only loss
            lo = "kto"
        elif b in ("paired",) and k_per_prompt < 2:
            b, lo = ("unpaired" if builder == AUTO else b), "kto"
        elif k_per_prompt < 2 and b in ("pool", "loo", "greedy", "split"):
            lo = "kto"
        else:
            lo = table_loss
        if lo == "kto" and k_per_prompt < 2 and b in ("unpaired", "pool", "loo") and "threshold" not in opts:
            opts["threshold"] = "batch_median"  # a prompt median of one sample labels nothing
    else:
        lo = loss
    lr = set_reward_lr if (reward_class == "dist_to_dist" and builder == AUTO and set_reward_lr > 0) else None
    own = dict((reward_recipes or {}).get(reward_name) or {}) if (builder == AUTO and reward_name) else {}
    if "lr" in own:
        lr = float(own["lr"])
    settings, warning = {}, ""
    if (b, lo) == (table_builder, table_loss):  # the class's row (not the KTO fallback): the reward's batch, options
        opts = {**{k: own[k] for k in _BUILDER_KEYS if k in own}, **opts}
        if "batch_per_update" in own:
            settings["batch_per_update"] = int(own["batch_per_update"])
    if loss == AUTO and lo == "kto":
        settings = dict(KTO_RECIPE)
        lr = kto_lr if kto_lr > 0 else None
        warning = ("one sample per prompt: the KTO recipe; paired Diffusion-DPO (k_per_prompt >= 2) moved the "
                   "reward further in every comparison measured here (docs/dragon.md, 'KTO')")
    return Recipe(builder=b, loss=lo, options=opts, chosen=chosen, lr=lr, settings=settings, warning=warning)


def recipe_of_config(cfg, reward_class: str) -> Recipe:
    """:func:`resolve_recipe` with everything it needs from a ``DragonConfig`` (the loop and the checks before
    work ask the same question)."""
    name = cfg.reward.get("name") if isinstance(cfg.reward, dict) else cfg.reward
    return resolve_recipe(reward_class, cfg.builder, cfg.loss, cfg.k_per_prompt, cfg.builder_options,
                          cfg.set_reward_lr, cfg.kto_lr, name, cfg.reward_recipes)
