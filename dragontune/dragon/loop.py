"""The DRAGON fine-tuning loop (one readable function, `finetune`).

Each round: take prompts from the pool -> generate K samples per prompt with per-sample seeds (each from
the policy with probability 1 - p_reference, else from the frozen reference) -> decode -> score with the
reward -> build D+/D- -> M optimiser steps of Diffusion-DPO or Diffusion-KTO against the frozen
reference (shared sigma and noise) -> log, write demonstrations, checkpoint.

Every random choice of round r is drawn from generators seeded by (seed, r, purpose), so a run resumed
from the checkpoint after round r replays rounds r+1.. exactly: on CPU it ends with the same weights as an
uninterrupted run. Rank-aware: samples are striped over ranks for generation, the full set is gathered
before scoring (set rewards see all generations), demonstrations are striped again for training, gradients
are averaged and the KTO reference point is reduced across processes.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from pathlib import Path

import torch

from dragontune import dist
from dragontune.dragon.builders import Demonstrations, build_demonstrations, validate_combination
from dragontune.dragon.health import LearningMonitor
from dragontune.dragon.objectives import PreferenceObjective, objective_for
from dragontune.dragon.pool import FeaturePool, PoolConfig
from dragontune.dragon.recipes import REWARD_RECIPES, recipe_of_config
from dragontune.errors import ConfigError
from dragontune.generate import SamplerConfig, generate_latents, generate_latents_cached
from dragontune.dragon.accumulate import step_gradient
from dragontune.models.edm import P_MEAN, P_STD
from dragontune.models.lora import LoraSettings
from dragontune.rewards.base import ScoringBatch, nanmean
from dragontune.data.corpus import DataConfig, ensure_corpus
from dragontune.data.prompts import load_prompts
from dragontune.optim import OptimConfig, flatten_optimizer, unflatten_optimizer
from dragontune.rundir import fault_point, write_demo_record
from dragontune.seeds import derived_seed, gen_for
from dragontune.utils import atomic_write_json, log, resolve_device, sha256_tensors


@dataclasses.dataclass
class DragonOptimConfig(OptimConfig):
    """Adam settings with the paper's DRAGON values as defaults (lr 3e-6, gradient clip 45, no warm-up)."""

    lr: float = 3e-6
    beta2: float = 0.999
    grad_clip: float = 45.0
    warmup_steps: int = 0


