"""D+/D− demonstration builders (METHOD.md §2)."""

import math

import pytest
import torch

from dragontune.dragon.builders import (
    Demonstrations,
    build_demonstrations,
    greedy,
    paired,
    split,
    unpaired,
    valid_combinations,
    validate_combination,
)
from dragontune.errors import ConfigError, RewardError

NAN = float("nan")


def S(*v):
    return torch.tensor(v, dtype=torch.float64)


def G(*v):
    return torch.tensor(v, dtype=torch.int64)


# ------------------------------------------------------------------------------------------ paired


def test_paired_best_vs_worst_per_prompt():
    s = S(1.0, 3.0, 2.0, 0.5, 4.0, 4.5)
    g = G(0, 0, 0, 1, 1, 1)
    d = paired(s, g)
    assert d.labels is None
    assert d.pairs.tolist() == [[1, 0], [5, 3]]
    assert d.pairs.dtype == torch.int64
    assert d.n_dropped_nan == 0 and d.kept.all()
    assert d.info["score_gap"] == pytest.approx(((3 - 1) + (4.5 - 0.5)) / 2)


def test_paired_ties_and_lowest_index():
    # prompt 0: all equal -> no pair; prompt 1: two best (idx 3, 5) and two worst (4, 6) -> (3, 4)
    s = S(2.0, 2.0, 2.0, 5.0, 1.0, 5.0, 1.0)
    g = G(0, 0, 0, 1, 1, 1, 1)
    d = paired(s, g)
    assert d.pairs.tolist() == [[3, 4]]
    assert d.info["n_prompts_with_pair"] == 1


def test_paired_all_pairs_and_margin():
    s = S(1.0, 3.0, 2.0, 2.0)
    g = G(0, 0, 0, 0)
    d = paired(s, g, all_pairs=True)
    # (0,1): 1 wins; (0,2): 2; (0,3): 3; (1,2): 1; (1,3): 1; (2,3): tie -> none
    assert d.pairs.tolist() == [[1, 0], [2, 0], [3, 0], [1, 2], [1, 3]]
    d = paired(s, g, all_pairs=True, margin=1.0)  # difference must exceed 1
    assert d.pairs.tolist() == [[1, 0]]
    d = paired(s, g, margin=2.0)  # best-worst gap 2 is not > 2
    assert d.pairs.shape == (0, 2)


def test_paired_drops_nan_and_counts():
    s = S(NAN, 3.0, 2.0, NAN, NAN, 1.0)
    g = G(0, 0, 0, 1, 1, 1)
    d = paired(s, g)
    assert d.pairs.tolist() == [[1, 2]]  # prompt 1 has a single kept sample
    assert d.n_dropped_nan == 3
    assert d.kept.tolist() == [False, True, True, False, False, True]


def test_all_nan_is_empty_without_crash():
    s = S(NAN, NAN, NAN, NAN)
    g = G(0, 0, 1, 1)
    for d in (paired(s, g), paired(s, g, all_pairs=True), unpaired(s, g),
              unpaired(s, g, threshold="batch_median"), unpaired(s, g, threshold="fraction")):
        assert d.is_empty() and d.n == 0
        assert d.n_dropped_nan == 4 and not d.kept.any()
    assert paired(s, g).pairs.shape == (0, 2)
    empty = paired(S(), G())
    assert empty.pairs.shape == (0, 2) and empty.n_dropped_nan == 0


def test_inf_scores_are_an_error():
    with pytest.raises(RewardError, match="NaN"):
        paired(S(1.0, -math.inf), G(0, 0))


def test_input_shape_checks():
    with pytest.raises(ValueError, match="groups"):
        paired(S(1.0, 2.0), G(0))
    with pytest.raises(ValueError, match="integer"):
        paired(S(1.0, 2.0), torch.tensor([0.0, 0.0]))


# ---------------------------------------------------------------------------------------- unpaired


def test_unpaired_prompt_median_even_and_odd():
    # prompt 0 (K=4): median (2+3)/2 = 2.5 -> [-1, -1, +1, +1]
    # prompt 1 (K=3): median 5 -> middle sample unused (0)
    s = S(1.0, 2.0, 3.0, 4.0, 6.0, 5.0, 4.0)
    g = G(0, 0, 0, 0, 1, 1, 1)
    d = unpaired(s, g)
    assert d.pairs is None
    assert d.labels.dtype == torch.int8
    assert d.labels.tolist() == [-1, -1, 1, 1, 1, 0, -1]
    assert d.info["n_pos"] == 3 and d.info["n_neg"] == 3 and d.info["n_unused"] == 1
    idx, des = d.kto_inputs()
    assert idx.tolist() == [0, 1, 2, 3, 4, 6]
    assert des.tolist() == [False, False, True, True, True, False]


