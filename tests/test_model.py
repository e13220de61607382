
import pytest
import torch

from dragontune.errors import CheckpointError
from dragontune.models.checkpoint import ModelSpec, build_net, load_state_strict, read_model_file, save_model
from dragontune.models.dit import DiT, DiTConfig
from dragontune.models.edm import (
    EDMDenoiser,
    denoising_loss,
    loss_weight,
    precondition,
    sample_sigma,
)

TINY = DiTConfig(latent_channels=8, patch_size=2, width=32, depth=2, heads=2, text_dim=16, noise_freqs=16)


def cond(B, L=5, dim=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    mask = torch.ones(B, L, dtype=torch.bool)
    mask[0, 3:] = False
    return {"text": torch.randn(B, L, dim, generator=g), "text_mask": mask}


def test_edm_preconditioning_identities():
    sd = 0.5
    s = torch.logspace(-3, 2, 50, dtype=torch.float64)
    c_skip, c_out, c_in, c_noise = precondition(s, sd)
    # c_in normalises the input variance: Var(c_in (x0 + s n)) = 1 for Var(x0) = sd^2
    torch.testing.assert_close(c_in**2 * (sd**2 + s**2), torch.ones_like(s))
    # the effective training target has unit variance: Var((x0 - c_skip x)/c_out) = 1
    var_target = ((1 - c_skip) ** 2 * sd**2 + c_skip**2 * s**2) / c_out**2
    torch.testing.assert_close(var_target, torch.ones_like(s))
    # c_skip^2 sd^2 + c_out^2 ... : c_skip + c_out^2/sd^2 = 1 (EDM eq. identities)
    torch.testing.assert_close(c_skip + c_out**2 / sd**2, torch.ones_like(s))
    torch.testing.assert_close(c_noise, torch.log(s) / 4)
    # loss weight = 1 / c_out^2
    torch.testing.assert_close(loss_weight(s, sd), 1 / c_out**2)


def test_sigma_distribution_lognormal():
    g = torch.Generator().manual_seed(0)
    s = sample_sigma(200_000, g, p_mean=0.4, p_std=1.0)
    ls = s.log()
    assert abs(float(ls.mean()) - 0.4) < 0.01
    assert abs(float(ls.std()) - 1.0) < 0.01
    # reproducible from the generator
    s2 = sample_sigma(200_000, torch.Generator().manual_seed(0), p_mean=0.4, p_std=1.0)
    assert torch.equal(s, s2)


def test_denoiser_float64_in_out_and_zero_init_is_skip():
    net = DiT(TINY)
    D = EDMDenoiser(net)
    x = torch.randn(3, 8, 12, dtype=torch.float64)
    s = torch.tensor([0.1, 1.0, 10.0], dtype=torch.float64)
    out = D(x, s, **cond(3))
    assert out.dtype == torch.float64
    # zero-initialised output layer: F = 0, so D = c_skip x exactly
    c_skip = precondition(s)[0].view(-1, 1, 1)
    torch.testing.assert_close(out, c_skip * x)


def test_text_mask_and_null_condition():
    torch.manual_seed(0)
    net = DiT(TINY)
    for p in net.parameters():  # leave zero-init: perturb so outputs depend on text
        p.data.add_(0.05 * torch.randn_like(p))
    x = torch.randn(2, 8, 12)
    c = cond(2)
    a = net(x, torch.zeros(2), **c)
    # changing padded text positions does not change the output
    c2 = {k: v.clone() for k, v in c.items()}
    c2["text"][0, 3:] += 100.0
    torch.testing.assert_close(net(x, torch.zeros(2), **c2), a)
    # all-masked text = null condition: independent of the text values
    n1 = {"text": torch.randn(2, 5, 16), "text_mask": torch.zeros(2, 5, dtype=torch.bool)}
    n2 = {"text": torch.randn(2, 7, 16), "text_mask": torch.zeros(2, 7, dtype=torch.bool)}
    torch.testing.assert_close(net(x, torch.zeros(2), **n1), net(x, torch.zeros(2), **n2))
    assert not torch.allclose(net(x, torch.zeros(2), **n1), a)


def test_per_sample_loss_shares_noise_and_sigma():
    net = DiT(TINY)
    D = EDMDenoiser(net)
    x0 = torch.randn(4, 8, 12)
    n = torch.randn_like(x0)
    s = torch.tensor([0.05, 0.5, 2.0, 20.0])
    l = denoising_loss(D, x0, n, s, cond(4))
    assert l.shape == (4,)
    # closed form with F = 0: D = c_skip (x0 + s n); error = ((c_skip - 1) x0 + c_skip s n)
    c_skip = precondition(s)[0].view(-1, 1, 1)
    ref = loss_weight(s) * ((c_skip * (x0 + s.view(-1, 1, 1) * n) - x0) ** 2).flatten(1).mean(1)
    torch.testing.assert_close(l, ref)
    # each sample's loss depends only on its own inputs
    l1 = denoising_loss(D, x0[1:2], n[1:2], s[1:2], {k: v[1:2] for k, v in cond(4).items()})
    torch.testing.assert_close(l1, l[1:2])


def test_tiny_model_overfits_four_clips():
    torch.manual_seed(0)
    net = DiT(TINY)
    D = EDMDenoiser(net)
    g = torch.Generator().manual_seed(1)
    x0 = 0.5 * torch.randn(4, 8, 12, generator=g)
    c = cond(4)
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    s_eval = torch.full((4,), 1.0)
    n_eval = torch.randn(x0.shape, generator=g)
    with torch.no_grad():
        before = float(denoising_loss(D, x0, n_eval, s_eval, c).mean())
    for _ in range(300):
        s = sample_sigma(4, g)
        loss = denoising_loss(D, x0, torch.randn(x0.shape, generator=g), s, c).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        after = float(denoising_loss(D, x0, n_eval, s_eval, c).mean())
    assert after < 0.1 * before, (before, after)


def test_checkpoint_roundtrip_and_architecture_mismatch(tmp_path):
    net = DiT(TINY)
    spec = ModelSpec(model=TINY, codec={"type": "logmel"}, text_encoder="minilm", latent_frames=12)
    save_model(tmp_path / "m.safetensors", net, spec)
    state, spec2 = read_model_file(tmp_path / "m.safetensors")
    assert spec2.model == TINY and spec2.latent_frames == 12
    net2 = build_net(spec2, state, "m")
    for (k, a), (_, b) in zip(net.state_dict().items(), net2.state_dict().items()):
        assert torch.equal(a, b), k
    other = DiT(DiTConfig(latent_channels=8, patch_size=2, width=48, depth=3, heads=2, text_dim=16, noise_freqs=16))
    with pytest.raises(CheckpointError) as e:
        load_state_strict(other, state, "m.safetensors")
    msg = str(e.value)
    assert "m.safetensors" in msg and "missing keys: blocks.2." in msg and "shape mismatch" in msg
    with pytest.raises(CheckpointError, match="does not exist"):
        read_model_file(tmp_path / "nope.safetensors")
    (tmp_path / "bad.safetensors").write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="could not be read"):
        read_model_file(tmp_path / "bad.safetensors")


