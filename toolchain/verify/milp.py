"""Exact verification of a ReLU network as a mixed-integer linear program (HiGHS).

The network is read as affine expressions between its nonlinear nodes
(``affine_program.py``: Normalize, Conv with any groups, Linear, BatchNorm,
Flatten, average and global average pooling and Add are affine in eval mode;
chains and DAGs alike). Every value is an affine function of the input and of
the outputs of earlier ReLUs and max poolings. Each nonlinear node is encoded
exactly, with big-M values from sound bounds on its input (below):

- ReLU ``h = max(0, z)`` with ``l <= z <= u``: stable inactive (``u <= 0``):
  ``h = 0``, no variable; stable active (``l >= 0``): ``h = z``; unstable: a
  binary ``d`` with ``h >= 0``, ``h >= z``, ``h <= u d``, ``h <= z - l (1 - d)``.
- max pooling ``y = max_i z_i`` over a window (padding ignored) with
  ``l_i <= z_i <= u_i``: elements with ``u_i < max_j l_j`` can never be the
  maximum and drop out; one left: ``y = z_i``; else a binary ``d_i`` per
  candidate with ``sum d_i = 1``, ``y >= z_i`` and
  ``y <= z_i + (U - l_i)(1 - d_i)``, ``U = max_i u_i`` (Tjeng et al., 2019).

Bounds: for every nonlinear node's input, interval arithmetic over its affine
expression (sound, and exact for the segment since the last nonlinearity),
intersected for ReLUs with the CROWN / alpha-CROWN pre-activation bounds of
``Bounder.box_bounds`` when the caller has them (methods refused for max
pooling leave interval bounds alone).

For one disjunct ``A y <= c`` we minimize ``s`` subject to
``s >= A_i y - c_i`` for every row: the disjunct is reachable iff ``min s <= 0``.

Only the sign of ``min s`` matters, so HiGHS runs with a cutoff at
``+margin`` (every node whose LP bound clears it is pruned) and stops at the
first solution below ``-margin``: "infeasible" then means no input gets ``s``
below the margin. By measurement this is what makes HiGHS fast here.

Soundness against floating point: the bounds are widened a little before they
are used as big-M values, so a neuron is only fixed when its sign is clear;
"unreachable" needs the cutoff to clear 0 by ``margin`` (well above float32
rounding and LP tolerances; HiGHS runs with a 100x tighter dual tolerance than
its default), and any other status (time limit, numerical trouble) says
nothing; "reachable" is only a candidate: the caller re-checks the input on
the float torch model.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from toolchain.errors import VstError
from toolchain.verify.affine_program import Expr, MaxPool, Program, Relu

WIDEN = 1e-5          # relative + absolute widening of every intermediate bound


@dataclass
class MilpResult:
    status: str                 # "unreachable" | "reachable" | "unknown"
    x: np.ndarray | None = None  # reachable: the MILP's input (to be re-checked)
    objective: float = float("nan")
    bound: float = float("nan")
    reason: str = ""


class MilpEncoding:
    """The network over the box, encoded once; ``solve(A, c)`` per disjunct.

    ``program``: ``affine_program.read_program`` of the network.
    ``relu_bounds``: None, or per ReLU (network order) ``(lb, ub)`` flat
    float64 arrays of its pre-activations over the box (sound), e.g. CROWN's.
    """

    def __init__(self, program: Program, lower, upper, relu_bounds=None) -> None:
        relus = [s for s in program.steps if isinstance(s, Relu)]
        if relu_bounds is not None and len(relu_bounds) != len(relus):
            raise VstError(f"MILP: {len(relu_bounds)} ReLU bounds for {len(relus)} "
                           "ReLU layers")
        self.program = program
        self.lower = np.asarray(lower, np.float64).reshape(-1)
        self.upper = np.asarray(upper, np.float64).reshape(-1)
        self.bounds, self.trouble = [], ""
        lo_of, hi_of = {0: self.lower}, {0: self.upper}
        given = iter(relu_bounds or ())
        for step in program.steps:
            lo, hi = step.pre.interval(lo_of, hi_of)
            lo, hi = _widen(lo, -1), _widen(hi, +1)
            if isinstance(step, Relu) and relu_bounds is not None:
                c_lo, c_hi = (np.asarray(v, np.float64).reshape(-1) for v in next(given))
                if c_lo.shape != lo.shape or c_hi.shape != hi.shape:
                    raise VstError(f"MILP: ReLU bounds of {c_lo.size} values for a layer of "
                                   f"{lo.size}")
                lo, hi = np.maximum(lo, _widen(c_lo, -1)), np.minimum(hi, _widen(c_hi, +1))
            # A value no variable reaches (a pruned channel of a masked model) is
            # exactly its bias: fix it rather than leave a widened [-d, d] binary.
            const = step.pre.constant_rows()
            lo[const] = hi[const] = step.pre.bias[const]
            if np.any(lo > hi) and not self.trouble:
                self.trouble = "interval and CROWN bounds of a ReLU do not meet (numerics)"
            self.bounds.append((lo, hi))
            if isinstance(step, Relu):
                lo_of[step.block], hi_of[step.block] = np.maximum(lo, 0.0), np.maximum(hi, 0.0)
            else:
                lo_of[step.block], hi_of[step.block], _ = _pool_bounds(step.windows, lo, hi)
        self.unstable = sum(int(((lo < 0) & (hi > 0)).sum())
                            for s, (lo, hi) in zip(program.steps, self.bounds)
                            if isinstance(s, Relu))
        self.pool_binaries = sum(int(_pool_binaries(_pool_bounds(s.windows, lo, hi)[2]).sum())
                                 for s, (lo, hi) in zip(program.steps, self.bounds)
                                 if isinstance(s, MaxPool))

    def __repr__(self) -> str:
        return (f"MilpEncoding(inputs={len(self.lower)}, blocks={self.program.blocks}, "
                f"unstable={self.unstable}, pool_binaries={self.pool_binaries})")

    def describe(self) -> str:
        """The binaries, for an "unknown" reason: "12 unstable ReLUs[, 8 max-pool binaries]"."""
        pool = f", {self.pool_binaries} max-pool binaries" if self.pool_binaries else ""
        return f"{self.unstable} unstable ReLUs{pool}"

    def _build(self, h, disjuncts) -> None:
        """Variables and rows of the network, then the objective ``s`` (``_objective``)."""
        n0 = len(self.lower)
        h.addVars(n0, self.lower, self.upper)
        cols = {0: np.arange(n0)}        # HiGHS column of each variable of a block (-1: none)
        nxt = n0
        for step, (lo, hi) in zip(self.program.steps, self.bounds):
            rows = _Rows(step.pre, cols)
            if isinstance(step, Relu):
                cols[step.block], nxt = _relu(h, rows, step.pre.bias, lo, hi, nxt)
            else:
                cols[step.block], nxt = _maxpool(h, rows, step, lo, hi, nxt)
        self._objective(h, disjuncts, cols, nxt)

    def _objective(self, h, disjuncts, cols, s_col) -> None:
        """Minimize ``s`` with ``s >= A_i y - c_i`` for the rows of the disjunct."""
        if len(disjuncts) != 1:
            raise VstError("MILP: one disjunct per solve")
        a, c = disjuncts[0]
        out = self.program.output
        g = Expr({b: m.left_mul(a) for b, m in out.terms.items()}, a @ out.bias - c,
                 (len(a),))
        h.addVar(-highs_inf(), highs_inf())
        h.changeColCost(s_col, 1.0)
        # s - G v >= g0  (s >= A y - c row by row)
        idx = np.arange(len(a))
        _Rows(g, cols).add(h, idx, np.full(len(a), s_col), 1.0, g.bias,
                           np.full(len(a), highs_inf()))

    def consistent(self, x) -> bool:
        """Do the bounds of every ReLU and max pooling input hold at input ``x``
        (float64 pass)? A sanity check of the big-M values before trusting an
        "infeasible" answer: a box point outside them would mean the encoding
        misses inputs."""
        pres, _ = self.program.evaluate(x)
        return all(np.all(z >= lo) and np.all(z <= hi)
                   for z, (lo, hi) in zip(pres, self.bounds))

    def objective_at(self, x, a, c) -> float:
        """``max_i (A_i y - c_i)`` at input ``x`` in float64 (the MILP's s there)."""
        _, y = self.program.evaluate(x)
        return float(np.max(np.atleast_2d(a) @ y - np.asarray(c).reshape(-1)))

    def solve(self, disjuncts, *, time_limit: float, margin: float = 1e-4,
              elapsed=None) -> MilpResult:
        """Is some box input reachable that meets the disjunct ``(A, c)`` (all rows of
        ``A @ y <= c``)? ``disjuncts`` is a list of that one disjunct.

        ``elapsed``: a clock (seconds since the caller's start) checked against
        ``time_limit`` besides HiGHS's own wall-clock limit, e.g. CPU time.
        """
        disjuncts = [(np.atleast_2d(np.asarray(a, np.float64)),
                      np.asarray(c, np.float64).reshape(-1)) for a, c in disjuncts]
        if time_limit <= 0:
            return MilpResult("unknown", reason="no time left")
        h = _new_highs()
        options = {"output_flag": False, "threads": 1, "random_seed": 0,
                   "time_limit": float(time_limit), "mip_feasibility_tolerance": 1e-7,
                   "primal_feasibility_tolerance": 1e-8,
                   # LP bounds prune nodes: a small dual infeasibility could
                   # overstate them, so ask for 100x less than HiGHS's default
                   "dual_feasibility_tolerance": 1e-9, **_SEARCH}
        integral = self.unstable + self.pool_binaries > 0
        if integral:
            # Only the sign of min s matters: prune every node whose bound clears
            # +margin (HiGHS then says "infeasible": no s below the margin exists),
            # stop at the first solution clearly below 0. Measured on a natural
            # 2x256 MNIST MLP: 12 s instead of no answer in 60 s without the cutoff.
            options.update(objective_bound=margin, objective_target=-margin)
        for key, value in options.items():
            h.setOptionValue(key, value)
        self._build(h, disjuncts)
        t0 = time.perf_counter()
        if elapsed is not None:
            stop = elapsed() + time_limit

            def interrupt(event):
                if elapsed() > stop:
                    event.interrupt()
            h.cbMipInterrupt.subscribe(interrupt)
            h.setOptionValue("time_limit", max(float(time_limit), 10 * float(time_limit)))
        h.run()
        return self._outcome(h, margin, time.perf_counter() - t0, integral)

    def _outcome(self, h, margin: float, seconds: float, integral: bool) -> MilpResult:
        import highspy

        status = h.getModelStatus()
        info = h.getInfo()
        names = highspy.HighsModelStatus
        objective = float(info.objective_function_value)
        bound = float(info.mip_dual_bound) if integral else objective
        has_sol = info.primal_solution_status == 2          # a feasible solution
        if integral and status in (names.kInfeasible, names.kObjectiveBound):
            return MilpResult("unreachable", bound=margin)  # all of it pruned by the cutoff
        if status == names.kOptimal and not integral and objective > margin:
            return MilpResult("unreachable", objective=objective, bound=objective)
        if has_sol and objective <= margin and status in (names.kOptimal,
                                                           names.kObjectiveTarget,
                                                           names.kTimeLimit,
                                                           names.kInterrupt):
            x = np.asarray(h.getSolution().col_value[: len(self.lower)], np.float64)
            return MilpResult("reachable", x=np.clip(x, self.lower, self.upper),
                              objective=objective, bound=bound)
        if status in (names.kTimeLimit, names.kInterrupt):
            why = f"MILP time limit ({seconds:.0f} s, proven bound {bound:.3g})"
        else:
            why = f"MILP {h.modelStatusToString(status)}"
        return MilpResult("unknown", objective=objective, bound=bound, reason=why)


# HiGHS search settings, by measurement on MNIST nets (HiGHS 1.16, one thread):
# presolve spends 20 s on the dense first layer for nothing, and the primal
# heuristics (sub-MIPs, feasibility jump) hunt for solutions that PGD already
# looked for; plain branch and bound with the cutoff settles the instances.
_SEARCH = {"presolve": "off", "mip_heuristic_effort": 0.0,
           "mip_heuristic_run_feasibility_jump": False,
           "mip_heuristic_run_root_reduced_cost": False,
           "mip_heuristic_run_zi_round": False, "mip_heuristic_run_shifting": False,
           "mip_heuristic_run_rins": False, "mip_heuristic_run_rens": False}


_BANNER_SHOWN = False


def _new_highs():
    """A fresh ``highspy.Highs``; the first one prints HiGHS's banner on the C-level
    stdout, which would break vst's tables and JSON on stdout: swallowed once."""
    import os
    import sys

    import highspy

    global _BANNER_SHOWN
    if _BANNER_SHOWN:
        return highspy.Highs()
    sys.stdout.flush()
    saved = os.dup(1)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 1)
            h = highspy.Highs()
    finally:
        os.dup2(saved, 1)
        os.close(saved)
    _BANNER_SHOWN = True
    return h