def test_unpaired_prompt_median_k2_and_ties():
    s = S(1.0, 2.0, 3.0, 3.0)
    g = G(0, 0, 1, 1)
    assert unpaired(s, g).labels.tolist() == [-1, 1, 0, 0]


def test_unpaired_batch_median_with_nan():
    s = S(1.0, NAN, 5.0, 3.0, 0.0)
    g = G(0, 0, 1, 1, 2)
    d = unpaired(s, g, threshold="batch_median")  # kept: 1, 5, 3, 0 -> median 2
    assert d.labels.tolist() == [-1, 0, 1, 1, -1]
    assert d.info["threshold_mean"] == 2.0
    assert d.n_dropped_nan == 1


def test_unpaired_fraction():
    s = S(5.0, 1.0, 3.0, 8.0, 2.0, 7.0, 4.0, 6.0)
    g = G(0, 0, 1, 1, 2, 2, 3, 3)
    d = unpaired(s, g, threshold="fraction", fraction=0.25)  # k = 2: top {8, 7}, bottom {1, 2}
    assert d.labels.tolist() == [0, -1, 0, 1, -1, 1, 0, 0]
    # all equal: any labelling would be arbitrary -> nothing labelled
    d = unpaired(S(1.0, 1.0, 1.0, 1.0), G(0, 0, 1, 1), threshold="fraction", fraction=0.5)
    assert d.is_empty()
    # fewer samples than 1/fraction -> k = 0 -> empty
    assert unpaired(S(1.0, 2.0, 3.0), G(0, 0, 0), threshold="fraction", fraction=0.25).is_empty()


def test_unpaired_bad_options():
    with pytest.raises(ConfigError, match="threshold"):
        unpaired(S(1.0), G(0), threshold="mean")
    with pytest.raises(ConfigError, match="fraction"):
        unpaired(S(1.0), G(0), threshold="fraction", fraction=0.7)


# ----------------------------------------------------------------------------------- set builders


def _additive_set_score(value):
    """Set score = sum of the members' values: the optimal subset of size m is the m largest."""
    def f(idx):
        assert idx.dtype == torch.int64 and idx.numel() > 0
        return float(value[idx].sum())
    return f


def test_greedy_picks_best_subset_kto():
    value = S(0.1, 0.9, 0.3, 0.8, 0.2, 0.7)
    g = G(0, 0, 1, 1, 2, 2)
    d = greedy(_additive_set_score(value), g, loss="kto")
    assert d.labels.tolist() == [-1, 1, -1, 1, -1, 1]
    assert d.info["set_score_pos"] == pytest.approx(0.9 + 0.8 + 0.7)
    assert d.info["set_score_neg"] == pytest.approx(0.1 + 0.3 + 0.2)
    assert d.info["n_set_score_calls"] == 6 + 5 + 4 + 1


def test_greedy_non_additive_diversity():
    # Set score = number of distinct "types": greedy must take one of each type (lowest index first).
    types = torch.tensor([0, 0, 1, 1, 2, 2])
    f = lambda idx: float(torch.unique(types[idx]).numel())
    d = greedy(f, G(0, 1, 0, 1, 0, 1), loss="kto", size=3)
    assert d.labels.tolist() == [1, -1, 1, -1, 1, -1]


def test_greedy_dpo_pairs_within_prompt():
    value = S(0.1, 0.9, 0.95, 0.3, 0.8, 0.2)
    g = G(0, 0, 0, 1, 1, 1)
    d = greedy(_additive_set_score(value), g, loss="dpo")  # D+ in order: 2, 1, 4
    # prompt 0: D+ [2, 1] (selection order), D− [0] -> 1 pair; prompt 1: D+ [4], D− [3, 5] -> 1 pair
    assert d.pairs.tolist() == [[2, 0], [4, 3]]
    for w, l in d.pairs.tolist():
        assert g[w] == g[l]


def test_greedy_nan_handling():
    with pytest.raises(RewardError, match="NaN"):
        greedy(lambda idx: NAN, G(0, 0, 1, 1), loss="kto")
    # NaN for singletons of even index only: those are skipped
    f = lambda idx: NAN if (idx.numel() == 1 and int(idx[0]) % 2 == 0) else float(idx.sum())
    d = greedy(f, G(0, 0, 1, 1), loss="kto", size=1)
    assert d.labels.tolist() == [-1, -1, -1, 1]
    with pytest.raises(ConfigError, match="size"):
        greedy(f, G(0, 0, 1, 1), size=4)


