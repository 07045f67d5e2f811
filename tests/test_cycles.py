"""The cycle model (``toolchain.cycles``): instruction counts against QEMU's,
hand-counted micro-benchmarks against the TRM table, monotonicity, and the
target's ``[clock]`` facts.

Micro-benchmarks are inline-asm loops in a firmware's model function, run at
two lengths: the difference is exactly (n2 - n1) iterations, so the harness's
constant cost (counter reads, calls, cold flash lines) cancels, and the
per-iteration cycles must equal the sum the table gives.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from conftest import require_tools
from helpers import assert_one_line
from test_firmware import ARM_TOOLS, loop_body, write_body_model, write_tiny_model

from toolchain.bench import bench_model
from toolchain.cycles import run_model
from toolchain.cycles.table import load_table
from toolchain.errors import VstError
from toolchain.firmware import build_firmware
from toolchain.targets import load_target

M4 = load_table("cortex-m4")
C = M4.cost
TAKEN = C["branch"] + M4.branch_refill          # bne taken: 1 + P
LOOP = C["alu"] + TAKEN                          # subs + bne


def _asm_loop(body: str, setup: str = "", clobbers: str = "") -> str:
    """A C body: ``setup``, then ``n`` iterations of ``body`` + subs/bne;
    %0 is the counter, %1 points at a 4-word buffer in RAM (buf[0] = buf)."""
    clob = "".join(f', "{r}"' for r in clobbers.split()) if clobbers else ""
    return (f"    volatile uint32_t buf[4] = {{0u, 1u, 2u, 3u}};\n"
            f"    uint32_t n = N_ITER;\n    buf[0] = (uint32_t)buf;\n{setup}"
            f'    __asm__ volatile("1:\\n\\t{body}\\n\\tsubs %0, %0, #1\\n\\tbne 1b"'
            f' : "+r"(n) : "r"(buf) : "cc", "memory"{clob});')


# name -> (loop body, per-iteration cycles from the table)
MICRO = {
    "taken branch loop": ("nop", C["alu"] + LOOP),
    "load/use chain (dependent address)": (
        "ldr r2, [%1]\\n\\tldr r3, [r2, #4]", C["load"] + C["load"] + LOOP),
    "independent loads (pipelined)": (
        "ldr r2, [%1]\\n\\tldr r3, [%1, #4]", (C["load"] - 1) + C["load"] + LOOP),
    "SMLAD x4": ("smlad r2, r3, r4, r2\\n\\tsmlad r2, r3, r4, r2\\n\\t"
                 "smlad r2, r3, r4, r2\\n\\tsmlad r2, r3, r4, r2", 4 * C["dsp_mul"] + LOOP),
    "LDM/STM of 4": ("ldm %1, {r2, r3, r4, r5}\\n\\tstm %1, {r2, r3, r4, r5}",
                     2 * (C["multiple"] + 4) + LOOP),
}


def _cycles(tmp_path: Path, target, body: str, iterations: int) -> dict:
    c_dir = tmp_path / f"c{iterations}"
    golden = write_body_model(c_dir, f"#define N_ITER {iterations}u\n" + body)
    r = bench_model(c_dir, "m", target, tmp_path / f"fw{iterations}", variants=("float",),
                    host_outputs=golden, timeout=20)
    return r["float"]


@pytest.mark.parametrize("name", list(MICRO))
def test_micro_benchmarks_match_the_table(name, tmp_path):
    require_tools(*ARM_TOOLS)
    body, per_iteration = MICRO[name]
    target = load_target("cortex-m4")
    code = _asm_loop(body, clobbers="r2 r3 r4 r5")
    small, big = (_cycles(tmp_path, target, code, n) for n in (100, 300))
    assert big["cycles_per_inference"] - small["cycles_per_inference"] == 200 * per_iteration
    instructions = len(body.split("\\n\\t")) + 2
    assert (big["instructions_per_inference_model"] - small["instructions_per_inference_model"]
            == 200 * instructions)


def test_calibration_loop_costs_the_table_arithmetic(tmp_path):
    """The firmware's own calibration loop: 500,000 x (subs + taken bne), the last
    bne not taken, plus the two counter reads' few cycles."""
    require_tools(*ARM_TOOLS)
    r = _cycles(tmp_path, load_target("cortex-m4"), loop_body(10), 10)
    expected = 500_000 * LOOP - M4.branch_refill
    assert expected <= r["calibration_cycles"] <= expected + 60


