"""Render the float32 plan (``plan.py``) as ``NAME.h`` / ``NAME.c``.

Per op the generator writes its constants (dense or CSR weights, bias,
geometry) and one kernel call; the kernels come from
``templates/float_kernels.c.in``, only those the model calls.

The kernels are output-stationary: every output is accumulated in a register
from its bias and stored once, with the ReLU applied at the store.

- Convolution: per block of ``PIX`` output pixels, an im2col copies each
  pixel's receptive field into a static scratch (``patch``, counted in the
  arena) in weight-row order (input channel, kernel row, kernel column), 0 on
  the padding. The im2col is generated per layer with its geometry as
  constants, so interior pixels copy whole kernel rows without bounds checks.
  Dense weights then run in register tiles of 4 channels x 4 pixels (each
  weight loaded serves four MACs, each input four); CSR weights keep four
  accumulators per channel and index the patch with their column directly.
- Fully connected: 8 (then 4) outputs at a time, so each input loaded serves
  eight weights; CSR: one accumulator per output over its nonzeros.
- Depthwise convolution (dense: kh * kw taps per output), pooling, global
  average pooling and Add: direct loops over the taps inside the image
  (``templates/float_graph_kernels.c.in``), the ReLU fused at the store of a
  depthwise convolution or an Add.

Where the target has a fused multiply-add (``__ARM_FEATURE_FMA``: Cortex-M4,
M7, M33) each MAC is ``fmaf`` (one ``vfma.f32``, rounded once); elsewhere
(M3's soft float, the host) it is ``w * x + acc``. Tiny example, one output
with weights (0.5, 0, 2), inputs (x0, x1, x2) and bias b::

    dense:  acc = b; acc = mac(0.5, x0, acc); acc = mac(0, x1, acc); acc = mac(2, x2, acc)
    sparse: acc = b; acc = mac(0.5, x0, acc);                        acc = mac(2, x2, acc)

``mac(0, x, acc)`` is exactly ``acc`` for finite x (fused or not: 0 * x is
an exact zero), and so is a padded tap ``mac(w, 0, acc)``, so dense and sparse
storage give bit-identical outputs (at most the sign of an exact 0.0 can
differ). Against PyTorch the order of the sums and the rounding differ, so
outputs agree to float rounding (about 1e-6 relative), not bit for bit.
"""

from __future__ import annotations

from toolchain.export.c.arrays import Storage, array_bytes, weights_array
from toolchain.export.c.plan import ConvGeom, FloatOp, op_row
from toolchain.export.c.template import kernels, render

KERNELS = ("float_kernels.c.in", "float_graph_kernels.c.in")
PIX = 4     # output pixels per im2col block: VST_PIX, the width of the kernels' tiles


def _weights(op: FloatOp, tag: str, storage: Storage) -> tuple[list[str], list[str], str, int]:
    """Constant definitions, kernel sections, the weight arguments of the call, bytes."""
    conv = op.kind == "conv"
    if storage.kind == "dense":
        defs = [weights_array("float", f"{tag}_w", storage.matrix)]
        return defs, [("conv_dense" if conv else "dense_dense", {})], f"{tag}_w", storage.bytes
    defs = [weights_array("float", f"{tag}_val", storage.values),
            weights_array(storage.index_ctype, f"{tag}_col", storage.cols),
            weights_array(storage.row_ctype, f"{tag}_row", storage.row_ptr)]
    section = ("conv_sparse" if conv else "dense_sparse",
               {"itype": storage.index_ctype[:-2], "rtype": storage.row_ctype[:-2]})
    size = (array_bytes(storage.values, "float")
            + array_bytes(storage.cols, storage.index_ctype)
            + array_bytes(storage.row_ptr, storage.row_ctype))
    return defs, [section], f"{tag}_val, {tag}_col, {tag}_row", size


