"""CROWN-style margin bounds on the int8 network that is flashed (``int8-crown``).

``int8_bounds`` carries integer intervals through every op, which loses the
correlations between neurons that CROWN keeps. Here linear lower bounds of
the output margins ``q_y - q_j`` are back-substituted from the output down to
the quantized input box, through the int8 plan of the .tflite, sound for the
exact integers the generated C (and TFLite Micro) computes:

- every requantization ``R(acc)`` (CONV_2D, DEPTHWISE_CONV_2D,
  FULLY_CONNECTED) is ``M * acc + zero point + r`` with ``|r| <= e`` (0.5, or
  0.5 + 0.5 / 2^right with a right shift: ``int8_bounds``), the accumulator
  exactly linear in the input int8 values (zero points and the zero-point
  padding exact: a padded tap adds 0); AVERAGE_POOL_2D is ``sum / count``
  within 0.5 (TFLite's rounding division); ADD is linear in each operand's
  value, with the two input scalings' and the output's rounding terms;
- every clamp ``clip(v, lo, hi)`` of a fused activation (or of the int8 range)
  is relaxed as CROWN relaxes a ReLU, from the interval pass's bounds of ``v``
  (``Int8Bounds.propagate(pre=)``): identity or constant where the interval
  proves it, else the chord on one side and, on the other, a slope of 0 or 1:
  once as CROWN chooses (1 when the interval reaches further past the kink
  than before it) and once flat (0), each margin keeping the better
  (``SLOPES``); with both kinks inside, the two chords;
- MAX_POOL_2D: below by the tap with the highest lower bound, above by that
  tap where it dominates the window, else by the window's upper bound (a
  constant): the interval form for what lies below that output;
- PAD / TRANSPOSE / reshapes move coefficients as they move values.

After every op the pending coefficients are also bounded over the interval
pass's bounds of their tensors (a bound stopped there does not pay the
rounding terms below it); a margin's bound is the best of these, each
``ceil(B - slack)`` (the margin is an integer), and is max'ed with
``int8_bounds``'s (interval and last-layer margin form).

Floating point: everything is float64. Each step replaces a linear bound by
the next one computed in floating point; the real identity it stands for
differs from the computed one by at most ``gamma_n * T_step``, where
``T_step`` is the sum of the absolute values of the step's terms (coefficient
times the largest absolute value of its variable, plus constants) and
``gamma_n = n u / (1 - n u)`` (u = 2^-53) for sums of at most n terms in any
order. Every sum here has fewer than ``MAX_TERMS`` = 2^21 terms (checked), so
``gamma_n < 2.4e-10``; ``T`` (the sum of all steps' magnitudes) is tracked per
margin and ``SLACK_REL * T`` with ``SLACK_REL = 1e-9`` covers the steps, the
final sum of their constants and the rounding of ``T`` itself, with a factor
of 4 to spare. Relaxation lines computed in floating point are off by a few u
times their magnitude, which ``T`` counts too.

>>> crown = Int8Crown(Int8Bounds.from_tflite("model_int8.tflite"))   # doctest: +SKIP
>>> crown.verify(x, y, eps=0.1).verified.mean()                        # doctest: +SKIP
0.884
"""

from __future__ import annotations

import math

import numpy as np

from toolchain.errors import VstError
from toolchain.export.c.int8_ops import ADD_LEFT_SHIFT, QOp
from toolchain.export.c.memory import INPUT
from toolchain.verify.int8_bounds import (Int8Bounds, Int8Result, _accumulators,
                                          _window_index)

SLACK_REL = 1e-9
SLACK_ABS = 1e-6
MAX_TERMS = 1 << 21
SLOPES = (None, 0.0)      # relaxations tried per margin (the best is kept): CROWN's, flat
INT8_ABS = 128.0          # |value| of any int8 tensor


def _multiplier(mult, shift) -> np.ndarray:
    """M = mult * 2^(shift - 31), exact in float64 (a 31-bit integer times a power of 2)."""
    return np.asarray(mult, np.float64) * np.exp2(np.asarray(shift, np.float64) - 31)


def _rounding(shift) -> np.ndarray:
    """The most MultiplyByQuantizedMultiplier can differ from M * x."""
    right = np.maximum(-np.asarray(shift, np.int64), 0)
    return 0.5 + np.where(right > 0, 0.5 / np.exp2(right), 0.0)


