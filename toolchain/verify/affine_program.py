"""A network read as affine expressions between its nonlinear nodes, in float64.

The MILP (``milp.py``) needs every value of the network as an affine function
of a few *blocks* of variables: the input (block 0) and the output of each
nonlinear node, a ReLU or a max pooling (one block each). Everything else is
linear in eval mode and is composed into the expressions: Normalize, Conv1d /
Conv2d (grouped and depthwise too), Linear, BatchNorm, Flatten, average
pooling (zero padding counted), global average pooling and Add. A node's
matrix is read off by running the torch layer in float64 on the columns of
the expression it reads (unit vectors for a fresh block), so any affine layer
is unrolled exactly without a formula per kind.

Matrices are sparse (:class:`Sparse`, COO in numpy): a convolution's rows
touch a few inputs, and a residual connection adds an identity, which dense
storage could not afford on a 16x28x28 feature map.

Chains (``nn.Sequential``) and graphs (``torch_build.Graph``, layer ``i``
reading ``inputs[i]``) are read alike. ``Program.evaluate`` runs the same
program on an input in float64; the tests hold it equal to the torch module.

>>> import torch
>>> from toolchain.models import layers as L
>>> from toolchain.models.torch_build import build_torch
>>> net = L.Network((1, 4), (L.Conv1d(1, 2, 1), L.ReLU(), L.MaxPool1d(2), L.Flatten(),
...                          L.Linear(4, 2)))
>>> prog = read_program(build_torch(net).eval(), net.input_shape)
>>> [type(s).__name__ for s in prog.steps], prog.blocks
(['Relu', 'MaxPool'], [4, 8, 4])
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from toolchain.errors import VstError
from toolchain.models import torch_build as T

# Segment matrices beyond this many nonzeros (about 1 GB of COO entries) are not
# built: the MILP is for the small nets vst makes (cnn_4layer on MNIST: 0.3M).
MAX_ENTRIES = 50_000_000
CHUNK = 512             # columns pushed through a layer at once


class TooLarge(VstError):
    """The network is too large to unroll into the MILP."""


@dataclass
class Sparse:
    """An ``(n_rows, n_cols)`` float64 matrix as COO entries sorted by column, then row."""

    rows: np.ndarray
    cols: np.ndarray
    vals: np.ndarray
    shape: tuple[int, int]

    @classmethod
    def identity(cls, n: int) -> "Sparse":
        i = np.arange(n)
        return cls(i, i.copy(), np.ones(n), (n, n))

    def __add__(self, other: "Sparse") -> "Sparse":
        n, m = self.shape
        key = np.concatenate([self.cols * n + self.rows, other.cols * n + other.rows])
        vals = np.concatenate([self.vals, other.vals])
        uniq, inverse = np.unique(key, return_inverse=True)
        summed = np.bincount(inverse, weights=vals, minlength=len(uniq))
        keep = summed != 0
        return Sparse(uniq[keep] % n, uniq[keep] // n, summed[keep], self.shape)

    def column_chunks(self, size: int = CHUNK):
        """``(column ids, dense (k, n_rows))`` for the columns with entries, ``size`` at a time."""
        ids, starts = np.unique(self.cols, return_index=True)
        ends = np.append(starts[1:], len(self.cols))
        for a in range(0, len(ids), size):
            chunk = ids[a:a + size]
            dense = np.zeros((len(chunk), self.shape[0]))
            lo, hi = starts[a], ends[a + len(chunk) - 1]
            local = np.repeat(np.arange(len(chunk)), ends[a:a + size] - starts[a:a + size])
            dense[local, self.rows[lo:hi]] = self.vals[lo:hi]
            yield chunk, dense

    def matvec(self, x: np.ndarray) -> np.ndarray:
        return np.bincount(self.rows, weights=self.vals * x[self.cols], minlength=self.shape[0])

    def interval(self, lo: np.ndarray, hi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Row-wise ``[min, max]`` of ``M v`` over the box ``lo <= v <= hi``."""
        pos = self.vals > 0
        a = np.where(pos, self.vals * lo[self.cols], self.vals * hi[self.cols])
        b = np.where(pos, self.vals * hi[self.cols], self.vals * lo[self.cols])
        n = self.shape[0]
        return (np.bincount(self.rows, weights=a, minlength=n),
                np.bincount(self.rows, weights=b, minlength=n))

    def left_mul(self, a: np.ndarray) -> "Sparse":
        """``a @ M`` for a small dense ``a`` (R, n_rows): the objective's rows."""
        rows, cols, vals = [], [], []
        for r in range(len(a)):
            w = np.bincount(self.cols, weights=a[r, self.rows] * self.vals,
                            minlength=self.shape[1])
            nz = np.nonzero(w)[0]
            rows.append(np.full(len(nz), r))
            cols.append(nz)
            vals.append(w[nz])
        rows, cols, vals = np.concatenate(rows), np.concatenate(cols), np.concatenate(vals)
        order = np.lexsort((rows, cols))
        return Sparse(rows[order], cols[order], vals[order], (len(a), self.shape[1]))


