"""Every config value is range-checked before any work, by the command and by --dry-run alike: the error
names the key, the value and the valid range (exit code 2, no traceback)."""

import os
from pathlib import Path

import pytest
import torch

from dragontune.cli import main
from dragontune.config import load_config
from dragontune.errors import ConfigError

CUDA = torch.cuda.is_available()

FINETUNE_BAD = [
    ("optim.grad_clip=-1", "optim.grad_clip=-1.0", ">= 0"),
    ("rounds=0", "rounds=0", ">= 1"),
    ("rounds=-1", "rounds=-1", ">= 1"),
    ("cond_dropout=1.5", "cond_dropout=1.5", "[0, 1]"),
    ("optim.lr=-1", "optim.lr=-1.0", "> 0"),
    ("optim.lr=0", "optim.lr=0.0", "> 0"),
    ("updates_per_round=0", "updates_per_round=0", ">= 1"),
    ("sampler.batch_size=0", "sampler.batch_size=0", ">= 1"),
    ("eval_sampler.steps=0", "eval_sampler.steps=0", ">= 1"),
    ("beta=0", "beta=0.0", "> 0"),
    ("batch_per_update=0", "batch_per_update=0", ">= 1"),
    ("prompts_per_round=0", "prompts_per_round=0", ">= 1"),
    ("p_reference=1.5", "p_reference=1.5", "[0, 1]"),
    ("optim.beta2=1", "optim.beta2=1.0", "[0, 1)"),
    ("loss=ipo", "loss='ipo'", "dpo, kto, auto"),
    ("kto_utility=tanh", "kto_utility='tanh'", "sigmoid"),
    ("pool.size=1", "pool.size=1", ">= 2"),
    ("set_reward_lr=-1", "set_reward_lr=-1.0", ">= 0"),
    ("reward_recipes.clap_score.lr=0", "reward_recipes.clap_score.lr=0", "> 0"),
    ("reward_recipes.aesthetics.batch_per_update=0", "reward_recipes.aesthetics.batch_per_update=0", ">= 1"),
    ("reward_recipes.aesthetics.all_pairs=2", "reward_recipes.aesthetics.all_pairs=2", "true or false"),
    ("reward_recipes.aesthetics.beta=1", "reward_recipes.aesthetics.beta=1", "valid: lr, batch_per_update"),
    ("sampler.sampler=ddim", "sampler.sampler='ddim'", "dpmpp_2m"),
    ("sampler.cfgpp_steps=[3,1]", "sampler.cfgpp_steps=[3, 1]", "start < stop"),
    ("data.duration=0", "data.duration=0.0", "> 0"),
    ("optim.lr=.nan", "optim.lr=nan", "finite"),
]
PRETRAIN_BAD = [
    ("steps=0", "steps=0", ">= 1"),
    ("batch_size=0", "batch_size=0", ">= 1"),
    ("optim.lr=-1", "optim.lr=-1.0", "> 0"),
    ("optim.grad_clip=-0.5", "optim.grad_clip=-0.5", ">= 0"),
    ("model.heads=3", "model.heads=3", "must divide model.width=256"),
    ("cond_dropout=-0.1", "cond_dropout=-0.1", "[0, 1]"),
    ("model.refine_kernel=4", "model.refine_kernel=4", "odd"),
    ("codec.hop_length=0", "hop_length", "(0, n_fft"),
    ("model.latent_channels=32", "model.latent_channels=32", "codec.n_mels"),
    ("model.patch_size=7", "model.patch_size=7", "multiple"),
    ("ema_halflife_steps=0", "ema_halflife_steps=0.0", "> 0"),
]


