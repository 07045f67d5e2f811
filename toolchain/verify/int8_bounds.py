"""Bounds on the int8 network that is flashed, in its own integer arithmetic.

The float certificate speaks about the float network; the device runs the int8
one. This module bounds the int8 network exactly as the generated C (and
TFLite Micro) computes it, following vst's int8 plan of the .tflite file
(``int8_plan``: the same weights, biases, multipliers, shifts and clamps):

1. The input box ``[x - eps, x + eps]`` clipped to the input range (``eps_box``) is
   quantized with the firmware's rounding (``quantize``: monotone), giving the
   set of int8 inputs the device can see: ``[q(lo), q(hi)]`` per value.
2. The ops run in the plan's order over the graph, each tensor's bounds kept
   until its last reader (a residual shortcut feeds its ADD). Per CONV_2D /
   DEPTHWISE_CONV_2D / FULLY_CONNECTED: int32 accumulator bounds from the
   signed weights (``w+ * lo + w- * hi``, padding taps add exactly 0), then
   the requantization (a monotone non-decreasing integer function, so bounds
   map to bounds), then the clamp. AVERAGE_POOL_2D (a sum, then TFLite's
   rounding division: monotone), MAX_POOL_2D (monotone) and ADD (each input's
   scaling, the sum and the output requantization are monotone in each
   operand) map the lower ends to the lower end and the upper ends to the
   upper end, with exactly the integer arithmetic of the kernels.
   PAD / TRANSPOSE / reshapes move bounds as they move values.
3. At the output the margins ``q_y - q_j`` are bounded, not the logits one by
   one: each requantization ``R_j`` is within ``e_j`` (0.5, or 0.5 + 0.5 /
   2^right with a right shift) of ``M_j * acc_j`` (M_j = mult_j * 2^(shift_j
   - 31)), so ``R_y - R_j >= M_y * acc_y - M_j * acc_j - e_y - e_j``, a
   linear form in the last layer's input whose minimum over the input box is
   exact (sign split); where a clamp can act it is capped by what the clamp
   leaves (the top of the clamp less q_j's bound, q_y's bound less the
   bottom), so it bounds q_y - q_j itself. The larger of that and the interval
   difference is the margin bound. A sample is verified when every margin bound is >= 1 (the
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
from toolchain.export.c.int8_ops import QOp, add_outputs, mul_q31
from toolchain.export.c.int8_plan import int8_plan
from toolchain.export.c.memory import INPUT
from toolchain.export.c.tflite_graph import read_tflite

SLACK = 1e-6
BATCH = 32      # samples bounded at once: patches of a conv hold N * positions * taps int64


def requantize(acc: np.ndarray, op: QOp, clamp: bool = True) -> np.ndarray:
    """TFLite's MultiplyByQuantizedMultiplier plus the output offset (and the
    clamp), exactly, for int64 accumulators of shape (..., channels)."""
    if np.any(np.abs(acc << np.maximum(op.shift, 0)) >= 2 ** 31):
        raise VstError(f"int8 bounds: {op.name} #{op.index}: accumulator bound exceeds int32")
    v = mul_q31(acc, op.mult, op.shift) + op.out_offset
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


def _window_index(op: QOp) -> np.ndarray:
    """(oh*ow, kh*kw): the input pixel under each tap of each output's window
    (y * w + x), -1 where the tap falls outside the image."""
    g = op.geom
    oy, ox = np.divmod(np.arange(g.oh * g.ow), g.ow)
    ky, kx = np.divmod(np.arange(g.kh * g.kw), g.kw)
    y = (oy * g.sh - g.ph)[:, None] + ky[None, :]
    x = (ox * g.sw - g.pw)[:, None] + kx[None, :]
    inside = (y >= 0) & (y < g.h) & (x >= 0) & (x < g.w)
    return np.where(inside, y * g.w + x, -1)


def _pool(op: QOp, x: np.ndarray, clamp: bool = True) -> np.ndarray:
    """AVERAGE_POOL_2D / MAX_POOL_2D of flattened NHWC tensors (N, h*w*c) as
    TFLite computes them (both monotone: bounds map to bounds); ``clamp=False``:
    before the activation's clamp."""
    g, index = op.geom, _window_index(op)
    pixels = x.reshape(len(x), g.h * g.w, g.c)
    taps = pixels[:, np.maximum(index, 0)]                     # (N, P, T, c)
    inside = (index >= 0)[None, :, :, None]
    if op.kind == "maxpool":
        v = np.where(inside, taps, -128).max(axis=2)
    else:
        acc = np.where(inside, taps, 0).sum(axis=2)
        count = inside.sum(axis=2)
        half = count // 2
        # C's truncating division of acc +- count / 2, rounding half away from zero
        v = np.where(acc > 0, (acc + half) // count, -((half - acc) // count))
    return (np.clip(v, *op.act) if clamp else v).reshape(len(x), -1)


def _accumulators(op: QOp, lo: np.ndarray, hi: np.ndarray):
    """Lower and upper int64 accumulators (N, positions, rows) of a conv / dwconv /
    fc op."""
    w = op.weight.astype(np.int64)
    wp, wn = np.maximum(w, 0), np.minimum(w, 0)
    if op.kind == "dwconv":
        # taps (ky, kx) of output channel o read input channel o // m
        g = op.geom
        zero = -op.in_offset
        channel = np.arange(g.oc) // (g.oc // g.c)
        lo_p, hi_p = ((_conv_patches(b, op, zero).reshape(len(b), g.oh * g.ow, g.kh * g.kw, g.c)
                       [..., channel] + op.in_offset) for b in (lo, hi))
        acc_lo = (lo_p * wp.T + hi_p * wn.T).sum(axis=2) + op.bias
        acc_hi = (hi_p * wp.T + lo_p * wn.T).sum(axis=2) + op.bias
        return acc_lo, acc_hi
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
    interval_verified: np.ndarray    # (N,) bool: by the interval / margin form alone

    FIELDS = ("verified", "margins", "out_lo", "out_hi", "interval_verified")


class Int8Bounds:
    """Integer interval bounds through an int8 .tflite, as its generated C computes."""

    def __init__(self, ops: list[QOp], x_t, y_t) -> None:
        self.ops, self.x_t, self.y_t = ops, x_t, y_t
        self.last = max((k for k, op in enumerate(ops) if op.weight is not None), default=None)
        self.writer = {op.writes: k for k, op in enumerate(ops)}
        self.out = next(k for k, op in enumerate(ops) if op.dst == "output")

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

    def sample_box(self, x: np.ndarray, eps: float, n: int, seed: int) -> np.ndarray:
        """n float points of the eps-box of one sample ``x`` (C, ...), half random,
        half corners, clipped to the input range and quantized as the firmware
        does: (n, input size) int8 (soundness checks of the bounds)."""
        rng = np.random.default_rng(seed)
        x = np.asarray(x, np.float32)
        inside = x + rng.uniform(-eps, eps, size=(n // 2,) + x.shape).astype(np.float32)
        corners = x + eps * rng.choice([-1.0, 1.0], size=(n - n // 2,) + x.shape).astype(
            np.float32)
        points = np.clip(np.concatenate([inside, corners]), *INPUT_RANGE).astype(np.float32)
        q = quantize(to_tflite_layout(points, self.x_t.shape), self.x_t.scale,
                     self.x_t.zero_point)
        return q.reshape(n, -1)

    def propagate(self, lo: np.ndarray, hi: np.ndarray, stop: int | None = None,
                  pre: list | None = None):
        """Bounds after every op up to (not including) ``stop``; returns the list of
        (lo, hi) per op output, flattened (N, size). ``pre``, when given, receives
        per op the bounds before its clamp (None for PAD / TRANSPOSE / copy)."""
        out: list = []
        for op in self.ops[:stop]:
            ins = [(lo, hi) if key == INPUT else out[self.writer[key]] for key in op.reads]
            (a_lo, a_hi) = ins[0]
            if op.kind == "add":
                b_lo, b_hi = ins[1]
                v = (add_outputs(op, a_lo, b_lo, False), add_outputs(op, a_hi, b_hi, False))
            elif op.kind in ("avgpool", "maxpool"):
                v = (_pool(op, a_lo, False), _pool(op, a_hi, False))
            elif op.weight is None:
                v = None
                out.append((_move(op, a_lo), _move(op, a_hi)))
            else:
                acc = _accumulators(op, a_lo, a_hi)
                v = tuple(requantize(a, op, clamp=False).reshape(len(a_lo), -1) for a in acc)
            if v is not None:
                out.append((np.clip(v[0], *op.act), np.clip(v[1], *op.act)))
            if pre is not None:
                pre.append(v)
        return out

    def _input_of(self, k: int, bounds: list, lo: np.ndarray, hi: np.ndarray):
        key = self.ops[k].reads[0]
        return (lo, hi) if key == INPUT else bounds[self.writer[key]]

    def outputs(self, q: np.ndarray) -> np.ndarray:
        """The int8 outputs for concrete int8 inputs (N, size): bounds of a point."""
        q = np.asarray(q, np.int64)
        return np.concatenate([self.propagate(q[i:i + BATCH], q[i:i + BATCH])[self.out][0]
                               for i in range(0, max(len(q), 1), BATCH)])

    def verify(self, x: np.ndarray, y: np.ndarray, eps: float, refine=None) -> Int8Result:
        """Verified local robustness of the int8 network at ``eps`` per sample.
        ``refine(lo, hi, y, bounds, pre)``, when given, returns further margin lower
        bounds (N, classes) from the int8 box and its interval pass (``int8_crown``);
        each margin is the larger of the two."""
        parts = [self._verify(x[i:i + BATCH], np.asarray(y[i:i + BATCH]), eps, refine)
                 for i in range(0, max(len(x), 1), BATCH)]
        return Int8Result(*(np.concatenate([getattr(p, f) for p in parts])
                            for f in Int8Result.FIELDS))

    def _verify(self, x: np.ndarray, y: np.ndarray, eps: float, refine=None) -> Int8Result:
        lo, hi = self.quantize_box(x, eps)
        y = np.asarray(y, np.int64)
        pre: list = []
        bounds = self.propagate(lo, hi, pre=pre)
        out_lo, out_hi = bounds[self.out]
        classes = out_lo.shape[1]
        interval = out_lo[np.arange(len(y)), y][:, None] - out_hi      # integer bound
        margins = interval.astype(np.float64)
        if self.last is not None and self.last == self.out and self.ops[self.last].kind == "fc":
            z_lo, z_hi = self._input_of(self.last, bounds, lo, hi)
            linear, tie_free = self._margin_form(self.ops[self.last], z_lo, z_hi, y)
            margins = np.maximum(margins, np.where(tie_free, linear, -np.inf))
        others = np.ones((len(y), classes), bool)
        others[np.arange(len(y)), y] = False
        margins[~others] = 0.0
        by_interval = np.all(np.where(others, margins >= 1.0, True), axis=1)
        if refine is not None:
            margins = np.maximum(margins, refine(lo, hi, y, bounds, pre))
            margins[~others] = 0.0
        verified = np.all(np.where(others, margins >= 1.0, True), axis=1)
        return Int8Result(verified=verified, margins=margins, out_lo=out_lo, out_hi=out_hi,
                          interval_verified=by_interval)

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
        rows = np.arange(n)
        tie_free = (v_hi < op.act[1]) & (v_lo[rows, y] > op.act[0])[:, None]
        # the form bounds R_y - R_j; where a clamp can act, q_y - q_j may be less: at
        # most the top of the clamp less q_j's bound (q_y clamped), or q_y's bound
        # less the bottom (q_j clamped). Either is >= 1 where the form is and tie_free.
        q_lo_y = np.clip(v_lo[rows, y], *op.act)[:, None]
        q_hi = np.clip(v_hi, *op.act)
        linear = np.where((v_hi[rows, y] > op.act[1])[:, None],
                          np.minimum(linear, op.act[1] - q_hi), linear)
        linear = np.where(v_lo < op.act[0], np.minimum(linear, q_lo_y - op.act[0]), linear)
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