def relax_clamp(lo: np.ndarray, hi: np.ndarray, a: int, b: int, slope: float | None = None):
    """Linear bounds ``al v + bl <= clip(v, a, b) <= au v + bu`` for v in [lo, hi]
    (arrays of one shape; all slopes in [0, 1]). Where one kink lies inside, the
    side without a chord takes ``slope`` (0 or 1); None: CROWN's choice, 1 where
    the interval reaches further past the kink than before it."""
    lo, hi = np.asarray(lo, np.float64), np.asarray(hi, np.float64)
    one, zero = np.ones_like(lo), np.zeros_like(lo)
    span = np.maximum(hi - lo, 1.0)
    below, above = lo < a, hi > b                       # a kink inside the interval
    # only the lower kink: max(v, a); chord above, slope 0 or 1 below
    au1 = (hi - a) / span
    al1 = np.where(hi - a >= a - lo, one, zero) if slope is None else zero + slope
    # only the upper kink: min(v, b); chord below, slope 0 or 1 above
    al2 = (b - lo) / span
    au2 = np.where(b - lo >= hi - b, one, zero) if slope is None else zero + slope
    # both: chord (lo, a)-(b, b) above, chord (a, a)-(hi, b) below
    au3 = (b - a) / np.maximum(b - lo, 1.0)
    al3 = (b - a) / np.maximum(hi - a, 1.0)
    conds = [hi <= a, lo >= b, below & above, below, above]
    al = np.select(conds, [zero, zero, al3, al1, al2], one)
    au = np.select(conds, [zero, zero, au3, au1, au2], one)
    bl = np.select(conds, [zero + a, zero + b, a - al3 * a, a * (1 - al1), lo - al2 * lo], zero)
    bu = np.select(conds, [zero + a, zero + b, a - au3 * lo, a - au1 * lo, b * (1 - au2)], zero)
    return al, bl, au, bu


def _scatter_taps(contrib: np.ndarray, index: np.ndarray, pixels: int) -> np.ndarray:
    """Sum (R, P, T, c) contributions of the taps of each window into the input
    pixels they read: (R, pixels * c). One tap never reads a pixel twice."""
    rows, _, taps, c = contrib.shape
    out = np.zeros((rows, pixels, c))
    for t in range(taps):
        valid = index[:, t] >= 0
        out[:, index[valid, t]] += contrib[:, valid, t]
    return out.reshape(rows, -1)


class _Form:
    """``v = M * (A x + k) + offset + r``, ``|r| <= e``: a conv / dwconv / fc /
    average pool before its clamp; ``back`` is ``A`` transposed."""

    def __init__(self, op: QOp) -> None:
        self.op, g = op, op.geom
        if op.kind == "avgpool":
            self.index = _window_index(op)
            count = (self.index >= 0).sum(axis=1).astype(np.float64)
            self.m = np.repeat(1.0 / count, g.c)
            self.k = np.zeros_like(self.m)
            self.e = np.full_like(self.m, 0.5)
            self.offset = 0.0
            self.mag = INT8_ABS * np.repeat(count, g.c)
            return
        self.w = op.weight.astype(np.float64)
        positions = 1 if op.kind == "fc" else g.oh * g.ow
        zero = np.zeros((1, self.w.shape[1] if op.kind == "fc" else g.h * g.w * g.c), np.int64)
        self.k = _accumulators(op, zero, zero)[0].reshape(-1).astype(np.float64)
        self.m = np.tile(_multiplier(op.mult, op.shift), positions)
        self.e = np.tile(_rounding(op.shift), positions)
        self.offset = float(op.out_offset)
        self.mag = np.tile(INT8_ABS * np.abs(self.w).sum(axis=1), positions) + np.abs(self.k)
        if op.kind != "fc":
            self.index = _window_index(op)

    def back(self, lam: np.ndarray) -> np.ndarray:
        """(R, outputs) coefficients on the accumulators -> (R, inputs) on the input."""
        op, g, rows = self.op, self.op.geom, len(lam)
        if op.kind == "fc":
            return lam @ self.w
        taps = g.kh * g.kw
        lam = lam.reshape(rows, g.oh * g.ow, -1)
        if op.kind == "conv":
            contrib = (lam @ self.w).reshape(rows, g.oh * g.ow, taps, g.c)
        elif op.kind == "dwconv":
            m = g.oc // g.c
            contrib = np.einsum("rpcm,cmt->rptc", lam.reshape(rows, g.oh * g.ow, g.c, m),
                                self.w.reshape(g.c, m, taps))
        else:
            contrib = np.broadcast_to(lam[:, :, None, :], (rows, g.oh * g.ow, taps, g.c))
        return _scatter_taps(contrib, self.index, g.h * g.w)


