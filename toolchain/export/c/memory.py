"""The static memory plan of a generated inference: activations in one arena, by liveness.

Every op of a plan (float or int8) reads some tensors and writes one. The
network input and output are the caller's buffers; every other tensor gets an
offset in one static arena, live from the op that writes it to the last op
that reads it. Two tensors live at the same time never share bytes; a
residual block's shortcut stays live across the block's body. Placement is
greedy by size (as TFLite Micro's GreedyMemoryPlanner): the largest tensor
first, each at the lowest offset where it overlaps no tensor placed before it
that is live at the same time. The order matters (a shortcut placed late can
force a gap), so several orders are tried (by size, by first use, by lifetime,
by size x lifetime, and a few seeded shuffles) and the smallest arena kept;
the search stops early at the lower bound, the largest sum of sizes live at
one op.

A chain ``conv (784) -> conv (392) -> fc (16) -> fc (10, output)``:

>>> bufs = [Buffer("a", 784, 0, 1), Buffer("b", 392, 1, 2), Buffer("c", 16, 2, 3)]
>>> place(bufs), [(b.name, b.offset) for b in bufs]
(1176, [('a', 0), ('b', 784), ('c', 0)])
>>> lower_bound(bufs)
1176

A residual block: x is read by the body's first conv (op 1) and by the Add (op 3):

>>> bufs = [Buffer("x", 64, 0, 3), Buffer("h", 64, 1, 2), Buffer("y", 64, 2, 3)]
>>> place(bufs), sorted(b.offset for b in bufs)
(192, [0, 64, 128])
"""

from __future__ import annotations

import random
from dataclasses import dataclass

INPUT, OUTPUT = "input", "output"
SHUFFLES = 64        # seeded random orders tried after the heuristic ones
ORDERS = (lambda b: (-b.size, b.first), lambda b: (b.first, -b.size),
          lambda b: (b.first - b.last, -b.size), lambda b: (-(b.last - b.first + 1) * b.size,))


@dataclass
class Buffer:
    """A tensor in the arena: ``size`` units, written by op ``first``, last read by op ``last``."""

    name: str
    size: int
    first: int
    last: int
    offset: int = -1

    def live_with(self, other: "Buffer") -> bool:
        return self.first <= other.last and other.first <= self.last

    def overlaps(self, other: "Buffer") -> bool:
        return self.offset < other.offset + other.size and other.offset < self.offset + self.size


def _first_fit(order: list[Buffer], align: int) -> int:
    """Place in this order, each at the lowest free offset; the arena size."""
    placed: list[Buffer] = []
    for buf in order:
        offset = 0
        for other in sorted((p for p in placed if p.live_with(buf)), key=lambda p: p.offset):
            if offset + buf.size <= other.offset:
                break
            end = other.offset + other.size
            offset = max(offset, -(-end // align) * align)
        buf.offset = offset
        placed.append(buf)
    return max((b.offset + b.size for b in order), default=0)


def lower_bound(buffers: list[Buffer]) -> int:
    """No placement is smaller than the largest total size live at one op."""
    ops = {k for b in buffers for k in (b.first, b.last)}
    return max((sum(b.size for b in buffers if b.first <= k <= b.last) for k in ops), default=0)


def place(buffers: list[Buffer], align: int = 1) -> int:
    """Set every buffer's ``offset`` (a multiple of ``align``); returns the arena size."""
    floor = lower_bound(buffers)
    orders = [sorted(buffers, key=key) for key in ORDERS]
    rng = random.Random(0)
    for _ in range(SHUFFLES if len(buffers) > 2 else 0):
        orders.append(rng.sample(buffers, len(buffers)))
    best, offsets = None, {}
    for order in orders:
        total = _first_fit(order, align)
        if best is None or total < best:
            best, offsets = total, {id(b): b.offset for b in buffers}
            if total <= floor:
                break
    for buf in buffers:
        buf.offset = offsets.get(id(buf), 0)
    return best or 0


def conflicts(buffers: list[Buffer]) -> list[tuple[str, str]]:
    """Pairs of buffers live at the same time whose bytes overlap (none, if placed)."""
    return [(a.name, b.name) for i, a in enumerate(buffers) for b in buffers[i + 1:]
            if a.size and b.size and a.live_with(b) and a.overlaps(b)]


def plan_arena(ops, sizes: dict, *, output, align: int = 1, arena: str = "vst_arena") -> int:
    """Place the tensors of ``ops`` (each with ``reads``, a list of tensor keys,
    and ``writes``, one key) and set each op's ``srcs`` (C expressions) and
    ``dst``: ``input`` for the network input ``INPUT``, ``output`` for the
    tensor ``output``, ``arena + offset`` for the rest. ``sizes``: the size of
    each written tensor. Returns the arena size (0: no arena)."""
    last: dict = {}
    for k, op in enumerate(ops):
        for key in op.reads:
            last[key] = k
    buffers = {}
    for k, op in enumerate(ops):
        if op.writes != output:
            buffers[op.writes] = Buffer(str(op.writes), sizes[op.writes], k,
                                        last.get(op.writes, k))
    total = place(list(buffers.values()), align)

    def expr(key) -> str:
        if key == INPUT:
            return "input"
        if key == output:
            return "output"
        return f"{arena} + {buffers[key].offset}"
    for op in ops:
        op.srcs = [expr(key) for key in op.reads]
        op.dst = expr(op.writes)
    return total
