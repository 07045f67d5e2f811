"""Networks written in vst.toml ([[model.layers]]): building them, and one-line errors."""

import subprocess
import sys

import pytest

from helpers import assert_one_line, tiny_mnist
from toolchain.config import config_from_dict, load_config
from toolchain.errors import VstError
from toolchain.models import layers as L
from toolchain.models.custom import build_custom
from toolchain.models.zoo import network_for

RESIDUAL = """
[model]
[[model.layers]]
kind = "conv2d"
out_channels = 4
kernel = 3
stride = 2
padding = 1
[[model.layers]]
kind = "relu"
name = "a"
[[model.layers]]
kind = "conv2d"
out_channels = 4
kernel = 3
padding = 1
groups = 4
[[model.layers]]
kind = "batchnorm"
[[model.layers]]
kind = "add"
input = "a"
[[model.layers]]
kind = "relu"
[[model.layers]]
kind = "avgpool2d"
kernel = 2
[[model.layers]]
kind = "globalavgpool"
[[model.layers]]
kind = "linear"
"""


def test_a_residual_config_builds_the_graph(tmp_path):
    (tmp_path / "vst.toml").write_text(RESIDUAL)
    cfg = load_config(tmp_path / "vst.toml")
    assert cfg.model.arch == "custom" and len(cfg.model.layers) == 9
    net = network_for(cfg.model, (1, 12, 12), 10)
    assert net.layers[2] == L.Conv2d(4, 4, 3, 1, 1, groups=4)        # in_channels inferred
    assert net.layers[3] == L.BatchNorm(4) and net.layers[-1] == L.Linear(4, 10)
    assert net.inputs[4] == (1, 3)                                    # a + the layer before
    assert net.shapes()[6] == (4, 3, 3) and net.num_classes == 10
    assert cfg.to_dict()["model"]["layers"][4] == {"kind": "add", "input": "a"}


def test_names_lists_and_the_network_input():
    tables = [{"kind": "conv1d", "out_channels": 3, "kernel": 3, "padding": 1, "name": "c"},
              {"kind": "conv1d", "out_channels": 3, "kernel": 1, "input": "input", "name": "s"},
              {"kind": "add", "input": ["s", "c"]}, {"kind": "flatten"},
              {"kind": "linear", "out_features": 4}]
    net = build_custom(tables, (3, 8), 4)
    assert net.inputs == ((-1,), (-1,), (1, 0), (2,), (3,))


BAD = [
    ([{"kind": "lstm"}], "model.layers[0] (lstm): unknown layer kind 'lstm'"),
    ([{"kind": "conv2d", "out_channels": 4}], "model.layers[0] (conv2d): missing kernel"),
    ([{"kind": "relu", "kernel": 3}], "(relu): unknown key 'kernel'; relu takes no parameters"),
    ([{"kind": "conv2d", "out_channels": 4, "kernel": "3"}], "kernel must be an integer"),
    ([{"kind": "relu"}, {"kind": "relu", "input": "b"}, {"kind": "relu", "name": "b"}],
     "model.layers[1] (relu): reads 'b', which is not before it"),
    ([{"kind": "relu", "name": "a", "input": "a"}], "reads 'a', which is not before it"),
    ([{"kind": "relu", "name": "a"}, {"kind": "add", "input": "ab"}],
     "reads 'ab', but no layer is named so (did you mean 'a'?)"),
    ([{"kind": "relu", "name": "a"}, {"kind": "relu", "name": "a"}], "name 'a' is already"),
    ([{"kind": "relu", "name": "input"}], "name must be a word other than 'input'"),
    ([{"kind": "relu", "name": "a"}, {"kind": "relu"}, {"kind": "add", "input": ["a", "a", "a"]}],
     "takes 2 input(s), got 3"),
    ([{"kind": "relu"}, {"kind": "relu", "input": "input"}],
     "model.layers[0] (relu): its output is never used"),
    ({"kind": "relu"}, "model.layers must be a list of tables"),
]


@pytest.mark.parametrize("tables,message", BAD)
def test_bad_tables_are_one_line_errors(tables, message):
    with pytest.raises(VstError) as info:
        config_from_dict({"model": {"layers": tables}})
    assert message in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize("model,message", [
    ({"arch": "mlp", "layers": [{"kind": "flatten"}]}, "model.arch does not apply"),
    ({"widths": [3], "layers": [{"kind": "flatten"}]}, "model.widths does not apply"),
    ({"arch": "custom"}, 'model.arch = "custom" needs the network in [[model.layers]]'),
])
def test_custom_and_zoo_options_do_not_mix(model, message):
    with pytest.raises(VstError, match=message.replace("[", r"\[").replace("]", r"\]")):
        config_from_dict({"model": model})


@pytest.mark.parametrize("tables,message", [
    ([{"kind": "conv2d", "out_channels": 4, "kernel": 3, "padding": 1, "name": "a"},
      {"kind": "conv2d", "out_channels": 8, "kernel": 1}, {"kind": "add", "input": "a"},
      {"kind": "flatten"}, {"kind": "linear"}],
     "model.layers[2] (add): add of shapes (4, 6, 6) and (8, 6, 6): they must be equal"),
    ([{"kind": "conv2d", "out_channels": 4, "kernel": 9}, {"kind": "flatten"}, {"kind": "linear"}],
     "model.layers[0] (conv2d): conv2d kernel 9 does not fit input (1, 6, 6)"),
    ([{"kind": "conv2d", "out_channels": 4, "kernel": 3, "groups": 3}, {"kind": "flatten"},
      {"kind": "linear"}], "groups 3 must divide in_channels 1"),
    ([{"kind": "flatten"}, {"kind": "linear", "out_features": 3}],
     "the last layer gives (3,), the data has 5 classes"),
])
def test_shape_errors_name_the_layer(tables, message):
    with pytest.raises(VstError) as info:
        build_custom(tables, (1, 6, 6), 5)
    assert message in str(info.value)


def _vst(*args, cwd):
    return subprocess.run([sys.executable, "-m", "toolchain", *args], capture_output=True,
                          text=True, cwd=cwd, timeout=300)


def test_cli_bad_graph_config_is_exit_2_one_line(tmp_path):
    (tmp_path / "vst.toml").write_text('[model]\n[[model.layers]]\nkind = "relu"\ninput = "x"\n')
    res = _vst("-q", "train", "--config", "vst.toml", "--out", "run", cwd=tmp_path)
    assert_one_line(res.returncode, res.stderr, 2, "model.layers[0] (relu): reads 'x'")
    tiny_mnist(tmp_path / "tiny.npz", n_train=80, n_test=16)
    bad_add = RESIDUAL.replace('input = "a"', 'input = "input"')
    (tmp_path / "vst.toml").write_text(f'[data]\ndataset = "tiny.npz"\n{bad_add}')
    res = _vst("-q", "train", "--config", "vst.toml", "--out", "run", cwd=tmp_path)
    assert_one_line(res.returncode, res.stderr, 2, "model.layers[4] (add): add of shapes (1, 28, 28) and (4, 14, 14)")
    assert not (tmp_path / "run" / "model.vst").exists()