def _im2col(tag: str, g: ConvGeom) -> tuple[str, dict]:
    """The im2col section of one convolution, its geometry as constants."""
    return "im2col", {"tag": tag, "c": g.c, "h": g.h, "w": g.w, "kh": g.kh, "kw": g.kw,
                      "sh": g.sh, "sw": g.sw, "ph": g.ph, "pw": g.pw, "ow": g.ow}


def _weighted(op: FloatOp, storage: Storage) -> tuple[list[str], list, str, int]:
    tag = f"l{op.layer}"
    defs, sections, args, size = _weights(op, tag, storage)
    defs.append(weights_array("float", f"{tag}_b", op.bias))
    size += array_bytes(op.bias, "float")
    suffix = "dense" if storage.kind == "dense" else f"sparse_{storage.types}"
    tail = f"{tag}_b, {int(op.relu)}, {op.src}, {op.dst}"
    sections.insert(0, ("mac", {}))
    if op.kind == "conv":
        g = op.geom
        sections[1:1] = [("conv", {}), _im2col(tag, g)]
        defs.insert(0, f"static const vst_conv {tag}_conv = "
                       f"{{{op.weight.shape[1]}, {g.oc}, {g.oh * g.ow}, vst_im2col_{tag}}};")
        call = f"vst_conv_{suffix}(&{tag}_conv, {args}, {tail}, patch);"
    else:
        dims = f"{op.n_in}, {op.n_out}" if storage.kind == "dense" else f"{op.n_out}"
        call = f"vst_dense_{suffix}({dims}, {args}, {tail});"
    defs.insert(0, f"/* layer {op.layer}: {op.kind}{' + ReLU' if op.relu else ''}, "
                   f"{storage.describe()} */")
    return defs, sections, call, size


def _geom_def(op: FloatOp, tag: str) -> str:
    return f"static const vst_geom {tag}_geom = {{{', '.join(map(str, op.geom.fields()))}}};"


def _dwconv(op: FloatOp) -> tuple[list[str], list, str, int]:
    tag = f"l{op.layer}"
    defs = [f"/* layer {op.layer}: depthwise conv{' + ReLU' if op.relu else ''}, "
            f"{op.weight.shape[0]}x{op.weight.shape[1]} weights, dense */", _geom_def(op, tag),
            weights_array("float", f"{tag}_w", op.weight),
            weights_array("float", f"{tag}_b", op.bias)]
    call = (f"vst_dwconv(&{tag}_geom, {tag}_w, {tag}_b, {int(op.relu)}, {op.src}, "
            f"{op.dst});")
    size = array_bytes(op.weight, "float") + array_bytes(op.bias, "float")
    return defs, [("mac", {}), ("geom", {}), ("dwconv", {})], call, size


def _elementwise(op: FloatOp) -> tuple[list[str], list, str, int]:
    tag = f"l{op.layer}"
    if op.kind == "normalize":
        defs = [weights_array("float", f"{tag}_mean", op.mean),
                weights_array("float", f"{tag}_std", op.std)]
        plane = op.n_in // len(op.mean)
        call = (f"vst_normalize({len(op.mean)}, {plane}, {tag}_mean, {tag}_std, "
                f"{op.src}, {op.dst});")
        return defs, [("normalize", {})], call, 2 * array_bytes(op.mean, "float")
    if op.kind in ("avgpool", "maxpool"):
        return ([_geom_def(op, tag)], [("geom", {}), (op.kind, {})],
                f"vst_{op.kind}(&{tag}_geom, {op.src}, {op.dst});", 0)
    if op.kind == "gap":
        return ([], [("gap", {})],
                f"vst_gap({op.n_out}, {op.n_in // op.n_out}, {op.src}, {op.dst});", 0)
    if op.kind == "add":
        return ([], [("mac", {}), ("add", {})],
                f"vst_add({op.n_out}, {int(op.relu)}, {op.srcs[0]}, {op.srcs[1]}, {op.dst});", 0)
    return [], [(op.kind, {})], f"vst_{op.kind}({op.n_in}, {op.src}, {op.dst});", 0