@dataclass
class Expr:
    """``z = sum_b terms[b] @ v_b + bias``: a node's value (flattened, per-sample ``shape``)."""

    terms: dict[int, Sparse]
    bias: np.ndarray
    shape: tuple[int, ...]

    @property
    def size(self) -> int:
        return len(self.bias)

    def __add__(self, other: "Expr") -> "Expr":
        if self.shape != other.shape:
            raise VstError(f"complete verification: add of shapes {self.shape} and "
                           f"{other.shape}")
        terms = dict(self.terms)
        for b, m in other.terms.items():
            terms[b] = terms[b] + m if b in terms else m
        return Expr(terms, self.bias + other.bias, self.shape)

    def interval(self, block_lo: dict, block_hi: dict) -> tuple[np.ndarray, np.ndarray]:
        """Bounds of each entry given bounds of every block (interval arithmetic)."""
        lo, hi = self.bias.copy(), self.bias.copy()
        for b, m in self.terms.items():
            a, c = m.interval(block_lo[b], block_hi[b])
            lo += a
            hi += c
        return lo, hi

    def constant_rows(self) -> np.ndarray:
        """Entries that no variable reaches (e.g. a pruned channel): exactly their bias."""
        reached = np.zeros(self.size, bool)
        for m in self.terms.values():
            reached[m.rows] = True
        return ~reached

    def at(self, values: dict) -> np.ndarray:
        out = self.bias.copy()
        for b, m in self.terms.items():
            out += m.matvec(values[b])
        return out


@dataclass
class Relu:
    pre: Expr         # the pre-activation z
    block: int        # the block of h = max(0, z)


@dataclass
class MaxPool:
    pre: Expr             # the pooled input
    block: int            # the block of the outputs
    windows: np.ndarray   # (outputs, window) indices into ``pre``; -1 in the padding


@dataclass
class Program:
    """Block 0 is the input; ``steps`` create the other blocks in order."""

    blocks: list[int]                   # size of each block
    steps: list                         # Relu | MaxPool
    output: Expr                        # the logits

    def evaluate(self, x) -> tuple[list[np.ndarray], np.ndarray]:
        """Each step's input (pre-activation) and the output at input ``x``, in float64."""
        values = {0: np.asarray(x, np.float64).reshape(-1)}
        pres = []
        for step in self.steps:
            z = step.pre.at(values)
            pres.append(z)
            if isinstance(step, Relu):
                values[step.block] = np.maximum(z, 0.0)
            else:
                padded = np.append(z, -np.inf)          # index -1: the padding
                values[step.block] = padded[step.windows].max(1)
        return pres, self.output.at(values)


def read_program(module: nn.Module, input_shape) -> Program:
    """The program of an eval-mode ``nn.Sequential`` or ``torch_build.Graph``.

    ``VstError`` for a layer that is neither affine nor ReLU / max pooling;
    ``TooLarge`` when a matrix would exceed ``MAX_ENTRIES`` nonzeros.
    """
    net = copy.deepcopy(module).double().eval()
    shape = tuple(int(s) for s in input_shape)
    n0 = int(np.prod(shape))
    first = Expr({0: Sparse.identity(n0)}, np.zeros(n0), shape)
    blocks, steps, values = [n0], [], []
    for child, reads in _nodes(net):
        args = [first if j == -1 else values[j] for j in reads]
        if isinstance(child, nn.ReLU):
            out = _new_block(blocks, args[0].shape)
            steps.append(Relu(args[0], len(blocks) - 1))
        elif isinstance(child, (nn.MaxPool1d, nn.MaxPool2d)):
            windows, out_shape = _windows(child, args[0].shape)
            out = _new_block(blocks, out_shape)
            steps.append(MaxPool(args[0], len(blocks) - 1, windows))
        elif isinstance(child, T.Add):
            out = args[0] + args[1]
        elif isinstance(child, (nn.Dropout, nn.Identity)):
            out = args[0]
        elif isinstance(child, _AFFINE):
            out = _affine(child, args[0])
        else:
            raise VstError(f"complete verification: layer {type(child).__name__} is not "
                           "supported (affine layers, ReLU and max pooling are)")
        values.append(out)
    output = values[-1] if values else first
    if len(output.shape) != 1:
        raise VstError(f"complete verification: the network's output has shape "
                       f"{output.shape}, expected (classes,)")
    return Program(blocks, steps, output)


class ProgramReader:
    """``read_program(module, input_shape)`` on the first call, then the same answer
    (the Program, or the ``TooLarge`` it raised): a network read once for all
    the properties a caller decides on it (the module must not change)."""

    def __init__(self, module: nn.Module, input_shape) -> None:
        self.module, self.input_shape = module, tuple(input_shape)
        self._done: Program | TooLarge | None = None

    def __call__(self) -> Program:
        if self._done is None:
            try:
                self._done = read_program(self.module, self.input_shape)
            except TooLarge as exc:
                self._done = exc
        if isinstance(self._done, TooLarge):
            raise self._done
        return self._done


_AFFINE = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.BatchNorm1d, nn.BatchNorm2d, nn.Flatten,
           nn.AvgPool1d, nn.AvgPool2d, nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d,
           T.GlobalAvgPool, T.Normalize)


