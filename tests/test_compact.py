"""Compaction removes pruned channels without changing the function or the certificate."""

import subprocess
import sys

import pytest
import torch

from helpers import tiny_config, tiny_mnist
from toolchain.compact import compact, fold_batchnorm, max_abs_diff, remove_channels
from toolchain.data import load_dataset
from toolchain.lirpa.bounds import Bounder
from toolchain.models import layers as L
from toolchain.models.modelfile import VstModel, load_model
from toolchain.models.torch_build import build_torch
from toolchain.train.trainer import train


@pytest.fixture(scope="module", params=[False, True], ids=["plain", "batchnorm"])
def structured(request, tmp_path_factory):
    root = tmp_path_factory.mktemp("compact")
    data = tiny_mnist(root / "tiny.npz")
    cfg = tiny_config(data, model={"batchnorm": request.param},
                      train={"epochs": 4, "warmup_epochs": 2, "ramp_epochs": 1})
    return train(cfg, root / "run", show_progress=False), load_dataset(str(data)), root


def test_smaller_and_same_function(structured):
    model, data, _ = structured
    small, report = compact(model)
    x = torch.from_numpy(data.x_test)
    assert max_abs_diff(model, small, x) <= 1e-5
    assert report["after"]["params"] < 0.8 * report["before"]["params"]
    assert not any(isinstance(layer, L.BatchNorm) for layer in small.network.layers)
    # every channel the structured mask kept is still there, every pruned one is gone
    convs = [l for l in small.network.layers if isinstance(l, L.Conv2d)]
    masks = model.masks
    assert convs[0].out_channels == int(masks["0.bias"].sum())


@pytest.mark.parametrize("method", ["ibp", "crown"])
def test_same_verdicts_and_bounds(structured, method):
    model, data, _ = structured
    small, _ = compact(model)
    x, y = torch.from_numpy(data.x_test), torch.from_numpy(data.y_test)
    lb = [Bounder(m.torch_module().eval(), data.input_shape).margin_lower(x, y, 0.03, method)
          .detach() for m in (model, small)]
    assert torch.equal(Bounder.verified(lb[0]), Bounder.verified(lb[1]))
    assert (lb[0] - lb[1]).abs().max() <= 1e-5


def _net_with_dead_channels(bias_value: float):
    net = L.Network((1, 4, 4), (L.Conv2d(1, 3, 3, 1, 1), L.ReLU(), L.Conv2d(3, 2, 3, 2, 1),
                                L.ReLU(), L.Flatten(), L.Linear(8, 3)))
    state = build_torch(net).state_dict()
    with torch.no_grad():
        state["0.weight"][1] = 0.0           # conv channel 1: constant output
        state["0.bias"][1] = bias_value
        state["2.weight"][0] = 0.0           # second conv channel 0: constant into a Linear
        state["2.bias"][0] = 0.7
    return VstModel(net, state)


def test_constant_channels_are_folded_or_kept_exactly():
    x = torch.rand(64, 1, 4, 4)
    dead = _net_with_dead_channels(-0.5)     # ReLU(-0.5) = 0: removable before a conv
    small = remove_channels(dead)
    assert small.network.layers[0].out_channels == 2
    assert small.network.layers[5].in_features == 4     # 1 channel * 2*2 left
    assert max_abs_diff(dead, small, x) <= 1e-6
    live = _net_with_dead_channels(0.5)      # constant 0.5 into a conv with padding: kept
    small = remove_channels(live)
    assert small.network.layers[0].out_channels == 3
    assert max_abs_diff(live, small, x) <= 1e-6


def test_fold_batchnorm_alone():
    net = L.Network((2, 5), (L.Conv1d(2, 3, 3, 1, 1), L.BatchNorm(3), L.ReLU(), L.Flatten(),
                             L.Linear(15, 2)))
    module = build_torch(net)
    with torch.no_grad():
        bn = module[1]
        bn.running_mean.uniform_(-1, 1), bn.running_var.uniform_(0.5, 2)
        bn.weight.uniform_(0.5, 2), bn.bias.uniform_(-1, 1)
    model = VstModel(net, module.state_dict())
    folded = fold_batchnorm(model)
    assert len(folded.network.layers) == 4
    assert max_abs_diff(model, folded, torch.rand(32, 2, 5)) <= 1e-5


def test_unstructured_is_left_to_sparse_storage(tmp_path):
    data = tiny_mnist(tmp_path / "tiny.npz")
    model = train(tiny_config(data, sparsity={"mode": "unstructured"}, train={"epochs": 1}),
                  tmp_path / "run", show_progress=False)
    small, report = compact(model)
    assert "cannot be removed physically" in report["note"]
    assert report["after"]["nonzero"] == report["before"]["nonzero"]


def test_cli_compact_then_verify(structured, tmp_path):
    _, _, root = structured
    run = lambda *a: subprocess.run([sys.executable, "-m", "toolchain", "-q", *map(str, a)],  # noqa
                                    capture_output=True, text=True, timeout=300)
    res = run("compact", root / "run" / "model.vst", "--out", tmp_path / "small.vst",
              "--json", tmp_path / "r.json")
    assert res.returncode == 0, res.stderr
    assert "max |diff|" in res.stdout
    small = load_model(tmp_path / "small.vst")
    assert small.record["compacted_from"] == load_model(root / "run" / "model.vst").weights_hash()
    assert run("verify", tmp_path / "small.vst", "--n", 20).returncode == 0
    bad = run("compact", tmp_path / "missing.vst", "--out", tmp_path / "x.vst")
    assert bad.returncode == 2 and not (tmp_path / "x.vst").exists()
