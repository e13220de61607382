"""The preference objectives (dragon/objectives.py): which items a step takes, which samples it denoises with
which randomness, and the loss of a chunk, for Diffusion-DPO and Diffusion-KTO."""

import types

import pytest
import torch

from dragontune.dragon.builders import Demonstrations
from dragontune.dragon.health import LearningMonitor
from dragontune.dragon.losses import diffusion_dpo_loss, diffusion_kto_loss
from dragontune.dragon.objectives import OBJECTIVES, DPOObjective, KTOObjective, objective_for


def pairs_demos(pairs):
    return Demonstrations(torch.tensor(pairs, dtype=torch.int64), None, torch.ones(8, dtype=torch.bool), 0, {})


def label_demos(labels):
    lab = torch.tensor(labels, dtype=torch.int8)
    return Demonstrations(None, lab, torch.ones(len(labels), dtype=torch.bool), 0, {})


def draws(b, shape=(3, 5), seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(b, generator=g) + 0.1, torch.randn((b,) + shape, generator=g), torch.rand(b, generator=g) < 0.5


def test_dpo_items_samples_and_loss_winners_first():
    obj = DPOObjective(beta=10.0)
    demos = pairs_demos([[0, 1], [2, 3], [5, 4]])
    items = obj.items(demos)
    assert items.tolist() == [[0, 1], [2, 3], [5, 4]]
    sigma, noise, drop = draws(3)
    assert obj.arrange(items, sigma, noise, drop) == (sigma, noise, drop)
    ids, s2, n2, d2 = obj.samples(items, sigma, noise, drop)
    assert ids.tolist() == [0, 2, 5, 1, 3, 4]
    # both members of each pair at the same sigma, noise and dropout
    assert torch.equal(s2[:3], s2[3:]) and torch.equal(n2[:3], n2[3:]) and torch.equal(d2[:3], d2[3:])
    err_pol = torch.tensor([0.1, 0.2, 0.3, 0.4, 0.5, 0.6], requires_grad=True)
    err_ref = torch.tensor([0.2, 0.2, 0.2, 0.3, 0.3, 0.3])
    loss, st = obj.chunk_loss(items, "cpu")(err_pol, err_ref)
    ref_loss, ref_st = diffusion_dpo_loss(err_pol[:3], err_pol[3:], err_ref[:3], err_ref[3:], beta=10.0)
    assert float(loss.detach()) == pytest.approx(float(ref_loss.detach())) and st == ref_st
    # direction: the gradient lowers the winners' errors and raises the losers'
    loss.backward()
    assert (err_pol.grad[:3] > 0).all() and (err_pol.grad[3:] < 0).all()


def test_dpo_refuses_labels():
    with pytest.raises(ValueError, match="paired demonstrations"):
        DPOObjective(beta=1.0).items(label_demos([1, -1, 0]))


def test_kto_items_and_loss_follow_the_labels():
    obj = KTOObjective(beta=10.0, utility="log_sigmoid", reference="mean")
    items = obj.items(label_demos([1, 0, -1, 1, -1, 0]))
    assert items.tolist() == [[0, 1], [2, 0], [3, 1], [4, 0]]
    sigma, noise, drop = draws(4)
    ids, *_ = obj.samples(items, *obj.arrange(items, sigma, noise, drop))
    assert ids.tolist() == [0, 2, 3, 4]
    err_pol = torch.tensor([0.3, 0.3, 0.3, 0.3], requires_grad=True)
    err_ref = torch.tensor([0.2, 0.4, 0.3, 0.1])
    loss, st = obj.chunk_loss(items, "cpu")(err_pol, err_ref)
    desirable = torch.tensor([True, False, True, False])
    ref_loss, ref_st = diffusion_kto_loss(err_pol, err_ref, desirable, beta=10.0, utility="log_sigmoid",
                                          reference="mean", reduce_reference=True)
    assert float(loss.detach()) == pytest.approx(float(ref_loss.detach())) and st == ref_st
    loss.backward()  # D+ errors pushed down, D- errors up
    assert (err_pol.grad[desirable] > 0).all() and (err_pol.grad[~desirable] < 0).all()


def test_kto_noise_arrangements_against_a_loop():
    labels = torch.tensor([1, 0, 0, 1, 1, 0, 1], dtype=torch.int64)
    chunk = torch.stack([torch.arange(7), labels], dim=1)
    sigma, noise, drop = draws(7)
    s, n, d = KTOObjective(beta=1.0, noise="independent").arrange(chunk, sigma, noise, drop)
    assert torch.equal(s, sigma) and torch.equal(n, noise) and torch.equal(d, drop)
    s, n, d = KTOObjective(beta=1.0, noise="shared").arrange(chunk, sigma, noise, drop)
    assert (s == sigma[0]).all() and (n == noise[0]).all() and (d == drop[0]).all()
    s, n, d = KTOObjective(beta=1.0, noise="paired").arrange(chunk, sigma, noise, drop)
    seen = {True: 0, False: 0}
    for j in range(7):  # the k-th desirable and the k-th undesirable sample take draw k
        k = seen[bool(labels[j])]
        seen[bool(labels[j])] += 1
        assert s[j] == sigma[k] and torch.equal(n[j], noise[k]) and d[j] == drop[k]
    with pytest.raises(ValueError, match="kto_noise"):
        KTOObjective(beta=1.0, noise="loud")


def test_objective_for_reads_the_config():
    cfg = types.SimpleNamespace(beta=7.0, kto_w_desirable=2.0, kto_w_undesirable=0.5, kto_reference="mean",
                                kto_utility="log_sigmoid", kto_noise="paired")
    assert objective_for("dpo", cfg) == DPOObjective(beta=7.0)
    assert objective_for("kto", cfg) == KTOObjective(7.0, 2.0, 0.5, "mean", "log_sigmoid", "paired")
    assert set(OBJECTIVES) == {"dpo", "kto"}
    with pytest.raises(ValueError, match="unknown preference loss"):
        objective_for("ppo", cfg)
    # the health monitor names each objective's own knobs
    assert LearningMonitor("kto").knobs() == KTOObjective.stall_advice != DPOObjective.stall_advice


def test_per_sample_record_of_demonstrations():
    label, pair = pairs_demos([[0, 1], [5, 4]]).per_sample(6)
    assert label.tolist() == [1, -1, 0, 0, -1, 1] and pair == [0, 0, None, None, 1, 1]
    label, pair = label_demos([1, 0, -1]).per_sample(3)
    assert label.tolist() == [1, 0, -1] and pair == [None, None, None]
