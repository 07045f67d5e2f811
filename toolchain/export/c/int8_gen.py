"""Render the int8 plan (``int8_plan.py``) as ``NAME_int8.h`` / ``NAME_int8.c``.

The kernels (``templates/int8_*.c.in``, one file per operator family) compute
what TFLite's reference int8 kernels compute: int32 sums of ``w * (x - input_zero_point)`` plus the
bias, scaled per output channel by a Q31 multiplier and a shift with gemmlowp's
rounding, plus the output zero point, clamped to the fused activation range.
They get there faster: the zero point is folded into the bias here (exact in
integers), inputs are unpacked to int16 once (im2col for convolutions), and
the MACs run in register tiles: two at a time with SMLAD on cores with the DSP
extension (family ``dsp``), one multiply-accumulate each elsewhere
(``portable``). Integer sums are exact, so every family and storage (dense,
CSR) gives the same bits, and all equal TFLite Micro's outputs.

Depthwise convolutions (dense weights: at 9 taps per output CSR does not pay)
run four channels a word at a time with SMLABB / SMLATT on DSP cores; pooling
and ADD are the same C in both families (ADD's per-input scaling is a table
of the 256 int8 values, computed here with TFLite's arithmetic).
"""

from __future__ import annotations

import numpy as np

from toolchain.errors import VstError
from toolchain.export.c.arrays import Storage, array_bytes, weights_array, float_literal
from toolchain.export.c.int8_ops import ADD_LEFT_SHIFT, QOp, add_scaled
from toolchain.export.c.plan import op_row
from toolchain.export.c.template import kernels, render
from toolchain.export.c.tflite_graph import Tensor

KERNELS = ("int8_base.c.in", "int8_conv.c.in", "int8_dwconv.c.in", "int8_pool.c.in",
           "int8_data.c.in")
FAMILIES = ("dsp", "portable")   # with the Armv7E-M DSP extension (SMLAD) or plain C
INT32_LIMIT = 2 ** 31


