"""Quantization-aware certified fine-tuning: IBP through the int8 rounding.

The int8 network that is flashed rounds its weights (per output channel,
symmetric, as the TFLite converter does) and its activations (per tensor, on
ranges calibrated from training data). Fine-tuning a few epochs with that
rounding inside the certified loss lets the weights adapt to it. The bounds
here are a training surrogate (plain interval propagation with fake
quantization and straight-through gradients, no auto_LiRPA: its graph does
not take rounding); the certificate of the result is always computed anew,
exactly, by ``toolchain.verify.int8_bounds`` on the exported .tflite.

Quantization points, as in the converted model: the input, every ReLU output
and the logits. Zero weights stay zero (sparsity is kept).

>>> tuned = finetune_int8(model, data, epochs=2, eps=0.15)   # doctest: +SKIP
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from toolchain.epsbox import INPUT_RANGE, eps_box
from toolchain.models.torch_build import Normalize
from toolchain.train.certified import robust_ce


def _ste(x: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """Forward ``q``, backward the identity (straight-through estimator)."""
    return x + (q - x).detach()


def fake_quant_weight(w: torch.Tensor) -> torch.Tensor:
    """Per output channel, symmetric int8: w ~ round(w / s) * s, s = max|w| / 127."""
    dims = tuple(range(1, w.dim()))
    s = w.detach().abs().amax(dim=dims, keepdim=True).clamp_min(1e-12) / 127.0
    return _ste(w, torch.round(w / s).clamp(-127, 127) * s)


def fake_quant_act(x: torch.Tensor, lo: float, hi: float) -> torch.Tensor:
    """Per tensor, asymmetric int8 on the range [lo, hi] (which contains 0)."""
    lo, hi = min(lo, 0.0), max(hi, 0.0)
    scale = max(hi - lo, 1e-8) / 255.0
    zero_point = round(-128 - lo / scale)
    q = torch.clamp(torch.round(x / scale) + zero_point, -128, 127)
    return _ste(x, (q - zero_point) * scale)


def _points(module: nn.Sequential) -> list[int]:
    """Indices of the children after which the int8 model rounds: ReLUs and the last."""
    return [i for i, m in enumerate(module) if isinstance(m, nn.ReLU)] + [len(module) - 1]


@torch.no_grad()
def calibrate(module: nn.Sequential, x: torch.Tensor) -> dict[int, tuple[float, float]]:
    """Min and max at every quantization point over ``x`` (float weights, as the
    converter calibrates)."""
    points, ranges = set(_points(module)), {}
    h = x
    for i, m in enumerate(module):
        h = m(h)
        if i in points:
            ranges[i] = (float(h.min()), float(h.max()))
    return ranges


def bounds(module: nn.Sequential, ranges, x: torch.Tensor, eps: float):
    """Interval bounds (lower, upper) of the logits of the fake-quantized network
    over the eps-box of ``x`` clipped to the input range; eps 0 gives the point."""
    lo, hi = (fake_quant_act(b, *INPUT_RANGE) for b in eps_box(x, eps))
    for i, m in enumerate(module):
        if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Linear)):
            w = fake_quant_weight(m.weight)
            center, radius = (hi + lo) / 2, (hi - lo) / 2
            if isinstance(m, nn.Linear):
                c, r = F.linear(center, w, m.bias), F.linear(radius, w.abs())
            else:
                conv = F.conv2d if isinstance(m, nn.Conv2d) else F.conv1d
                c = conv(center, w, m.bias, m.stride, m.padding)
                r = conv(radius, w.abs(), None, m.stride, m.padding)
            lo, hi = c - r, c + r
        elif isinstance(m, (nn.ReLU, nn.Flatten, Normalize)):
            lo, hi = m(lo), m(hi)            # monotone (Normalize: std > 0)
        else:
            raise TypeError(f"QAT: no interval rule for {type(m).__name__} (fold BatchNorm first)")
        if i in ranges:
            lo, hi = fake_quant_act(lo, *ranges[i]), fake_quant_act(hi, *ranges[i])
    return lo, hi


def qat_loss(module, ranges, x, y, eps: float, kappa: float) -> torch.Tensor:
    """kappa * CE(fake-quantized logits) + (1 - kappa) * robust CE of the interval margins."""
    logits, _ = bounds(module, ranges, x, 0.0)
    natural = F.cross_entropy(logits, y)
    lo, hi = bounds(module, ranges, x, eps)
    y_lo = lo.gather(1, y[:, None])
    others = torch.ones_like(hi, dtype=torch.bool).scatter_(1, y[:, None], False)
    margins = (y_lo - hi)[others].view(len(y), -1)
    return kappa * natural + (1.0 - kappa) * robust_ce(margins)


def finetune_int8(model, data, *, epochs: int = 2, eps: float = 0.15, lr: float = 2e-4,
                  kappa: float = 0.1, batch_size: int = 64, seed: int = 0,
                  calibration: int = 500):
    """A copy of ``model`` fine-tuned with the int8 rounding in the certified loss."""
    from toolchain.models.modelfile import VstModel

    torch.manual_seed(seed)
    module = model.torch_module().train()
    keep = {name: (p.detach() != 0).float() for name, p in module.named_parameters()
            if name.endswith("weight")}
    opt = torch.optim.Adam(module.parameters(), lr=lr)
    x_all, y_all = torch.from_numpy(data.x_train), torch.from_numpy(data.y_train)
    gen = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        ranges = calibrate(module, x_all[:calibration])
        order = torch.randperm(len(x_all), generator=gen)
        for start in range(0, len(order), batch_size):
            idx = order[start:start + batch_size]
            loss = qat_loss(module, ranges, x_all[idx], y_all[idx], eps, kappa)
            opt.zero_grad()
            loss.backward()
            opt.step()
            with torch.no_grad():
                for name, p in module.named_parameters():
                    if name in keep:
                        p.mul_(keep[name])
    state = {k: v.detach().clone() for k, v in module.state_dict().items()}
    record = dict(model.record)
    record["qat"] = {"epochs": epochs, "eps": eps, "lr": lr, "kappa": kappa}
    return VstModel(model.network, state, dict(model.masks), record)
