"""`dragontune eval` as a typed config (EvalConfig): YAML + dotted overrides + --dry-run, the flags as short forms."""

import yaml

from dragontune.cli import main
from dragontune.config import load_config
from dragontune.evaluate import EvalConfig


def test_dry_run_resolves_overrides_and_flags(tmp_path, capsys):
    cfg_file = tmp_path / "eval.yaml"
    cfg_file.write_text(yaml.safe_dump({"model": "m.safetensors", "n_prompts": 8, "sampler": {"steps": 12}}))
    out = tmp_path / "e"
    assert main(["eval", str(cfg_file), "sampler.cfgpp=true", "sampler.cfgpp_steps=[0,6]", "--cfg", "2.5",
                 "--seeds-per-prompt", "4", "--out", str(out), "--dry-run"]) == 0
    shown = yaml.safe_load(capsys.readouterr().out)
    assert shown["model"] == "m.safetensors" and shown["n_prompts"] == 8 and shown["seeds_per_prompt"] == 4
    assert shown["sampler"]["steps"] == 12 and shown["sampler"]["cfg"] == 2.5 and shown["sampler"]["cfgpp"] is True
    assert shown["sampler"]["cfgpp_steps"] == [0, 6] and shown["out_dir"] == str(out)
    # what was printed is a config that loads back to the same thing
    (tmp_path / "back.yaml").write_text(yaml.safe_dump(shown))
    assert load_config(EvalConfig, tmp_path / "back.yaml").sampler.cfgpp_steps == [0, 6]


def test_bad_values_are_named_by_their_key(tmp_path, capsys):
    assert main(["eval", "model=m.safetensors", "sampler.steps=0", f"out_dir={tmp_path / 'e'}", "--dry-run"]) == 2
    assert "sampler.steps=0" in capsys.readouterr().err
    assert main(["eval", "sampler.steps=4", f"out_dir={tmp_path / 'e'}", "--dry-run"]) == 2
    assert "model=''" in capsys.readouterr().err
    assert main(["eval", "model=m", "sampler.cfgpp_steps=[3,1]", f"out_dir={tmp_path / 'e'}"]) == 2
    assert "sampler.cfgpp_steps" in capsys.readouterr().err
    assert main(["eval", "model=m", "n_prompts=-1", f"out_dir={tmp_path / 'e'}"]) == 2
    assert "n_prompts=-1" in capsys.readouterr().err