@pytest.mark.parametrize("target_name", ["cortex-m4", "cortex-m33"])
def test_instruction_count_agrees_with_qemu(target_name, tmp_path):
    """The model runs the same program: its exact count is within one SysTick
    tick of QEMU's -icount count, and exact on a loop of known length."""
    require_tools(*ARM_TOOLS)
    target = load_target(target_name)
    tick = round(1e9 / target.cpu_hz)
    counts = {}
    for n in (1000, 26000):
        r = _cycles(tmp_path, target, loop_body(n), n)
        counts[n] = r["instructions_per_inference_model"]
        assert abs(counts[n] - r["instructions_per_inference"]) <= tick
    assert counts[26000] - counts[1000] == 2 * 25000


@pytest.mark.parametrize("target_name", ["cortex-m4", "cortex-m3", "cortex-m7"])
def test_tiny_model_cycles_positive_monotone_and_beside_qemu(target_name, tmp_path):
    require_tools(*ARM_TOOLS)
    target = load_target(target_name)
    tick = round(1e9 / target.cpu_hz)
    cycles = {}
    for n_in in (8, 32):
        c_dir = tmp_path / f"c{n_in}"
        golden = write_tiny_model(c_dir, n_in=n_in)
        r = bench_model(c_dir, "tiny", target, tmp_path / f"b{n_in}", host_outputs=golden,
                        timeout=20)
        for variant in ("float", "int8"):
            v = r[variant]
            assert v["cycles_per_inference"] > 0 and v["ms_per_inference"] > 0
            assert abs(v["instructions_per_inference_model"]
                       - v["instructions_per_inference"]) <= tick
            seconds = v["cycles_per_inference"] / (target.clock.mhz * 1e6)
            assert v["ms_per_inference"] == pytest.approx(seconds * 1e3, rel=2e-3)   # the mean, before rounding
            assert v["uj_per_inference"] == pytest.approx(seconds * target.clock.watts * 1e6,
                                                          rel=2e-3)
            assert v["cycle_model"]["seconds"] < 30
            cycles[n_in, variant] = v["cycles_per_inference"]
    for variant in ("float", "int8"):
        assert cycles[32, variant] > cycles[8, variant]      # 4x the MACs costs more


def test_wait_states_cost_cycles(tmp_path):
    """Flash wait states only add: the same ELF on the same core without a [clock]."""
    require_tools(*ARM_TOOLS)
    c_dir = tmp_path / "c"
    write_tiny_model(c_dir)
    target = load_target("cortex-m3")             # no flash cache: every line fetch waits
    fw = build_firmware(c_dir, "tiny", target, tmp_path / "fw", variant="int8")
    slow = run_model(fw.elf, target)
    fast = run_model(fw.elf, dataclasses.replace(target, clock=None))
    assert slow.instructions == fast.instructions
    assert slow.cycles > fast.cycles


CLOCK = ('part = "P"\nmhz = 120\nflash_wait_states = 5\nflash_line_bytes = 8\n'
         'icache_bytes = 1024\ndcache_bytes = 256\nrun_ua_per_mhz = 110\nsupply_v = 3.3\n'
         'source = "datasheet"\n')


@pytest.mark.parametrize("edit,needle", [
    (lambda s: s.replace("mhz = 120\n", ""), "[clock] missing key 'mhz'"),
    (lambda s: s.replace("mhz = 120", "mhz = 0"), "clock.mhz must be"),
    (lambda s: s.replace("mhz = 120", "mhz = 1e6"), "clock.mhz must be"),
    (lambda s: s.replace("run_ua_per_mhz = 110", "run_ua_per_mhz = -3"),
     "clock.run_ua_per_mhz must be"),
    (lambda s: s.replace("run_ua_per_mhz = 110\n", ""), "missing key 'run_ua_per_mhz'"),
    (lambda s: s.replace("supply_v = 3.3", "supply_v = 230"), "clock.supply_v must be"),
    (lambda s: s.replace("flash_wait_states = 5", "flash_wait_states = 2.5"),
     "clock.flash_wait_states must be"),
    (lambda s: s.replace('part = "P"\n', ""), "missing key 'part'")],
    ids=["no mhz", "zero mhz", "absurd mhz", "negative current", "no current",
         "mains supply", "fractional wait states", "no part"])
