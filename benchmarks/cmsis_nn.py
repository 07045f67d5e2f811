"""A yardstick for vst's int8 C: the same layers through Arm's CMSIS-NN s8 kernels in QEMU.

The layers come from vst's own int8 plan of the .tflite file (``int8_plan``),
so both programs compute the same graph with the same constants, their
activations where vst's liveness plan puts them. Each layer becomes one
CMSIS-NN call: CONV_2D ``arm_convolve_wrapper_s8`` (scratch sized with its
``_get_buffer_size``), DEPTHWISE_CONV_2D ``arm_depthwise_conv_wrapper_s8``,
FULLY_CONNECTED ``arm_fully_connected_s8`` when all rows share one multiplier
(vst's per-tensor plan) else ``arm_fully_connected_per_channel_s8``,
AVERAGE_POOL_2D ``arm_avgpool_s8``, MAX_POOL_2D ``arm_max_pool_s8``, ADD
``arm_elementwise_add_s8``, PAD ``arm_pad_s8``, TRANSPOSE
``arm_transpose_s8``, and a model of reshapes only a plain memcpy. The harness
(``cmsis_nn/*.c.in``) prints the lines of vst's self-test, so ``toolchain.bench``
parses and times it as it times vst's firmware: SysTick under ``-icount
shift=0``, instructions (not cycles), a counter read after each layer (~20
instructions each, as vst's marks). Outputs are compared with TFLite Micro's.

CMSIS-NN is not part of vst: its sources are compiled at benchmark time from
``<repo>/../shared/third_party/CMSIS-NN`` (or ``$VST_CMSIS_NN``) with the
target's flags; without them ``run_cmsis_nn`` returns None.

    .venv/bin/python benchmarks/cmsis_nn.py build/export/model_int8.tflite \\
        --golden build/export/c/model_golden.h --target cortex-m4 --target cortex-m7

>>> res = run_cmsis_nn("m_int8.tflite", q_in, "cortex-m4", "/tmp/cm")  # doctest: +SKIP
>>> res["mismatches"], res["layers"][0]["instructions_per_mac"]  # doctest: +SKIP
(0, 1.9)
"""

from __future__ import annotations

import argparse
import json
import os
import re
import struct
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from string import Template

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
from toolchain import __version__  # noqa: E402
from toolchain.bench import (check_calibration, instructions_per_tick,  # noqa: E402
                             per_operator, read_golden, run_qemu)
from toolchain.errors import VstError  # noqa: E402
from toolchain.export.c.arrays import c_values  # noqa: E402
from toolchain.export.c.int8_ops import ADD_LEFT_SHIFT  # noqa: E402
from toolchain.export.c.int8_plan import QOp, int8_plan  # noqa: E402
from toolchain.export.c.tflite_graph import Graph, read_tflite  # noqa: E402
from toolchain.firmware import (TEMPLATES as FIRMWARE, linker_values, read_sizes,  # noqa: E402
                                require_tool)
from toolchain.targets import Target, load_target  # noqa: E402

HERE = Path(__file__).resolve().parent / "cmsis_nn"
SOURCE_DIRS = ("ConvolutionFunctions", "FullyConnectedFunctions", "NNSupportFunctions",
               "PadFunctions", "TransposeFunctions", "PoolingFunctions", "BasicMathFunctions")
PORT = ("startup_cortexm.c", "port_cortexm.c")
WARNINGS = ("-std=c99", "-Wall", "-Wextra", "-Werror")   # the harness; CMSIS-NN gets none
STACK_SIZE = 32 * 1024   # as vst's firmware: reserved, the used peak is painted and measured


def cmsis_nn_dir() -> Path:
    """Where the CMSIS-NN sources are: ``$VST_CMSIS_NN`` or beside the repository."""
    return Path(os.environ.get("VST_CMSIS_NN", REPO.parent / "shared/third_party/CMSIS-NN"))


def _fill(name: str, **values) -> str:
    return Template((HERE / name).read_text(encoding="utf-8")).substitute(values)


def _ints(values) -> str:
    return c_values(np.asarray(values, np.int64), "int", indent="    ")


def _dims(values) -> str:
    return ", ".join(str(int(v)) for v in values)


def _four(shape) -> list[int]:
    return [1] * (4 - len(shape)) + [int(s) for s in shape]


def _weights(q: QOp) -> dict:
    return dict(bias=_ints(q.bias), in_offset=q.in_offset, out_offset=q.out_offset,
                act_min=q.act[0], act_max=q.act[1], weight=_ints(q.weight),
                weight_size=q.weight.size)