def test_split_members_in_both_halves_and_deterministic():
    g = G(*sum(([p] * k for p, k in enumerate([2, 3, 4, 5, 1])), []))
    n = g.numel()
    value = torch.arange(n, dtype=torch.float64)
    f = _additive_set_score(value)
    d1 = split(f, g, torch.Generator().manual_seed(7), loss="kto")
    d2 = split(f, g, torch.Generator().manual_seed(7), loss="kto")
    assert torch.equal(d1.labels, d2.labels)
    lab = d1.labels
    assert (lab != 0).all()  # every sample is in D1 or D2
    for p in range(4):  # prompts with k >= 2: members in both halves
        m = lab[g == p]
        assert (m > 0).any() and (m < 0).any()
        assert abs(int((m > 0).sum()) - int((m < 0).sum())) <= 1
    assert abs(d1.info["size_1"] - d1.info["size_2"]) <= 1
    pos, neg = lab > 0, lab < 0
    assert d1.info["set_score_pos"] == pytest.approx(float(value[pos].sum()))
    assert d1.info["set_score_neg"] == pytest.approx(float(value[neg].sum()))
    assert d1.info["set_score_pos"] > d1.info["set_score_neg"]
    # different seeds give different partitions (at least one of a few)
    others = [split(f, g, torch.Generator().manual_seed(s), loss="kto").labels for s in range(5)]
    assert any(not torch.equal(o, lab) for o in others)


def test_split_dpo_pairs_within_prompt():
    g = G(0, 0, 0, 0, 1, 1, 1)
    f = _additive_set_score(torch.arange(7, dtype=torch.float64))
    d = split(f, g, torch.Generator().manual_seed(0), loss="dpo")
    assert d.pairs.shape == (2 + 1, 2)
    for w, l in d.pairs.tolist():
        assert g[w] == g[l]
    assert len(set(d.pairs.flatten().tolist())) == 6


def test_split_tie_gives_nothing_and_nan_raises():
    g = G(0, 0, 1, 1)
    d = split(lambda idx: 1.0, g, torch.Generator().manual_seed(0), loss="kto")
    assert d.is_empty() and d.info["tie"]
    with pytest.raises(RewardError, match="NaN"):
        split(lambda idx: NAN, g, torch.Generator().manual_seed(0))


# ---------------------------------------------------------------------- entry point and validation


def test_build_demonstrations_dispatch():
    s = S(1.0, 3.0, NAN, 0.5, 4.0, 2.0)
    g = G(0, 0, 0, 1, 1, 1)
    d = build_demonstrations("instance", "paired", "dpo", s, g)
    assert d.pairs.tolist() == [[1, 0], [4, 3]] and d.n_dropped_nan == 1
    assert d.info["builder"] == "paired" and d.info["loss"] == "dpo"
    d = build_demonstrations("instance_to_dist", "unpaired", "kto", s, g, threshold="batch_median")
    assert d.labels is not None
    credit = S(0.2, -0.1, 0.0, 0.3, 0.1, -0.2)
    d = build_demonstrations("dist_to_dist", "loo", "dpo", None, g, credit=credit)
    assert d.pairs.tolist() == [[0, 1], [3, 5]]
    d = build_demonstrations("dist_to_dist", "loo", "kto", credit, g)  # credits carried as scores
    assert d.labels.tolist() == [1, -1, 0, 1, 0, -1]
    f = _additive_set_score(S(0.0, 1.0, 2.0, 3.0, 4.0, 5.0))
    d = build_demonstrations("dist_to_dist", "greedy", "kto", s, g, set_score=f)
    assert d.labels[2] == 0 and not d.kept[2]  # NaN entry excluded from selection
    d = build_demonstrations("dist_to_dist", "split", "dpo", None, g, set_score=f,
                             generator=torch.Generator().manual_seed(1))
    assert d.pairs.shape[0] == 2
    with pytest.raises(ConfigError, match="invalid DRAGON combination"):
        build_demonstrations("instance", "greedy", "kto", s, g, set_score=f)
    with pytest.raises(ConfigError, match="unknown builder option"):
        build_demonstrations("instance", "paired", "dpo", s, g, threshold="batch_median")
    with pytest.raises(ValueError, match="set_score"):
        build_demonstrations("dist_to_dist", "greedy", "kto", None, g)
    with pytest.raises(ValueError, match="Generator"):
        build_demonstrations("dist_to_dist", "split", "kto", None, g, set_score=f)