@dataclasses.dataclass
class DragonConfig:
    out_dir: str = "runs/dragon"
    baseline: str = ""                 # model checkpoint to start from and use as the frozen reference ("" = committed baseline),
    #                                    or a folder written by diffusers' StableAudioPipeline.save_pretrained
    model_options: dict = dataclasses.field(default_factory=dict)  # Stable Audio folder: seconds_start, seconds_total
    lora: LoraSettings = dataclasses.field(default_factory=LoraSettings)  # rank > 0: train LoRA adapters only
    reference: str = "auto"            # auto (adapters_off with LoRA, else copy) | copy (frozen deep copy) | adapters_off
    micro_batch: int = 0               # per-process samples per forward/backward (gradient accumulation); 0 = all at once
    grad_checkpointing: bool = False   # activation checkpointing of the transformer blocks in training
    seed: int = 0
    device: str = "auto"
    precision: str = "auto"            # auto: bf16 autocast on CUDA, fp32 on CPU
    threads: int = 0
    rounds: int = 20
    prompts_per_round: int = 8         # across all processes
    k_per_prompt: int = 4              # samples per prompt (K)
    p_reference: float = 0.1           # probability that a demonstration comes from the frozen reference
    updates_per_round: int = 4         # optimiser steps per round (M)
    batch_per_update: int = 16         # pairs (DPO) or labelled samples (KTO) per optimiser step, all processes
    loss: str = "auto"                 # dpo | kto | auto (the recipe of the reward's class, dragon/recipes.py)
    builder: str = "auto"              # paired | unpaired | pool | loo | greedy | split | auto
    set_reward_lr: float = 2e-5        # lr of the set-reward recipe (builder auto, dist_to_dist reward); 0 = optim.lr
    kto_lr: float = 1e-5               # lr of the KTO recipe (loss auto with k_per_prompt=1); 0 = optim.lr
    # reward name -> its recipe entries (lr, batch_per_update, all_pairs, margin; builder auto); {} = none
    reward_recipes: dict = dataclasses.field(default_factory=lambda: {k: dict(v) for k, v in REWARD_RECIPES.items()})
    builder_options: dict = dataclasses.field(default_factory=dict)
    pool: PoolConfig = dataclasses.field(default_factory=PoolConfig)   # credit pool of builder=pool
    beta: float = 5000.0
    kto_w_desirable: float = 1.0
    kto_w_undesirable: float = 1.0
    kto_reference: str = "clamped_mean"   # clamped_mean (Diffusion-KTO: z = max(0, mean g)) | mean
    kto_utility: str = "sigmoid"          # sigmoid (KTO) | log_sigmoid (Diffusion-KTO's loss-averse value function)
    kto_noise: str = "independent"        # independent (a sigma and noise per sample) | paired (k-th D+ and D- share them) | shared (one per step)
    cond_dropout: float = 0.1          # kept on during DRAGON training, as in the paper
    p_mean: float = P_MEAN
    p_std: float = P_STD
    reward: dict = dataclasses.field(default_factory=lambda: {
        "name": "per_song_fad", "encoder": "codec",
        "exemplars": {"corpus": "data/corpus", "filter": "instrument=piano,quality=clean"}})
    watch: list[dict] = dataclasses.field(default_factory=list)   # rewards logged, not optimised
    prompts: str = "corpus:train"      # corpus:SPLIT or a text file with one prompt per line
    eval_prompts: str = "corpus:test"
    eval_n_prompts: int = 16          # held-out prompts evaluated in the loop (0 = off)
    eval_every: int = 5                # rounds between held-out evaluations (0 = only first and last)
    ckpt_every: int = 5
    write_demos: bool = True
    sampler: SamplerConfig = dataclasses.field(default_factory=lambda: SamplerConfig(steps=40))
    eval_sampler: SamplerConfig = dataclasses.field(default_factory=lambda: SamplerConfig(steps=40))
    optim: DragonOptimConfig = dataclasses.field(default_factory=DragonOptimConfig)
    data: DataConfig = dataclasses.field(default_factory=DataConfig)


# ----------------------------------------------------------------------------------------------------------
# determinism helpers


def round_prompts(pool: list[str], seed: int, rnd: int, n: int) -> list[str]:
    """Prompts of round ``rnd``: consecutive slices of per-epoch permutations of the pool."""
    out = []
    start = rnd * n
    for j in range(start, start + n):
        epoch, pos = divmod(j, len(pool))
        perm = torch.randperm(len(pool), generator=gen_for(seed, "prompt-epoch", epoch))
        out.append(pool[int(perm[pos])])
    return out


# ----------------------------------------------------------------------------------------------------------
# checkpoints


def _save_checkpoint(run, rnd: int, policy, opt, credit_pool: FeaturePool | None = None,
                     extra: dict | None = None) -> None:
    """Checkpoint ``round-NNNNN``: the policy, and the optimiser state with the credit pool beside it (training
    state: a resumed run must see the same pool); ``extra`` adds named parts ``{part: (tensors, metadata)}``."""
    tensors, ometa = flatten_optimizer(opt)
    if credit_pool is not None:
        tensors = {**tensors, **credit_pool.state_tensors()}
    parts = {"model": policy.checkpoint_state(),
             "state": (tensors, {"state": json.dumps({"round": rnd, "optim": ometa}, default=str)})}
    parts.update(extra or {})
    run.save_checkpoint(f"round-{rnd:05d}", parts, {"round": rnd}, fault_tag=str(rnd))