def highs_inf() -> float:
    import highspy

    return highspy.kHighsInf


def _widen(v: np.ndarray, sign: int) -> np.ndarray:
    v = np.asarray(v, np.float64)
    return v + sign * WIDEN * (1.0 + np.abs(v))



class _Rows:
    """An expression's rows over HiGHS columns (terms on variables that do not
    exist, the constant 0 of a dead ReLU, dropped), gathered by index."""

    def __init__(self, expr: Expr, cols: dict) -> None:
        r, c, v = [np.zeros(0, np.int64)], [np.zeros(0, np.int64)], [np.zeros(0)]
        for b, m in expr.terms.items():
            hc = cols[b][m.cols]
            keep = hc >= 0
            r.append(m.rows[keep])
            c.append(hc[keep])
            v.append(m.vals[keep])
        r, c, v = np.concatenate(r), np.concatenate(c), np.concatenate(v)
        order = np.lexsort((c, r))                  # by row, then column
        self.cols, self.vals = c[order], v[order]
        self.counts = np.bincount(r, minlength=expr.size)
        self.starts = np.concatenate([[0], np.cumsum(self.counts)[:-1]]).astype(np.int64)

    def add(self, h, idx, own_cols, own_coef, lo, hi, extra_cols=None, extra_vals=None):
        """Rows ``own_coef * v_own - (terms of z[idx]) (+ extra_vals * v_extra)`` in
        ``[lo, hi]``; z's bias is the caller's to put into ``lo`` / ``hi``."""
        idx = np.asarray(idx, np.int64)
        m = len(idx)
        if m == 0:
            return
        cnt = self.counts[idx]
        per = cnt + 1 + (extra_cols is not None)
        starts = np.zeros(m, np.int64)
        starts[1:] = np.cumsum(per)[:-1]
        total = int(per.sum())
        ind, val = np.empty(total, np.int32), np.empty(total, np.float64)
        q = np.repeat(np.arange(m), cnt)
        offset = np.arange(int(cnt.sum())) - np.repeat(np.cumsum(cnt) - cnt, cnt)
        src, dst = self.starts[idx][q] + offset, starts[q] + offset
        ind[dst], val[dst] = self.cols[src], -self.vals[src]
        tail = starts + cnt
        ind[tail], val[tail] = own_cols, own_coef
        if extra_cols is not None:
            ind[tail + 1], val[tail + 1] = extra_cols, extra_vals
        _ok(h.addRows(m, np.asarray(lo, np.float64), np.asarray(hi, np.float64), total,
                      starts.astype(np.int32), ind, val))


