"""Run the firmware in QEMU (or natively for the host target) and measure it.

The firmware (``firmware_templates/main.c``) prints ``VST ...`` lines over
semihosting; this module parses them and compares the outputs with the
golden outputs. What is measured, per variant (float, int8):

- instructions per inference: QEMU models no cycles, but under
  ``-icount shift=0`` every instruction advances virtual time by 1 ns, so
  SysTick on the board's clock counts one tick per ``1e9 / cpu_hz``
  instructions (40 on the 25 MHz mps2 boards, 50 on the 20 MHz an505).
  Exact to one tick, and including the ~20 instructions of the two counter
  reads. Each run first times a loop of known length and checks the constant.
  These are *instructions*, not cycles.
- flash and RAM of the size probe (startup + model + buffers; see
  ``firmware.py``), with RAM = data + bss + the peak stack painted-and-measured
  during inference.
- parity with the golden outputs and top-1 agreement;
- instructions per operator: the self-test's model is compiled with
  ``-DVST_PROFILE`` and reads the counter after every kernel call (``VST
  marks``); each mark adds about 20 instructions to the inference's count.
- cycles (``toolchain.cycles``): the same ELF run on the core's cycle model,
  per inference and per operator, with cycles per MAC, milliseconds at the
  target's ``[clock]`` and microjoules; ``instructions_per_inference_model``
  is the model's exact instruction count, to compare with QEMU's.

``bench_build(BUILD_DIR, target)`` is the stage's entry for ``vst bench`` and
``vst build`` (the C of ``BUILD_DIR/export/c`` into ``BUILD_DIR/bench/TARGET``).

>>> result = bench_model("build/c", "mnist", load_target("cortex-m4"), "build/fw")  # doctest: +SKIP
>>> result["float"]["instructions_per_inference"], result["int8"]["fits"]  # doctest: +SKIP
(412360, True)
"""

from __future__ import annotations

import json
import re
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from toolchain.atomic import write_text
from toolchain.errors import VstError
from toolchain.firmware import FirmwareBuild, build_firmware, require_tool
from toolchain.targets import Target

ICOUNT_SHIFT = 0          # 2**shift ns of virtual time per instruction
STACK_MARGIN = 1024       # main's own frame sits in the reserved stack, above the paint
COUNTER_NOTE = ("instructions (QEMU -icount shift=0, counted with SysTick, exact to one "
                "tick); not cycles")


@dataclass
class QemuRun:
    """What one firmware run printed (QEMU, or the native host program).

    >>> run = parse_output("VST begin m float 1 2 1\\nVST out 0 3f800000\\nVST done\\n")
    >>> run.outputs.tolist()
    [[1.0]]
    """

    variant: str
    outputs: np.ndarray                   # (golden count, output size)
    ticks: list[int] = field(default_factory=list)
    stack: list[int] = field(default_factory=list)
    marks: list[list[int]] = field(default_factory=list)  # per run: ticks at each op's end
    calib: tuple[int, int] = (0, 0)       # (instructions, ticks) of the known loop
    out_qparams: tuple[float, int] | None = None   # int8: output scale, zero point
    log: str = ""
    seconds: float = 0.0


def _hex_floats(tokens: list[str]) -> np.ndarray:
    return np.array([int(t, 16) for t in tokens], dtype=np.uint32).view(np.float32)


def _outputs(variant: str, rows: list[list[str]], out_size: int) -> np.ndarray:
    flat = [value for row in rows for value in row]
    if variant == "int8":
        values = np.array([int(v) for v in flat], dtype=np.int64).astype(np.int8)
        return values.reshape(-1, out_size)
    return _hex_floats(flat).reshape(-1, out_size)