def _perturbed(cfg: DiTConfig, seed: int = 0) -> DiT:
    torch.manual_seed(seed)
    net = DiT(cfg)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return net


def _token_jacobian_rank(net: DiT, token: int = 2) -> int:
    """Rank of d(output values of one token) / d(input), i.e. how many directions the model can move them in."""
    C, p = net.cfg.latent_channels, net.cfg.patch_size
    x = torch.randn(1, C, 6 * p)
    c = cond(1, dim=net.cfg.text_dim)

    def f(xx):
        return net(xx, torch.zeros(1), **c)[0, :, token * p:(token + 1) * p].reshape(-1)

    J = torch.autograd.functional.jacobian(f, x).reshape(C * p, -1)
    return int(torch.linalg.matrix_rank(J.double(), rtol=1e-6))


def test_refiner_starts_as_the_plain_transformer_and_lifts_the_output_rank():
    narrow = dict(latent_channels=8, patch_size=2, width=8, depth=1, heads=2, text_dim=16, noise_freqs=16)
    plain = _perturbed(DiTConfig(**narrow))
    refined = DiT(DiTConfig(**narrow, refine_channels=12, refine_kernel=3))
    # the refiner's last layer and FiLM are zero-initialised: with the transformer's weights it is the same model
    own = refined.state_dict()
    own.update(plain.state_dict())
    refined.load_state_dict(own)
    x = torch.randn(3, 8, 12)
    torch.testing.assert_close(refined(x, torch.zeros(3), **cond(3)), plain(x, torch.zeros(3), **cond(3)))
    # width 8 < 8 channels x patch 2 = 16 values per token: the plain model's per-token output is rank <= 8,
    # the refiner (which sees the input itself) makes it full rank
    assert _token_jacobian_rank(plain) <= 8
    assert _token_jacobian_rank(_perturbed(DiTConfig(**narrow, refine_channels=12, refine_kernel=3))) == 16