def _ok(status) -> None:
    """HiGHS answers a bad row (e.g. a column twice) with an error status, not an
    exception: a model with a row missing would be wrong, so stop."""
    import highspy

    if status == highspy.HighsStatus.kError:
        raise VstError("MILP: HiGHS rejected a row of the encoding (internal error)")


def _binaries(h, count: int, first: int) -> np.ndarray:
    cols = np.arange(first, first + count)
    if count:
        h.addVars(count, np.zeros(count), np.ones(count))
        h.changeColsIntegrality(count, cols.astype(np.int32), np.ones(count, dtype=np.uint8))
    return cols


def _relu(h, rows: _Rows, bias, lo, hi, nxt: int):
    """ReLU rows (module doc); returns the columns of its outputs (-1: dead) and the next."""
    inf = highs_inf()
    dead = hi <= 0
    active = (lo >= 0) & ~dead          # a constant 0 neuron is dead, not both
    unstable = ~active & ~dead
    new_cols = np.full(len(lo), -1)
    keep = np.nonzero(~dead)[0]
    h.addVars(len(keep), np.maximum(lo[keep], 0.0), np.maximum(hi[keep], 0.0))
    new_cols[keep] = np.arange(nxt, nxt + len(keep))
    nxt += len(keep)
    unst = np.nonzero(unstable)[0]
    d_cols = _binaries(h, len(unst), nxt)
    nxt += len(unst)
    act = np.nonzero(active)[0]
    rows.add(h, act, new_cols[act], 1.0, bias[act], bias[act])             # h = z
    if len(unst):
        bu, lu, uu, hc = bias[unst], lo[unst], hi[unst], new_cols[unst]
        rows.add(h, unst, hc, 1.0, bu, np.full(len(unst), inf))             # h >= z
        rows.add(h, unst, hc, 1.0, np.full(len(unst), -inf), bu - lu,
                 extra_cols=d_cols, extra_vals=-lu)                          # h <= z - l(1-d)
        n = len(unst)
        starts = np.arange(0, 2 * n, 2, dtype=np.int32)
        idx = np.stack([hc, d_cols], 1).reshape(-1).astype(np.int32)
        vals = np.stack([np.ones(n), -uu], 1).reshape(-1)
        _ok(h.addRows(n, np.full(n, -inf), np.zeros(n), len(idx), starts, idx, vals))  # h<=ud
    return new_cols, nxt


