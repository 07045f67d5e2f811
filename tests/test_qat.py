"""Quantization-aware certified fine-tuning (toolchain/train/qat.py) on a tiny model."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import torch

from helpers import random_model
from toolchain.models.layers import Conv2d, Flatten, Linear, Network, ReLU
from toolchain.train.qat import (bounds, calibrate, fake_quant_act, fake_quant_weight,
                                 finetune_int8)

NET = Network((1, 8, 8), (Conv2d(1, 4, 3, 2, 1), ReLU(), Flatten(), Linear(64, 5)))


def test_weights_round_per_channel_to_127_steps():
    w = torch.tensor([[0.5, -0.25, 0.001], [2.0, 1.0, -0.03]])
    q = fake_quant_weight(w)
    steps = q / (w.abs().amax(1, keepdim=True) / 127)
    assert torch.allclose(steps, steps.round(), atol=1e-4)
    assert torch.equal(q.abs().amax(1), w.abs().amax(1))
    w.requires_grad_(True)
    fake_quant_weight(w).sum().backward()               # straight-through gradient
    assert torch.equal(w.grad, torch.ones_like(w))


def test_activations_round_to_the_int8_grid_of_their_range():
    x = torch.linspace(-1.0, 3.0, 101)
    q = fake_quant_act(x, 0.0, 2.0)
    scale = 2.0 / 255
    assert torch.all(q >= -1e-6) and torch.all(q <= 2.0 + scale)
    assert torch.allclose(q / scale, (q / scale).round(), atol=1e-3)
    assert torch.all((q[1:] - q[:-1]) >= 0)              # monotone: bounds map to bounds


def test_interval_bounds_contain_the_quantized_network_on_sampled_points():
    model = random_model(NET, seed=1)
    module = model.torch_module()
    rng = np.random.default_rng(0)
    x = torch.from_numpy(rng.random((6, 1, 8, 8), dtype=np.float32))
    ranges = calibrate(module, x)
    lo, hi = bounds(module, ranges, x, 0.05)
    point, same = bounds(module, ranges, x, 0.0)
    assert torch.equal(point, same)
    for _ in range(50):
        noise = torch.from_numpy(rng.uniform(-0.05, 0.05, x.shape).astype(np.float32))
        out, _ = bounds(module, ranges, (x + noise).clamp(0, 1), 0.0)
        assert torch.all(out >= lo - 1e-5) and torch.all(out <= hi + 1e-5)


def test_finetuning_keeps_zero_weights_and_changes_the_rest():
    model = random_model(NET, seed=2)
    model.state["0.weight"][:2] = 0.0                    # a pruned channel pattern
    rng = np.random.default_rng(3)
    data = SimpleNamespace(x_train=rng.random((96, 1, 8, 8), dtype=np.float32),
                           y_train=rng.integers(0, 5, 96))
    tuned = finetune_int8(model, data, epochs=1, eps=0.02, batch_size=32)
    assert torch.equal(tuned.state["0.weight"][:2], torch.zeros_like(tuned.state["0.weight"][:2]))
    assert not torch.equal(tuned.state["3.weight"], model.state["3.weight"])
    assert tuned.record["qat"]["epochs"] == 1