def operand_slots(cols: int) -> tuple[int, np.ndarray]:
    """``(kp, slot)``: a weight row of ``cols`` taps padded to ``kp`` (a multiple
    of 8: the DSP loops take two groups a pass), and the operand position of each tap in the kernels' int16 order
    (groups of four stored as t0, t2, t1, t3; see ``vst_widen``). The order swaps
    bits 0 and 1 of the position, so applying it twice is the identity.

    >>> operand_slots(6)[1].tolist()
    [0, 2, 1, 3, 4, 6, 5, 7]
    """
    kp = -(-cols // 8) * 8
    k = np.arange(kp)
    return kp, (k & ~3) | ((k & 1) << 1) | ((k >> 1) & 1)


def kernel_weights(op: QOp) -> np.ndarray:
    """The weight matrix padded to ``kp`` columns, in operand order: the layout of
    the portable dense kernels and the positions the CSR column indices name."""
    rows, cols = op.weight.shape
    kp, slot = operand_slots(cols)
    padded = np.zeros((rows, kp), dtype=np.int8)
    padded[:, :cols] = op.weight
    return padded[:, slot]


def folded_bias(op: QOp) -> np.ndarray:
    """bias + in_offset * sum(w) per row: TFLite's sum of w * (x + in_offset)
    becomes a sum of w * x with no offset per MAC (exact in integers). Every
    partial sum of the kernels must fit int32; VstError where it might not."""
    w = op.weight.astype(np.int64)
    bias = op.bias.astype(np.int64) + op.in_offset * w.sum(axis=1)
    bound = np.abs(bias) + 128 * np.abs(w).sum(axis=1)
    if np.any(bound >= INT32_LIMIT):
        raise VstError(f"tflite: {op.name} #{op.index}: int32 accumulators could overflow")
    return bias


# Weight density below which the CSR kernels beat the dense ones in *cycles*:
# benchmarks/csr_breakeven.py on the cortex-m4 cycle model (STM32L4R5, 120 MHz,
# 5 flash wait states; the default model's conv 9->17 4x4/2 and FC 833->56 with
# random unstructured masks, densities 0.1-0.7): CSR / dense cycles cross 1 at
# 0.48 (conv; 0.87 at 40%, 1.02 at 50%) and 0.21 (fc: uint16 columns, one
# loaded operand per MAC; 0.95 at 20%, 1.40 at 30%). See results/csr_breakeven.md;
# tests/test_export_c_int8.py checks these equal the benchmark's figures.
# "auto" storage takes CSR only below these densities and where it is smaller.
SPARSE_BELOW = {"conv": 0.48, "fc": 0.21}


def storages(ops: list[QOp], mode: str) -> dict[int, Storage]:
    """The weight storage of each conv / fc op, keyed by its operator index: in
    ``auto`` mode CSR where it is both smaller and (by SPARSE_BELOW) faster."""
    out = {}
    for op in ops:
        if op.kind == "dwconv":          # kh * kw taps per output: always dense
            out[op.index] = Storage.of(op.weight, "dense")
        elif op.weight is not None:
            out[op.index] = Storage.of(kernel_weights(op), mode,
                                       sparse_below=SPARSE_BELOW[op.kind])
    return out


def all_right(op: QOp, bound: np.ndarray) -> bool:
    """Whether the short requantization path of ``vst_requantize`` is exact for
    this op: every shift is a right shift by at least one bit and every
    accumulator stays below 2^30 in magnitude (``bound``: per row)."""
    return bool(np.all(op.shift <= -1) and np.all(bound < INT32_LIMIT // 2))


def _requant_defs(op: QOp, tag: str) -> tuple[list[str], int]:
    if op.kind == "dwconv":     # unfolded bias: the kernel subtracts the zero point per tap
        bias = op.bias.astype(np.int64)
        bound = np.abs(bias) + 255 * np.abs(op.weight.astype(np.int64)).sum(axis=1)
        if np.any(bound >= INT32_LIMIT):
            raise VstError(f"tflite: {op.name} #{op.index}: int32 accumulators could overflow")
    else:
        bias = folded_bias(op)
        bound = np.abs(bias) + 128 * np.abs(op.weight.astype(np.int64)).sum(axis=1)
    defs = [weights_array("int32_t", f"{tag}_b", bias),
            weights_array("int32_t", f"{tag}_mult", op.mult),
            weights_array("int8_t", f"{tag}_shift", op.shift),
            f"static const vst_requant {tag}_q = {{{-op.in_offset}, {op.out_offset}, "
            f"{op.act[0]}, {op.act[1]}, {int(all_right(op, bound))}, {tag}_mult, {tag}_shift}};"]
    size = sum(array_bytes(a, t) for a, t in
               ((bias, "int32_t"), (op.mult, "int32_t"), (op.shift, "int8_t")))
    return defs, size


def _weighted(op: QOp, storage: Storage, tag: str, family: str) -> tuple[list, list, str, int]:
    """Constant definitions, kernel sections, the call, constant bytes and the
    scratch it needs (int16 operands, int8 bytes of one border row) of one op."""
    conv = op.kind == "conv"
    kp = storage.matrix.shape[1]
    defs, size = _requant_defs(op, tag)
    sections = [("base", {}), ("requant", {}), ("widen", {})]
    sections += [("simd", {})] if family == "dsp" else []
    sections += [("geom", {}), ("im2col", {})] if conv else []
    kind = "conv" if conv else "fc"
    if storage.kind == "dense":
        # DSP kernels unpack natural-order words with SXTB16 into operand order;
        # the portable ones read the operand order directly.
        _, slot = operand_slots(kp)
        matrix = storage.matrix[:, slot] if family == "dsp" else storage.matrix
        defs.insert(0, weights_array("int8_t", f"{tag}_w", matrix))
        size += storage.bytes
        sections.append((f"{kind}_{family}", {}))
        fn, args = f"vst_{kind}_{family}", f"{tag}_w"
    else:
        defs[:0] = [weights_array("int8_t", f"{tag}_val", storage.values),
                    weights_array(storage.index_ctype, f"{tag}_pos", storage.cols),
                    weights_array(storage.row_ctype, f"{tag}_row", storage.row_ptr)]
        size += storage.bytes
        sections += [("lane_mac", {})] if conv else []
        sections.append((f"{kind}_sparse", {"itype": storage.index_ctype[:-2],
                                            "rtype": storage.row_ctype[:-2]}))
        fn, args = f"vst_{kind}_sparse_{storage.types}", f"{tag}_val, {tag}_pos, {tag}_row"
    if conv:
        defs.insert(0, f"static const vst_conv_geom {tag}_geom = "
                       f"{{{', '.join(str(v) for v in op.geom.fields())}}};")
        call = (f"{fn}(&{tag}_geom, {kp}, {args}, {tag}_b, &{tag}_q, vst_col, vst_row, "
                f"{op.src}, {op.dst});")
        scratch = ((4 if storage.kind == "sparse" else 2) * kp, op.geom.kw * op.geom.c)
    else:
        call = (f"{fn}({op.weight.shape[1]}, {kp}, {op.weight.shape[0]}, {args}, {tag}_b, "
                f"&{tag}_q, vst_col, {op.src}, {op.dst});")
        scratch = (kp, 0)
    defs.insert(0, f"/* {tag}: TFLite operator {op.index} {op.name}, {storage.describe()}, "
                   f"{family if storage.kind == 'dense' else 'sparse'} kernel */")
    return defs, sections, call, size, scratch


def _geom_def(op: QOp, tag: str) -> str:
    return (f"static const vst_conv_geom {tag}_geom = "
            f"{{{', '.join(str(v) for v in op.geom.fields())}}};")


def dw_operand_order(weights: np.ndarray) -> np.ndarray:
    """Columns (channels) of (taps, c) weights in the DSP depthwise kernel's order:
    each group of four as (c0, c2, c1, c3), the rest as they are."""
    c = weights.shape[1]
    c4 = c - c % 4
    order = np.arange(c)
    order[:c4] = (order[:c4] & ~3) | ((order[:c4] & 1) << 1) | ((order[:c4] >> 1) & 1)
    return weights[:, order]


def dw_fast_requant(op: QOp) -> tuple[np.ndarray, np.ndarray] | None:
    """(rounding constants, right shifts) of the DSP depthwise kernel's
    requantization (``vst_dw_out``), or None where it would not be exact: it needs
    every shift to be a right shift of 1 to 22 bits, doubled accumulators below
    2^31 and the rounding constant plus the high product inside int32."""
    right = -op.shift.astype(np.int64)
    bound = np.abs(op.bias.astype(np.int64)) + 255 * np.abs(op.weight.astype(np.int64)).sum(1)
    if np.any(right < 1) or np.any(right > 22) or np.any(bound >= INT32_LIMIT // 2):
        return None
    rounding = (np.int64(1) << (right - 1)) + op.out_offset * (np.int64(1) << right)
    if np.any(np.abs(rounding) >= INT32_LIMIT // 2):
        return None
    return rounding, right


def _dwconv(op: QOp, tag: str, family: str) -> tuple[list, list, str, int]:
    """Depthwise convolution. DSP cores with multiplier 1: doubled int16 weights in
    operand order and the zero-point-carrying rounding (``dw_fast_requant``); else
    the portable kernel: int8 weights w[ky][kx][oc] (TFLite's layout)."""
    weights = np.ascontiguousarray(op.weight.T)          # (kh * kw, oc)
    fast = dw_fast_requant(op) if family == "dsp" and op.geom.oc == op.geom.c else None
    head = (f"/* {tag}: TFLite operator {op.index} {op.name}, {weights.shape[0]} taps x "
            f"{weights.shape[1]} channels, dense, {'dsp' if fast else 'portable'} kernel */")
    sections = [("base", {}), ("requant", {}), ("geom", {}), ("dwconv", {})]
    if fast is None:
        defs, size = _requant_defs(op, tag)
        defs[:0] = [head, _geom_def(op, tag), weights_array("int8_t", f"{tag}_w", weights)]
        size += array_bytes(weights, "int8_t")
        sections.append(("dwconv_portable", {}))
        call = (f"vst_dwconv_portable(&{tag}_geom, {tag}_w, {tag}_b, &{tag}_q, {op.src}, "
                f"{op.dst});")
        return defs, sections, call, size
    rounding, right = fast
    arrays = [("int16_t", f"{tag}_w2", 2 * dw_operand_order(weights.astype(np.int64))),
              ("int32_t", f"{tag}_b2", 2 * op.bias.astype(np.int64)),
              ("int32_t", f"{tag}_mult", op.mult), ("int32_t", f"{tag}_round", rounding),
              ("int8_t", f"{tag}_right", right)]
    defs = [head, _geom_def(op, tag)] + [weights_array(t, n, v) for t, n, v in arrays]
    defs.append(f"static const vst_dw_requant {tag}_q = {{{-op.in_offset}, {op.act[0]}, "
                f"{op.act[1]}, {tag}_mult, {tag}_round, {tag}_right}};")
    sections += [("simd", {}), ("dwconv_dsp", {})]
    call = f"vst_dwconv_dsp(&{tag}_geom, {tag}_w2, {tag}_b2, &{tag}_q, {op.src}, {op.dst});"
    return defs, sections, call, sum(array_bytes(v, t) for t, _, v in arrays)


def add_tables(op: QOp) -> tuple[list, int]:
    """The two input tables of the ADD kernel (None where the input is linear: its
    multiplier is exactly 1/2, the input of the larger scale) and the largest
    magnitude a scaled input takes (the kernel needs sums below 2^30)."""
    values = np.arange(-128, 128)
    tables, top = [], 0
    for which in (0, 1):
        scaled = add_scaled(op, values, which)
        top += int(np.abs(scaled).max())
        linear = np.array_equal(scaled, (values + op.params[3 * which]) << (ADD_LEFT_SHIFT - 1))
        tables.append(None if linear else scaled)
    return tables, top


def _add(op: QOp, tag: str) -> tuple[list, list, str, int]:
    tables, top = add_tables(op)
    if top >= INT32_LIMIT // 2:
        raise VstError(f"tflite: {op.name} #{op.index}: the scaled sum could reach 2^30")
    defs = [f"/* operator {op.index}: {op.name} */"]
    size, refs = 0, []
    for i, table in enumerate(tables):
        if table is None:
            refs.append("NULL")
        else:
            defs.append(weights_array("int32_t", f"{tag}_t{i + 1}", table))
            size += array_bytes(table, "int32_t")
            refs.append(f"{tag}_t{i + 1} + 128")
    off1, _, _, off2, _, _, mult, shift = op.params
    defs.append(f"static const vst_add_params {tag}_add = {{{refs[0]}, {refs[1]}, {off1}, "
                f"{off2}, {mult}, {-shift}, {op.out_offset}, {op.act[0]}, {op.act[1]}}};")
    call = f"vst_add({op.n_out}, &{tag}_add, {op.srcs[0]}, {op.srcs[1]}, {op.dst});"
    return defs, [("base", {}), ("requant", {}), ("add", {})], call, size


def _pool(op: QOp, tag: str) -> tuple[list, list, str, int]:
    defs = [f"/* operator {op.index}: {op.name} */", _geom_def(op, tag)]
    sections = [("base", {}), ("requant", {}), ("geom", {}), ("window", {}), (op.kind, {})]
    call = f"vst_{op.kind}(&{tag}_geom, {op.act[0]}, {op.act[1]}, {op.src}, {op.dst});"
    return defs, sections, call, 0


def _data_op(op: QOp, tag: str) -> tuple[list[str], list, str, int]:
    if op.kind == "add":
        return _add(op, tag)
    if op.kind in ("avgpool", "maxpool"):
        return _pool(op, tag)
    if op.kind == "copy":
        return [], [("fill", {}), ("copy", {})], f"vst_copy({op.n_out}, {op.src}, {op.dst});", 0
    defs = [f"/* operator {op.index}: {op.name} */", weights_array("int", f"{tag}_p", op.params)]
    size = array_bytes(op.params, "int32_t")
    if op.kind == "pad":
        return (defs, [("fill", {}), ("pad", {})],
                f"vst_pad({tag}_p, {op.pad_value}, {op.src}, {op.dst});", size)
    return defs, [("transpose", {})], f"vst_transpose({tag}_p, {op.src}, {op.dst});", size


def render_int8(ops: list[QOp], activations: int, stores: dict[int, Storage],
                io: tuple[Tensor, Tensor], *, banner: str, name: str,
                input_layout: str, family: str = "dsp",
                layers: list[int] | None = None) -> dict:
    """``{"h": text, "c": text, "arena_bytes": n, "activation_bytes": n,
    "weight_bytes": n}``: ``activations`` is the planned arena of the
    intermediate tensors (``int8_plan``); the arena adds the int16 operand
    scratch. ``family`` is the dense kernel family (``FAMILIES``); ``layers``:
    the layer-list index of each weighted layer, in order, for a chain (names
    the constants as the float code does)."""
    if family not in FAMILIES:
        raise VstError(f"unknown int8 kernel family {family!r}; choose {', '.join(FAMILIES)}")
    defs, sections, calls, weight_bytes, scratch, row = [], [], [], 0, 0, 0
    weighted = [op for op in ops if op.weight is not None]
    # the k-th conv / fc op is the k-th weighted layer of the layer list: its
    # constants are named after that layer (l5_w), as in the float code
    layer_tags = ({id(op): f"l{i}" for op, i in zip(weighted, layers)}
                  if layers is not None and len(layers) == len(weighted) else {})
    for k, op in enumerate(ops):
        tag = layer_tags.get(id(op), f"op{op.index}")
        if op.kind == "dwconv":
            d, s, call, size = _dwconv(op, tag, family)
        elif op.weight is not None:
            d, s, call, size, (need, need_row) = _weighted(op, stores[op.index], tag, family)
            scratch, row = max(scratch, need), max(row, need_row)
        else:
            d, s, call, size = _data_op(op, tag)
        defs += d
        sections += s
        calls.append(f"    {call}\n    VST_MARK({k});")
        weight_bytes += size
    buffers = [f"static int8_t vst_arena[{activations}] VST_ALIGN(4) VST_ARENA_ATTR;  "
               "/* the activations, placed by liveness */"] if activations else []
    if scratch:
        buffers.append(f"static int16_t vst_col[{scratch}] VST_ALIGN(4) VST_ARENA_ATTR;  "
                       "/* int16 operands (im2col) */")
    if row:
        buffers.append(f"static int8_t vst_row[{row}] VST_ALIGN(4) VST_ARENA_ATTR;  "
                       "/* one kernel row at the border */")
    arena = activations + 2 * scratch + row
    x, y = io
    values = dict(banner=banner, name=name, NAME=name.upper(), input_size=x.size,
                  output_size=y.size, input_layout=input_layout,
                  input_scale=float_literal(x.scale), input_zero_point=x.zero_point,
                  output_scale=float_literal(y.scale), output_zero_point=y.zero_point,
                  arena_bytes=arena, weight_bytes=weight_bytes)
    return {"h": render("int8.h.in", **values),
            "c": render("int8.c.in", **values,
                        kernels=kernels(KERNELS, [("base", {})] + sections),
                        constants="\n".join(defs), buffers="\n".join(buffers),
                        calls="\n".join(calls)),
            "arena_bytes": arena, "activation_bytes": activations,
            "weight_bytes": weight_bytes}


def op_table(ops: list[QOp], stores: dict[int, Storage]) -> list[dict]:
    """Per kernel call, in call order (the index ``VST_MARK`` reports)."""
    return [op_row(k, f"{op.index}:{op.name}", op.kind, op.weight, op.geom,
                   stores[op.index].kind if op.weight is not None else None)
            for k, op in enumerate(ops)]


def storage_table(ops: list[QOp], stores: dict[int, Storage]) -> list[dict]:
    """Per conv / fc op: storage kind, dense vs sparse bytes, nnz."""
    return [stores[op.index].table_row(f"{op.index}:{op.name}")
            for op in ops if op.weight is not None]