def _pool_bounds(windows, lo, hi):
    """Per output of a max pooling: ``L = max l_i``, ``U = max u_i`` and the
    candidates, the elements with ``u_i >= L`` (the others are never the maximum)."""
    valid = windows >= 0
    at = np.where(valid, windows, 0)
    wl = np.where(valid, lo[at], -np.inf)
    wu = np.where(valid, hi[at], -np.inf)
    low, high = wl.max(1), wu.max(1)
    return low, high, valid & (wu >= low[:, None])


def _pool_binaries(cand) -> np.ndarray:
    """Candidates that need a binary: those of windows with more than one."""
    return cand & (cand.sum(1) > 1)[:, None]


def _maxpool(h, rows: _Rows, step: MaxPool, lo, hi, nxt: int):
    """Max pooling rows (module doc); returns the columns of its outputs and the next."""
    inf = highs_inf()
    low, high, cand = _pool_bounds(step.windows, lo, hi)
    bias = step.pre.bias
    n = len(low)
    y = np.arange(nxt, nxt + n)
    h.addVars(n, low, high)
    nxt += n
    one = np.nonzero(cand.sum(1) == 1)[0]
    zi = step.windows[one, np.argmax(cand[one], 1)]
    rows.add(h, zi, y[one], 1.0, bias[zi], bias[zi])                        # y = z_i
    jj, kk = np.nonzero(_pool_binaries(cand))                # grouped by output
    if len(jj):
        zi = step.windows[jj, kk]
        d = _binaries(h, len(jj), nxt)
        nxt += len(jj)
        rows.add(h, zi, y[jj], 1.0, bias[zi], np.full(len(jj), inf))        # y >= z_i
        m = high[jj] - lo[zi]
        rows.add(h, zi, y[jj], 1.0, np.full(len(jj), -inf), m + bias[zi],
                 extra_cols=d, extra_vals=m)                  # y <= z_i + m (1 - d_i)
        outs, starts = np.unique(jj, return_index=True)
        ones = np.ones(len(outs))
        _ok(h.addRows(len(outs), ones, ones, len(d), starts.astype(np.int32),
                      d.astype(np.int32), np.ones(len(d))))                 # sum d_i = 1
    return y, nxt
