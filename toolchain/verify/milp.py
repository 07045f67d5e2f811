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
from toolchain.verify.milp_nodes import (Rows, highs_inf, maxpool_rows, pool_binaries,
                                        pool_bounds, relu_rows)

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
                lo_of[step.block], hi_of[step.block], _ = pool_bounds(step.windows, lo, hi)
        self.unstable = sum(int(((lo < 0) & (hi > 0)).sum())
                            for s, (lo, hi) in zip(program.steps, self.bounds)
                            if isinstance(s, Relu))
        self.pool_binaries = sum(int(pool_binaries(pool_bounds(s.windows, lo, hi)[2]).sum())
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
        cols, nxt = self.encode(h, len(self.program.steps))
        self._objective(h, disjuncts, cols, nxt)

    def encode(self, h, upto: int, relax: bool = False):
        """Variables and rows of the input and of the first ``upto`` nonlinear steps;
        ``relax``: the binaries continuous in [0, 1] (the LP relaxation: each
        unstable ReLU its triangle, ``verify/refine.py``). Returns the HiGHS column
        of each variable per block (-1: none) and the next free column."""
        n0 = len(self.lower)
        h.addVars(n0, self.lower, self.upper)
        cols = {0: np.arange(n0)}
        nxt = n0
        for step, (lo, hi) in list(zip(self.program.steps, self.bounds))[:upto]:
            rows = Rows(step.pre, cols)
            if isinstance(step, Relu):
                cols[step.block], nxt = relu_rows(h, rows, step.pre.bias, lo, hi, nxt, relax)
            else:
                cols[step.block], nxt = maxpool_rows(h, rows, step, lo, hi, nxt)
        return cols, nxt

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
        Rows(g, cols).add(h, idx, np.full(len(a), s_col), 1.0, g.bias,
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


def _widen(v: np.ndarray, sign: int) -> np.ndarray:
    v = np.asarray(v, np.float64)
    return v + sign * WIDEN * (1.0 + np.abs(v))