def _layer_source(k: int, q: QOp, graph: Graph) -> str:
    """The C of layer ``k``: its constants, ``layer_k``, ``ready_k`` and ``run_k``,
    which calls it on the tensors of vst's plan."""
    args = ", ".join([*q.srcs, q.dst])
    return (_layer_body(k, q, graph)
            + f"static arm_cmsis_nn_status run_{k}(const int8_t *input, int8_t *output)\n"
            + f"{{\n    (void)input;\n    (void)output;\n    return layer_{k}({args});\n}}\n\n")


def _layer_body(k: int, q: QOp, graph: Graph) -> str:
    head = dict(k=k, op_name=q.name, index=q.index)
    if q.kind in ("dwconv", "avgpool", "maxpool"):
        g = q.geom
        geom = dict(c=g.c, h=g.h, w=g.w, oc=g.oc, oh=g.oh, ow=g.ow, kh=g.kh, kw=g.kw,
                    sh=g.sh, sw=g.sw, ph=g.ph, pw=g.pw)
    if q.kind == "dwconv":
        # CMSIS-NN wants TFLite's filter layout (1, kh, kw, oc); vst's rows are channels
        return _fill("dwconv.c.in", **head, **{**_weights(q), "weight": _ints(q.weight.T)},
                     mult=_ints(q.mult), shift=_ints(q.shift), ch_mult=q.geom.oc // q.geom.c,
                     **geom)
    if q.kind in ("avgpool", "maxpool"):
        avg = q.kind == "avgpool"
        return _fill("pool.c.in", **head, **geom, act_min=q.act[0], act_max=q.act[1],
                     function="arm_avgpool_s8" if avg else "arm_max_pool_s8",
                     buffer_size=f"arm_avgpool_s8_get_buffer_size({g.ow}, {g.c})" if avg
                     else "0")
    if q.kind == "add":
        off1, mult1, shift1, off2, mult2, shift2, out_mult, out_shift = q.params
        return _fill("add.c.in", **head, size=q.n_out, left_shift=ADD_LEFT_SHIFT, off1=off1,
                     mult1=mult1, shift1=shift1, off2=off2, mult2=mult2, shift2=shift2,
                     out_offset=q.out_offset, out_mult=out_mult, out_shift=out_shift,
                     act_min=q.act[0], act_max=q.act[1])
    if q.kind == "conv":
        g = q.geom
        return _fill("conv.c.in", **head, **_weights(q), mult=_ints(q.mult), shift=_ints(q.shift),
                     c=g.c, h=g.h, w=g.w, oc=g.oc, oh=g.oh, ow=g.ow, kh=g.kh, kw=g.kw,
                     sh=g.sh, sw=g.sw, ph=g.ph, pw=g.pw)
    if q.kind == "fc":
        rows, cols = q.weight.shape
        per_tensor = len(set(q.mult.tolist())) == 1 and len(set(q.shift.tolist())) == 1
        quant = (dict(mult=int(q.mult[0]), shift=int(q.shift[0])) if per_tensor
                 else dict(mult=_ints(q.mult), shift=_ints(q.shift)))
        return _fill("fc.c.in" if per_tensor else "fc_per_channel.c.in", **head, **_weights(q),
                     **quant, rows=rows, cols=cols)
    if q.kind == "pad":
        in4, pre, out4 = q.params[:4], q.params[4:8], q.params[8:]
        post = [o - i - b for o, i, b in zip(out4, in4, pre)]
        return _fill("pad.c.in", **head, in_dims=_dims(in4), out_dims=_dims(out4),
                     pre_pad=_dims(pre), post_pad=_dims(post), pad_value=q.pad_value)
    if q.kind == "transpose":
        op = graph.ops[q.index]
        perm = [int(p) for p in graph.tensor(op.inputs[1]).data.ravel()]
        lead = 4 - len(perm)
        perm4 = list(range(lead)) + [p + lead for p in perm]
        return _fill("transpose.c.in", **head, perm=_dims(perm4), out_dims=_dims(q.params[:4]),
                     in_dims=_dims(_four(graph.tensor(q.src_tensor).shape)))
    if q.kind == "copy":
        return _fill("copy.c.in", **head, size=q.n_out)
    raise VstError(f"CMSIS-NN harness: no CMSIS-NN call for a {q.kind} layer")


