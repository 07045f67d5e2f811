"""The int8 C plan: a .tflite graph turned into kernel calls with TFLite's numbers.

``int8_ops`` turns each operator into a ``QOp`` with the constants TFLite
Micro's reference kernels compute (multipliers, shifts, clamps, padding).
Here the graph is walked: tensors are channels-last as in the .tflite file;
the ops run in the file's order (a topological order of the graph); reshapes
are free (they rename a tensor). Each op reads tensors and writes one, and
``memory.plan_arena`` gives every intermediate tensor its place in one arena
by liveness (the network input and output are the caller's buffers), so a
residual block's shortcut stays where it is while the block's body runs.

A PAD that pads height and width with the input zero point and feeds one
CONV_2D / DEPTHWISE_CONV_2D (VALID) is folded into that convolution's
padding: the kernels pad with the zero point too (TFLite's sum over a padded
tap is then exactly 0), so the padded copy is neither computed nor stored.

>>> ops, arena, x_t, y_t = int8_plan(read_tflite("model_int8.tflite"))  # doctest: +SKIP
>>> [(op.kind, op.srcs, op.dst) for op in ops][:2]                     # doctest: +SKIP
[('conv', ['input'], 'vst_arena + 0'), ('conv', ['vst_arena + 0'], 'vst_arena + 4096')]
"""

from __future__ import annotations

from toolchain.errors import VstError
from toolchain.export.c.int8_ops import (BUILDERS, QOp, _same_quant,  # noqa: F401 (re-exported)
                                         quantize_multiplier, tflite_round)
from toolchain.export.c.memory import INPUT, plan_arena
from toolchain.export.c.plan import ConvGeom
from toolchain.export.c.tflite_graph import ALIAS_OPS, FLOAT32, INT8, Graph, Tensor

ARENA_ALIGN = 4       # every tensor starts on a word: the kernels load words


def _edges(graph: Graph) -> tuple[int, int, set[int]]:
    """The int8 tensors the C function reads and writes, and the edge ops to skip."""
    if len(graph.inputs) != 1 or len(graph.outputs) != 1:
        raise VstError("tflite: the C generator needs one input and one output tensor")
    io_in, io_out, skip = graph.inputs[0], graph.outputs[0], set()
    for k, op in enumerate(graph.ops):
        if op.name == "QUANTIZE" and op.inputs[0] == io_in and graph.tensor(io_in).dtype == FLOAT32:
            io_in = op.outputs[0]
            skip.add(k)
        elif op.name == "DEQUANTIZE" and op.outputs[0] == io_out:
            io_out = op.inputs[0]
            skip.add(k)
        elif op.name in ("QUANTIZE", "DEQUANTIZE"):
            raise VstError(f"tflite: {op.name} #{k} inside the graph is not supported")
    for t in (io_in, io_out):
        if graph.tensor(t).dtype != INT8:
            raise VstError(f"tflite: model input/output {graph.tensor(t).name!r} is not int8")
    return io_in, io_out, skip


def _foldable(pad: QOp, user: QOp) -> bool:
    in4, before, out4 = pad.params[:4], pad.params[4:8], pad.params[8:]
    return (user.kind in ("conv", "dwconv") and user.geom.ph == user.geom.pw == 0
            and before[0] == before[3] == 0 and in4[0] == out4[0] and in4[3] == out4[3]
            and pad.pad_value == -user.in_offset)


def fold_pads(ops: list[QOp], out_key) -> list[QOp]:
    """The ops without the PADs folded into the (depthwise) convolution that reads them."""
    readers: dict = {}
    for op in ops:
        for key in op.reads:
            readers.setdefault(key, []).append(op)
    keep = []
    for op in ops:
        users = readers.get(op.writes, [])
        if op.kind == "pad" and op.writes != out_key and len(users) == 1 \
                and _foldable(op, users[0]):
            user, g, in4, before = users[0], users[0].geom, op.params[:4], op.params[4:8]
            user.geom = ConvGeom(g.c, in4[1], in4[2], g.oc, g.oh, g.ow, g.kh, g.kw, g.sh, g.sw,
                                 before[1], before[2])
            user.reads = [op.reads[0] if key == op.writes else key for key in user.reads]
            continue
        keep.append(op)
    return keep


def int8_plan(graph: Graph) -> tuple[list[QOp], int, Tensor, Tensor]:
    """The ops (with ``srcs`` / ``dst`` placed), the arena bytes, the C input and
    output tensors."""
    for k, op in enumerate(graph.ops):
        if op.name not in BUILDERS and op.name not in ALIAS_OPS + ("QUANTIZE", "DEQUANTIZE"):
            raise VstError(f"tflite: operator {op.name} #{k} is not supported by the C "
                           "generator yet")
    io_in, io_out, skip = _edges(graph)
    alias = {io_in: INPUT}
    resolve = lambda t: alias.get(t, t)  # noqa: E731
    ops, written = [], {INPUT}
    for k, op in enumerate(graph.ops):
        if k in skip:
            continue
        if op.name in ALIAS_OPS:
            _same_quant(graph.tensor(op.inputs[0]), graph.tensor(op.outputs[0]), op, k)
            alias[op.outputs[0]] = resolve(op.inputs[0])
            continue
        qop = BUILDERS[op.name](graph, op, k)
        qop.reads = [resolve(t) for t in op.inputs[:qop.arity]]
        missing = [t for t in qop.reads if t not in written]
        if missing:
            raise VstError(f"tflite: operator {op.name} #{k} reads tensor "
                           f"{graph.tensor(missing[0]).name!r}, which no earlier operator "
                           "writes (a constant or an unknown input)")
        qop.writes = op.outputs[0]
        written.add(qop.writes)
        ops.append(qop)
    out_key = resolve(io_out)
    ops = fold_pads(ops, out_key)
    if out_key == INPUT:            # nothing but reshapes: the output is a copy of the input
        ops.append(QOp("copy", -1, "COPY", io_in, io_out, graph.tensor(io_in).size,
                       reads=[INPUT], writes=io_out))
        out_key = io_out
    elif out_key not in written:
        raise VstError("tflite: no operator writes the model output")
    sizes = {op.writes: graph.tensor(op.writes).size for op in ops}
    arena = plan_arena(ops, sizes, output=out_key, align=ARENA_ALIGN)
    return ops, arena, graph.tensor(io_in), graph.tensor(io_out)
