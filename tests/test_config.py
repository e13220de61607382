import pytest

from dragontune.config import load_config
from dragontune.errors import ConfigError
from dragontune.training.pretrain import PretrainConfig


def test_typo_in_config_key_suggests_nearest(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("stpes: 10\n")
    with pytest.raises(ConfigError, match=r"unknown config key 'stpes'; did you mean 'steps'"):
        load_config(PretrainConfig, p)
    p.write_text("optim:\n  lrr: 0.1\n")
    with pytest.raises(ConfigError, match=r"optim\.'lrr'.*did you mean 'lr'"):
        load_config(PretrainConfig, p)


def test_dotted_overrides_and_types(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("steps: 10\nmodel:\n  width: 64\n")
    cfg = load_config(PretrainConfig, p, ["optim.lr=3e-4", "model.depth=3", "sample_prompts=[a, b]"])
    assert cfg.steps == 10 and cfg.model.width == 64 and cfg.model.depth == 3
    assert cfg.optim.lr == pytest.approx(3e-4) and cfg.sample_prompts == ["a", "b"]
    with pytest.raises(ConfigError, match="did you mean 'width'"):
        load_config(PretrainConfig, p, ["model.widht=3"])
    with pytest.raises(ConfigError, match="must be an integer"):
        load_config(PretrainConfig, p, ["steps=ten"])
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(PretrainConfig, tmp_path / "missing.yaml")
