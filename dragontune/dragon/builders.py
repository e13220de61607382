"""Demonstration builders: turn reward scores into D+ / D− (METHOD.md §2).

A round scores N generated samples; ``groups[i]`` is the prompt index of sample i (a prompt has K
samples). A builder returns :class:`Demonstrations`:

* for the DPO loss, ``pairs[P, 2]`` = (winner index, loser index), both from the same prompt;
* for the KTO loss, ``labels[N]`` int8: +1 desirable (D+), −1 undesirable (D−), 0 unused.

Builders (config ``dragon.builder``) and losses (``dragon.loss``)::

    reward class                 builder    loss       needs
    instance, instance_to_dist   paired     dpo        K >= 2
    instance, instance_to_dist   unpaired   kto
    dist_to_dist                 pool       dpo        K >= 2  (pool credits feed ``paired``)
    dist_to_dist                 pool       kto                (pool credits feed ``unpaired``)
    dist_to_dist                 loo        dpo        K >= 2  (credits feed ``paired``)
    dist_to_dist                 loo        kto                (credits feed ``unpaired``)
    dist_to_dist                 greedy     dpo | kto  K >= 2 for dpo
    dist_to_dist                 split      dpo | kto  K >= 2 for dpo

Scores are float64, higher is better; NaN marks an unscorable sample, which is dropped and counted;
±inf is an error (a reward must report NaN instead). A credit builder (pool, loo) warns naming the samples
whose credit is NaN and refuses a round whose credits are all NaN (RewardError), so nothing trains on them.
Differences within a relative ``SET_SCORE_RTOL`` (1e-10) are rounding and count as ties, so a set of identical
clips gives no demonstrations. All tie-breaking is by lowest sample index, so a builder is a deterministic
function of its inputs (and of the generator for ``split``).
"""

from __future__ import annotations

import dataclasses
import itertools
from typing import Callable, Mapping

import torch

from dragontune.errors import ConfigError, RewardError
from dragontune.utils import log

__all__ = [
    "Demonstrations",
    "paired",
    "unpaired",
    "greedy",
    "split",
    "build_demonstrations",
    "validate_combination",
    "valid_combinations",
    "BUILDERS",
    "LOSSES",
    "REWARD_CLASSES",
]

REWARD_CLASSES = ("instance", "instance_to_dist", "dist_to_dist")
BUILDERS = ("paired", "unpaired", "pool", "loo", "greedy", "split")
#: builders whose per-sample signal is a credit computed outside the builder (then paired / unpaired)
CREDIT_BUILDERS = ("pool", "loo")
LOSSES = ("dpo", "kto")
THRESHOLDS = ("prompt_median", "batch_median", "fraction")

SetScore = Callable[[torch.Tensor], float]