def parse_output(text: str) -> QemuRun:
    """Parse the ``VST ...`` lines of a run; VstError if they are incomplete."""
    facts: dict[str, list[list[str]]] = {}
    for line in text.splitlines():
        if line.startswith("VST "):
            fields = line.split()
            facts.setdefault(fields[1], []).append(fields[2:])
    if "begin" not in facts or "done" not in facts:
        errors = [" ".join(f) for f in facts.get("error", [])] or ["no 'VST done' line"]
        raise VstError(f"firmware run incomplete: {errors[0]}; output ends: {_tail(text)}")
    _, variant, count, _, out_size = facts["begin"][0]
    count, out_size = int(count), int(out_size)
    rows = {int(f[0]): f[1:] for f in facts.get("out", [])}
    if sorted(rows) != list(range(count)) or any(len(r) != out_size for r in rows.values()):
        raise VstError(f"firmware printed {len(rows)} of {count} outputs; "
                       f"output ends: {_tail(text)}")
    qparams = None
    if variant == "int8":
        scale, zero_point = facts["qparams"][0]
        qparams = (float(_hex_floats([scale])[0]), int(zero_point))
    calib = facts.get("calib", [["0", "0"]])[0]
    return QemuRun(variant=variant, outputs=_outputs(variant, [rows[i] for i in range(count)],
                                                     out_size),
                   ticks=[int(f[1]) for f in facts.get("ticks", [])],
                   stack=[int(f[1]) for f in facts.get("stack", [])],
                   marks=[[int(v) for v in f[1:]] for f in facts.get("marks", [])],
                   calib=(int(calib[0]), int(calib[1])), out_qparams=qparams, log=text)


def _tail(text: str, n: int = 3) -> str:
    lines = [ln for ln in text.strip().splitlines() if ln.strip()]
    return " | ".join(lines[-n:]) if lines else "(nothing)"


def _run(argv: list[str], what: str, timeout: float) -> QemuRun:
    start = time.perf_counter()
    try:
        proc = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True,
                              text=True, errors="replace", timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        out = exc.stdout.decode(errors="replace") if isinstance(exc.stdout, bytes) else exc.stdout
        raise VstError(f"{what} timed out after {timeout:g} s; output ends: {_tail(out or '')}") \
            from None
    text = proc.stdout + proc.stderr
    if proc.returncode != 0:
        raise VstError(f"{what} exited with status {proc.returncode}; output ends: {_tail(text)}")
    run = parse_output(text)
    run.seconds = time.perf_counter() - start
    return run


def qemu_command(elf: Path, target: Target) -> list[str]:
    return [require_tool("qemu-system-arm"), "-M", target.qemu_machine, "-nographic",
            "-semihosting-config", "enable=on,target=native",
            "-icount", f"shift={ICOUNT_SHIFT}", "-kernel", str(elf)]


def run_qemu(elf, target: Target, *, timeout: float = 60) -> QemuRun:
    """Run a firmware ELF on the target's QEMU machine and parse what it printed."""
    if target.is_host:
        raise VstError(f"target {target.name} has no QEMU machine; run it natively")
    return _run(qemu_command(Path(elf), target), f"QEMU ({target.qemu_machine}) running {elf}",
                timeout)


def run_native(exe, *, timeout: float = 60) -> QemuRun:
    """Run the host build of the firmware (parity only: no counter, no stack)."""
    return _run([str(exe)], f"host program {exe}", timeout)


def instructions_per_tick(target: Target) -> int:
    """Instructions per SysTick tick under -icount: 1e9 ns/s / 2**shift / clock."""
    return round(1e9 / (1 << ICOUNT_SHIFT) / target.cpu_hz)


def check_calibration(run: QemuRun, target: Target) -> float:
    """Instructions per tick measured on the known loop; VstError if it
    contradicts the target's clock (then every count would be wrong)."""
    instructions, ticks = run.calib
    if ticks <= 0:
        raise VstError("firmware did not time its calibration loop")
    measured, expected = instructions / ticks, instructions_per_tick(target)
    if abs(measured - expected) > 0.01 * expected:
        raise VstError(f"instruction counter: measured {measured:.2f} instructions per tick on "
                       f"{target.qemu_machine}, target {target.name} (cpu_hz={target.cpu_hz}) "
                       f"implies {expected}; fix cpu_hz in its TOML")
    return measured


_ARRAY = r"\b{}\s*(?:\[[^\]]*\]\s*)+=\s*\{{(.*?)\}}\s*;"


def _parse_number(token: str) -> float:
    token = re.sub(r"^\(\s*[A-Za-z_][\w\s]*\)", "", token.strip()).rstrip("fFlLuU")
    try:
        return float.fromhex(token) if "x" in token.lower() else float(token)
    except ValueError:
        raise VstError(f"golden header: cannot read number {token!r}") from None


