"""Intermediate-bound refinement by LP (issue 25, item 2), and its re-check.

Branch and bound and the MILP start from each ReLU's pre-activation bounds
over the box (CROWN / alpha-CROWN, ``Bounder.box_bounds``). Those of the
first layers decide how many ReLUs are unstable everywhere below, so they are
worth tightening: for an unstable neuron ``z_j`` of ReLU layer ``k`` (the
first layer, fed by the input, is exact already), ``min z_j`` and ``max z_j``
over the LP relaxation of the layers before it (the MILP encoding of
``milp.py`` with every binary continuous in [0, 1], i.e. each unstable ReLU
its triangle; ``MilpEncoding.encode(relax=True)``), one HiGHS model per layer,
warm-started from neuron to neuron. Each refined layer's bounds go into the
next layer's LP.

Soundness: HiGHS's optimum is a float and its duals satisfy the constraints
only to a tolerance, so the optimum itself is not used. For any row duals
``y``, weak duality gives ``min c.x >= sum_i min(y_i L_i, y_i U_i) +
sum_j min(r_j l_j, r_j u_j)`` with ``r = c - A^T y`` (every variable of the
encoding is bounded: the box, ``[0, u]`` per ReLU output, ``[0, 1]`` per
relaxed binary; a dual whose row side is infinite is set to 0). That sum is
computed in float64 from HiGHS's duals and the model's own matrix
(``_safe_min``), then widened by ``WIDEN`` like every bound of the MILP
(float32 network against the float64 program), so a refined bound is sound
whatever the solver's accuracy; the tighter of old and new is kept.

The certificate: a BaB proof whose leaves were bounded from refined bounds
records them (``Refinement.record``: per refined neuron ``[relu, neuron,
lower, upper]``); ``check`` re-derives each recorded bound in layer order by
solving its LP again over the checker's own CROWN / alpha-CROWN bounds and
the recorded bounds of earlier layers already re-checked, and rejects a
recorded bound tighter than the re-solved sound one (half the widening is
left for the two solves to differ). A forged bound is caught there.

Measured (784-256x4 at eps 0.03, an instance branch and bound does not settle;
one CPU core): layer 2's LP bounds (274 LPs, 4 CPU s) are within 4e-5 of
alpha-CROWN's and stabilize no neuron; layers 2-3 take 90 s, with the same
result. alpha-CROWN optimizes every intermediate neuron's slopes, which reaches
the same triangle relaxation. A MILP per neuron (binaries kept) tightens layer 2
by 3-8% of the interval width with 2 s per bound (about 550 s per layer), far
over a 60 s budget, and its time-limited bound cannot be reproduced by a
checker, so it is not offered. Against CROWN's bounds alone the LP does
tighten layer 2 (by 0.0005-0.043 per bound, median 0.014, on that instance).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from toolchain.verify.affine_program import Relu
from toolchain.verify.milp import WIDEN, MilpEncoding, _new_highs
from toolchain.verify.milp_nodes import Rows

# Refinement runs on ReLU layers 2 .. 1 + LAYERS (the first is exact already) while
# its time stays under SHARE of branch and bound's budget (a cap, not tuned: the
# cascade has it off, complete.REFINE_LAYERS, because on the mnistfc-shaped MLPs
# the LP bounds equal alpha-CROWN's; benchmarks/README.md "Branch and bound").
LAYERS = 2
SHARE = 0.25


@dataclass
class Refinement:
    bounds: list                           # per ReLU (lo, hi) flat float64, tightened
    record: list = field(default_factory=list)   # [relu, neuron, lower, upper] per LP pair
    seconds: float = 0.0
    lps: int = 0                           # LPs solved (two per refined neuron)
    stabilized: int = 0                    # neurons unstable before, stable after


def refine(program, lower, upper, relus, *, time_left, layers: int = LAYERS) -> Refinement:
    """Tighten ``relus`` (per ReLU ``(lo, hi)``, sound over the box) by LP on ReLU
    layers 2 .. 1 + ``layers``, within ``time_left()`` seconds (checked between
    LPs; what is done is kept)."""
    t0 = time.perf_counter()
    out = Refinement([(np.asarray(lo, np.float64).copy(), np.asarray(hi, np.float64).copy())
                      for lo, hi in relus])
    if not _chain_of_relus(program):
        return out
    for k in range(1, min(len(out.bounds), 1 + layers)):
        enc = MilpEncoding(program, lower, upper, out.bounds)
        lo, hi = enc.bounds[k]
        todo = np.flatnonzero((lo < 0) & (hi > 0) & ~program.steps[k].pre.constant_rows())
        lp = _LayerLp(enc, k)
        for n in todo:
            if time_left() <= 0:
                break
            new_lo, new_hi = lp.bounds(int(n))
            out.lps += 2
            out.record.append([k, int(n), new_lo, new_hi])
            old_lo, old_hi = out.bounds[k]
            was = old_lo[n] < 0 < old_hi[n]
            old_lo[n], old_hi[n] = max(old_lo[n], new_lo), min(old_hi[n], new_hi)
            out.stabilized += int(was and not old_lo[n] < 0 < old_hi[n])
        if time_left() <= 0:
            break
    out.seconds = time.perf_counter() - t0
    return out


def check(program, lower, upper, relus, record, *, time_left) -> tuple[list | None, str]:
    """Re-derive every recorded refined bound (module doc). Returns the bounds to
    bound the proof's leaves with (``relus`` tightened by the record) and "", or
    None and why a recorded bound does not hold."""
    bounds = [(np.asarray(lo, np.float64).copy(), np.asarray(hi, np.float64).copy())
              for lo, hi in relus]
    if not _chain_of_relus(program):
        return None, "refined bounds are recorded for a network that is not a chain of ReLUs"
    entries = sorted((int(k), int(n), float(lo), float(hi)) for k, n, lo, hi in record)
    for k in sorted({e[0] for e in entries}):
        if not 1 <= k < len(bounds):
            return None, f"a refined bound names ReLU layer {k}, which is not refined"
        enc = MilpEncoding(program, lower, upper, bounds)
        lp = _LayerLp(enc, k)
        for kk, n, lo, hi in entries:
            if kk != k:
                continue
            if time_left() <= 0:
                return None, "re-checking its refined bounds takes longer than allowed"
            if not 0 <= n < len(bounds[k][0]):
                return None, f"a refined bound names neuron {n} of ReLU layer {k}: no such neuron"
            s_lo, s_hi = lp.bounds(n, slack=0.5)
            if not (lo <= s_lo and hi >= s_hi):
                return None, (f"its refined bound [{lo:.6g}, {hi:.6g}] of ReLU layer {k} "
                              f"neuron {n} is tighter than its LP gives [{s_lo:.6g}, {s_hi:.6g}]")
            bounds[k][0][n] = max(bounds[k][0][n], lo)
            bounds[k][1][n] = min(bounds[k][1][n], hi)
    return bounds, ""


def _chain_of_relus(program) -> bool:
    return all(isinstance(s, Relu) for s in program.steps)


class _LayerLp:
    """The LP relaxation of the steps before ReLU layer ``k``; ``bounds(n)`` the
    sound min and max of that layer's pre-activation ``n`` over it."""

    _OPTIONS = {"output_flag": False, "threads": 1, "random_seed": 0, "presolve": "off",
                "primal_feasibility_tolerance": 1e-8, "dual_feasibility_tolerance": 1e-9}

    def __init__(self, enc: MilpEncoding, k: int) -> None:
        import highspy

        self.h = h = _new_highs()
        for key, value in self._OPTIONS.items():
            h.setOptionValue(key, value)
        cols, self.ncol = enc.encode(h, k, relax=True)
        self.pre = enc.program.steps[k].pre
        self.rows = Rows(self.pre, cols)
        lp = h.getLp()
        m = lp.a_matrix_
        start, index = np.asarray(m.start_, np.int64), np.asarray(m.index_, np.int64)
        outer = np.repeat(np.arange(len(start) - 1), np.diff(start))
        rowwise = m.format_ == highspy.MatrixFormat.kRowwise       # as rows were added
        self.a = ((index, outer) if rowwise else (outer, index)) + (
            np.asarray(m.value_, np.float64),)
        self.col_lo, self.col_hi = np.asarray(lp.col_lower_), np.asarray(lp.col_upper_)
        self.row_lo, self.row_hi = np.asarray(lp.row_lower_), np.asarray(lp.row_upper_)
        self._last = np.zeros(0, np.int32)

    def bounds(self, n: int, slack: float = 1.0) -> tuple[float, float]:
        """Sound [min, max] of pre-activation ``n``, widened by ``slack * WIDEN``
        (the search widens fully; the checker by half, see the module doc)."""
        start, count = self.rows.starts[n], self.rows.counts[n]
        idx = self.rows.cols[start:start + count].astype(np.int32)
        vals = self.rows.vals[start:start + count]
        bias = float(self.pre.bias[n])
        lo = self._min(idx, vals) + bias
        hi = -self._min(idx, -vals) + bias
        w = slack * WIDEN
        return lo - w * (1 + abs(lo)), hi + w * (1 + abs(hi))

    def _min(self, idx, vals) -> float:
        """A sound lower bound of ``vals . x[idx]`` over the LP (``-inf`` when the
        solve fails: the old bound stays)."""
        import highspy

        h = self.h
        if len(self._last):
            h.changeColsCost(len(self._last), self._last, np.zeros(len(self._last)))
        h.changeColsCost(len(idx), idx, np.asarray(vals, np.float64))
        self._last = idx
        h.run()
        if h.getModelStatus() != highspy.HighsModelStatus.kOptimal:
            return -np.inf
        cost = np.zeros(len(self.col_lo))
        cost[idx] = vals
        return _safe_min(self.a, np.asarray(h.getSolution().row_dual, np.float64), cost,
                         self.col_lo, self.col_hi, self.row_lo, self.row_hi)


def _safe_min(a, y, cost, col_lo, col_hi, row_lo, row_hi) -> float:
    """Weak duality (module doc): a lower bound of ``min cost.x`` over
    ``row_lo <= A x <= row_hi``, ``col_lo <= x <= col_hi`` from any duals ``y``;
    ``a``: A's entries as (column, row, value) arrays."""
    y = np.where((y > 0) & ~np.isfinite(row_lo), 0.0, y)
    y = np.where((y < 0) & ~np.isfinite(row_hi), 0.0, y)
    col, row, val = a
    r = cost - np.bincount(col, weights=val * y[row], minlength=len(cost))
    rows = np.where(y > 0, y * np.where(np.isfinite(row_lo), row_lo, 0.0),
                    y * np.where(np.isfinite(row_hi), row_hi, 0.0))
    cols = np.minimum(r * col_lo, r * col_hi)
    total = float(rows.sum() + cols.sum())
    # float64 rounding of the sums above: a few ulps of their magnitude
    scale = float(np.abs(rows).sum() + np.abs(cols).sum())
    return total - 1e-12 * (1.0 + scale) if np.isfinite(total) else -np.inf