def _load_checkpoint(run, policy, opt, credit_pool: FeaturePool | None = None) -> tuple[int, dict]:
    """Load the latest checkpoint into ``policy``, ``opt`` (and the credit pool); returns its round (0: there is
    none yet) and all its parts."""
    ck = run.load_checkpoint()
    if ck is None:
        return 0, {}
    info, parts = ck
    policy.load_checkpoint_state(parts["model"][0], parts["model"][1], str(run.ckpt_dir / info["model"]))
    tensors, meta = parts["state"]
    if credit_pool is not None:
        credit_pool.load_state_tensors(tensors, str(run.ckpt_dir / info["state"]))
    tensors = {k: v for k, v in tensors.items() if not k.startswith("pool.")}
    opt.load_state_dict(unflatten_optimizer(tensors, json.loads(meta["state"])["optim"]))
    return int(info["round"]), parts


# ----------------------------------------------------------------------------------------------------------
# the loop


def finetune(cfg: DragonConfig, resume: bool = False, stop_after_round: int | None = None,
             overwrite: bool = False) -> Path:
    """Run DRAGON; returns the path of the final policy checkpoint. ``stop_after_round`` is for tests.

    ``resume`` continues the run in ``cfg.out_dir`` (its config must match); ``overwrite`` replaces a run there.
    """
    from tqdm.auto import tqdm

    from dragontune.checks import check_finetune
    from dragontune.rewards.registry import RewardContext, build_reward
    from dragontune.rundir import RunDir

    # -- set-up and checks
    check_finetune(cfg)
    device = resolve_device(cfg.device)
    dist.init_from_env(device)
    device = dist.local_device(device)
    rank, world = dist.rank(), dist.world()
    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)
    if dist.is_main():  # rank 0 owns the run folder: lock, identity check, config.yaml
        run = RunDir.open(cfg.out_dir, dataclasses.asdict(cfg), kind="finetune", resume=resume, overwrite=overwrite)
    else:
        run = RunDir(Path(cfg.out_dir), kind="finetune")
    dist.barrier()
    out = run.path
    use_bf16 = (cfg.precision == "bf16") or (cfg.precision == "auto" and device.type == "cuda")
    per_prompt, n_prompts = cfg.k_per_prompt, cfg.prompts_per_round
    n_samples = n_prompts * per_prompt
    if per_prompt < 1 or n_prompts < 1:
        raise ConfigError(f"k_per_prompt={per_prompt} and prompts_per_round={n_prompts} must be >= 1")
    if not 0.0 <= cfg.p_reference <= 1.0:
        raise ConfigError(f"p_reference={cfg.p_reference} must be in [0, 1]")
    if cfg.batch_per_update < world:
        raise ConfigError(f"batch_per_update={cfg.batch_per_update} is smaller than the {world} processes")
    from dragontune.models.loading import load_diffusion_model
    from dragontune.models.lora import add_lora, make_reference

    policy = load_diffusion_model(cfg.baseline or None, device=device, options=cfg.model_options)
    policy.train_sigma(1, torch.Generator(), cfg.p_mean, cfg.p_std)  # refuses options this model does not take
    ref_mode = cfg.reference if cfg.reference != "auto" else ("adapters_off" if cfg.lora.enabled else "copy")
    reference = policy.copy_frozen() if ref_mode == "copy" else None  # before the adapters: a copy of the base only
    if cfg.lora.enabled:
        add_lora(policy, cfg.lora, policy.family, seed=derived_seed(cfg.seed, "lora-init") % (2 ** 63))
    if reference is None:
        reference = make_reference(policy, ref_mode)
    if cfg.grad_checkpointing:
        policy.set_grad_checkpointing(True)
    corpus = ensure_corpus(cfg.data)
    ctx = RewardContext(codec=policy.codec, device=device)
    reward = build_reward(cfg.reward, ctx)
    watch = [build_reward(w, ctx) for w in cfg.watch]
    recipe = recipe_of_config(cfg, reward.reward_class)
    if recipe.settings:  # the recipe's settings; config.yaml keeps what the user wrote (resume re-derives them)
        cfg = dataclasses.replace(cfg, **recipe.settings)
    builder, loss_name, builder_options = recipe.builder, recipe.loss, recipe.options
    lr = recipe.lr if recipe.lr is not None else cfg.optim.lr
    validate_combination(reward.reward_class, builder, loss_name, per_prompt, builder_options)
    objective = objective_for(loss_name, cfg)
    if recipe.chosen:
        log.info("recipe for a %s reward: %s", reward.reward_class, recipe.describe())
    if recipe.warning:
        log.warning("recipe: %s", recipe.warning)
    pool_prompts = load_prompts(cfg.prompts, corpus)
    eval_pool = load_prompts(cfg.eval_prompts, corpus, limit=cfg.eval_n_prompts) if cfg.eval_n_prompts > 0 else []
    credit_pool = FeaturePool(cfg.pool.size) if builder == "pool" and dist.is_main() else None  # rank 0 scores
    feat_dim = int(getattr(getattr(reward, "encoder", None), "dim", 0) or 0)
    if credit_pool is not None and feat_dim:
        cfg.pool.check_budget(8.0 * feat_dim, f"{feat_dim}-d clip vectors")  # before any generation
    opt = torch.optim.Adam(list(policy.parameters()), lr=lr, betas=(cfg.optim.beta1, cfg.optim.beta2),
                           weight_decay=cfg.optim.weight_decay)
    ref_hash = sha256_tensors(reference.fingerprint_state())
    start, ckpt_parts = _load_checkpoint(run, policy, opt, credit_pool) if resume else (0, {})
    if resume:
        log.info("resumed after round %d", start) if start else log.info("--resume: no checkpoint yet; from round 0")
    if dist.is_main():
        run.truncate_metrics("round", start if start > 0 else -1)  # round 0 is written again when start is 0
    arith = {"processes": world, "prompts_per_round": n_prompts, "k_per_prompt": per_prompt,
             "samples_per_round": n_samples, "samples_per_process": math.ceil(n_samples / world),
             "updates_per_round": cfg.updates_per_round,
             "batch_per_update": cfg.batch_per_update, "batch_per_process": cfg.batch_per_update // world,
             "demo_steps": cfg.sampler.steps, "eval_steps": cfg.eval_sampler.steps,
             "reward": reward.name, "reward_class": reward.reward_class, "builder": builder, "loss": loss_name,
             "builder_options": builder_options, "recipe": recipe.describe() if recipe.chosen else "explicit",
             "pool_size": cfg.pool.size if credit_pool is not None else 0, "lr": lr,
             "scores_latents": reward.scores_latents_of(policy.codec.id)}
    if cfg.batch_per_update % world:
        via = f" (from reward_recipes.{reward.name})" if "batch_per_update" in recipe.settings else ""
        raise ConfigError(f"batch_per_update={cfg.batch_per_update}{via} must be divisible by the {world} processes")
    log.info("DRAGON batch arithmetic: %s", json.dumps(arith))
    if dist.is_main():
        atomic_write_json(out / "batch_arithmetic.json", arith)

    def generate(prompts: list[str], seeds: list[int], from_ref: torch.Tensor) -> torch.Tensor:
        """This rank's stripe from the policy or the reference per sample, then the full set on every rank."""
        n = len(prompts)
        owners = torch.arange(n) % world
        mine = (owners == rank).nonzero().flatten()
        lat_mine = torch.zeros((len(mine),) + policy.latent_shape)
        for src, model in ((False, policy), (True, reference)):
            sel = [i for i, j in enumerate(mine.tolist()) if bool(from_ref[j]) == src]
            if sel:
                js = [int(mine[i]) for i in sel]
                lat_mine[sel] = generate_latents(model, [prompts[j] for j in js], [seeds[j] for j in js],
                                                 cfg.sampler, autocast_bf16=use_bf16)
        return dist.gather_rows(lat_mine.to(device), owners).cpu()

    def latent_batch(latents: torch.Tensor, prompts: list[str]) -> ScoringBatch:
        # audio is decoded on first use only: rewards in the codec's own space score the latents directly
        return ScoringBatch(None, policy.sample_rate, prompts, latents=latents, codec=policy.codec,
                            decode=lambda z: policy.decode(z.to(device)).cpu())

    def evaluate(model) -> dict:
        if not eval_pool or not dist.is_main():  # eval_n_prompts: 0 turns it off; rank 0 only
            return {}
        seeds = [derived_seed(cfg.seed, "eval", i) for i in range(len(eval_pool))]
        lat = generate_latents(model, eval_pool, seeds, cfg.eval_sampler, autocast_bf16=use_bf16)
        batch = ScoringBatch(model.decode(lat), model.sample_rate, eval_pool)
        res = {f"eval/{reward.name}": reward.set_score(batch)}
        for w in watch:
            res[f"eval/{w.name}"] = w.set_score(batch)
        return res

    mf = run if dist.is_main() else None
    if start == 0 and mf is not None:
        rec = {"round": 0, **evaluate(policy)}
        mf.append_metrics(rec)
        log.info("round 0 (baseline) %s", _fmt(rec))
    if builder == "pool" and start == 0 and cfg.pool.warmup_clips > 0:  # every rank generates its stripe
        # fill the pool with the frozen reference's generations before round 1 (round-0 statistics at full size)
        t0 = time.time()
        n_w = cfg.pool.warmup_clips
        g = gen_for(cfg.seed, "pool-warmup")
        w_prompts = [pool_prompts[int(i)] for i in torch.randint(len(pool_prompts), (n_w,), generator=g)]
        w_seeds = [derived_seed(cfg.seed, "pool-warmup", j) for j in range(n_w)]
        if cfg.pool.cache_dir and world == 1:  # the baseline's generations: the same for every reward
            w_lat = generate_latents_cached(reference, cfg.baseline or None, w_prompts, w_seeds, cfg.sampler,
                                            cfg.pool.cache_dir)
        else:
            w_lat = generate(w_prompts, w_seeds, torch.ones(n_w, dtype=torch.bool))
        if credit_pool is not None:
            w_feats = reward.features(latent_batch(w_lat, w_prompts))
            cfg.pool.check_budget(w_feats.nbytes() / max(1, w_feats.n), "these features")
            credit_pool.push(w_feats)
            log.info("credit pool: %d reference generations in %.1f s", len(credit_pool), time.time() - t0)
    monitor = LearningMonitor(objective.name)
    training = Training(policy, reference, opt, objective, lr, use_bf16)
    skipped = 0
    bar = tqdm(total=cfg.rounds, initial=start, desc="dragon", dynamic_ncols=True, disable=None if dist.is_main() else True)
    for rnd in range(start + 1, cfg.rounds + 1):
        t0 = time.time()
        # ---- 1. prompts, seeds, sources (identical on every rank)
        prompts = [p for p in round_prompts(pool_prompts, cfg.seed, rnd, n_prompts) for _ in range(per_prompt)]
        groups = torch.arange(n_prompts).repeat_interleave(per_prompt)
        seeds = [derived_seed(cfg.seed, "sample", rnd, j) for j in range(n_samples)]
        from_ref = torch.rand(n_samples, generator=gen_for(cfg.seed, "source", rnd)) < cfg.p_reference
        # ---- 2. generate this rank's stripe, then gather the full set
        latents = generate(prompts, seeds, from_ref)
        t1 = time.time()
        _fault_point(rnd, "generate")
        # ---- 3.-4. score and build D+ / D- on rank 0 only (the batch is embedded once; set rewards see the
        # whole gathered set); every rank then trains on rank 0's demonstrations
        rec = {"round": rnd}
        scores = credit = None
        demos = None
        if dist.is_main():
            batch = latent_batch(latents, prompts)
            feats = reward.features(batch)
            result = reward.score(feats)
            scores = result.scores.double()
            pol_mask = ~from_ref
            rec["reward"] = _f(nanmean(scores[pol_mask])) if result.set_score is None else None
            if result.set_score is not None:
                rec["set_reward"] = float(result.set_score)
            credit = result.credit
            if credit_pool is not None:
                tc = time.time()
                credit = credit_pool.credit(reward, feats)
                rec["pool/size"] = len(credit_pool)
                rec["pool/set_reward"] = reward.set_value(credit_pool.features)
                rec["time/credit"] = time.time() - tc
                credit_pool.push(feats)
            pol_idx = pol_mask.nonzero().flatten()
            for w in watch:
                rec[f"watch/{w.name}"] = w.set_score(batch.subset(pol_idx))
            rec["decoded"] = batch.n_decoded > 0
            n_nan = int(torch.isnan(scores).sum())
            rec["n_nan_dropped"] = n_nan
            if n_nan == n_samples:
                skipped += 1
                log.warning("round %d: the reward returned NaN for all %d samples; round skipped (%d so far)",
                            rnd, n_samples, skipped)
            else:
                set_score = None
                if builder in ("greedy", "split"):
                    set_score = lambda idx: reward.set_value(feats.subset(idx))  # noqa: E731
                demos = build_demonstrations(reward.reward_class, builder, loss_name, scores, groups,
                                             credit=credit, set_score=set_score,
                                             generator=gen_for(cfg.seed, "split", rnd), **builder_options)
                if demos.is_empty():
                    skipped += 1
                    log.warning("round %d: no demonstrations (all ties?); round skipped (%d so far)", rnd, skipped)
                    demos = None
                if n_nan:
                    log.info("round %d: %d samples with NaN reward dropped", rnd, n_nan)
        demos, skipped = dist.broadcast_object((demos, skipped))
        rec["skipped_rounds"] = skipped
        t2 = time.time()
        _fault_point(rnd, "score")
        # ---- 5. train
        data = RoundData(rnd, prompts, seeds, from_ref, latents, scores, credit, demos)
        if demos is not None:
            stats = _train_round(cfg, training, data)
            rec.update(stats)
            rec.update({f"demo/{k}": v for k, v in demos.info.items() if isinstance(v, (int, float))})
            if dist.is_main():
                rec.update(monitor.update(rnd, stats))
        t3 = time.time()
        rec.update({"time/generate": t1 - t0, "time/score": t2 - t1, "time/train": t3 - t2})
        if dist.is_main() and cfg.write_demos:
            _write_demos(out, data, cfg.sampler.steps)
        # ---- 6. evaluate, log, checkpoint
        if (cfg.eval_every > 0 and rnd % cfg.eval_every == 0) or rnd == cfg.rounds:
            rec.update(evaluate(policy))
        rec["ref_unchanged"] = sha256_tensors(reference.fingerprint_state()) == ref_hash
        if not rec["ref_unchanged"]:
            raise RuntimeError("the frozen reference model changed during training; this is a bug")
        if mf is not None:
            mf.append_metrics(rec)
            log.info("round %d %s", rnd, _fmt(rec))
        bar.update(1)
        if (cfg.ckpt_every > 0 and rnd % cfg.ckpt_every == 0) or rnd == cfg.rounds:
            if dist.is_main():
                _save_checkpoint(run, rnd, policy, opt, credit_pool)
            dist.barrier()
        if stop_after_round is not None and rnd >= stop_after_round:
            break
    bar.close()
    final = policy.trained_path(out)
    if dist.is_main():
        from dragontune.rundir import disk_full_guard

        with disk_full_guard(str(final), "the last checkpoint is complete (resume to write the final model)"):
            policy.save_trained(out)
    run.close()
    return final