def test_refiner_kernel_must_be_odd():
    with pytest.raises(ValueError, match="refine_kernel=4"):
        DiT(DiTConfig(**{**TINY.__dict__, "refine_channels": 8, "refine_kernel": 4}))


def test_rope_scores_depend_only_on_relative_position():
    from dragontune.models.dit import apply_rope, rope_tables

    g = torch.Generator().manual_seed(0)
    n, dh = 20, 8
    cos, sin = rope_tables(n, dh, 1000.0, "cpu", torch.float64)
    q = torch.randn(1, 1, 1, dh, generator=g, dtype=torch.float64).expand(1, n, 1, dh)
    k = torch.randn(1, 1, 1, dh, generator=g, dtype=torch.float64).expand(1, n, 1, dh)
    s = torch.einsum("bihd,bjhd->ij", apply_rope(q, cos, sin), apply_rope(k, cos, sin))
    # the same vectors at every position: the score is a function of j - i only (Toeplitz)
    for d in range(-5, 6):
        diag = torch.diagonal(s, offset=d)
        torch.testing.assert_close(diag, diag[:1].expand_as(diag), rtol=1e-6, atol=1e-6)  # float32 angles
    assert not torch.allclose(torch.diagonal(s, 0)[:1], torch.diagonal(s, 3)[:1])
    # rotation keeps norms
    torch.testing.assert_close(apply_rope(q, cos, sin).norm(dim=-1), q.norm(dim=-1))


def test_rope_model_changes_attention_and_keeps_the_text_mask():
    # rope changes the model (it is not a no-op); the padding mask and null logic are unchanged
    net = _perturbed(DiTConfig(**{**TINY.__dict__, "rope": True}))
    x = torch.randn(2, 8, 12)
    c = cond(2)
    out = net(x, torch.zeros(2), **c)
    assert out.shape == x.shape and torch.isfinite(out).all()
    plain = _perturbed(TINY)
    assert not torch.allclose(out, plain(x, torch.zeros(2), **c))
    c2 = {k: v.clone() for k, v in c.items()}
    c2["text"][0, 3:] += 100.0  # padded text positions still do not matter
    torch.testing.assert_close(net(x, torch.zeros(2), **c2), out)


TEMPO = {"tempo_bins": 8, "tempo_period_min": 3.0, "tempo_period_max": 9.0, "tempo_harmonics": 2}


def test_tempo_conditioning_starts_as_the_plain_model_when_its_inputs_are_zeroed():
    base = dict(TINY.__dict__, refine_channels=6, refine_kernel=3)
    plain = _perturbed(DiTConfig(**base))
    timed = DiT(DiTConfig(**{**base, **TEMPO}))
    own = timed.state_dict()
    conv1 = own["refine.conv1.weight"].clone()
    own.update(plain.state_dict())
    conv1[:, :16] = plain.state_dict()["refine.conv1.weight"]  # 2 x 8 latent channels, then the periodic features
    conv1[:, 16:] = 0.0
    own["refine.conv1.weight"] = conv1
    timed.load_state_dict(own)
    x = torch.randn(2, 8, 12)
    # tempo_in is zero-initialised and the refiner's periodic inputs are zeroed: the same function
    torch.testing.assert_close(timed(x, torch.zeros(2), **cond(2)), plain(x, torch.zeros(2), **cond(2)))
    with torch.no_grad():
        timed.tempo_in.weight.normal_()
    assert not torch.allclose(timed(x, torch.zeros(2), **cond(2)), plain(x, torch.zeros(2), **cond(2)))


