"""One eps-box for every bound, attack, property and certificate: the torch and
numpy forms agree bit for bit, and with the two-sided clip on in-range data."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from toolchain.epsbox import INPUT_RANGE, eps_box


@pytest.mark.parametrize("eps", [0.0, 2 / 255, 0.1, 0.3, 1.5])
def test_torch_and_numpy_boxes_are_the_same_float32_values(eps):
    x = np.random.default_rng(2).random((4, 1, 5, 5), dtype=np.float32)
    x[0, 0, 0, :2] = INPUT_RANGE                      # the edges of the range
    lower, upper = eps_box(x, eps)
    t_lower, t_upper = eps_box(torch.from_numpy(x), eps)
    assert lower.dtype == upper.dtype == np.float32 and t_lower.dtype == torch.float32
    assert np.array_equal(lower, t_lower.numpy()) and np.array_equal(upper, t_upper.numpy())
    # The box as the bounder, the attack and the VNN-LIB writer wrote it before.
    assert torch.equal(t_lower, torch.clamp(torch.from_numpy(x) - eps, min=0.0))
    assert np.array_equal(upper, np.minimum(x + np.float32(eps), np.float32(1.0)))
    # On data in the range it is also the two-sided clip (QAT, the int8 bounds).
    assert np.array_equal(lower, np.clip(x - np.float32(eps), *INPUT_RANGE).astype(np.float32))
    assert torch.equal(t_upper, (torch.from_numpy(x) + eps).clamp(*INPUT_RANGE))
    assert lower.min() >= INPUT_RANGE[0] and upper.max() <= INPUT_RANGE[1]
    assert (lower <= x).all() and (x <= upper).all()


def test_box_takes_another_range_and_a_tensor_eps():
    x = torch.tensor([[-0.5, 0.0, 1.5]])
    lower, upper = eps_box(x, torch.tensor([[0.25]]), -1.0, 2.0)
    assert lower.tolist() == [[-0.75, -0.25, 1.25]] and upper.tolist() == [[-0.25, 0.25, 1.75]]
    lower, upper = eps_box(x.numpy(), 1.0, -1.0, 2.0)
    assert lower.tolist() == [[-1.0, -1.0, 0.5]] and upper.tolist() == [[0.5, 1.0, 2.0]]
