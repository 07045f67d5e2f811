"""The wiring of a network: which earlier node each node reads.

A network is a list of nodes in topological order. Node ``i`` reads the
outputs of the nodes in ``inputs[i]``, each an earlier node's index or
``INPUT`` (-1, the network input); the last node is the network's output.
A plain chain, node ``i`` reading node ``i - 1``, is ``chain(n)``. This
module knows nothing about layer kinds: it checks the wiring and runs a
function along it (shape inference here, the forward pass in
``torch_build.py``, channel groups in ``sparsity/groups.py``).

A residual block, ``x -> conv -> relu -> conv -> add(x, .)``:

>>> normalize_inputs([(-1,), (0,), (1,), (-1, 2)], [1, 1, 1, 2])
((-1,), (0,), (1,), (-1, 2))
>>> consumers(((-1,), (0,), (1,), (-1, 2)))
{-1: [0, 3], 0: [1], 1: [2], 2: [3], 3: []}
"""

from __future__ import annotations

from typing import Callable, Sequence

from toolchain.errors import VstError

INPUT = -1
Inputs = tuple[tuple[int, ...], ...]


def chain(n: int) -> Inputs:
    """Node i reads node i - 1 (node 0 the network input)."""
    return tuple((i - 1,) for i in range(n))


def normalize_inputs(inputs, arities: Sequence[int]) -> Inputs:
    """``inputs`` as a tuple of int tuples, checked: one entry per node, each
    reading earlier nodes only (no cycle, no forward reference), as many as the
    node takes, and every node but the last read by a later one.
    ``None`` is the chain."""
    n = len(arities)
    if inputs is None:
        return chain(n)
    try:
        inputs = tuple(tuple(row) for row in inputs)
    except TypeError:
        raise VstError(f"network inputs must be lists of layer indices, got {inputs!r}") from None
    if len(inputs) != n:
        raise VstError(f"network inputs: {len(inputs)} entries for {n} layers")
    for i, (row, arity) in enumerate(zip(inputs, arities)):
        if len(row) != arity:
            raise VstError(f"layer {i} takes {arity} input(s), got {len(row)}")
        for j in row:
            if not isinstance(j, int) or isinstance(j, bool) or not INPUT <= j < i:
                raise VstError(f"layer {i} reads {j!r}, which is not an earlier layer "
                               "(a cycle or a forward reference)")
    used = {j for row in inputs for j in row}
    dead = [i for i in range(n - 1) if i not in used]
    if dead:
        raise VstError(f"layer {dead[0]}'s output is never used (the network's output is "
                       "its last layer)")
    return inputs


def consumers(inputs: Inputs) -> dict[int, list[int]]:
    """For the network input and each node, the nodes that read it (in order)."""
    out: dict[int, list[int]] = {INPUT: [], **{i: [] for i in range(len(inputs))}}
    for i, row in enumerate(inputs):
        for j in row:
            if i not in out[j]:
                out[j].append(i)
    return out


def run(inputs: Inputs, first, step: Callable) -> list:
    """``out[i] = step(i, *out[inputs[i]])`` in order, ``out[INPUT] = first``;
    returns ``out`` for the nodes (shape inference and the forward pass)."""
    out: list = []
    for i, row in enumerate(inputs):
        out.append(step(i, *(first if j == INPUT else out[j] for j in row)))
    return out