class Int8Crown:
    """Back-substituted margin bounds of an int8 plan (see the module docstring)."""

    def __init__(self, bounds: Int8Bounds, early: bool = True) -> None:
        """``early=False``: only the bound back-substituted down to the input box
        (not the best over the depths; the tests check that chain alone)."""
        self.bounds, self.ops, self.early = bounds, bounds.ops, early
        self.forms = {k: _Form(op) for k, op in enumerate(self.ops)
                      if op.weight is not None or op.kind == "avgpool"}
        for op in self.ops:
            size_in = op.geom.h * op.geom.w * op.geom.c if op.geom else 0
            if max(op.n_out, size_in, bounds.x_t.size) >= MAX_TERMS:
                raise VstError(f"int8-crown: {op.name} #{op.index} is too large for the "
                               "floating-point slack")

    def verify(self, x: np.ndarray, y: np.ndarray, eps: float) -> Int8Result:
        """``Int8Bounds.verify`` with every margin bound max'ed with the
        back-substituted one (``interval_verified``: what the interval form alone proves)."""
        return self.bounds.verify(x, y, eps, refine=self.margins)

    def margins(self, lo, hi, y, out: list, pre: list) -> np.ndarray:
        """(N, classes) integer lower bounds of ``q_y - q_j`` over the int8 box
        [lo, hi], given the interval pass (``out``, ``pre``) of that box."""
        n, last = len(y), self.bounds.out
        classes = out[last][0].shape[1]
        spec = np.zeros((n, classes, classes))
        spec[np.arange(n), :, y] += 1.0
        spec[:, np.arange(classes), np.arange(classes)] -= 1.0
        return np.max([self._backsub({self.ops[last].writes: spec}, last, lo, hi, out, pre,
                                     slope) for slope in SLOPES], axis=0)

    def _backsub(self, lam: dict, top: int, lo, hi, out, pre, slope=None):
        """Lower bounds (N, S) of the linear functions ``lam`` (key -> (N, S, size)
        coefficients on tensors written by ops up to ``top``), over
        the int8 box, with the floating-point slack. After every op the pending
        coefficients are also bounded over the interval pass's bounds of their
        tensors (a bound that stops there: the rounding terms below are not paid);
        the best of these is returned."""
        first = next(iter(lam.values()))
        const, mag = np.zeros(first.shape[:2]), np.zeros(first.shape[:2])
        best = np.full(const.shape, -np.inf)
        for k in range(top, -1, -1):
            if self.early and self.ops[k].writes in lam:
                best = np.maximum(best, self._concretize(lam, const, mag, lo, hi, out))
            op, g = self.ops[k], lam.pop(self.ops[k].writes, None)
            if g is None:
                continue
            if pre[k] is not None:
                g = self._relax(g, pre[k], op.act, const, mag, slope)
            for key, coef in self._step(k, g, const, mag, lo, hi, out):
                lam[key] = lam[key] + coef if key in lam else coef
        return np.maximum(best, self._concretize(lam, const, mag, lo, hi, out))

    def _concretize(self, lam: dict, const, mag, lo, hi, out) -> np.ndarray:
        """const + the minimum of the pending linear terms over their tensors' bounds,
        less the slack, rounded up (the margins are integers)."""
        bound, size = const.copy(), mag + np.abs(const)
        for key, g in lam.items():
            t_lo, t_hi = (lo, hi) if key == INPUT else out[self.bounds.writer[key]]
            t_lo, t_hi = t_lo[:, None, :].astype(np.float64), t_hi[:, None, :].astype(np.float64)
            bound += np.minimum(g * t_lo, g * t_hi).sum(-1)
            size += (np.abs(g) * np.maximum(np.abs(t_lo), np.abs(t_hi))).sum(-1)
        return np.ceil(bound - SLACK_REL * size - SLACK_ABS)

    def _step(self, k, g, const, mag, lo, hi, out):
        """Coefficients on op k's value before its clamp -> [(input key, coefficients)]."""
        op = self.ops[k]
        if k in self.forms:
            return [(op.reads[0], self._through_form(self.forms[k], g, const, mag))]
        if op.kind == "add":
            return list(zip(op.reads, self._through_add(op, g, const, mag)))
        if op.kind == "maxpool":
            key = op.reads[0]
            x_bounds = (lo, hi) if key == INPUT else out[self.bounds.writer[key]]
            return [(key, self._through_maxpool(op, g, x_bounds, const, mag))]
        return [(op.reads[0], self._through_move(op, g, const, mag))]

    @staticmethod
    def _relax(g, v_bounds, act, const, mag, slope=None):
        """Coefficients on a clamp's output -> on its input v (``relax_clamp``)."""
        lo, hi = v_bounds
        if np.all((lo >= act[0]) & (hi <= act[1])):
            return g                                        # the clamp never acts
        al, bl, au, bu = (t[:, None, :] for t in relax_clamp(lo, hi, *act, slope))
        pos = g >= 0
        const += np.where(pos, g * bl, g * bu).sum(-1)
        vabs = np.maximum(np.abs(lo), np.abs(hi))[:, None, :]
        mag += (np.abs(g) * (np.maximum(al, au) * vabs + np.maximum(np.abs(bl), np.abs(bu)))
                ).sum(-1)
        return np.where(pos, g * al, g * au)

    @staticmethod
    def _through_form(form: _Form, g, const, mag):
        """v >= M (A x + k) + offset - e (times g >= 0; <= ... + e for g < 0)."""
        n, classes, _ = g.shape
        acc = g * form.m
        const += g.sum(-1) * form.offset - np.abs(g) @ form.e + acc @ form.k
        mag += np.abs(g) @ (form.e + abs(form.offset)) + np.abs(acc) @ form.mag
        return form.back(acc.reshape(n * classes, -1)).reshape(n, classes, -1)

    @staticmethod
    def _through_add(op: QOp, g, const, mag):
        """v = Mo (s_a + s_b) + offset +- e_o, s_i = M_i 2^20 (x_i + off_i) +- e_i."""
        p = op.params
        m_out = float(_multiplier(p[6], p[7]))
        s = g * m_out
        const += g.sum(-1) * op.out_offset - np.abs(g).sum(-1) * float(_rounding(p[7]))
        mag += np.abs(g).sum(-1) * (abs(op.out_offset) + float(_rounding(p[7])))
        coefs = []
        for off, mult, shift in (p[0:3], p[3:6]):
            scale = float(_multiplier(mult, shift)) * 2.0 ** ADD_LEFT_SHIFT
            e = float(_rounding(shift))
            const += s.sum(-1) * (scale * off) - np.abs(s).sum(-1) * e
            mag += np.abs(s).sum(-1) * (e + scale * (INT8_ABS + abs(off)))
            coefs.append(s * scale)
        return coefs

    @staticmethod
    def _through_maxpool(op: QOp, g, x_bounds, const, mag):
        """Below by the tap of the highest lower bound; above by it where it dominates
        the window, else by the window's upper bound."""
        geo, index = op.geom, _window_index(op)
        n, classes, _ = g.shape
        inside = (index >= 0)[None, :, :, None]
        taps_lo, taps_hi = ((b.reshape(n, geo.h * geo.w, geo.c)[:, np.maximum(index, 0)])
                            for b in x_bounds)
        taps_lo = np.where(inside, taps_lo, np.iinfo(np.int64).min)     # (N, P, T, c)
        taps_hi = np.where(inside, taps_hi, np.iinfo(np.int64).min)
        best = taps_lo.argmax(axis=2)                                    # (N, P, c)
        top = np.take_along_axis(taps_lo, best[:, :, None], axis=2)[:, :, 0]
        others = np.where(np.arange(index.shape[1])[None, None, :, None] == best[:, :, None],
                          np.iinfo(np.int64).min, taps_hi).max(axis=2)
        dominant = (top >= others).reshape(n, 1, -1)
        upper = taps_hi.max(axis=2).reshape(n, 1, -1).astype(np.float64)
        exact = (g >= 0) | dominant
        const += np.where(exact, 0.0, g * upper).sum(-1)
        mag += (np.abs(g) * (INT8_ABS + np.abs(upper))).sum(-1)
        coef = np.where(exact, g, 0.0).reshape(n * classes, geo.oh * geo.ow, geo.c)
        onehot = (np.arange(index.shape[1])[None, None, :, None] == best[:, :, None])
        contrib = coef[:, :, None, :] * np.repeat(onehot, classes, axis=0)
        return _scatter_taps(contrib, index, geo.h * geo.w).reshape(n, classes, -1)

    @staticmethod
    def _through_move(op: QOp, g, const, mag):
        """PAD / TRANSPOSE / copy: coefficients follow the values."""
        if op.kind == "copy":
            return g
        n, classes, _ = g.shape
        p = op.params
        if op.kind == "transpose":
            shape_out, strides = p[0:4], p[4:8]
            grids = np.meshgrid(*[np.arange(s) for s in shape_out], indexing="ij")
            index = sum(a * s for a, s in zip(grids, strides)).ravel()
            moved = np.zeros_like(g)
            moved[:, :, index] = g
            return moved
        if op.kind != "pad":
            raise VstError(f"int8-crown: no rule for operator {op.kind}")
        shape_in, before, shape_out = p[0:4], p[4:8], p[8:12]
        t = g.reshape(n, classes, *shape_out)
        inner = (slice(None), slice(None)) + tuple(slice(b, b + s) for b, s in
                                                   zip(before, shape_in))
        kept = t[inner]
        const += (g.sum(-1) - kept.reshape(n, classes, -1).sum(-1)) * op.pad_value
        mag += np.abs(g).sum(-1) * (abs(op.pad_value) + INT8_ABS)
        return np.ascontiguousarray(kept).reshape(n, classes, math.prod(shape_in))