def test_bad_clock_sections_are_one_line_errors(edit, needle, tmp_path):
    text = (Path(__file__).resolve().parent.parent / "targets/cortex-m4.toml").read_text()
    head = text[:text.index("[clock]")]
    path = tmp_path / "t.toml"
    path.write_text(head + "[clock]\n" + edit(CLOCK))
    with pytest.raises(VstError) as exc:
        load_target(str(path))
    assert needle in str(exc.value) and "\n" not in str(exc.value)
    path.write_text(head + "[clock]\n" + CLOCK)
    assert load_target(str(path)).clock.mhz == 120


def test_bad_clock_section_from_the_cli(tmp_path):
    import subprocess
    import sys
    text = (Path(__file__).resolve().parent.parent / "targets/cortex-m4.toml").read_text()
    path = tmp_path / "t.toml"
    path.write_text(text.replace("run_ua_per_mhz = 110", "run_ua_per_mhz = 0"))
    (tmp_path / "b" / "export" / "c").mkdir(parents=True)
    res = subprocess.run([sys.executable, "-m", "toolchain", "bench", str(tmp_path / "b"),
                          "--target", str(path)], capture_output=True, text=True)
    assert_one_line(res.returncode, res.stderr, 2, "clock.run_ua_per_mhz must be")


def test_every_shipped_cortex_target_has_a_clock_and_table():
    from toolchain.cycles import core_of
    from toolchain.targets import list_targets
    for target in list_targets():
        if not target.is_host:
            assert target.clock is not None and target.clock.watts > 0
            assert load_table(core_of(target)).cost["load"] >= 1
    with pytest.raises(VstError, match="no cycle table"):
        load_table("cortex-z9")


def test_profile_splits_the_cycles_by_cause(tmp_path):
    """``run_model(profile=True)``: the inference's cycles by cause follow the
    table. 200 more iterations of nop + subs + taken bne add exactly 200 x 2 ALU
    cycles, 200 branch cycles and 200 x P of branch refill, and nothing else;
    the causes add up to the inference's cycles (the counter-read blocks are
    counted whole, so within a few cycles)."""
    from toolchain.bench import parse_output
    from toolchain.cycles import model_firmware

    require_tools(*ARM_TOOLS)
    target = load_target("cortex-m4")
    parts = {}
    for n in (100, 300):
        c_dir = tmp_path / f"c{n}"
        write_body_model(c_dir, f"#define N_ITER {n}u\n" + _asm_loop("nop"))
        fw = build_firmware(c_dir, "m", target, tmp_path / f"fw{n}", variant="float")
        em = run_model(fw.elf, target, profile=True)
        numbers = model_firmware(em, parse_output(em.text), target)
        parts[n] = numbers["breakdown"]
        assert abs(sum(parts[n].values()) - numbers["cycles_per_inference"]) <= 16
    diff = {k: parts[300].get(k, 0) - parts[100].get(k, 0) for k in parts[300] | parts[100]}
    assert {k: v for k, v in diff.items() if v} == {
        "alu": 200 * 2 * C["alu"], "branch": 200 * C["branch"],
        "branch_refill": 200 * M4.branch_refill}


def test_profile_counts_flash_waits_only_with_wait_states(tmp_path):
    """Data and fetch wait states appear in the profile on a part with wait
    states and vanish without a [clock]; the instruction classes do not change."""
    from toolchain.bench import parse_output
    from toolchain.cycles import model_firmware

    require_tools(*ARM_TOOLS)
    c_dir = tmp_path / "c"
    write_tiny_model(c_dir)
    target = load_target("cortex-m3")
    fw = build_firmware(c_dir, "tiny", target, tmp_path / "fw", variant="int8")
    out = {}
    for label, tgt in (("slow", target), ("fast", dataclasses.replace(target, clock=None))):
        em = run_model(fw.elf, tgt, profile=True)
        out[label] = model_firmware(em, parse_output(em.text), tgt)["breakdown"]
    waits = ("data_wait", "fetch_wait")
    assert sum(out["slow"].get(k, 0) for k in waits) > 0
    assert not any(k in out["fast"] for k in waits)
    assert ({k: v for k, v in out["slow"].items() if k not in waits}
            == {k: v for k, v in out["fast"].items() if k not in waits})