def _scratch_bytes(ops: list[QOp]) -> int:
    """An upper bound of every conv's im2col scratch, every depthwise conv's and
    average pooling's buffer (the harness checks each against CMSIS-NN's own)."""
    need = [4 * (q.weight.shape[1] + 15) for q in ops if q.kind == "conv"]
    need += [4 * (q.geom.kh * q.geom.kw * q.geom.c + 15) for q in ops if q.kind == "dwconv"]
    need += [4 * q.geom.c * q.geom.ow for q in ops if q.kind == "avgpool"]
    return max([4] + need)


def render_harness(graph: Graph, ops: list[QOp], y_t, q_inputs: np.ndarray, model: str,
                   arena: int) -> str:
    """The whole harness C: every layer's constants and call, the golden inputs, main;
    ``arena``: the bytes of vst's activation plan (``int8_plan``)."""
    scale_hex = struct.unpack("<I", struct.pack("<f", y_t.scale))[0]
    return _fill(
        "harness.c.in", banner=f"/* generated by vst {__version__}: CMSIS-NN benchmark. */",
        model=model, in_size=q_inputs.shape[1], out_size=ops[-1].n_out, layer_count=len(ops),
        arena_size=max(arena, 4), scratch_size=_scratch_bytes(ops),
        layers="".join(_layer_source(k, q, graph) for k, q in enumerate(ops)),
        layer_names=", ".join(f"run_{k}" for k in range(len(ops))),
        ready_names=", ".join(f"ready_{k}" for k in range(len(ops))), count=len(q_inputs),
        golden_in=",\n".join("    {\n" + c_values(row.astype(np.int64), "int", indent=" " * 8)
                             + "\n    }" for row in q_inputs),
        out_scale_hex=f"{scale_hex:08x}", out_zero_point=y_t.zero_point)


def _run(argv: list[str], cwd: Path) -> None:
    proc = subprocess.run(argv, cwd=cwd, capture_output=True, text=True)
    if proc.returncode != 0:
        lines = (proc.stderr or proc.stdout).strip().splitlines()
        errors = [ln for ln in lines if "error" in ln] or lines[-1:]
        raise VstError(f"CMSIS-NN benchmark: {' '.join(argv[:2])}... failed: "
                       f"{errors[0] if errors else 'no output'}")


def _cmsis_library(cmsis: Path, flags: list[str], obj: Path) -> Path:
    """CMSIS-NN's integer sources of SOURCE_DIRS compiled for the target, as one archive."""
    gcc, ar = require_tool("arm-none-eabi-gcc"), require_tool("arm-none-eabi-ar")
    sources = [s for d in SOURCE_DIRS for s in sorted((cmsis / "Source" / d).glob("*.c"))
               if not re.search(r"_f(16|32)\.c$", s.name)]
    obj.mkdir(parents=True, exist_ok=True)
    objects = [obj / f"{s.stem}.o" for s in sources]
    argv = [[gcc, *flags, "-I", str(cmsis / "Include"), "-c", str(s), "-o", str(o)]
            for s, o in zip(sources, objects)]
    with ThreadPoolExecutor(os.cpu_count()) as pool:
        list(pool.map(_run, argv, [obj] * len(argv)))
    lib = obj / "libcmsis_nn.a"
    lib.unlink(missing_ok=True)
    _run([ar, "rcs", str(lib), *map(str, objects)], obj)
    return lib


def build_harness(source: str, cmsis: Path, target: Target, work: Path) -> tuple[Path, Path]:
    """Compile the harness with vst's firmware port and link the benchmark and the probe ELF."""
    gcc = require_tool("arm-none-eabi-gcc")
    src = work / "src"
    src.mkdir(parents=True, exist_ok=True)
    (src / "cmsis_nn_harness.c").write_text(source, encoding="utf-8")
    for name in ("port.h", *PORT):
        (src / name).write_text((FIRMWARE / name).read_text(encoding="utf-8"), encoding="utf-8")
    linker = Template((FIRMWARE / "linker.ld.in").read_text(encoding="utf-8"))
    (src / "linker.ld").write_text(linker.substitute(linker_values(target, STACK_SIZE)),
                                   encoding="utf-8")
    flags = [*target.cflags, "-O2", "-ffunction-sections", "-fdata-sections"]
    lib = _cmsis_library(cmsis, flags, work / "cmsis_obj")
    includes = ["-I", str(src), "-I", str(cmsis / "Include")]
    elves = []
    for stem, defines in (("benchmark", []), ("probe", ["-DVST_CMSIS_PROBE"])):
        objs = []
        for name in ("cmsis_nn_harness.c", *PORT):
            objs.append(work / f"{stem}_{Path(name).stem}.o")
            _run([gcc, *flags, *WARNINGS, *defines, *includes, "-c",
                  str(src / name), "-o", str(objs[-1])], work)
        elves.append(work / f"{stem}.elf")
        _run([gcc, *flags, "-nostartfiles", "-T", str(src / "linker.ld"), "-Wl,--gc-sections",
              "-Wl,--no-warn-rwx-segments", f"-Wl,-Map={work / stem}.map", "--specs=nano.specs",
              "--specs=nosys.specs", *map(str, objs), str(lib), "-lm", "-o", str(elves[-1])], work)
    return elves[0], elves[1]