@pytest.mark.parametrize("override,named,valid", FINETUNE_BAD)
def test_finetune_bad_values_under_dry_run(override, named, valid, capsys):
    assert main(["finetune", "configs/dragon_cpu.yaml", override, "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert named in err and valid in err and "Traceback" not in err, err


FAD_PIANO = "reward={name: fad, encoder: codec, exemplars: {corpus: data/corpus, filter: instrument=piano}}"


@pytest.mark.parametrize("overrides,named", [
    (["k_per_prompt=1", "builder=pool", "loss=dpo", FAD_PIANO], "needs at least 2 samples per prompt, got 1"),
    (["builder=paired", FAD_PIANO], "invalid DRAGON combination: reward class 'dist_to_dist' with builder='paired'"),
    (["builder=unpaired", "reward={name: weighted, components: [{name: vendi, encoder: codec}]}"],
     "invalid DRAGON combination: reward class 'dist_to_dist'"),
])
def test_finetune_combination_checked_under_dry_run(overrides, named, capsys):
    """Builder, loss and K against the reward's class: refused by --dry-run, before a model or reward loads."""
    assert main(["finetune", "configs/dragon_cpu.yaml", *overrides, "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert named in err and "Traceback" not in err, err


def test_finetune_auto_recipe_with_one_sample_per_prompt_passes_dry_run(capsys):
    assert main(["finetune", "configs/dragon_cpu.yaml", "k_per_prompt=1", FAD_PIANO, "--dry-run"]) == 0
    assert "# recipe for reward class dist_to_dist: builder=pool loss=kto" in capsys.readouterr().out


@pytest.mark.parametrize("overrides,line", [
    ([FAD_PIANO], "# recipe for reward class dist_to_dist: builder=pool loss=dpo lr=2e-05"),
    (["reward={name: clap_score}"], "# recipe for reward class instance: builder=paired loss=dpo lr=2e-05"),
    (["reward={name: aesthetics}"], "builder=paired loss=dpo {'all_pairs': True} batch_per_update=32 lr=3e-05 "
                                    "(optim.lr)"),
    (["reward={name: aesthetics}", "reward_recipes={}"], "builder=paired loss=dpo lr=3e-05 (optim.lr)"),
    ([FAD_PIANO, "builder=loo"], "builder=loo loss=dpo lr=3e-05 (optim.lr)"),
])
def test_finetune_dry_run_prints_the_recipe(overrides, line, capsys):
    """--dry-run says what `auto` resolves to, before any work (an explicit builder keeps optim.lr)."""
    assert main(["finetune", "configs/dragon_cpu.yaml", "optim.lr=3e-5", *overrides, "--dry-run"]) == 0
    assert line in capsys.readouterr().out


@pytest.mark.parametrize("override,named,valid", PRETRAIN_BAD)
def test_pretrain_bad_values_under_dry_run(override, named, valid, capsys):
    assert main(["pretrain", override, "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert named in err and valid in err and "Traceback" not in err, err


@pytest.mark.skipif(CUDA, reason="this machine has CUDA")
@pytest.mark.parametrize("cmd", ["finetune", "pretrain"])
def test_device_cuda_without_cuda(cmd, capsys):
    assert main([cmd, "device=cuda", "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert "device='cuda' but CUDA is not available" in err and "device=cpu" in err


@pytest.mark.parametrize("cmd", ["finetune", "pretrain"])
def test_grad_clip_zero_means_off_and_is_accepted(cmd, capsys):
    assert main([cmd, "optim.grad_clip=0", "--dry-run"]) == 0
    assert "grad_clip: 0.0" in capsys.readouterr().out


def test_checks_come_before_any_work(tmp_path):
    """A bad value stops finetune and pretrain before the run folder, the corpus or the model is touched."""
    from dragontune.dragon.loop import DragonConfig, finetune
    from dragontune.training.pretrain import PretrainConfig, pretrain

    corpus, out = tmp_path / "corpus", tmp_path / "out"
    base = [f"out_dir={out}", f"data.corpus={corpus}", "device=cpu"]
    with pytest.raises(ConfigError, match=r"rounds=0 .*>= 1"):
        finetune(load_config(DragonConfig, None, base + ["rounds=0", f"baseline={tmp_path / 'missing.safetensors'}"]))
    with pytest.raises(ConfigError, match=r"model\.heads=3"):
        pretrain(load_config(PretrainConfig, None, base + ["model.heads=3"]))
    assert not corpus.exists() and not out.exists()


@pytest.mark.parametrize("override,named,valid", [
    ("reward.exemplars.audio_dir=missing-folder", "reward.exemplars.audio_dir='missing-folder'", "existing folder"),
    ("reward.exemplars.corpus=other-corpus", "reward.exemplars.corpus='other-corpus'", "existing folder"),
    ("reward.name=fda", "reward.name: unknown reward 'fda'", "known rewards: aesthetics"),
    ("prompts=no-such-prompts.txt", "prompts='no-such-prompts.txt'", "no such file"),
])
@pytest.mark.parametrize("dry", [True, False])
def test_finetune_reward_spec_checked_before_any_work(override, named, valid, dry, tmp_path, monkeypatch, capsys):
    """A missing exemplar folder or a misspelt reward is found before the corpus is synthesised (once 71 s of
    work before the error) or the model loads, and under --dry-run too."""
    monkeypatch.chdir(tmp_path)
    args = ["finetune", "reward.name=fad", "reward.encoder=codec", "reward.exemplars.corpus=data/corpus", override,
            f"out_dir={tmp_path / 'out'}", f"baseline={tmp_path / 'missing.safetensors'}"]
    assert main(args + (["--dry-run"] if dry else [])) == 2
    err = capsys.readouterr().err
    assert named in err and valid in err and "missing.safetensors" not in err, err
    assert not (tmp_path / "data").exists() and not (tmp_path / "out").exists()


@pytest.mark.parametrize("args,named", [
    (["--steps", "0"], "--steps=0"),
    (["--cfg", "-1"], "--cfg=-1.0"),
    (["--n-per-prompt", "0"], "--n-per-prompt=0"),
    (["--sampler", "ddim"], "--sampler='ddim'"),
    (["--bpm", "-5"], "--bpm=-5.0"),
] + ([] if CUDA else [(["--device", "cuda"], "--device='cuda' but CUDA is not available")]))
def test_sample_bad_values_before_the_model_loads(args, named, tmp_path, capsys):
    # a checkpoint that does not exist: the value error must come first
    assert main(["sample", "--prompt", "drums", "--checkpoint", str(tmp_path / "missing.safetensors"),
                 "--out", str(tmp_path / "s"), *args]) == 2
    err = capsys.readouterr().err
    assert named in err and "missing.safetensors" not in err, err


@pytest.mark.parametrize("args,named", [(["--steps", "0"], "--steps=0"), (["--n", "0"], "--n=0"),
                                        (["--cfg", "-2"], "--cfg=-2.0")])
def test_eval_bad_values(args, named, tmp_path, capsys):
    assert main(["eval", "--model", str(tmp_path / "missing.safetensors"), "--out", str(tmp_path / "e"), *args]) == 2
    assert named in capsys.readouterr().err


def readonly_dir(tmp_path: Path) -> Path:
    """A folder this process cannot write into (root ignores permissions: use sysfs then)."""
    ro = tmp_path / "ro"
    ro.mkdir()
    os.chmod(ro, 0o500)
    if not os.access(ro, os.W_OK):
        return ro
    for p in (Path("/sys/kernel"), Path("/proc/sys")):
        try:
            (p / ".dragontune-probe").mkdir()
            (p / ".dragontune-probe").rmdir()
        except OSError:
            return p
    pytest.skip("no read-only folder available to this user")


def test_score_read_only_out_and_malformed_reward_fail_before_work(tmp_path, capsys):
    audio = tmp_path / "a"
    audio.mkdir()
    ro = readonly_dir(tmp_path)
    missing = str(tmp_path / "missing.safetensors")  # scoring would fail on it: the --out check comes first
    assert main(["score", "--reward", "vendi", "--audio-dir", str(audio), "--checkpoint", missing,
                 "--out", str(ro / "score.json")]) == 2
    err = capsys.readouterr().err
    assert "--out" in err and "not writable" in err and str(ro) in err, err
    assert main(["score", "--reward", "{name: fad, encoder: [codec", "--audio-dir", str(audio),
                 "--checkpoint", missing, "--out", str(tmp_path / "s.json")]) == 2
    err = capsys.readouterr().err
    assert "--reward" in err and "not valid YAML" in err and "Traceback" not in err
    assert main(["score", "--reward", "{encoder: codec}", "--audio-dir", str(audio), "--out", str(tmp_path / "s.json")]) == 2
    assert "must be a mapping with a 'name'" in capsys.readouterr().err


def test_report_and_eval_into_a_read_only_folder(tmp_path, capsys):
    ro = readonly_dir(tmp_path)
    assert main(["report", str(ro)]) == 2
    err = capsys.readouterr().err
    assert "not writable" in err and str(ro) in err
    assert main(["eval", "--model", str(tmp_path / "missing.safetensors"), "--out", str(ro / "e")]) == 2
    err = capsys.readouterr().err
    assert "not writable" in err and "missing.safetensors" not in err