def patch_floats(ops: list[FloatOp]) -> int:
    """Floats of the im2col scratch: the patches of PIX pixels of the largest
    convolution (c * kh * kw floats each); 0 without convolutions."""
    return max((PIX * op.weight.shape[1] for op in ops if op.kind == "conv"), default=0)


# Weight density below which the CSR kernels beat the dense ones in *cycles*:
# benchmarks/csr_breakeven.py on the cortex-m4 cycle model (the same sweep as
# int8_gen.SPARSE_BELOW): CSR / dense cycles cross 1 at 0.62 (conv; 0.97 at
# 60%, 1.11 at 70%) and 0.46 (fully connected; 0.86 at 40%, 1.08 at 50%). The
# dense kernels multiply zero weights like any other, so below these CSR is
# the faster layout as well as the smaller one; "auto" storage takes CSR only
# where both hold.
SPARSE_BELOW = {"conv": 0.62, "dense": 0.46}


def storages(ops: list[FloatOp], mode: str) -> dict[int, Storage]:
    """The weight storage of each weighted op, keyed by layer index: in ``auto``
    mode CSR where it is both smaller and (by SPARSE_BELOW) faster; depthwise
    convolutions always dense."""
    return {op.layer: Storage.of(op.weight, "dense" if op.kind == "dwconv" else mode,
                                 sparse_below=SPARSE_BELOW.get(op.kind, 1.0))
            for op in ops if op.weight is not None}


def render_float(ops: list[FloatOp], activations: int, stores: dict[int, Storage], *,
                 banner: str, name: str, input_size: int, input_layout: str) -> dict:
    """``{"h": text, "c": text, "arena_bytes": n, "activation_bytes": n,
    "weight_bytes": n}``; ``activations``: the planned arena in floats."""
    defs, sections, calls, weight_bytes = [], [], [], 0
    for k, op in enumerate(ops):
        if op.kind == "dwconv":
            d, s, call, size = _dwconv(op)
        elif op.weight is not None:
            d, s, call, size = _weighted(op, stores[op.layer])
        else:
            d, s, call, size = _elementwise(op)
        defs += d
        sections += s
        calls.append(f"    {call}\n    VST_MARK({k});")
        weight_bytes += size
    patch = patch_floats(ops)
    buffers = [f"static float vst_arena[{activations}] VST_ALIGN(4) VST_ARENA_ATTR;  "
               "/* the activations, placed by liveness */"] if activations else []
    if patch:
        buffers.append(f"static float patch[{patch}] VST_ALIGN(4) VST_ARENA_ATTR;")
    arena = 4 * (activations + patch)
    values = dict(banner=banner, name=name, NAME=name.upper(), input_size=input_size,
                  output_size=ops[-1].n_out, input_layout=input_layout,
                  arena_bytes=arena, weight_bytes=weight_bytes)
    header = render("float.h.in", **values)
    source = render("float.c.in", **values, kernels=kernels(KERNELS, sections),
                    constants="\n".join(defs), buffers="\n".join(buffers),
                    calls="\n".join(calls))
    return {"h": header, "c": source, "arena_bytes": arena, "activation_bytes": 4 * activations,
            "weight_bytes": weight_bytes}


def op_table(ops: list[FloatOp], stores: dict[int, Storage]) -> list[dict]:
    """Per kernel call, in call order (the index ``VST_MARK`` reports)."""
    return [op_row(k, f"{op.layer}:{op.kind}", op.kind, op.weight, op.geom,
                   stores[op.layer].kind if op.weight is not None else None)
            for k, op in enumerate(ops)]


def storage_table(ops: list[FloatOp], stores: dict[int, Storage]) -> list[dict]:
    """Per weighted layer: storage kind, dense vs sparse bytes, nnz."""
    return [stores[op.layer].table_row(f"{op.layer}:{op.kind}")
            for op in ops if op.weight is not None]