def _layer_rows(ops: list[QOp]) -> list[dict]:
    """Per layer: op index, TFLite name, kind, MACs (conv / dwconv rows*cols*oh*ow, fc
    rows*cols)."""
    rows = []
    for k, q in enumerate(ops):
        macs = 0
        if q.weight is not None:
            macs = q.weight.size * (q.geom.oh * q.geom.ow if q.geom is not None else 1)
        rows.append({"op": k, "name": f"{q.name} #{q.index}", "kind": q.kind, "macs": macs})
    return rows


def run_cmsis_nn(tflite_int8_path, q_inputs: np.ndarray, target_name: str, work_dir,
                 expected: np.ndarray | None = None, timeout: float = 120,
                 cycles: bool = False, profile: bool = False) -> dict | None:
    """Run the model's layers through CMSIS-NN on the target's QEMU machine.

    ``q_inputs`` (N, input size) int8 in the .tflite input layout; ``expected``
    (N, output size) int8, default: the TFLite Micro interpreter's outputs.
    ``cycles``: also run the same ELF on the cycle model (``toolchain.cycles``;
    ``profile``: with each layer's cycles by cause), under ``"cycles"``.
    None (with a printed line) when the CMSIS-NN sources are absent."""
    cmsis = cmsis_nn_dir()
    if not (cmsis / "Include" / "arm_nnfunctions.h").is_file():
        print(f"CMSIS-NN benchmark skipped: no CMSIS-NN sources at {cmsis} (set VST_CMSIS_NN)")
        return None
    target, work = load_target(target_name), Path(work_dir) / target_name
    if target.is_host:
        raise VstError("CMSIS-NN benchmark: needs a Cortex-M target run in QEMU")
    graph = read_tflite(tflite_int8_path)
    ops, arena, x_t, y_t = int8_plan(graph)
    q_inputs = np.asarray(q_inputs, np.int8).reshape(len(q_inputs), -1)
    if q_inputs.shape[1] != x_t.size:
        raise VstError(f"CMSIS-NN benchmark: inputs have {q_inputs.shape[1]} values, "
                       f"the model takes {x_t.size}")
    if expected is None:
        from toolchain.export.c.golden import tflm_int8_outputs
        expected = tflm_int8_outputs(graph, q_inputs.reshape(-1, *x_t.shape[1:]), (x_t, y_t))
    source = render_harness(graph, ops, y_t, q_inputs, Path(tflite_int8_path).stem, arena)
    elf, probe = build_harness(source, cmsis, target, work)
    run = run_qemu(elf, target, timeout=timeout)
    (work / "run.log").write_text(run.log, encoding="utf-8")
    check_calibration(run, target)
    ipt = instructions_per_tick(target)
    layers = per_operator(run, ipt, _layer_rows(ops))
    sizes, probe_sizes = read_sizes(elf), read_sizes(probe)
    return {
        "target": target.name, "layers": layers,
        "instructions_per_inference": round(float(np.mean(run.ticks)) * ipt),
        "outputs": run.outputs,
        "mismatches": int(np.sum(run.outputs != np.asarray(expected, np.int8).reshape(
            run.outputs.shape))),
        "flash_bytes": sizes.flash,             # the benchmark ELF, golden inputs included
        "probe_flash_bytes": probe_sizes.flash,  # like vst's probe: one inference, no printing
        # the probe's static RAM plus the peak stack painted during the benchmark's inferences
        "probe_ram_bytes": probe_sizes.static_ram + max(run.stack, default=0),
        "golden_count": len(q_inputs), "elf": str(elf),
        "cycles": cycle_numbers(elf, target, _layer_rows(ops), profile) if cycles else None,
    }