def _fault_point(rnd: int, where: str) -> None:
    """Testing hook: ``DRAGONTUNE_FAULT=ROUND:WHERE`` sends SIGKILL to this process at that point."""
    fault_point(f"{rnd}:{where}")


@dataclasses.dataclass
class RoundData:
    """One round's generations and what the reward made of them: what training and the demo record take."""

    index: int
    prompts: list[str]                  # one per sample (each prompt K times)
    seeds: list[int]
    from_reference: torch.Tensor        # [N] bool: generated by the frozen reference
    latents: torch.Tensor               # [N, C, F], the full gathered set, CPU
    scores: torch.Tensor | None = None  # [N] reward (rank 0 only)
    credit: torch.Tensor | None = None  # [N] set-reward credit (rank 0 only; None for per-sample rewards)
    demos: Demonstrations | None = None


@dataclasses.dataclass
class Training:
    """What the optimiser steps of every round share."""

    policy: object
    reference: object
    optimizer: torch.optim.Optimizer
    objective: PreferenceObjective
    lr: float
    bf16: bool


def _train_round(cfg, training: Training, data: RoundData) -> dict:
    """M optimiser steps on this round's demonstrations; returns averaged statistics."""
    rank, world = dist.rank(), dist.world()
    policy, objective, opt = training.policy, training.objective, training.optimizer
    g = gen_for(cfg.seed, "train", data.index)
    items = objective.items(data.demos)
    n_items = items.shape[0]
    per_step = cfg.batch_per_update
    order = torch.cat([torch.randperm(n_items, generator=g)
                       for _ in range(math.ceil(cfg.updates_per_round * per_step / n_items))])
    acc: dict[str, list[float]] = {}
    policy.trainable.train()
    params = list(policy.parameters())
    for m in range(cfg.updates_per_round):
        chunk = items[order[m * per_step:(m + 1) * per_step]]
        b = chunk.shape[0]
        # shared randomness for the whole step, drawn identically on every rank, arranged, then striped
        sigma = policy.train_sigma(b, g, cfg.p_mean, cfg.p_std)
        noise = torch.randn((b,) + tuple(data.latents.shape[1:]), generator=g)
        drop = torch.rand(b, generator=g) < cfg.cond_dropout
        sigma, noise, drop = objective.arrange(chunk, sigma, noise, drop)
        mine = torch.arange(b)[torch.arange(b) % world == rank]
        chunk = chunk[mine]
        ids, sigma, noise, drop = objective.samples(chunk, sigma[mine], noise[mine], drop[mine])
        x0 = data.latents[ids].to(policy.device)
        cond = policy.drop_condition(policy.cond([data.prompts[int(i)] for i in ids]), drop.to(policy.device))
        step = (data.index - 1) * cfg.updates_per_round + m + 1
        for grp in opt.param_groups:
            grp["lr"] = training.lr * min(1.0, step / max(1, cfg.optim.warmup_steps))
        opt.zero_grad(set_to_none=True)
        loss, st = step_gradient(policy, training.reference, x0, noise.to(policy.device), sigma.to(policy.device),
                                 cond, objective.chunk_loss(chunk, policy.device), cfg.micro_batch, training.bf16)
        dist.average_gradients(params)
        # the norm before clipping is what is logged; grad_clip <= 0 means no clipping
        gn = torch.nn.utils.clip_grad_norm_(params,
                                            cfg.optim.grad_clip if cfg.optim.grad_clip > 0 else float("inf"))
        opt.step()
        if m == 0:
            _fault_point(data.index, "train")
        st = dict(st)
        st["grad_norm"] = float(gn)
        st["loss"] = float(loss.detach())
        for k, v in st.items():
            if isinstance(v, (int, float)):
                acc.setdefault(k, []).append(float(v))
    local = {f"train/{k}": nanmean(torch.tensor(v, dtype=torch.float64)) for k, v in acc.items()}
    # the logged statistics are the run's, not rank 0's: counts summed over ranks, the rest averaged
    return dist.reduce_stats(local, sum_keys=frozenset(f"train/{k}" for k in objective.count_keys))


def _write_demos(out: Path, data: RoundData, steps: int) -> None:
    n = len(data.prompts)
    label, pair_of = data.demos.per_sample(n) if data.demos is not None else (torch.zeros(n, dtype=torch.int64),
                                                                              [None] * n)
    rows = []
    for j in range(n):
        rows.append({
            "index": j, "prompt": data.prompts[j], "seed": data.seeds[j],
            "source": "reference" if bool(data.from_reference[j]) else "policy", "steps": steps,
            "reward": _f(data.scores[j]), "credit": _f(data.credit[j]) if data.credit is not None else None,
            "label": int(label[j]), "pair": pair_of[j],
        })
    write_demo_record(out / "demos", f"round-{data.index:04d}", {"latents": data.latents}, {"round": str(data.index)},
                      rows)


def _f(v) -> float | None:
    v = float(v)
    return v if math.isfinite(v) else None


def _fmt(rec: dict) -> str:
    return " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in rec.items() if k != "round")
