"""Exact verification of a ReLU network as a mixed-integer linear program (HiGHS).

The network is cut at its ReLUs into affine segments (Normalize, Conv, Linear,
BatchNorm and Flatten are affine in eval mode; a segment's matrix is read off
by running it in float64 on the unit vectors, so convolutions are unrolled to
dense matrices, which suits the small nets vst makes). Each ReLU ``h =
max(0, z)`` with sound pre-activation bounds ``l <= z <= u`` (from CROWN /
alpha-CROWN, ``Bounder.box_bounds``) is encoded exactly:

- stable inactive (``u <= 0``): ``h = 0``, no variable at all;
- stable active (``l >= 0``): ``h = z``;
- unstable: a binary ``d`` with ``h >= 0``, ``h >= z``, ``h <= u d``,
  ``h <= z - l (1 - d)`` (the big-M form with the tightest M the bounds give).

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

import copy
import time
from dataclasses import dataclass

import numpy as np
import torch

from toolchain.errors import VstError

WIDEN = 1e-5          # relative + absolute widening of every intermediate bound
# Dense segment matrices beyond this many entries (400 MB of float64) are not
# built: the MILP is for the small nets vst makes (cnn_4layer on MNIST: 5M).
MAX_ENTRIES = 50_000_000


class TooLarge(VstError):
    """The network is too large to unroll into the MILP."""


@dataclass
class Segment:
    """``z = W h + b``: one affine piece between ReLUs (``W`` dense, float64)."""

    weight: np.ndarray     # (out, in)
    bias: np.ndarray       # (out,)


def affine_segments(module: torch.nn.Sequential, input_shape) -> list[Segment]:
    """The affine maps between the ReLUs of ``module`` (eval mode), first to last.

    ``len(result) == number of ReLUs + 1``; the last maps to the outputs.
    Raises ``VstError`` for a module that is not a sequence of affine layers and
    ``nn.ReLU``s.
    """
    if not isinstance(module, torch.nn.Sequential):
        raise VstError("complete verification needs a sequential network")
    net = copy.deepcopy(module).double().eval()
    pieces, current = [], []
    for child in net:
        if isinstance(child, torch.nn.ReLU):
            pieces.append(current)
            current = []
        elif isinstance(child, (torch.nn.Dropout,)):
            continue
        else:
            if not _affine_kind(child):
                raise VstError(f"complete verification: layer {type(child).__name__} is not "
                               "supported (only affine layers and ReLU)")
            current.append(child)
    pieces.append(current)
    shape = tuple(int(s) for s in input_shape)
    out = []
    with torch.no_grad():
        for layers in pieces:
            seq = torch.nn.Sequential(*layers)
            n_in = int(np.prod(shape))
            b = seq(torch.zeros((1,) + shape, dtype=torch.float64))
            out_shape = tuple(b.shape[1:])
            if n_in * b.numel() > MAX_ENTRIES:
                raise TooLarge(f"complete verification: a {n_in} -> {b.numel()} layer is too "
                               f"large to unroll into the MILP")
            cols = []
            for i in range(0, n_in, 512):
                k = min(512, n_in - i)
                eye = torch.zeros((k, n_in), dtype=torch.float64)
                eye[torch.arange(k), torch.arange(i, i + k)] = 1.0
                cols.append((seq(eye.reshape((k,) + shape)) - b).reshape(k, -1))
            w = torch.cat(cols).T.contiguous()
            out.append(Segment(w.numpy(), b.reshape(-1).numpy()))
            shape = out_shape
    return out


def _affine_kind(child) -> bool:
    from torch import nn

    affine = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.BatchNorm1d, nn.BatchNorm2d, nn.Flatten,
              nn.Identity)
    return isinstance(child, affine) or type(child).__name__ == "Normalize"


@dataclass
class MilpResult:
    status: str                 # "unreachable" | "reachable" | "unknown"
    x: np.ndarray | None = None  # reachable: the MILP's input (to be re-checked)
    objective: float = float("nan")
    bound: float = float("nan")
    reason: str = ""


class MilpEncoding:
    """The network over the box, encoded once; ``solve(A, c)`` per disjunct.

    ``relu_bounds``: per ReLU, ``(lb, ub)`` flat float64 arrays of its
    pre-activations over the box (sound), in network order.
    """

    def __init__(self, segments: list[Segment], lower, upper, relu_bounds) -> None:
        if len(relu_bounds) != len(segments) - 1:
            raise VstError(f"MILP: {len(relu_bounds)} ReLU bounds for {len(segments) - 1} "
                           "ReLU layers")
        self.segments = segments
        self.lower = np.asarray(lower, np.float64).reshape(-1)
        self.upper = np.asarray(upper, np.float64).reshape(-1)
        self.bounds = [(_widen(lo, -1), _widen(hi, +1)) for lo, hi in relu_bounds]
        for seg, (lo, hi) in zip(segments, self.bounds):
            # A neuron with no incoming weight (a pruned channel of a masked model)
            # is exactly its bias: fix it rather than leave a widened [-d, d] binary.
            const = ~np.any(seg.weight != 0, axis=1)
            lo[const] = hi[const] = seg.bias[const]
        self.unstable = sum(int(((lo < 0) & (hi > 0)).sum()) for lo, hi in self.bounds)

    def __repr__(self) -> str:
        return (f"MilpEncoding(inputs={len(self.lower)}, relus="
                f"{[len(lo) for lo, _ in self.bounds]}, unstable={self.unstable})")

    def _build(self, h, disjuncts) -> None:
        """Variables and rows of the network, then the objective ``s`` (``_objective``)."""
        inf = highs_inf()
        n0 = len(self.lower)
        h.addVars(n0, self.lower, self.upper)
        cols = np.arange(n0)                  # HiGHS column of each neuron of the layer
        next_col = n0
        var_lo, var_hi = self.lower, self.upper   # bounds of the layer's variables
        for seg, (lo, hi) in zip(self.segments[:-1], self.bounds):
            alive = cols >= 0
            w = seg.weight[:, alive]
            src = cols[alive]
            dead = hi <= 0
            active = (lo >= 0) & ~dead          # a constant 0 neuron is dead, not both
            unstable = ~active & ~dead
            new_cols = np.full(len(lo), -1)
            keep = np.nonzero(~dead)[0]
            h.addVars(len(keep), np.maximum(lo[keep], 0.0), np.maximum(hi[keep], 0.0))
            new_cols[keep] = np.arange(next_col, next_col + len(keep))
            next_col += len(keep)
            unst = np.nonzero(unstable)[0]
            if len(unst):
                h.addVars(len(unst), np.zeros(len(unst)), np.ones(len(unst)))
                d_cols = np.arange(next_col, next_col + len(unst))
                next_col += len(unst)
                h.changeColsIntegrality(len(unst), d_cols.astype(np.int32),
                                        np.ones(len(unst), dtype=np.uint8))
            # h - W x = b (active);  h - W x >= b and h - W x + l d <= b - l... see module doc
            act = np.nonzero(active)[0]
            _add_rows(h, w[act], src, new_cols[act], 1.0, seg.bias[act], seg.bias[act])
            if len(unst):
                wu, bu, lu, uu = w[unst], seg.bias[unst], lo[unst], hi[unst]
                hc = new_cols[unst]
                _add_rows(h, wu, src, hc, 1.0, bu, np.full(len(unst), inf))      # h >= z
                _add_rows(h, wu, src, hc, 1.0, np.full(len(unst), -inf), bu - lu,
                          extra_cols=d_cols, extra_vals=-lu)          # h - z - l d <= -l
                rows = len(unst)
                starts = np.arange(0, 2 * rows, 2, dtype=np.int32)
                idx = np.stack([hc, d_cols], 1).reshape(-1).astype(np.int32)
                vals = np.stack([np.ones(rows), -uu], 1).reshape(-1)
                h.addRows(rows, np.full(rows, -inf), np.zeros(rows), len(idx), starts,
                          idx, vals)                                   # h - u d <= 0
            cols = new_cols
            var_lo, var_hi = np.maximum(lo, 0.0), np.maximum(hi, 0.0)
        self._objective(h, disjuncts, cols, next_col, var_lo, var_hi)

    def _objective(self, h, disjuncts, cols, s_col, var_lo, var_hi) -> None:
        """Minimize ``s`` with ``s >= A_i y - c_i`` for the rows of the disjunct."""
        if len(disjuncts) != 1:
            raise VstError("MILP: one disjunct per solve")
        a, c = disjuncts[0]
        last = self.segments[-1]
        alive = cols >= 0
        g = a @ last.weight[:, alive]
        g0 = a @ last.bias - c
        h.addVar(-highs_inf(), highs_inf())
        h.changeColCost(s_col, 1.0)
        # s - G h >= g0  (s >= A y - c row by row)
        _add_rows(h, g, cols[alive], np.full(len(g), s_col), 1.0, g0,
                  np.full(len(g), highs_inf()))

    def consistent(self, x) -> bool:
        """Do the ReLU bounds hold at input ``x`` (float64 pass through the segments)?

        A sanity check of the big-M values before trusting an "infeasible"
        answer: a box point outside them would mean the encoding misses inputs.
        """
        h = np.asarray(x, np.float64).reshape(-1)
        for seg, (lo, hi) in zip(self.segments[:-1], self.bounds):
            z = seg.weight @ h + seg.bias
            if np.any(z < lo) or np.any(z > hi):
                return False
            h = np.maximum(z, 0.0)
        return True

    def objective_at(self, x, a, c) -> float:
        """``max_i (A_i y - c_i)`` at input ``x`` in float64 (the MILP's s there)."""
        h = np.asarray(x, np.float64).reshape(-1)
        for seg in self.segments[:-1]:
            h = np.maximum(seg.weight @ h + seg.bias, 0.0)
        y = self.segments[-1].weight @ h + self.segments[-1].bias
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
        integral = self.unstable > 0
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


def _add_rows(h, w, src_cols, own_cols, own_coef, lo, hi, extra_cols=None,
              extra_vals=None) -> None:
    """Rows ``own_coef * v_own - w @ v_src (+ extra_vals * v_extra)`` in ``[lo, hi]``."""
    rows = len(w)
    if rows == 0:
        return
    mask = w != 0
    counts = mask.sum(1) + 1 + (0 if extra_cols is None else 1)
    starts = np.zeros(rows, dtype=np.int64)
    starts[1:] = np.cumsum(counts)[:-1]
    total = int(counts.sum())
    idx = np.empty(total, dtype=np.int32)
    vals = np.empty(total, dtype=np.float64)
    r, k = np.nonzero(mask)                       # row-major: grouped by row
    pos = starts[r] + (np.arange(len(r)) - np.searchsorted(r, r))
    idx[pos], vals[pos] = src_cols[k], -w[r, k]
    tail = starts + mask.sum(1)
    idx[tail], vals[tail] = own_cols, own_coef
    if extra_cols is not None:
        idx[tail + 1], vals[tail + 1] = extra_cols, extra_vals
    h.addRows(rows, np.asarray(lo, np.float64), np.asarray(hi, np.float64), total,
              starts.astype(np.int32), idx, vals)