def cycle_numbers(elf, target: Target, rows: list[dict], profile: bool = False) -> dict:
    """The cycle model's numbers of a self-test or harness ELF (``model_firmware``),
    with cycles per MAC over ``rows`` (each layer's ``macs``)."""
    from toolchain.bench import parse_output
    from toolchain.cycles import model_firmware, run_model

    em = run_model(elf, target, profile=profile)
    numbers = model_firmware(em, parse_output(em.text), target, rows)
    macs = sum(r.get("macs") or 0 for r in rows)
    numbers["cycles_per_mac"] = numbers["cycles_per_inference"] / macs if macs else None
    return numbers


def read_golden_inputs(header) -> tuple[np.ndarray, np.ndarray]:
    """(quantized golden inputs, TFLM int8 outputs) of a vst ``NAME_golden.h``."""
    header = Path(header)
    name = header.name.removesuffix("_golden.h")
    text = re.sub(r"/\*.*?\*/", "", header.read_text(encoding="utf-8"), flags=re.S)
    match = re.search(rf"vst_{name}_golden_in_q\s*\[[^=]*=\s*\{{(.*?)\}}\s*;", text, flags=re.S)
    expected = read_golden(header.parent, name).get("int8")
    if match is None or expected is None:
        raise VstError(f"{header}: no int8 golden vectors (export with an int8 .tflite)")
    values = np.array([int(v) for v in re.findall(r"-?\d+", match.group(1))], np.int8)
    return values.reshape(len(expected), -1), expected


def markdown(result: dict, vst: dict | None = None) -> str:
    """The per-layer table with a total row; with ``vst`` (the int8 part of vst's
    bench.json, same model and target) vst's numbers side by side."""
    rows = [*result["layers"], {"op": "", "name": "**inference**", "kind": "",
                                "macs": sum(r["macs"] for r in result["layers"]),
                                "instructions": result["instructions_per_inference"]}]
    side = vst is not None and len(vst.get("layers", [])) == len(rows) - 1
    theirs = [r["instructions"] for r in vst["layers"]] + [vst["instructions_per_inference"]] \
        if side else []
    head = ["op", "layer", "kind", "MACs", "CMSIS-NN instr", "instr/MAC"]
    head += ["vst instr", "vst instr/MAC"] if side else []
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for k, row in enumerate(rows):
        counts = [row["instructions"], *theirs[k:k + 1]]
        cells = [row["op"], row["name"], row["kind"], f"{row['macs']:,}"]
        for n in counts:
            cells += [f"{n:,}", f"{n / row['macs']:.2f}" if row["macs"] else "-"]
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    return "\n".join(lines)


def _vst_int8(bench_files: list[str], target: str) -> dict | None:
    """The int8 results for ``target`` of the first vst bench.json that has them."""
    for path in bench_files:
        bench = json.loads(Path(path).read_text(encoding="utf-8"))
        if bench.get("target") == target and "int8" in bench:
            return bench["int8"]
    return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("tflite", help="the int8 .tflite file")
    inputs = parser.add_mutually_exclusive_group(required=True)
    inputs.add_argument("--golden", help="NAME_golden.h: its int8 inputs and TFLM outputs")
    inputs.add_argument("--npz", help=".npz with q_inputs (N, input size) int8 [and expected]")
    parser.add_argument("--target", action="append", help="target name (repeatable)")
    parser.add_argument("--work", default="build/cmsis_nn", help="build directory")
    parser.add_argument("--vst-bench", action="append", default=[],
                        help="a vst bench.json (repeatable): its int8 layers are shown "
                        "beside those of the same target")
    args = parser.parse_args(argv)
    if args.golden:
        q_inputs, expected = read_golden_inputs(args.golden)
    else:
        data = np.load(args.npz)
        q_inputs, expected = data["q_inputs"], data["expected"] if "expected" in data else None
    for target in args.target or ["cortex-m4"]:
        try:
            res = run_cmsis_nn(args.tflite, q_inputs, target, args.work, expected=expected)
        except VstError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        if res is None:
            return 0
        vst = _vst_int8(args.vst_bench, target)
        print(f"\n## CMSIS-NN on {target}: {res['instructions_per_inference']:,} instructions "
              f"per inference, {res['mismatches']} mismatching outputs of "
              f"{res['outputs'].size}, probe flash {res['probe_flash_bytes']:,} B\n")
        print(markdown(res, vst))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
