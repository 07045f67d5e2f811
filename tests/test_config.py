import pytest

from toolchain.config import Config, config_from_dict, default_config_text, load_config
from toolchain.errors import VstError


def test_default_file_equals_defaults(tmp_path):
    path = tmp_path / "vst.toml"
    path.write_text(default_config_text())
    assert load_config(path) == Config()
    assert load_config(None) == Config()


def test_partial_config_keeps_other_defaults():
    cfg = config_from_dict({"train": {"epochs": 3, "eps": 0.2}, "sparsity": {"density": 1}})
    assert cfg.train.epochs == 3 and cfg.train.eps == 0.2
    assert cfg.sparsity.density == 1.0 and isinstance(cfg.sparsity.density, float)
    assert cfg.model == Config().model


@pytest.mark.parametrize("data,message", [
    ({"train": {"epoch": 3}}, r"unknown key train.epoch \(did you mean 'epochs'\?\)"),
    ({"trian": {}}, r"unknown section \[trian\] \(did you mean 'train'\?\)"),
    ({"train": {"epochs": "3"}}, "train.epochs must be int"),
    ({"train": {"epochs": True}}, "train.epochs must be int"),
    ({"train": {"epochs": 0}}, "train.epochs must be >= 1"),
    ({"verify": {"eps": -0.1}}, "verify.eps must be >= 0"),
    ({"train": {"eps": -1}}, "train.eps must be >= 0"),
    ({"sparsity": {"density": 0.0}}, "sparsity.density must be > 0"),
    ({"sparsity": {"density": 1.5}}, "sparsity.density must be <= 1"),
    ({"sparsity": {"mode": "structred"}}, "did you mean 'structured'"),
    ({"export": {"formats": ["onnx", "pdf"]}}, "export.formats must be one of"),
    ({"model": {"widths": [64, "x"]}}, r"model.widths\[1\] must be int"),
    ({"model": "cnn"}, r"\[model\] must be a table"),
])
def test_validation_errors(data, message):
    with pytest.raises(VstError, match=message):
        config_from_dict(data)


def test_file_errors(tmp_path):
    with pytest.raises(VstError, match="not found"):
        load_config(tmp_path / "nope.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[train\nepochs = 1")
    with pytest.raises(VstError, match="not valid TOML"):
        load_config(bad)


def test_a_schedule_longer_than_the_epochs_is_scaled_and_said(caplog):
    """Lowering only `epochs` must not train a model that never reaches its eps."""
    with caplog.at_level("WARNING", logger="vst.config"):
        cfg = config_from_dict({"train": {"epochs": 6}})        # warm-up 4 + ramp 30
    assert cfg.train.warmup_epochs + cfg.train.ramp_epochs <= 6 and cfg.train.ramp_epochs >= 1
    assert "never reach train.eps" in caplog.text and "scaled them to 0 + 6" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="vst.config"):
        cfg = config_from_dict({"train": {"epochs": 40}})
    assert (cfg.train.warmup_epochs, cfg.train.ramp_epochs) == (4, 30) and not caplog.text