def read_golden(c_dir, name: str) -> dict[str, np.ndarray]:
    """The golden outputs of ``NAME_golden.h``: ``float`` (count, out), ``label``
    (count,) and, when present, ``int8`` (count, out) quantized outputs."""
    path = Path(c_dir) / f"{name}_golden.h"
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise VstError(f"golden header: {exc}") from None
    text = re.sub(r"/\*.*?\*/|//[^\n]*", "", text, flags=re.S)
    count = re.search(rf"#define\s+VST_{name.upper()}_GOLDEN_COUNT\s+\(?(\d+)", text)
    if count is None:
        raise VstError(f"{path}: no VST_{name.upper()}_GOLDEN_COUNT")
    golden = {}
    for key, array, dtype in (("float", "golden_out", np.float32), ("label", "golden_label", int),
                              ("int8", "golden_out_q", np.int8)):
        match = re.search(_ARRAY.format(f"vst_{name}_{array}"), text, flags=re.S)
        if match is None:
            continue
        tokens = [t for t in re.split(r"[{},]", match.group(1)) if t.strip()]
        values = np.array([_parse_number(t) for t in tokens]).astype(dtype)
        golden[key] = values.reshape(int(count.group(1)), -1) if key != "label" else values
    if "float" not in golden:
        raise VstError(f"{path}: no vst_{name}_golden_out array")
    return golden


def read_ops(c_dir, name: str) -> dict[str, list[dict]]:
    """The per-operator tables of ``NAME_ops.json`` ({} when absent: older exports)."""
    path = Path(c_dir) / f"{name}_ops.json"
    if not path.is_file():
        return {}
    try:
        ops = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise VstError(f"{path}: {exc}") from None
    if not isinstance(ops, dict):
        raise VstError(f"{path}: expected an object of per-variant operator lists")
    return ops


def _argmax_agreement(outputs: np.ndarray, reference: np.ndarray) -> float:
    if len(reference) == 0:
        return 1.0
    return float(np.mean(np.argmax(outputs, axis=1) == np.argmax(reference, axis=1)))


def _parity(run: QemuRun, golden: dict[str, np.ndarray]) -> dict:
    """Float: outputs vs golden float outputs. int8: dequantized outputs vs the
    golden float outputs, and the raw int8 outputs vs the golden int8 ones."""
    reference = np.asarray(golden["float"], np.float64)
    values = run.outputs.astype(np.float64)
    result = {}
    if run.variant == "int8":
        scale, zero_point = run.out_qparams
        values = (values - zero_point) * scale
        if "int8" in golden:
            diff = np.abs(run.outputs.astype(int) - np.asarray(golden["int8"], int))
            result["int8_max_abs_diff_q"] = int(diff.max()) if diff.size else 0
    if values.shape != reference.shape:
        raise VstError(f"firmware outputs have shape {values.shape}, golden {reference.shape}")
    diff = np.abs(values - reference)
    result["parity_max_abs_diff"] = float(diff.max()) if diff.size else 0.0
    result["top1_agreement"] = _argmax_agreement(values, reference)
    return result


def _fits(flash: int | None, ram: int | None, target: Target) -> bool:
    flash_ok = target.flash_budget == 0 or (flash is not None and flash <= target.flash_budget)
    ram_ok = target.ram_budget == 0 or (ram is not None and ram <= target.ram_budget)
    return flash_ok and ram_ok


def per_operator(run: QemuRun, ipt: int, ops: list[dict] | None) -> list[dict]:
    """Instructions of each operator (mean over the golden runs), from the marks
    the profiled model sets after every kernel call, joined with the generator's
    per-operator table (``NAME_ops.json``: name, kind, MACs, storage)."""
    runs = [m for m in run.marks if m]
    if not runs or any(len(m) != len(runs[0]) for m in runs):
        return []
    ends = np.mean(np.array(runs, dtype=np.float64), axis=0)
    spans = np.diff(np.concatenate([[0.0], ends])) * ipt
    rows = []
    for k, instructions in enumerate(spans):
        row = dict(ops[k]) if ops and k < len(ops) else {"op": k}
        row["instructions"] = round(float(instructions))
        if row.get("macs"):
            row["instructions_per_mac"] = float(instructions) / row["macs"]
        rows.append(row)
    return rows


