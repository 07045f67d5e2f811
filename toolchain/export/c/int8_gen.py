"""Render the int8 plan (``int8_plan.py``) as ``NAME_int8.h`` / ``NAME_int8.c``.

The kernels (``templates/int8_kernels.c.in``) follow TFLite's reference int8
kernels: int32 accumulators of ``w * (x - input_zero_point)``, plus the bias,
scaled per output channel by a Q31 multiplier and a shift with gemmlowp's
rounding, plus the output zero point, clamped to the fused activation range.
Integer sums are exact, so dense and sparse (CSR) storage give the same bits,
and both equal TFLite Micro's outputs.
"""

from __future__ import annotations

from toolchain.export.c.arrays import Storage, array_bytes, c_array, float_literal
from toolchain.export.c.int8_plan import QOp
from toolchain.export.c.template import kernels, render
from toolchain.export.c.tflite_graph import Tensor

KERNELS = "int8_kernels.c.in"


def storages(ops: list[QOp], mode: str) -> dict[int, Storage]:
    """The weight storage of each conv / fc op, keyed by its operator index."""
    return {op.index: Storage.of(op.weight, mode) for op in ops if op.weight is not None}


def _requant_defs(op: QOp, tag: str) -> tuple[list[str], int]:
    defs = [c_array("int32_t", f"{tag}_b", op.bias),
            c_array("int32_t", f"{tag}_mult", op.mult),
            c_array("int8_t", f"{tag}_shift", op.shift),
            f"static const vst_requant {tag}_q = {{{op.in_offset}, {op.out_offset}, "
            f"{op.act[0]}, {op.act[1]}, {tag}_mult, {tag}_shift}};"]
    size = sum(array_bytes(a, t) for a, t in
               ((op.bias, "int32_t"), (op.mult, "int32_t"), (op.shift, "int8_t")))
    return defs, size


def _weighted(op: QOp, storage: Storage, tag: str) -> tuple[list[str], list, str, int]:
    conv = op.kind == "conv"
    defs, size = _requant_defs(op, tag)
    sections = [("requant", {})] + ([("geom", {})] if conv else [])
    if storage.kind == "dense":
        defs.insert(0, c_array("int8_t", f"{tag}_w", storage.matrix))
        size += storage.bytes
        sections.append(("conv_dense" if conv else "fc_dense", {}))
        args = f"{tag}_w"
        fn = "vst_conv_dense" if conv else "vst_fc_dense"
    else:
        itype = storage.index_ctype[:-2]
        defs[:0] = [c_array("int8_t", f"{tag}_val", storage.values),
                    c_array(storage.index_ctype, f"{tag}_col", storage.cols),
                    c_array(storage.index_ctype, f"{tag}_row", storage.row_ptr)]
        size += (array_bytes(storage.values, "int8_t")
                 + array_bytes(storage.cols, storage.index_ctype)
                 + array_bytes(storage.row_ptr, storage.index_ctype))
        sections += [("range", {})] if conv else []
        sections.append(("conv_sparse" if conv else "fc_sparse", {"itype": itype}))
        args = f"{tag}_val, {tag}_col, {tag}_row"
        fn = f"vst_{'conv' if conv else 'fc'}_sparse_{itype}"
    if conv:
        defs.insert(0, f"static const vst_conv_geom {tag}_geom = "
                       f"{{{', '.join(str(v) for v in op.geom.fields())}}};")
        scratch = ", scratch" if storage.kind == "sparse" else ""
        call = f"{fn}(&{tag}_geom, {args}, {tag}_b, &{tag}_q{scratch}, {op.src}, {op.dst});"
    else:
        dims = f"{op.weight.shape[1]}, " if storage.kind == "dense" else ""
        call = f"{fn}({dims}{op.weight.shape[0]}, {args}, {tag}_b, &{tag}_q, {op.src}, {op.dst});"
    defs.insert(0, f"/* operator {op.index}: {op.name}, {storage.describe()} */")
    return defs, sections, call, size


def _data_op(op: QOp, tag: str) -> tuple[list[str], list, str, int]:
    if op.kind == "copy":
        return [], [("copy", {})], f"vst_copy({op.n_out}, {op.src}, {op.dst});", 0
    defs = [f"/* operator {op.index}: {op.name} */", c_array("int", f"{tag}_p", op.params)]
    size = array_bytes(op.params, "int32_t")
    if op.kind == "pad":
        return defs, [("pad", {})], f"vst_pad({tag}_p, {op.pad_value}, {op.src}, {op.dst});", size
    return defs, [("transpose", {})], f"vst_transpose({tag}_p, {op.src}, {op.dst});", size


def render_int8(ops: list[QOp], sizes: dict[str, int], stores: dict[int, Storage],
                io: tuple[Tensor, Tensor], *, banner: str, name: str,
                input_layout: str) -> dict:
    """``{"h": text, "c": text, "arena_bytes": n, "weight_bytes": n}``."""
    defs, sections, calls, weight_bytes, scratch = [], [], [], 0, 0
    for op in ops:
        tag = f"op{op.index}"
        if op.weight is not None:
            d, s, call, size = _weighted(op, stores[op.index], tag)
            if op.kind == "conv" and stores[op.index].kind == "sparse":
                scratch = max(scratch, op.geom.oh * op.geom.ow)
        else:
            d, s, call, size = _data_op(op, tag)
        defs += d
        sections += s
        calls.append(f"    {call}")
        weight_bytes += size
    buffers = [f"static int8_t {buf}[{n}];" for buf, n in sizes.items() if n > 0]
    if scratch:
        buffers.append(f"static int32_t scratch[{scratch}];  /* one sparse conv output channel */")
    arena = sum(sizes.values()) + 4 * scratch
    x, y = io
    values = dict(banner=banner, name=name, NAME=name.upper(), input_size=x.size,
                  output_size=y.size, input_layout=input_layout,
                  input_scale=float_literal(x.scale), input_zero_point=x.zero_point,
                  output_scale=float_literal(y.scale), output_zero_point=y.zero_point,
                  arena_bytes=arena, weight_bytes=weight_bytes)
    return {"h": render("int8.h.in", **values),
            "c": render("int8.c.in", **values, kernels=kernels(KERNELS, sections),
                        constants="\n".join(defs), buffers="\n".join(buffers),
                        calls="\n".join(calls)),
            "arena_bytes": arena, "weight_bytes": weight_bytes}


def storage_table(ops: list[QOp], stores: dict[int, Storage]) -> list[dict]:
    """Per conv / fc op: storage kind, dense vs sparse bytes, nnz."""
    return [stores[op.index].table_row(f"{op.index}:{op.name}")
            for op in ops if op.weight is not None]