def _nodes(module: nn.Module) -> list[tuple[nn.Module, tuple[int, ...]]]:
    """``(layer, the nodes it reads)`` in order; -1 is the network input."""
    if isinstance(module, T.Graph):
        return [(module._modules[str(i)], row) for i, row in enumerate(module.inputs)]
    if isinstance(module, nn.Sequential):
        return [(child, (i - 1,)) for i, child in enumerate(module)]
    raise VstError("complete verification needs a sequential network or a vst graph, got "
                   f"{type(module).__name__}")


def _new_block(blocks: list[int], shape) -> Expr:
    n = int(np.prod(shape))
    blocks.append(n)
    return Expr({len(blocks) - 1: Sparse.identity(n)}, np.zeros(n), tuple(shape))


def _affine(layer: nn.Module, expr: Expr) -> Expr:
    """``layer`` (affine) applied to ``expr``: each term's columns pushed through it
    (elementwise layers and Flatten directly on the entries: same numbers, faster)."""
    shape = expr.shape
    if isinstance(layer, nn.Flatten):
        return Expr(expr.terms, expr.bias, (expr.size,))
    if isinstance(layer, _ELEMENTWISE):
        return _elementwise(layer, expr)
    with torch.no_grad():
        base = layer(torch.zeros((1,) + shape, dtype=torch.float64))
        out_shape, n_out = tuple(base.shape[1:]), base.numel()
        bias = layer(torch.from_numpy(expr.bias).reshape((1,) + shape)).reshape(-1).numpy()
        terms = {}
        for b, m in expr.terms.items():
            rows, cols, vals, count = [], [], [], 0
            for ids, dense in m.column_chunks():
                out = layer(torch.from_numpy(dense).reshape((len(ids),) + shape)) - base
                out = out.reshape(len(ids), -1).numpy()
                i, j = np.nonzero(out)
                count += len(i)
                if count > MAX_ENTRIES:
                    raise TooLarge(f"complete verification: a {m.shape[1]} -> {n_out} map is "
                                   "too large to unroll into the MILP")
                rows.append(j)
                cols.append(ids[i])
                vals.append(out[i, j])
            if rows:
                terms[b] = Sparse(np.concatenate(rows), np.concatenate(cols),
                                  np.concatenate(vals), (n_out, m.shape[1]))
    return Expr(terms, np.ascontiguousarray(bias, np.float64), out_shape)


_ELEMENTWISE = (nn.BatchNorm1d, nn.BatchNorm2d, T.Normalize)    # y_i = s_i x_i + t_i (eval)


def _elementwise(layer: nn.Module, expr: Expr) -> Expr:
    """An elementwise affine layer: ``s`` and ``t`` read off by running it on 0 and 1."""
    with torch.no_grad():
        ones = torch.ones((1,) + expr.shape, dtype=torch.float64)
        t = layer(torch.zeros_like(ones)).reshape(-1).numpy()
        s = layer(ones).reshape(-1).numpy() - t
    terms = {}
    for b, m in expr.terms.items():
        vals = m.vals * s[m.rows]
        keep = vals != 0
        terms[b] = Sparse(m.rows[keep], m.cols[keep], vals[keep], m.shape)
    return Expr(terms, expr.bias * s + t, expr.shape)


def _windows(pool: nn.Module, shape) -> tuple[np.ndarray, tuple[int, ...]]:
    """Input indices of every max-pooling window (-1: padding), and the output shape."""
    rank = 2 if isinstance(pool, nn.MaxPool2d) else 1
    if len(shape) != rank + 1:
        raise VstError(f"complete verification: {type(pool).__name__} of shape {shape}")
    k, s, p, d = (_per_axis(getattr(pool, a), rank)
                  for a in ("kernel_size", "stride", "padding", "dilation"))
    if pool.ceil_mode or any(v != 1 for v in d):
        raise VstError("complete verification: max pooling with ceil_mode or dilation is "
                       "not supported")
    axes, sizes = [], []
    for n, kk, ss, pp in zip(shape[1:], k, s, p):
        o = (n + 2 * pp - kk) // ss + 1
        pos = (np.arange(o) * ss - pp)[:, None] + np.arange(kk)[None, :]      # (o, kk)
        axes.append(np.where((pos >= 0) & (pos < n), pos, -1))
        sizes.append(o)
    if rank == 1:
        flat, inner = axes[0], shape[1]
    else:
        h, w = axes
        flat = (h[:, None, :, None] * shape[2] + w[None, :, None, :])        # (oh, ow, k, k)
        bad = (h[:, None, :, None] < 0) | (w[None, :, None, :] < 0)
        flat = np.where(bad, -1, flat).reshape(sizes[0] * sizes[1], -1)
        inner = shape[1] * shape[2]
    channels = np.arange(shape[0])[:, None, None] * inner
    windows = np.where(flat[None] < 0, -1, flat[None] + channels)
    return windows.reshape(-1, windows.shape[-1]), (shape[0],) + tuple(sizes)


def _per_axis(v, rank: int) -> tuple[int, ...]:
    return tuple(v) if isinstance(v, (tuple, list)) else (int(v),) * rank