def test_validate_combination_table_and_messages():
    combos = valid_combinations()
    assert len(combos) == 12  # 2 per-sample classes x 2, dist_to_dist x 4 builders x 2 losses
    for rc, b, l in combos:
        validate_combination(rc, b, l, 4)
    with pytest.raises(ConfigError) as e:
        validate_combination("instance", "paired", "kto", 4)
    msg = str(e.value)
    assert "'instance'" in msg and "builder='paired'" in msg and "loss='kto'" in msg
    for rc, b, l in combos:  # lists every valid combination
        assert f"reward {rc}: builder={b} loss={l}" in msg
    with pytest.raises(ConfigError, match="builder='greedy'"):
        validate_combination("instance_to_dist", "greedy", "dpo", 4)
    with pytest.raises(ConfigError, match="invalid DRAGON"):
        validate_combination("dist_to_dist", "paired", "dpo", 4)
    with pytest.raises(ConfigError, match="invalid DRAGON"):
        validate_combination("dist_to_dist", "loo", "ppo", 4)
    with pytest.raises(ConfigError, match="invalid DRAGON"):
        validate_combination("set", "loo", "dpo", 4)
    for b, rc in (("paired", "instance"), ("greedy", "dist_to_dist"), ("split", "dist_to_dist"),
                  ("loo", "dist_to_dist"), ("pool", "dist_to_dist")):
        with pytest.raises(ConfigError, match="at least 2 samples per prompt"):
            validate_combination(rc, b, "dpo", 1)
    validate_combination("dist_to_dist", "split", "kto", 1)
    validate_combination("instance", "unpaired", "kto", 1, {"threshold": "batch_median"})
    with pytest.raises(ConfigError, match="prompt_median"):
        validate_combination("instance", "unpaired", "kto", 1)
    with pytest.raises(ConfigError, match="fraction"):
        validate_combination("instance", "unpaired", "kto", 4, {"threshold": "fraction", "fraction": 0.9})
    with pytest.raises(ConfigError, match="unknown builder option"):
        validate_combination("dist_to_dist", "split", "kto", 4, {"size": 3})


def test_demonstrations_helpers():
    d = Demonstrations(pairs=torch.zeros(0, 2, dtype=torch.int64), labels=None,
                       kept=torch.ones(0, dtype=torch.bool), n_dropped_nan=0, info={})
    assert d.is_empty()
    with pytest.raises(ValueError, match="kto_inputs"):
        d.kto_inputs()


def test_validate_option_types():
    with pytest.raises(ConfigError, match="number"):
        validate_combination("instance", "paired", "dpo", 2, {"margin": "big"})
    with pytest.raises(ConfigError, match="true or false"):
        validate_combination("instance", "paired", "dpo", 2, {"all_pairs": 1})
    with pytest.raises(ConfigError, match=">= 0"):
        validate_combination("instance", "paired", "dpo", 2, {"margin": -0.5})
    with pytest.raises(ConfigError, match="size"):
        validate_combination("dist_to_dist", "greedy", "kto", 2, {"size": 0})
    validate_combination("dist_to_dist", "greedy", "kto", 2, {"size": None})


def test_invariants_on_random_batches():
    gen = torch.Generator().manual_seed(0)
    for trial in range(50):
        k = int(torch.randint(1, 6, (1,), generator=gen))
        p = int(torch.randint(1, 6, (1,), generator=gen))
        g = torch.arange(p).repeat_interleave(k)
        s = torch.randint(0, 4, (p * k,), generator=gen).double()  # small range: many ties
        s[torch.rand(p * k, generator=gen) < 0.2] = NAN
        for all_pairs in (False, True):
            d = paired(s, g, all_pairs=all_pairs)
            for w, l in d.pairs.tolist():
                assert g[w] == g[l] and s[w] > s[l]
            assert d.n_dropped_nan == int(torch.isnan(s).sum())
        for thr in ("prompt_median", "batch_median", "fraction"):
            lab = unpaired(s, g, threshold=thr).labels
            assert (lab[torch.isnan(s)] == 0).all()
            scope = [g == q for q in range(p)] if thr == "prompt_median" else [torch.ones_like(g, dtype=torch.bool)]
            for m in scope:
                pos, neg = s[m & (lab > 0)], s[m & (lab < 0)]
                if pos.numel() and neg.numel():
                    assert pos.min() > neg.max()
