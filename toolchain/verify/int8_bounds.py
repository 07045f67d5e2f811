"""Bounds on the int8 network that is flashed, in its own integer arithmetic.

The float certificate speaks about the float network; the device runs the int8
one. This module bounds the int8 network exactly as the generated C (and
TFLite Micro) computes it, following vst's int8 plan of the .tflite file
(``int8_plan``: the same weights, biases, multipliers, shifts and clamps):

1. The input box ``[x - eps, x + eps]`` clipped to the input range (``eps_box``) is
   quantized with the firmware's rounding (``quantize``: monotone), giving the
   set of int8 inputs the device can see: ``[q(lo), q(hi)]`` per value.
2. Per CONV_2D / FULLY_CONNECTED: int32 accumulator bounds from the signed
   weights (``w+ * lo + w- * hi``, padding taps add exactly 0), then the
   requantization (a monotone non-decreasing integer function, so bounds map
   to bounds), then the clamp. PAD / TRANSPOSE / reshapes move bounds as they
   move values.
3. At the output the margins ``q_y - q_j`` are bounded, not the logits one by
   one: each requantization ``R_j`` is within ``e_j`` (0.5, or 0.5 + 0.5 /
   2^right with a right shift) of ``M_j * acc_j`` (M_j = mult_j * 2^(shift_j
   - 31)), so ``R_y - R_j >= M_y * acc_y - M_j * acc_j - e_y - e_j``, a
   linear form in the last layer's input whose minimum over the input box is
   exact (sign split). The larger of that and the interval difference is the
   margin bound. A sample is verified when every margin bound is >= 1 (the
   outputs are integers), and no clamp can tie them: the firmware's argmax
   takes the first maximum, so a tie counts as not verified.

Everything is integer arithmetic except the linear form, computed in float64
with a safety slack of 1e-6 (its terms are below 2^40, where float64 is
exact to far better than that).

>>> b = Int8Bounds.from_tflite("build/export/model_int8.tflite")   # doctest: +SKIP
>>> b.verify(x_test, y_test, eps=0.1).verified.mean()              # doctest: +SKIP
0.843
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from toolchain.epsbox import INPUT_RANGE, eps_box
from toolchain.errors import VstError
from toolchain.export.c.golden import quantize, to_tflite_layout
from toolchain.export.c.int8_plan import QOp, int8_plan
from toolchain.export.c.tflite_graph import read_tflite

SLACK = 1e-6


def requantize(acc: np.ndarray, op: QOp, clamp: bool = True) -> np.ndarray:
    """TFLite's MultiplyByQuantizedMultiplier plus the output offset (and the
    clamp), exactly, for int64 accumulators of shape (..., channels)."""
    left = np.maximum(op.shift, 0)
    right = np.maximum(-op.shift, 0)
    scaled = acc << left
    if np.any(np.abs(scaled) >= 2 ** 31):
        raise VstError(f"int8 bounds: {op.name} #{op.index}: accumulator bound exceeds int32")
    # SaturatingRoundingDoublingHighMul with a positive multiplier: (x*m + 2^30) >> 31
    high = (scaled * op.mult + (1 << 30)) >> 31
    mask = (1 << right) - 1
    threshold = (mask >> 1) + (high < 0)
    v = (high >> right) + ((high & mask) > threshold) + op.out_offset
    return np.clip(v, *op.act) if clamp else v


def _conv_patches(x: np.ndarray, op: QOp, pad_value: int) -> np.ndarray:
    """(N, oh*ow, kh*kw*c) patches of NHWC images (N, h*w*c), taps (ky, kx, ic)."""
    g = op.geom
    img = x.reshape(len(x), g.h, g.w, g.c)
    need_h, need_w = (g.oh - 1) * g.sh + g.kh, (g.ow - 1) * g.sw + g.kw
    pads = ((0, 0), (g.ph, max(0, need_h - g.h - g.ph)), (g.pw, max(0, need_w - g.w - g.pw)),
            (0, 0))
    img = np.pad(img, pads, constant_values=pad_value)
    win = np.lib.stride_tricks.sliding_window_view(img, (g.kh, g.kw), axis=(1, 2))
    win = win[:, : need_h - g.kh + 1: g.sh, : need_w - g.kw + 1: g.sw]   # (N, oh, ow, c, kh, kw)
    return win.transpose(0, 1, 2, 4, 5, 3).reshape(len(x), g.oh * g.ow, -1)


def _accumulators(op: QOp, lo: np.ndarray, hi: np.ndarray):
    """Lower and upper int64 accumulators (N, positions, rows) of a conv / fc op."""
    w = op.weight.astype(np.int64)
    wp, wn = np.maximum(w, 0), np.minimum(w, 0)
    if op.kind == "conv":
        zero = -op.in_offset                      # padding holds the input zero point
        lo_p = _conv_patches(lo, op, zero) + op.in_offset
        hi_p = _conv_patches(hi, op, zero) + op.in_offset
    else:
        lo_p, hi_p = (lo + op.in_offset)[:, None, :], (hi + op.in_offset)[:, None, :]
    acc_lo = lo_p @ wp.T + hi_p @ wn.T + op.bias
    acc_hi = hi_p @ wp.T + lo_p @ wn.T + op.bias
    return acc_lo, acc_hi


def _move(op: QOp, x: np.ndarray) -> np.ndarray:
    """PAD / TRANSPOSE / copy applied to a batch of flattened tensors."""
    if op.kind == "copy":
        return x
    p = op.params
    if op.kind == "pad":
        shape_in, before, shape_out = p[0:4], p[4:8], p[8:12]
        t = x.reshape(len(x), *shape_in)
        after = [o - i - b for o, i, b in zip(shape_out, shape_in, before)]
        t = np.pad(t, [(0, 0)] + list(zip(before, after)), constant_values=op.pad_value)
        return t.reshape(len(x), -1)
    if op.kind == "transpose":
        shape_out, strides = p[0:4], p[4:8]
        grids = np.meshgrid(*[np.arange(s) for s in shape_out], indexing="ij")
        index = sum(g * s for g, s in zip(grids, strides)).ravel()
        return x[:, index]
    raise VstError(f"int8 bounds: no rule for operator {op.kind}")


@dataclass
class Int8Result:
    """Per sample: verified, the margin lower bounds (per class, the label's own
    entry 0) and the output bounds."""

    verified: np.ndarray         # (N,) bool
    margins: np.ndarray          # (N, classes) float, lower bounds of q_y - q_j
    out_lo: np.ndarray           # (N, classes) int
    out_hi: np.ndarray


class Int8Bounds:
    """Integer interval bounds through an int8 .tflite, as its generated C computes."""

    def __init__(self, ops: list[QOp], x_t, y_t) -> None:
        self.ops, self.x_t, self.y_t = ops, x_t, y_t
        self.last = max((k for k, op in enumerate(ops) if op.weight is not None), default=None)

    @classmethod
    def from_tflite(cls, path) -> "Int8Bounds":
        ops, _, x_t, y_t = int8_plan(read_tflite(Path(path)))
        return cls(ops, x_t, y_t)

    def quantize_box(self, x: np.ndarray, eps: float, lo: float = INPUT_RANGE[0],
                     hi: float = INPUT_RANGE[1]):
        """The int8 inputs (N, size) the device can see for float inputs within
        eps of ``x`` (N, C, ...) and within [lo, hi]: the firmware's rounding is
        monotone, so the ends of the box map to the ends of the set."""
        x = np.asarray(x, np.float32)
        box_lo, box_hi = eps_box(x, eps, lo, hi)
        q = [quantize(to_tflite_layout(b, self.x_t.shape), self.x_t.scale, self.x_t.zero_point)
             for b in (box_lo, box_hi)]
        return (q[0].reshape(len(x), -1).astype(np.int64),
                q[1].reshape(len(x), -1).astype(np.int64))

    def propagate(self, lo: np.ndarray, hi: np.ndarray, stop: int | None = None):
        """Bounds after every op up to (not including) ``stop``; returns the list of
        (lo, hi) per op output, flattened (N, size)."""
        out = []
        for k, op in enumerate(self.ops[:stop]):
            if op.weight is None:
                lo, hi = _move(op, lo), _move(op, hi)
            else:
                acc_lo, acc_hi = _accumulators(op, lo, hi)
                lo = requantize(acc_lo, op).reshape(len(lo), -1)
                hi = requantize(acc_hi, op).reshape(len(hi), -1)
            out.append((lo, hi))
        return out

    def outputs(self, q: np.ndarray) -> np.ndarray:
        """The int8 outputs for concrete int8 inputs (N, size): bounds of a point."""
        return self.propagate(q.astype(np.int64), q.astype(np.int64))[-1][0]

    def verify(self, x: np.ndarray, y: np.ndarray, eps: float) -> Int8Result:
        """Verified local robustness of the int8 network at ``eps`` per sample."""
        lo, hi = self.quantize_box(x, eps)
        y = np.asarray(y, np.int64)
        bounds = self.propagate(lo, hi)
        out_lo, out_hi = bounds[-1]
        classes = out_lo.shape[1]
        interval = out_lo[np.arange(len(y)), y][:, None] - out_hi      # integer bound
        margins = interval.astype(np.float64)
        if self.last is not None and self.last == len(self.ops) - 1 \
                and self.ops[self.last].kind == "fc":
            z_lo, z_hi = bounds[self.last - 1] if self.last > 0 else (lo, hi)
            linear, tie_free = self._margin_form(self.ops[self.last], z_lo, z_hi, y)
            margins = np.maximum(margins, np.where(tie_free, linear, -np.inf))
        margins[np.arange(len(y)), y] = 0.0
        others = np.ones((len(y), classes), bool)
        others[np.arange(len(y)), y] = False
        verified = np.all(np.where(others, margins >= 1.0, True), axis=1)
        return Int8Result(verified=verified, margins=margins, out_lo=out_lo, out_hi=out_hi)

    def _margin_form(self, op: QOp, z_lo: np.ndarray, z_hi: np.ndarray, y: np.ndarray):
        """Lower bounds of q_y - q_j from the linear form of the last FC layer, and
        where they hold: no clamp may tie the two outputs (v_j below the top of
        the clamp, v_y above its bottom, v before the clamp)."""
        w = op.weight.astype(np.float64)
        m = op.mult.astype(np.float64) * np.exp2(op.shift.astype(np.float64) - 31)
        right = np.maximum(-op.shift, 0)
        err = 0.5 + np.where(right > 0, 0.5 / np.exp2(right), 0.0)
        zl = (z_lo + op.in_offset).astype(np.float64)
        zh = (z_hi + op.in_offset).astype(np.float64)
        mw, mb = m[:, None] * w, m * op.bias.astype(np.float64)
        acc_lo, acc_hi = _accumulators(op, z_lo, z_hi)
        v_lo = requantize(acc_lo[:, 0], op, clamp=False)
        v_hi = requantize(acc_hi[:, 0], op, clamp=False)
        n, classes = len(y), w.shape[0]
        linear = np.empty((n, classes))
        for label in np.unique(y):
            rows = np.nonzero(y == label)[0]
            coef = mw[label][None, :] - mw                           # (classes, n_in)
            const = mb[label] - mb - err[label] - err
            low = np.where(coef[None] > 0, coef[None] * zl[rows, None, :],
                           coef[None] * zh[rows, None, :]).sum(-1)
            linear[rows] = const[None, :] + low - SLACK
        linear = np.ceil(linear)                                   # q_y - q_j is an integer
        tie_free = (v_hi < op.act[1]) & (v_lo[np.arange(n), y] > op.act[0])[:, None]
        return linear, tie_free


def sha256_file(path) -> str:
    """SHA-256 of a file the user named (a regular file: ``inputs.open_input``)."""
    import hashlib

    from toolchain.inputs import open_input

    h = hashlib.sha256()
    with open_input(path) as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _check_ranges(x: np.ndarray) -> None:
    if not np.all(np.isfinite(x)):
        raise VstError("int8 verification: inputs contain NaN or infinity")


def verify_int8(tflite_path, x: np.ndarray, y: np.ndarray, eps: float) -> Int8Result:
    """Verify the int8 network of ``tflite_path`` on (x, y) at ``eps``."""
    _check_ranges(np.asarray(x))
    if not (eps >= 0 and math.isfinite(eps)):
        raise VstError(f"eps must be a finite number >= 0, got {eps}")
    return Int8Bounds.from_tflite(tflite_path).verify(x, y, eps)
