"""Render the float32 plan (``plan.py``) as ``NAME.h`` / ``NAME.c``.

Per op the generator writes its constants (dense or CSR weights, bias,
geometry) and one kernel call; the kernels come from
``templates/float_kernels.c.in``, only those the model calls.

Dense and sparse storage give equal outputs: both kernels start from the bias
and add the nonzero terms in the same order (input channel, then kernel row,
then kernel column; input feature order for a Linear). A zero weight adds an
exact zero, so results compare equal for finite inputs (at most the sign of
an exact 0.0 can differ). Against PyTorch the order of the sums differs, so
outputs agree to float rounding (about 1e-6 relative), not bit for bit.
"""

from __future__ import annotations

from toolchain.export.c.arrays import Storage, array_bytes, c_array
from toolchain.export.c.plan import FloatOp, op_row
from toolchain.export.c.template import kernels, render

KERNELS = "float_kernels.c.in"


def _weights(op: FloatOp, tag: str, storage: Storage) -> tuple[list[str], list[str], str, int]:
    """Constant definitions, kernel sections, the weight arguments of the call, bytes."""
    conv = op.kind == "conv"
    if storage.kind == "dense":
        defs = [c_array("float", f"{tag}_w", storage.matrix)]
        return defs, [("conv_dense" if conv else "dense_dense", {})], f"{tag}_w", storage.bytes
    itype = storage.index_ctype[:-2]
    defs = [c_array("float", f"{tag}_val", storage.values),
            c_array(storage.index_ctype, f"{tag}_col", storage.cols),
            c_array(storage.index_ctype, f"{tag}_row", storage.row_ptr)]
    section = ("conv_sparse" if conv else "dense_sparse", {"itype": itype})
    size = (array_bytes(storage.values, "float")
            + array_bytes(storage.cols, storage.index_ctype)
            + array_bytes(storage.row_ptr, storage.index_ctype))
    return defs, [section], f"{tag}_val, {tag}_col, {tag}_row", size


def _weighted(op: FloatOp, storage: Storage) -> tuple[list[str], list, str, int]:
    tag = f"l{op.layer}"
    defs, sections, args, size = _weights(op, tag, storage)
    defs.append(c_array("float", f"{tag}_b", op.bias))
    size += array_bytes(op.bias, "float")
    suffix = "dense" if storage.kind == "dense" else f"sparse_{storage.index_ctype[:-2]}"
    tail = f"{tag}_b, {int(op.relu)}, {op.src}, {op.dst}"
    if op.kind == "conv":
        sections.insert(0, ("common", {}))
        geom = ", ".join(str(v) for v in op.geom.fields())
        defs.insert(0, f"static const vst_conv_geom {tag}_geom = {{{geom}}};")
        call = f"vst_conv_{suffix}(&{tag}_geom, {args}, {tail});"
    else:
        dims = f"{op.n_in}, {op.n_out}" if storage.kind == "dense" else f"{op.n_out}"
        call = f"vst_dense_{suffix}({dims}, {args}, {tail});"
    defs.insert(0, f"/* layer {op.layer}: {op.kind}{' + ReLU' if op.relu else ''}, "
                   f"{storage.describe()} */")
    return defs, sections, call, size


def _elementwise(op: FloatOp) -> tuple[list[str], list, str, int]:
    if op.kind == "normalize":
        tag = f"l{op.layer}"
        defs = [c_array("float", f"{tag}_mean", op.mean), c_array("float", f"{tag}_std", op.std)]
        plane = op.n_in // len(op.mean)
        call = (f"vst_normalize({len(op.mean)}, {plane}, {tag}_mean, {tag}_std, "
                f"{op.src}, {op.dst});")
        return defs, [("normalize", {})], call, 2 * array_bytes(op.mean, "float")
    return [], [(op.kind, {})], f"vst_{op.kind}({op.n_in}, {op.src}, {op.dst});", 0


def storages(ops: list[FloatOp], mode: str) -> dict[int, Storage]:
    """The weight storage of each weighted op, keyed by layer index."""
    return {op.layer: Storage.of(op.weight, mode) for op in ops if op.weight is not None}


def render_float(ops: list[FloatOp], sizes: dict[str, int], stores: dict[int, Storage], *,
                 banner: str, name: str, input_size: int, input_layout: str) -> dict:
    """``{"h": text, "c": text, "arena_bytes": n, "weight_bytes": n}``."""
    defs, sections, calls, weight_bytes = [], [], [], 0
    for k, op in enumerate(ops):
        if op.weight is not None:
            d, s, call, size = _weighted(op, stores[op.layer])
        else:
            d, s, call, size = _elementwise(op)
        defs += d
        sections += s
        calls.append(f"    {call}\n    VST_MARK({k});")
        weight_bytes += size
    buffers = [f"static float {buf}[{n}];" for buf, n in sizes.items() if n > 0]
    arena = 4 * sum(sizes.values())
    values = dict(banner=banner, name=name, NAME=name.upper(), input_size=input_size,
                  output_size=ops[-1].n_out, input_layout=input_layout,
                  arena_bytes=arena, weight_bytes=weight_bytes)
    header = render("float.h.in", **values)
    source = render("float.c.in", **values, kernels=kernels(KERNELS, sections),
                    constants="\n".join(defs), buffers="\n".join(buffers),
                    calls="\n".join(calls))
    return {"h": header, "c": source, "arena_bytes": arena, "weight_bytes": weight_bytes}


def op_table(ops: list[FloatOp], stores: dict[int, Storage]) -> list[dict]:
    """Per kernel call, in call order (the index ``VST_MARK`` reports)."""
    return [op_row(k, f"{op.layer}:{op.kind}", op.kind, op.weight, op.geom,
                   stores[op.layer].kind if op.weight is not None else None)
            for k, op in enumerate(ops)]


def storage_table(ops: list[FloatOp], stores: dict[int, Storage]) -> list[dict]:
    """Per weighted layer: storage kind, dense vs sparse bytes, nnz."""
    return [stores[op.layer].table_row(f"{op.layer}:{op.kind}")
            for op in ops if op.weight is not None]