@dataclasses.dataclass
class Demonstrations:
    """D+ / D− of one round. Exactly one of ``pairs`` (DPO) and ``labels`` (KTO) is set."""

    #: ``[P, 2]`` int64, (winner, loser) sample indices, for DPO; else None
    pairs: torch.Tensor | None
    #: ``[N]`` int8, +1 desirable, −1 undesirable, 0 unused, for KTO; else None
    labels: torch.Tensor | None
    #: ``[N]`` bool, samples that were usable (finite score); dropped ones are never in pairs/labels
    kept: torch.Tensor
    #: number of samples dropped for a NaN score
    n_dropped_nan: int
    #: numbers for logs (builder, threshold, set scores of D+/D−, sizes, ...)
    info: dict

    @property
    def n(self) -> int:
        """Number of demonstrations: pairs for DPO, labelled samples for KTO."""
        if self.pairs is not None:
            return int(self.pairs.shape[0])
        return int((self.labels != 0).sum())

    def is_empty(self) -> bool:
        return self.n == 0

    def per_sample(self, n: int) -> tuple[torch.Tensor, list[int | None]]:
        """``(label [n] int64, pair [n])`` for a record of all ``n`` samples: +1 in D+ (a pair's winner), −1 in D−
        (its loser), 0 unused; ``pair[j]`` the index of sample j's pair, or None (always None for labels)."""
        pair_of: list[int | None] = [None] * n
        if self.pairs is None:
            return self.labels.long(), pair_of
        label = torch.zeros(n, dtype=torch.int64)
        for p, (w, l) in enumerate(self.pairs.tolist()):
            label[w], label[l] = 1, -1
            pair_of[w] = pair_of[l] = p
        return label, pair_of

    def kto_inputs(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(indices, desirable)`` of the labelled samples, ascending index, for ``diffusion_kto_loss``."""
        if self.labels is None:
            raise ValueError("these demonstrations are pairs (DPO); kto_inputs needs labels (KTO)")
        idx = torch.nonzero(self.labels != 0).flatten()
        return idx, self.labels[idx] > 0


# --------------------------------------------------------------------------------------------------
# input checks


def _check_groups(groups: torch.Tensor, n: int | None = None) -> torch.Tensor:
    if not isinstance(groups, torch.Tensor) or groups.dim() != 1:
        raise ValueError(f"groups must be a 1-D tensor of prompt indices, got {getattr(groups, 'shape', groups)}")
    if groups.is_floating_point() or groups.dtype == torch.bool:
        raise ValueError(f"groups must be an integer tensor, got {groups.dtype}")
    if n is not None and groups.shape[0] != n:
        raise ValueError(f"groups has {groups.shape[0]} entries but there are {n} samples")
    return groups.detach().to("cpu", torch.int64)


def _check_scores(scores: torch.Tensor, groups: torch.Tensor, name: str = "scores"):
    if not isinstance(scores, torch.Tensor) or scores.dim() != 1:
        raise ValueError(f"{name} must be a 1-D tensor [N], got {getattr(scores, 'shape', scores)}")
    s = scores.detach().to("cpu", torch.float64)
    g = _check_groups(groups, s.shape[0])
    inf = torch.isinf(s)
    if inf.any():
        bad = torch.nonzero(inf).flatten()[:8].tolist()
        raise RewardError(
            f"{name} contain ±inf at sample indices {bad}: a reward must report an unscorable sample as NaN"
        )
    kept = ~torch.isnan(s)
    return s, g, kept, int((~kept).sum())


def _group_members(groups: torch.Tensor, mask: torch.Tensor) -> list[torch.Tensor]:
    """Ascending indices of the masked samples of each prompt, prompts in ascending id order."""
    out = []
    for gid in torch.unique(groups[mask]).tolist():
        out.append(torch.nonzero(mask & (groups == gid)).flatten())
    return out


def _pairs_tensor(pairs: list[tuple[int, int]]) -> torch.Tensor:
    return torch.tensor(pairs, dtype=torch.int64).reshape(-1, 2)


#: two set scores closer than this relative to their size are a tie (rounding, e.g. a set of identical clips)
SET_SCORE_RTOL = 1e-10


def _same_score(a: float, b: float) -> bool:
    return abs(a - b) <= SET_SCORE_RTOL * max(abs(a), abs(b))


def _gap_floor(a: torch.Tensor | float, b: torch.Tensor | float) -> torch.Tensor:
    """Smallest difference of two scores that counts as a preference: rounding (relative ``SET_SCORE_RTOL``)
    is none. Identical clips get credits that differ by ~1e-15 of their size; that must not make a pair."""
    a, b = torch.as_tensor(a, dtype=torch.float64), torch.as_tensor(b, dtype=torch.float64)
    return SET_SCORE_RTOL * torch.maximum(a.abs(), b.abs())


def _check_credit(credit: torch.Tensor, builder: str) -> None:
    """A credit builder never trains on a non-finite credit: ±inf is an error (in ``_check_scores``), NaN
    credits are dropped with a warning naming them, and all-NaN credits are refused with the reason."""
    if not isinstance(credit, torch.Tensor) or credit.dim() != 1:
        return  # _check_scores reports the shape
    nan = torch.isnan(credit.detach().cpu())
    if not nan.any():
        return
    bad = torch.nonzero(nan).flatten().tolist()
    if bool(nan.all()):
        raise RewardError(
            f"builder {builder!r}: the credit of every one of the {len(bad)} samples is NaN, so there is nothing to "
            "train on; the set reward could not score these sets (check the reward's warnings: silent or "
            "unscorable clips, too few clips for its statistics)"
        )
    log.warning("builder %r: %d of %d credits are NaN (samples %s%s); those samples are dropped", builder,
                len(bad), credit.shape[0], bad[:8], " ..." if len(bad) > 8 else "")


def _mean(x: torch.Tensor) -> float:
    return float(x.mean()) if x.numel() else float("nan")


# --------------------------------------------------------------------------------------------------
# per-sample scores


def paired(
    scores: torch.Tensor, groups: torch.Tensor, *, all_pairs: bool = False, margin: float = 0.0
) -> Demonstrations:
    """DPO pairs within each prompt.

    Default: one pair per prompt, best vs worst (lowest index among equal scores), made only if
    ``best - worst > margin`` (so a prompt whose samples all score the same gives no pair; scores closer
    than a relative ``SET_SCORE_RTOL`` count as the same, so rounding never makes a pair).
    ``all_pairs``: every pair (i, j) of a prompt with ``|s_i - s_j| > margin``, winner the higher score;
    order: prompts ascending, then (i, j) with i < j lexicographically. NaN samples are dropped.
    """
    if margin < 0:
        raise ConfigError(f"paired: margin must be >= 0, got {margin}")
    s, g, kept, n_nan = _check_scores(scores, groups)
    pairs: list[tuple[int, int]] = []
    members = _group_members(g, kept)
    for idx in members:
        if idx.numel() < 2:
            continue
        sc = s[idx]
        if all_pairs:
            for a, b in itertools.combinations(range(idx.numel()), 2):
                da = float(sc[a] - sc[b])
                if abs(da) > max(margin, float(_gap_floor(sc[a], sc[b]))):
                    i, j = int(idx[a]), int(idx[b])
                    pairs.append((i, j) if da > 0 else (j, i))
        else:
            # torch.argmax/argmin return the first occurrence: lowest index among ties
            b, w = int(torch.argmax(sc)), int(torch.argmin(sc))
            if float(sc[b] - sc[w]) > max(margin, float(_gap_floor(sc[b], sc[w]))):
                pairs.append((int(idx[b]), int(idx[w])))
    p = _pairs_tensor(pairs)
    info = {
        "n_pairs": int(p.shape[0]),
        "n_prompts": len(members),
        "n_prompts_with_pair": len(set(g[p[:, 0]].tolist())) if p.numel() else 0,
        "score_pos": _mean(s[p[:, 0]]),
        "score_neg": _mean(s[p[:, 1]]),
        "score_gap": _mean(s[p[:, 0]] - s[p[:, 1]]),
    }
    return Demonstrations(pairs=p, labels=None, kept=kept, n_dropped_nan=n_nan, info=info)


def _median(x: torch.Tensor) -> float:
    """True median (mean of the two middle values for an even count)."""
    v = torch.sort(x).values
    m = v.numel()
    return float(v[m // 2]) if m % 2 else float((v[m // 2 - 1] + v[m // 2]) / 2)


def unpaired(
    scores: torch.Tensor,
    groups: torch.Tensor,
    *,
    threshold: str = "prompt_median",
    fraction: float = 0.25,
) -> Demonstrations:
    """KTO labels against a threshold.

    ``prompt_median``: +1 above the median of the sample's prompt, −1 below; ``batch_median``: the
    same against the median of all kept samples. The median of an even count is the mean of the two
    middle values; a score equal to the median (within a relative ``SET_SCORE_RTOL``) is labelled 0 (unused:
    no evidence either way), which for an odd K leaves the middle sample of each prompt unused. ``fraction``:
    over the whole batch, the top ``floor(fraction * n_kept)`` samples +1 and as many bottom ones −1 (rank ties broken by
    lowest index), the rest 0; if the lowest +1 score equals the highest −1 score, every sample with
    that score is set to 0, so a +1 sample always scores strictly above every −1 sample.
    """
    if threshold not in THRESHOLDS:
        raise ConfigError(f"unpaired: threshold={threshold!r} is not one of {', '.join(THRESHOLDS)}")
    if threshold == "fraction" and not 0 < fraction <= 0.5:
        raise ConfigError(f"unpaired: fraction must be in (0, 0.5], got {fraction}")
    s, g, kept, n_nan = _check_scores(scores, groups)
    n = s.shape[0]
    labels = torch.zeros(n, dtype=torch.int8)
    info: dict = {"threshold": threshold}
    if threshold == "prompt_median":
        meds = []
        for idx in _group_members(g, kept):
            m = _median(s[idx])
            meds.append(m)
            floor = _gap_floor(s[idx], m)
            labels[idx[s[idx] - m > floor]] = 1
            labels[idx[m - s[idx] > floor]] = -1
        info["threshold_mean"] = sum(meds) / len(meds) if meds else float("nan")
    elif threshold == "batch_median":
        idx = torch.nonzero(kept).flatten()
        m = _median(s[idx]) if idx.numel() else float("nan")
        if idx.numel():
            floor = _gap_floor(s[idx], m)
            labels[idx[s[idx] - m > floor]] = 1
            labels[idx[m - s[idx] > floor]] = -1
        info["threshold_mean"] = m
    else:
        idx = torch.nonzero(kept).flatten()
        k = int(fraction * idx.numel())
        info["fraction"] = fraction
        if k > 0:
            # stable sort on -score: among equal scores the lowest index ranks first
            order = idx[torch.sort(-s[idx], stable=True).indices]
            top, bottom = order[:k], order[-k:]
            labels[top] = 1
            labels[bottom] = -1
            lo_top, hi_bottom = float(s[top].min()), float(s[bottom].max())
            if lo_top <= hi_bottom:  # only possible with ties straddling both boundaries
                labels[kept & (s == lo_top)] = 0
                labels[kept & (s == hi_bottom)] = 0
            info["threshold_pos"] = lo_top
            info["threshold_neg"] = hi_bottom
    pos, neg = labels > 0, labels < 0
    info.update(
        n_pos=int(pos.sum()),
        n_neg=int(neg.sum()),
        n_unused=int((kept & (labels == 0)).sum()),
        score_pos=_mean(s[pos]),
        score_neg=_mean(s[neg]),
    )
    return Demonstrations(pairs=None, labels=labels, kept=kept, n_dropped_nan=n_nan, info=info)


# --------------------------------------------------------------------------------------------------
# set scores (dist_to_dist rewards)


def _call_set_score(set_score: SetScore, idx: list[int] | torch.Tensor) -> float:
    t = torch.as_tensor(idx, dtype=torch.int64)
    return float(set_score(t))


def _kept_mask(n: int, kept: torch.Tensor | None) -> torch.Tensor:
    if kept is None:
        return torch.ones(n, dtype=torch.bool)
    if not isinstance(kept, torch.Tensor) or kept.dtype != torch.bool or kept.shape != (n,):
        raise ValueError(f"kept must be a bool tensor of shape [{n}]")
    return kept.detach().cpu().clone()


def _set_demonstrations(
    pos_ordered: list[torch.Tensor],
    neg_ordered: list[torch.Tensor],
    n: int,
    kept: torch.Tensor,
    loss: str,
    info: dict,
) -> Demonstrations:
    """From per-prompt ordered D+ / D− members to labels (kto) or within-prompt pairs (dpo)."""
    n_nan = int((~kept).sum())
    if loss == "kto":
        labels = torch.zeros(n, dtype=torch.int8)
        for p in pos_ordered:
            labels[p] = 1
        for q in neg_ordered:
            labels[q] = -1
        info.update(n_pos=int((labels > 0).sum()), n_neg=int((labels < 0).sum()))
        return Demonstrations(pairs=None, labels=labels, kept=kept, n_dropped_nan=n_nan, info=info)
    pairs: list[tuple[int, int]] = []
    for p, q in zip(pos_ordered, neg_ordered):
        pairs.extend(zip(p.tolist(), q.tolist()))  # min(|D+ ∩ g|, |D− ∩ g|) pairs
    t = _pairs_tensor(pairs)
    info.update(n_pairs=int(t.shape[0]))
    return Demonstrations(pairs=t, labels=None, kept=kept, n_dropped_nan=n_nan, info=info)


def _check_loss(loss: str) -> None:
    if loss not in LOSSES:
        raise ConfigError(f"loss={loss!r} is not one of {', '.join(LOSSES)}")


def greedy(
    set_score: SetScore,
    groups: torch.Tensor,
    *,
    loss: str = "kto",
    size: int | None = None,
    kept: torch.Tensor | None = None,
) -> Demonstrations:
    """Greedy forward selection of D+ maximising ``set_score(D+)``; the other kept samples are D−.

    Starting from the empty set, each step adds the kept sample whose addition gives the highest set
    score (ties: lowest index; candidates whose set score is NaN are skipped, and a step where every
    candidate is NaN raises RewardError). ``size`` defaults to ``n_kept // 2``; the cost is about
    ``size * n_kept`` calls of ``set_score``, which must accept any non-empty subset (including a
    single sample). ``loss="kto"``: D+ labelled +1, D− −1. ``loss="dpo"``: within each prompt, the
    D+ members in selection order are paired with the D− members in index order,
    ``min(|D+ ∩ g|, |D− ∩ g|)`` pairs per prompt. If no step told its candidates apart (all scored the same
    within a relative ``SET_SCORE_RTOL``: a set of identical clips) there is no preference and no
    demonstrations (``tie``).
    """
    _check_loss(loss)
    g = _check_groups(groups)
    n = g.shape[0]
    keep = _kept_mask(n, kept)
    cand = torch.nonzero(keep).flatten().tolist()
    n_kept = len(cand)
    if size is None:
        size = n_kept // 2
    if n_kept >= 2 and not 1 <= size <= n_kept - 1:
        raise ConfigError(f"greedy: size must be in [1, {n_kept - 1}] for {n_kept} samples, got {size}")
    info: dict = {"builder": "greedy", "size": int(size)}
    if n_kept < 2:
        info.update(set_score_pos=float("nan"), set_score_neg=float("nan"), n_set_score_calls=0)
        return _set_demonstrations([], [], n, keep, loss, info)

    chosen: list[int] = []
    remaining = list(cand)
    best_score = float("nan")
    calls = 0
    discriminated = False
    for step in range(size):
        best_i, best_s, worst_s = -1, float("nan"), float("nan")
        for i in remaining:  # ascending index: strict '>' keeps the lowest index among ties
            v = _call_set_score(set_score, sorted(chosen + [i]))
            calls += 1
            if v != v:
                continue
            if best_i < 0 or v > best_s:
                best_i, best_s = i, v
            if not v >= worst_s:
                worst_s = v
        discriminated = discriminated or (best_i >= 0 and not _same_score(best_s, worst_s))
        if best_i < 0:
            raise RewardError(
                f"greedy: set_score returned NaN for every candidate set of size {step + 1}; "
                "a greedy set reward must score every non-empty subset (or use builder 'split' or 'loo')"
            )
        chosen.append(best_i)
        remaining.remove(best_i)
        best_score = best_s
    neg_score = _call_set_score(set_score, remaining)
    calls += 1
    info.update(set_score_pos=best_score, set_score_neg=neg_score, n_set_score_calls=calls)
    if not discriminated:
        # every candidate of every step scored the same (e.g. every clip identical): D+ would be the lowest
        # indices, a choice made by the tie rule (or by rounding), not by the reward
        info.update(tie=True)
        return _set_demonstrations([], [], n, keep, loss, info)

    rank = {i: r for r, i in enumerate(chosen)}
    pos_ordered, neg_ordered = [], []
    for gid in torch.unique(g[keep]).tolist():
        in_g = [i for i in cand if int(g[i]) == gid]
        pos_ordered.append(torch.tensor(sorted((i for i in in_g if i in rank), key=rank.__getitem__), dtype=torch.int64))
        neg_ordered.append(torch.tensor([i for i in in_g if i not in rank], dtype=torch.int64))
    return _set_demonstrations(pos_ordered, neg_ordered, n, keep, loss, info)


def split(
    set_score: SetScore,
    groups: torch.Tensor,
    generator: torch.Generator,
    *,
    loss: str = "kto",
    kept: torch.Tensor | None = None,
) -> Demonstrations:
    """Random halves D1, D2 with members of every prompt in both; the higher-scoring half is D+.

    Each prompt's kept samples are permuted with ``generator`` (CPU); the first ``floor(k/2)`` go to
    D1, the next ``floor(k/2)`` to D2, and for an odd k the last one to whichever half is smaller so far
    (D1 on a tie). So every prompt with k >= 2 has members in both halves. Equal set scores (within a relative
    ``SET_SCORE_RTOL``) give no demonstrations (no preference); a NaN set score raises RewardError.
    ``loss="kto"``: D+ +1, D− −1; ``loss="dpo"``: within each prompt the members are paired in permutation order.
    """
    _check_loss(loss)
    if not isinstance(generator, torch.Generator):
        raise ValueError("split needs a torch.Generator (seeded per round) for a reproducible partition")
    g = _check_groups(groups)
    n = g.shape[0]
    keep = _kept_mask(n, kept)
    d1: list[torch.Tensor] = []
    d2: list[torch.Tensor] = []
    size1 = size2 = 0
    for idx in _group_members(g, keep):
        k = idx.numel()
        perm = idx[torch.randperm(k, generator=generator)]
        h = k // 2
        a, b = perm[:h], perm[h : 2 * h]
        if k % 2:
            if size1 <= size2:
                a = torch.cat([a, perm[-1:]])
            else:
                b = torch.cat([b, perm[-1:]])
        d1.append(a)
        d2.append(b)
        size1 += a.numel()
        size2 += b.numel()
    info: dict = {"builder": "split", "size_1": size1, "size_2": size2}
    if size1 == 0 or size2 == 0:
        info.update(set_score_pos=float("nan"), set_score_neg=float("nan"))
        return _set_demonstrations([], [], n, keep, loss, info)
    s1 = _call_set_score(set_score, torch.cat(d1))
    s2 = _call_set_score(set_score, torch.cat(d2))
    if s1 != s1 or s2 != s2:
        raise RewardError(f"split: set_score returned NaN (D1: {s1}, D2: {s2}); the set reward cannot score a half")
    if _same_score(s1, s2):
        info.update(set_score_pos=s1, set_score_neg=s2, tie=True)
        return _set_demonstrations([], [], n, keep, loss, info)
    pos, neg, sp, sn = (d1, d2, s1, s2) if s1 > s2 else (d2, d1, s2, s1)
    info.update(set_score_pos=sp, set_score_neg=sn, pos_is_first_half=bool(s1 > s2))
    return _set_demonstrations(pos, neg, n, keep, loss, info)


# --------------------------------------------------------------------------------------------------
# configuration table and the one entry point


def valid_combinations() -> list[tuple[str, str, str]]:
    """Every valid (reward_class, builder, loss)."""
    out = []
    for rc in ("instance", "instance_to_dist"):
        out += [(rc, "paired", "dpo"), (rc, "unpaired", "kto")]
    for b in ("pool", "loo", "greedy", "split"):
        out += [("dist_to_dist", b, "dpo"), ("dist_to_dist", b, "kto")]
    return out


_OPTIONS = {
    ("paired", "dpo"): {"all_pairs", "margin"},
    ("unpaired", "kto"): {"threshold", "fraction"},
    ("loo", "dpo"): {"all_pairs", "margin"},
    ("loo", "kto"): {"threshold", "fraction"},
    ("pool", "dpo"): {"all_pairs", "margin"},
    ("pool", "kto"): {"threshold", "fraction"},
    ("greedy", "dpo"): {"size"},
    ("greedy", "kto"): {"size"},
    ("split", "dpo"): set(),
    ("split", "kto"): set(),
}


def _table() -> str:
    return "; ".join(
        f"reward {rc}: builder={b} loss={l}" + (" (K>=2)" if l == "dpo" else "") for rc, b, l in valid_combinations()
    )


def validate_combination(
    reward_class: str,
    builder: str,
    loss: str,
    k_per_prompt: int | None,
    options: Mapping | None = None,
) -> None:
    """Raise ConfigError unless (reward_class, builder, loss, K, builder options) is usable.

    Call once at the start of a run. ``k_per_prompt=None`` skips the K checks. ``options`` are the
    builder keyword options (``dragon.builder_options``); unknown names and out-of-range values are
    errors too.
    """
    combo = (reward_class, builder, loss)
    where = f"reward class {reward_class!r} with builder={builder!r} and loss={loss!r}"
    if combo not in valid_combinations():
        raise ConfigError(f"invalid DRAGON combination: {where}. Valid combinations: {_table()}")
    if k_per_prompt is not None:
        if k_per_prompt < 1:
            raise ConfigError(f"samples per prompt must be >= 1, got {k_per_prompt}")
        if loss == "dpo" and k_per_prompt < 2:
            raise ConfigError(
                f"{where} pairs samples of the same prompt and needs at least 2 samples per prompt, "
                f"got {k_per_prompt}: raise samples per prompt or use loss=kto. Valid combinations: {_table()}"
            )
    opts = dict(options or {})
    allowed = _OPTIONS[(builder, loss)]
    unknown = sorted(set(opts) - allowed)
    if unknown:
        raise ConfigError(
            f"unknown builder option(s) {unknown} for builder={builder!r} loss={loss!r}; "
            f"valid options: {sorted(allowed) or 'none'}"
        )
    for key in ("margin", "fraction", "size"):
        v = opts.get(key)
        if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float))):
            raise ConfigError(f"builder option {key} must be a number, got {v!r}")
    if "all_pairs" in opts and not isinstance(opts["all_pairs"], bool):
        raise ConfigError(f"builder option all_pairs must be true or false, got {opts['all_pairs']!r}")
    if "margin" in opts and not float(opts["margin"]) >= 0:
        raise ConfigError(f"builder option margin must be >= 0, got {opts['margin']}")
    thr = opts.get("threshold", "prompt_median")
    if "threshold" in opts and thr not in THRESHOLDS:
        raise ConfigError(f"builder option threshold={thr!r} is not one of {', '.join(THRESHOLDS)}")
    if "fraction" in opts and not 0 < float(opts["fraction"]) <= 0.5:
        raise ConfigError(f"builder option fraction must be in (0, 0.5], got {opts['fraction']}")
    if thr == "prompt_median" and loss == "kto" and builder in ("unpaired",) + CREDIT_BUILDERS and k_per_prompt == 1:
        raise ConfigError(
            "threshold=prompt_median with 1 sample per prompt labels nothing (each sample equals its "
            "prompt's median): use threshold=batch_median or fraction, or raise samples per prompt"
        )
    if "size" in opts and opts["size"] is not None and int(opts["size"]) < 1:
        raise ConfigError(f"builder option size must be >= 1 (or null for N/2), got {opts['size']}")


def build_demonstrations(
    reward_class: str,
    builder: str,
    loss: str,
    scores: torch.Tensor | None,
    groups: torch.Tensor,
    *,
    credit: torch.Tensor | None = None,
    set_score: SetScore | None = None,
    generator: torch.Generator | None = None,
    **options,
) -> Demonstrations:
    """The one entry point of the loop: dispatch to the builder for (reward_class, builder, loss).

    ``scores``: per-sample scores (instance rewards), or for dist_to_dist rewards the per-sample
    scores of ``RewardResult`` (NaN entries mark samples excluded from greedy/split; may be None).
    ``credit``: per-sample credits for ``loo`` (leave-one-out; falls back to ``scores``, which for set rewards
    are those credits) and ``pool`` (the change of the set reward of the pool when the sample joins it). ``set_score(indices) -> float`` for ``greedy``/``split``; ``generator`` for ``split``.
    ``options``: the builder's keyword options (see :func:`validate_combination`).
    """
    validate_combination(reward_class, builder, loss, None, options)
    g = _check_groups(groups)
    if builder in ("paired", "unpaired") + CREDIT_BUILDERS:
        s = credit if builder in CREDIT_BUILDERS and credit is not None else scores
        if builder == "pool" and credit is None:
            raise ValueError("builder 'pool' needs the pool credits (credit=...)")
        if s is None:
            raise ValueError(f"builder {builder!r} needs per-sample {'credit' if builder in CREDIT_BUILDERS else 'scores'}")
        if builder in CREDIT_BUILDERS:
            _check_credit(s, builder)
        d = paired(s, g, **options) if loss == "dpo" else unpaired(s, g, **options)
    else:
        if set_score is None:
            raise ValueError(f"builder {builder!r} needs set_score(indices) -> float")
        kept = None
        if scores is not None:
            _, _, kept, _ = _check_scores(scores, g)
        if builder == "greedy":
            d = greedy(set_score, g, loss=loss, kept=kept, **options)
        else:
            if generator is None:
                raise ValueError("builder 'split' needs a seeded torch.Generator")
            d = split(set_score, g, generator, loss=loss, kept=kept, **options)
    d.info.update(builder=builder, loss=loss, reward_class=reward_class, n_dropped_nan=d.n_dropped_nan)
    return d