def measure(fw: FirmwareBuild, run: QemuRun, golden: dict[str, np.ndarray],
            ops: list[dict] | None = None) -> dict:
    """One variant's numbers (sizes in bytes, counts in instructions)."""
    target = fw.target
    result = {"variant": fw.variant, "golden_count": len(run.outputs), "elf": str(fw.elf),
              **_parity(run, golden)}
    if target.is_host:
        return {**result, "flash_bytes": None, "ram_bytes": None, "stack_bytes": None,
                "instructions_per_inference": None, "fits": _fits(None, None, target)}
    ipt = instructions_per_tick(target)
    measured_ipt = check_calibration(run, target)
    stack = max(run.stack, default=0)
    if stack > fw.stack_reserved - STACK_MARGIN:
        raise VstError(f"stack overflow: inference used {stack} of the {fw.stack_reserved} bytes "
                       f"of stack reserved; rebuild with a larger stack_size")
    flash, ram = fw.model_sizes.flash, fw.model_sizes.static_ram + stack
    counts = [t * ipt for t in run.ticks] or [0]
    return {
        **result,
        "flash_bytes": flash, "ram_bytes": ram, "stack_bytes": stack,
        "stack_static_bytes": fw.stack_static_bytes,
        "sizes": {"text": fw.model_sizes.text, "rodata": fw.model_sizes.rodata,
                  "data": fw.model_sizes.data, "bss": fw.model_sizes.bss},
        "firmware_flash_bytes": fw.sizes.flash,
        "firmware_ram_bytes": fw.sizes.static_ram + stack,
        "instructions_per_inference": round(float(np.mean(counts))),
        "instructions_per_inference_max": int(max(counts)),
        "instructions_per_tick": ipt, "instructions_per_tick_measured": measured_ipt,
        "layers": per_operator(run, ipt, ops),
        "counter": COUNTER_NOTE,
        "flash_budget": target.flash_budget, "ram_budget": target.ram_budget,
        "fits": _fits(flash, ram, target),
    }


def cycle_keys(elf, target: Target, ops: list[dict] | None, layers: list[dict]) -> dict:
    """The cycle model's keys for one variant of ``bench.json``; each of the
    instruction ``layers`` rows gains its cycles (the same operators, in order)."""
    from toolchain.cycles import model_firmware, run_model

    em = run_model(elf, target)
    numbers = model_firmware(em, parse_output(em.text), target, ops)
    macs = sum(op.get("macs") or 0 for op in ops or [])
    numbers["cycles_per_mac"] = numbers["cycles_per_inference"] / macs if macs else None
    cycle_rows = numbers.pop("layers")
    if len(cycle_rows) == len(layers):
        for row, cyc in zip(layers, cycle_rows):
            row.update({k: v for k, v in cyc.items() if k in ("cycles", "cycles_per_mac",
                                                              "ms", "uj")})
    return numbers


def bench_model(c_dir, name: str, target: Target, out_dir, *,
                variants: tuple[str, ...] = ("float", "int8"),
                host_outputs: dict | None = None, opt: str = "-O2",
                timeout: float = 60, cycles: bool = True) -> dict:
    """Build, run and measure each variant; write ``out_dir/bench.json``.

    ``cycles``: also run the cycle model (Cortex-M targets).

    ``host_outputs``: the reference outputs (``float``: (count, out) float
    outputs of the golden inputs; optionally ``int8``: the quantized ones);
    default: read from ``NAME_golden.h``.
    """
    out_dir = Path(out_dir)
    golden = host_outputs if host_outputs is not None else read_golden(c_dir, name)
    if "float" not in golden:
        raise VstError("host_outputs needs the 'float' reference outputs")
    results = {"target": target.name, "model": name}
    ops = read_ops(c_dir, name)
    for variant in variants:
        fw = build_firmware(c_dir, name, target, out_dir / variant, variant=variant, opt=opt)
        run = run_native(fw.elf, timeout=timeout) if target.is_host else \
            run_qemu(fw.elf, target, timeout=timeout)
        write_text(out_dir / variant / "run.log", run.log)
        results[variant] = measure(fw, run, golden, ops.get(variant))
        if cycles and not target.is_host:
            results[variant].update(cycle_keys(fw.elf, target, ops.get(variant),
                                               results[variant]["layers"]))
    write_text(out_dir / "bench.json", json.dumps(results, indent=2) + "\n")
    return results


def bench_dir(build_dir, target: Target) -> Path:
    """Where a build folder's bench of ``target`` goes: ``BUILD_DIR/bench/TARGET``."""
    return Path(build_dir) / "bench" / target.name


def bench_build(build_dir, target: Target, name: str = "model") -> dict:
    """The bench stage (``vst bench`` and ``vst build``): the generated C of a build
    folder (``BUILD_DIR/export/c``) built, run and measured into ``bench_dir``
    (``bench.json``). No generated C there is a one-line ``VstError``."""
    c_dir = Path(build_dir) / "export" / "c"
    if not (c_dir / f"{name}.h").is_file():
        raise VstError(f"no generated C in {c_dir} (run `vst build` or `vst export` first)")
    return bench_model(c_dir, name, target, bench_dir(build_dir, target))
