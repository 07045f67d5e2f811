"""A cycle-approximate Cortex-M model: the firmware ELF run in unicorn, each
executed instruction charged the cycles of its core's TRM table.

- ``table.py``: the per-core tables (``<core>.toml``: source, branch refill P,
  load pipelining, M7 dual issue) and the static cost of a decoded block;
- ``emulate.py``: the machine (memory map, vector table, SysTick, CPACR,
  semihosting), taken-branch refills and flash wait states at run time.

What it leaves out: caches other than the flash accelerator (``FlashModel``),
bus contention, the M4's IT folding, early-terminating divides (midpoint of
the TRM's range), skipped IT-block instructions (charged as executed), the
SysTick wrap interrupt's own cycles, load pipelining across blocks.

``model_firmware`` runs the self-test ELF; because SysTick counts the model's
cycles, the firmware's ``VST ticks``/``VST marks`` lines are cycles per
inference and per operator. ``cycle_numbers`` turns them into the bench keys:
cycles, cycles per MAC, milliseconds at the target's clock and microjoules
(I x V x t), with the model's exact instruction count beside them.
With ``run_model(..., profile=True)`` each operator row also gets its
``breakdown``: the cycles by cause (instruction class, ``branch_refill``,
``fetch_wait``, ``data_wait``) between its counter reads, where
``benchmarks/cycles.py`` looks for what a kernel spends its cycles on.

>>> em = run_model("build/bench/cortex-m4/int8/firmware.elf", load_target("cortex-m4"))  # doctest: +SKIP
>>> numbers = model_firmware(em, parse_output(em.text), load_target("cortex-m4"))  # doctest: +SKIP
>>> numbers["cycles_per_inference"], numbers["instructions_per_inference_model"]  # doctest: +SKIP
(402131, 258402)
"""

from __future__ import annotations

import numpy as np

from toolchain.errors import VstError

MAX_INSTRUCTIONS = 2 * 10 ** 9


def core_of(target) -> str:
    """The core named by the target's ``-mcpu=`` flag (``cortex-m4``)."""
    for flag in target.cflags:
        if flag.startswith("-mcpu="):
            return flag.split("=", 1)[1].split("+", 1)[0]
    raise VstError(f"target {target.name}: no -mcpu= flag names its core for the cycle model")


def flash_model(target):
    from toolchain.cycles.emulate import FlashModel

    clock = target.clock
    if clock is None:
        return FlashModel(0, 0, 0)
    line = clock.flash_line_bytes
    return FlashModel(target.flash_origin, target.flash_origin + target.flash_size,
                      clock.flash_wait_states, line, clock.icache_bytes // line,
                      max(1, clock.dcache_bytes // line))


def run_model(elf, target, *, max_instructions: int = MAX_INSTRUCTIONS, profile: bool = False):
    """Run an ELF on the target's core model; ``emulate.Emulation``.
    ``profile``: also record the cycles by cause at each counter read (slower),
    which ``model_firmware`` turns into each operator's ``breakdown``."""
    from toolchain.cycles.emulate import Machine
    from toolchain.cycles.table import load_table

    if target.is_host:
        raise VstError(f"target {target.name}: the cycle model runs Cortex-M firmware only")
    core = core_of(target)
    memory = (target.flash_origin, target.flash_size, target.ram_origin, target.ram_size)
    return Machine(elf, memory, load_table(core), flash_model(target), core,
                   profile=profile).run(max_instructions)


def _matching_reads(reads: list[tuple[int, int]], ticks: int, marks: list[int],
                    used: set) -> list[int] | None:
    """The indices of the counter reads whose cycles the firmware printed: the
    start, then start + each mark, then start + ticks."""
    at = {c: k for k, (c, _) in enumerate(reads)}
    for k, (start, _) in enumerate(reads):
        if start in used:
            continue
        ends = [start + m for m in marks] + [start + ticks]
        if all(e in at for e in ends):
            used.add(start)
            return [k] + [at[e] for e in ends]
    return None


def breakdown(snapshots: list[dict], first: int, last: int) -> dict[str, int]:
    """The cycles by cause between two profiled counter reads: instruction
    classes, ``branch_refill``, ``fetch_wait`` and ``data_wait`` (largest first)."""
    a, b = snapshots[first], snapshots[last]
    out = {key: round(b[key] - a.get(key, 0.0)) for key in b}
    return dict(sorted(((k, v) for k, v in out.items() if v), key=lambda kv: -kv[1]))


def model_firmware(em, run, target, ops: list[dict] | None = None) -> dict:
    """Cycles, instructions, milliseconds and microjoules of a self-test firmware:
    ``em`` its ``run_model`` emulation, ``run`` what it printed (``bench.parse_output``)."""
    if em.status != 0:
        raise VstError(f"cycle model: firmware exited with status {em.status}")
    used, counts, found = set(), [], []
    for k, ticks in enumerate(run.ticks):
        marks = run.marks[k] if k < len(run.marks) else []
        found = _matching_reads(em.reads, ticks, marks, used)
        if found is None:
            raise VstError("cycle model: the firmware's counter lines match no counter reads")
        counts.append(em.reads[found[-1]][1] - em.reads[found[0]][1])
    cycles = float(np.mean(run.ticks)) if run.ticks else 0.0
    result = {"cycles_per_inference": round(cycles),
              "cycles_per_inference_max": max(run.ticks, default=0),
              "instructions_per_inference_model": round(float(np.mean(counts or [0]))),
              "calibration_cycles": run.calib[1],
              **_time_energy(cycles, target),
              "layers": per_layer(run.marks, ops, target),
              "cycle_model": {"core": core_of(target), "seconds": round(em.seconds, 3),
                              "instructions_run": em.instructions, "cycles_run": em.cycles,
                              "part": target.clock.part if target.clock else None,
                              "mhz": target.clock.mhz if target.clock else None}}
    for k, row in enumerate(result["layers"]):
        if found and k + 2 < len(found):     # the last inference's, between its marks
            row["instructions_model"] = em.reads[found[k + 1]][1] - em.reads[found[k]][1]
            if em.snapshots:
                row["breakdown"] = breakdown(em.snapshots, found[k], found[k + 1])
    if em.snapshots and found:
        result["breakdown"] = breakdown(em.snapshots, found[0], found[-1])
    return result


def _time_energy(cycles: float, target) -> dict:
    if target.clock is None:
        return {"ms_per_inference": None, "uj_per_inference": None}
    seconds = cycles / (target.clock.mhz * 1e6)
    return {"ms_per_inference": seconds * 1e3, "uj_per_inference": seconds * target.clock.watts * 1e6}


def per_layer(marks: list[list[int]], ops: list[dict] | None, target) -> list[dict]:
    """Cycles of each operator (mean over the runs) from the cycle marks."""
    runs = [m for m in marks if m]
    if not runs or any(len(m) != len(runs[0]) for m in runs):
        return []
    ends = np.mean(np.array(runs, dtype=np.float64), axis=0)
    rows = []
    for k, cycles in enumerate(np.diff(np.concatenate([[0.0], ends]))):
        row = {"op": k, **{key: ops[k][key] for key in ("name", "kind", "macs")
                           if ops and k < len(ops) and key in ops[k]}}
        row["cycles"] = round(float(cycles))
        if row.get("macs"):
            row["cycles_per_mac"] = float(cycles) / row["macs"]
        spent = _time_energy(float(cycles), target)
        if spent["ms_per_inference"] is not None:
            row["ms"], row["uj"] = spent["ms_per_inference"], spent["uj_per_inference"]
        rows.append(row)
    return rows

