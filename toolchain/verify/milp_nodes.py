"""The rows of one nonlinear node of the MILP (``milp.py``): ReLU and max pooling.

Each function adds a node's variables and rows to a ``highspy.Highs`` model
and returns the HiGHS column of each of its outputs (-1: a dead ReLU, the
constant 0) and the next free column. The encodings, exact given sound
bounds ``lo <= z <= hi`` on the node's input, are in ``milp.py``'s docstring.
"""

from __future__ import annotations

import numpy as np

from toolchain.errors import VstError
from toolchain.verify.affine_program import Expr, MaxPool


def highs_inf() -> float:
    import highspy

    return highspy.kHighsInf



class Rows:
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


def _binaries(h, count: int, first: int, relax: bool = False) -> np.ndarray:
    cols = np.arange(first, first + count)
    if count:
        h.addVars(count, np.zeros(count), np.ones(count))
    if count and not relax:
        h.changeColsIntegrality(count, cols.astype(np.int32), np.ones(count, dtype=np.uint8))
    return cols


def relu_rows(h, rows: Rows, bias, lo, hi, nxt: int, relax: bool = False):
    """ReLU rows (module doc); returns the columns of its outputs (-1: dead) and the next.
    ``relax``: the binaries continuous (the triangle relaxation)."""
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
    d_cols = _binaries(h, len(unst), nxt, relax)
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


def pool_bounds(windows, lo, hi):
    """Per output of a max pooling: ``L = max l_i``, ``U = max u_i`` and the
    candidates, the elements with ``u_i >= L`` (the others are never the maximum)."""
    valid = windows >= 0
    at = np.where(valid, windows, 0)
    wl = np.where(valid, lo[at], -np.inf)
    wu = np.where(valid, hi[at], -np.inf)
    low, high = wl.max(1), wu.max(1)
    return low, high, valid & (wu >= low[:, None])


def pool_binaries(cand) -> np.ndarray:
    """Candidates that need a binary: those of windows with more than one."""
    return cand & (cand.sum(1) > 1)[:, None]


def maxpool_rows(h, rows: Rows, step: MaxPool, lo, hi, nxt: int):
    """Max pooling rows (module doc); returns the columns of its outputs and the next."""
    inf = highs_inf()
    low, high, cand = pool_bounds(step.windows, lo, hi)
    bias = step.pre.bias
    n = len(low)
    y = np.arange(nxt, nxt + n)
    h.addVars(n, low, high)
    nxt += n
    one = np.nonzero(cand.sum(1) == 1)[0]
    zi = step.windows[one, np.argmax(cand[one], 1)]
    rows.add(h, zi, y[one], 1.0, bias[zi], bias[zi])                        # y = z_i
    jj, kk = np.nonzero(pool_binaries(cand))                # grouped by output
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