def test_tempo_features_teacher_forcing_and_null_prompt():
    import math

    net = _perturbed(DiTConfig(**{**TINY.__dict__, "refine_channels": 6, "refine_kernel": 3, **TEMPO}))
    head = net.tempo
    f = head.features(torch.tensor([4.0, 6.0]), 12, torch.tensor([True, False]))
    t = torch.arange(12.0)
    for h in (1, 2):
        torch.testing.assert_close(f[0, h - 1], torch.cos(2 * math.pi * h * t / 4.0), atol=1e-5, rtol=0)
        torch.testing.assert_close(f[0, 2 + h - 1], torch.sin(2 * math.pi * h * t / 4.0), atol=1e-5, rtol=0)
    assert torch.count_nonzero(f[1]) == 0  # no features for the null condition
    x, c = torch.randn(2, 8, 12), cond(2)
    free = net(x, torch.zeros(2), **c)
    predicted = net.predict_tempo_frames(**c)
    assert ((predicted >= 3.0) & (predicted <= 9.0)).all()
    # NaN -> the predicted period; the predicted period given explicitly -> the same output; another one differs
    torch.testing.assert_close(net(x, torch.zeros(2), **c, tempo_frames=torch.full((2,), float("nan"))), free)
    torch.testing.assert_close(net(x, torch.zeros(2), **c, tempo_frames=predicted), free)
    forced = net(x, torch.zeros(2), **c, tempo_frames=torch.tensor([float("nan"), 8.5]))
    torch.testing.assert_close(forced[0], free[0])
    assert not torch.allclose(forced[1], free[1])
    # the null prompt gets no periodic features, whatever period is given
    null = {"text": c["text"], "text_mask": torch.zeros_like(c["text_mask"])}
    torch.testing.assert_close(net(x, torch.zeros(2), **null, tempo_frames=torch.tensor([3.5, 8.5])),
                               net(x, torch.zeros(2), **null))
    # the head's loss: zero where the period is unknown or the prompt dropped
    loss = net.tempo_loss(c["text"], c["text_mask"], torch.tensor([5.0, float("nan")]))
    assert loss[0] > 0 and loss[1] == 0
    assert net.tempo_loss(**null, tempo_frames=torch.tensor([5.0, 5.0])).eq(0).all()


def test_tempo_head_learns_the_period_a_word_names():
    # prompts of 4 "tokens": one tempo word among distractors at a random position; three words, three periods
    from dragontune.models.dit import TempoHead

    g = torch.Generator().manual_seed(0)
    words = torch.randn(3, 16, generator=g)
    periods = torch.tensor([60.0, 40.0, 25.0])

    def batch(n):
        k = torch.randint(0, 3, (n,), generator=g)
        text = torch.randn(n, 4, 16, generator=g)
        text[torch.arange(n), torch.randint(0, 4, (n,), generator=g)] = words[k]
        return text, torch.ones(n, 4, dtype=torch.bool), periods[k]

    torch.manual_seed(0)
    head = TempoHead(16, 32, bins=32, p_min=20.0, p_max=70.0, harmonics=2)
    opt = torch.optim.Adam(head.parameters(), lr=3e-3)
    for _ in range(300):
        text, mask, p = batch(64)
        loss = head.nll(head.logits(text, mask), p).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    text, mask, p = batch(200)
    with torch.no_grad():
        pred = head.period(head.logits(text, mask))
    assert ((pred / p - 1).abs() < 0.05).float().mean() > 0.95, (pred / p)[:10]


def test_tempo_bad_options_are_named():
    with pytest.raises(ValueError, match="tempo_period_min < tempo_period_max"):
        DiT(DiTConfig(**{**TINY.__dict__, "tempo_bins": 8, "tempo_period_min": 30.0, "tempo_period_max": 20.0}))
    with pytest.raises(ValueError, match="no tempo conditioning"):
        _perturbed(TINY).predict_tempo_frames(**cond(1))
