"""Firmware build, QEMU run and measurement, on a hand-made model in C.

The model follows the generated model API (``NAME.h/.c``, ``NAME_int8.h/.c``,
``NAME_golden.h``): one fully connected layer with fixed weights, whose
golden outputs are computed here with the exact arithmetic of the C loops,
so the firmware must reproduce them bit for bit on every target.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
from conftest import require_tools

from toolchain.bench import bench_model, measure, read_golden, run_qemu
from toolchain.errors import VstError
from toolchain.firmware import build_firmware
from toolchain.targets import load_target

ARM_TOOLS = ("arm-none-eabi-gcc", "arm-none-eabi-size", "qemu-system-arm")
TARGETS = ("cortex-m4", "cortex-m3", "cortex-m7", "cortex-m33")
SHIFT = 24   # fixed-point shift of the int8 requantization multiplier


# ------------------------------------------------------ a hand-made model

def _c_init(values, fmt) -> str:
    """A C initializer with one brace level per inner dimension."""
    values = np.asarray(values)
    if values.ndim == 1:
        return ", ".join(fmt(v) for v in values)
    return ", ".join("{" + _c_init(row, fmt) + "}" for row in values)


def _hexf(values) -> str:
    return _c_init(np.asarray(values, np.float32), lambda v: float(v).hex() + "f")


def _decf(values) -> str:
    return _c_init(np.asarray(values, np.float32), lambda v: f"{float(v):.9e}f")


def _ints(values) -> str:
    return _c_init(values, lambda v: str(int(v)))


def _linear_f32(w, b, x):
    """The C loop's float32 arithmetic: bias, then one rounded product and sum at a time."""
    out = np.empty((len(x), len(w)), np.float32)
    for s, o in np.ndindex(out.shape):
        acc = np.float32(b[o])
        for i in range(w.shape[1]):
            acc = np.float32(acc + np.float32(w[o, i] * x[s, i]))
        out[s, o] = acc
    return out


def _header(name: str, up: str, c_type: str, n_in: int, n_out: int, extra: str = "") -> str:
    return (f"#ifndef {up}_H\n#define {up}_H\n#include <stdint.h>\n"
            f"#define VST_{up}_INPUT_SIZE {n_in}\n#define VST_{up}_OUTPUT_SIZE {n_out}\n{extra}"
            f"int vst_{name}_infer(const {c_type} *input, {c_type} *output);\n#endif\n")


def _tiny_values(n_in: int, n_out: int, count: int, seed: int) -> dict:
    """Weights, inputs, float outputs and their int8 quantization (TFLite style:
    symmetric weights, asymmetric activations, fixed-point requantization)."""
    rng = np.random.default_rng(seed)
    w = rng.uniform(-1, 1, (n_out, n_in)).astype(np.float32)
    b = rng.uniform(-0.5, 0.5, n_out).astype(np.float32)
    x = rng.uniform(-1, 1, (count, n_in)).astype(np.float32)
    y = _linear_f32(w, b, x)
    in_scale, in_zp, w_scale = 2.0 / 255.0, -1, float(np.abs(w).max()) / 127.0
    out_scale = float(np.float32((max(y.max(), 0) - min(y.min(), 0)) / 255.0))
    out_zp = int(round(-128 - min(y.min(), 0) / out_scale))
    w_q = np.round(w / w_scale).astype(np.int64)
    b_q = np.round(b / (in_scale * w_scale)).astype(np.int64)
    mult = int(round(in_scale * w_scale / out_scale * (1 << SHIFT)))
    x_q = np.clip(np.round(x / in_scale) + in_zp, -128, 127).astype(np.int64)
    acc = (x_q - in_zp) @ w_q.T + b_q
    y_q = np.clip(((acc * mult + (1 << (SHIFT - 1))) >> SHIFT) + out_zp, -128, 127)
    return dict(w=w, b=b, x=x, y=y, w_q=w_q, b_q=b_q, x_q=x_q, y_q=y_q, mult=mult,
                in_scale=in_scale, in_zp=in_zp, out_scale=out_scale, out_zp=out_zp)


def _write_float(c_dir: Path, name: str, v: dict) -> None:
    n_out, n_in = v["w"].shape
    (c_dir / f"{name}.h").write_text(_header(name, name.upper(), "float", n_in, n_out))
    (c_dir / f"{name}.c").write_text(
        f'#include "{name}.h"\nstatic const float w[{n_out}][{n_in}] = {{{_hexf(v["w"])}}};\n'
        f"static const float b[{n_out}] = {{{_hexf(v['b'])}}};\n"
        # .data and .bss: 1.0 must be copied from flash by the startup code, 0.0 zeroed
        f"static volatile float one = 1.0f;\nstatic volatile float zero[{n_out}];\n"
        f"int vst_{name}_infer(const float *input, float *output)\n{{\n    int o, i;\n"
        f"    for (o = 0; o < {n_out}; ++o) {{\n        float acc = b[o];\n"
        f"        for (i = 0; i < {n_in}; ++i) {{\n            acc += w[o][i] * input[i];\n"
        f"        }}\n        output[o] = acc * one + zero[o];\n    }}\n    return 0;\n}}\n")


def _write_int8(c_dir: Path, name: str, v: dict) -> None:
    n_out, n_in = v["w"].shape
    q = f"VST_{name.upper()}_INT8"
    qparams = (f"#define {q}_INPUT_SCALE {v['in_scale']!r}f\n"
               f"#define {q}_INPUT_ZERO_POINT {v['in_zp']}\n"
               f"#define {q}_OUTPUT_SCALE {v['out_scale'].hex()}f\n"
               f"#define {q}_OUTPUT_ZERO_POINT {v['out_zp']}\n")
    header = _header(f"{name}_int8", q[4:], "int8_t", n_in, n_out, qparams)
    (c_dir / f"{name}_int8.h").write_text(header)
    (c_dir / f"{name}_int8.c").write_text(
        f'#include "{name}_int8.h"\n'
        f"static const int8_t wq[{n_out}][{n_in}] = {{{_ints(v['w_q'])}}};\n"
        f"static const int32_t bq[{n_out}] = {{{_ints(v['b_q'])}}};\n"
        f"int vst_{name}_int8_infer(const int8_t *input, int8_t *output)\n{{\n    int o, i;\n"
        f"    for (o = 0; o < {n_out}; ++o) {{\n        int32_t acc = bq[o];\n        int64_t r;\n"
        f"        for (i = 0; i < {n_in}; ++i) {{\n"
        f"            acc += ((int32_t)input[i] - ({v['in_zp']})) * (int32_t)wq[o][i];\n"
        f"        }}\n"
        f"        r = ((int64_t)acc * {v['mult']}LL + (1LL << {SHIFT - 1})) >> {SHIFT};\n"
        f"        r += {v['out_zp']};\n"
        f"        output[o] = (int8_t)(r < -128 ? -128 : (r > 127 ? 127 : r));\n"
        f"    }}\n    return 0;\n}}\n")


def _write_golden(c_dir: Path, name: str, v: dict) -> None:
    (count, n_in), n_out = v["x"].shape, v["y"].shape[1]
    up = name.upper()
    (c_dir / f"{name}_golden.h").write_text(
        f"/* hand-made golden vectors */\n#ifndef {up}_GOLDEN_H\n#define {up}_GOLDEN_H\n"
        f"#include <stdint.h>\n#define VST_{up}_GOLDEN_COUNT {count}\n"
        f"static const float vst_{name}_golden_in[{count}][{n_in}] = {{{_decf(v['x'])}}};\n"
        f"static const float vst_{name}_golden_out[{count}][{n_out}] = {{{_decf(v['y'])}}};\n"
        f"static const int vst_{name}_golden_label[{count}] = {{{_ints(v['y'].argmax(1))}}};\n"
        f"static const int8_t vst_{name}_golden_in_q[{count}][{n_in}] = {{{_ints(v['x_q'])}}};\n"
        f"static const int8_t vst_{name}_golden_out_q[{count}][{n_out}] = {{{_ints(v['y_q'])}}};\n"
        f"#endif\n")


def write_tiny_model(c_dir: Path, name="tiny", n_in=8, n_out=4, count=3, seed=0) -> dict:
    """Float and int8 C model plus golden header; returns the golden outputs."""
    values = _tiny_values(n_in, n_out, count, seed)
    c_dir.mkdir(parents=True, exist_ok=True)
    _write_float(c_dir, name, values)
    _write_int8(c_dir, name, values)
    _write_golden(c_dir, name, values)
    return {"float": values["y"], "int8": values["y_q"].astype(np.int8),
            "label": values["y"].argmax(1)}


def write_body_model(c_dir: Path, body: str, name="m") -> dict:
    """A float model of one input and one output whose infer function is ``body``."""
    c_dir.mkdir(parents=True, exist_ok=True)
    (c_dir / f"{name}.h").write_text(_header(name, name.upper(), "float", 1, 1))
    (c_dir / f"{name}.c").write_text(
        f'#include "{name}.h"\nint vst_{name}_infer(const float *input, float *output)\n'
        f"{{\n{body}\n    output[0] = input[0];\n    return 0;\n}}\n")
    (c_dir / f"{name}_golden.h").write_text(
        f"#define VST_{name.upper()}_GOLDEN_COUNT 1\n"
        f"static const float vst_{name}_golden_in[1][1] = {{{{0.5f}}}};\n"
        f"static const float vst_{name}_golden_out[1][1] = {{{{0.5f}}}};\n")
    return {"float": np.array([[0.5]], np.float32)}


def loop_body(iterations: int) -> str:
    """Exactly 2 * iterations instructions: subs + bne per iteration."""
    return (f"    uint32_t n = {iterations}u;\n"
            '    __asm__ volatile("1: subs %0, %0, #1\\n\\tbne 1b" : "+r"(n) : : "cc");')


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    c_dir = tmp_path_factory.mktemp("c")
    return c_dir, write_tiny_model(c_dir)


# ------------------------------------------------------------- on targets

@pytest.mark.parametrize("target_name", TARGETS)
def test_firmware_reproduces_the_golden_outputs(target_name, tiny, tmp_path):
    require_tools(*ARM_TOOLS)
    c_dir, golden = tiny
    target = load_target(target_name)
    result = bench_model(c_dir, "tiny", target, tmp_path, host_outputs=golden, timeout=20)
    assert result["float"]["parity_max_abs_diff"] == 0.0
    assert result["int8"]["int8_max_abs_diff_q"] == 0
    # int8 vs float reference: the quantization error, measured, small, not zero.
    assert 0.0 < result["int8"]["parity_max_abs_diff"] < 0.05
    for variant in ("float", "int8"):
        r = result[variant]
        assert r["top1_agreement"] == 1.0 and r["golden_count"] == 3 and r["fits"]
        assert r["instructions_per_tick_measured"] == r["instructions_per_tick"]
        assert r["flash_bytes"] > r["sizes"]["rodata"] > 0
        assert r["ram_bytes"] == r["sizes"]["data"] + r["sizes"]["bss"] + r["stack_bytes"]
        assert 0 < r["stack_bytes"] < 256
        assert r["firmware_flash_bytes"] > r["flash_bytes"]   # + golden vectors, printing
        assert 0 < r["instructions_per_inference"] <= r["instructions_per_inference_max"]
    # 32 float MACs: a few hundred instructions with an FPU, thousands in soft float.
    if target.float_abi == "hard":
        assert result["float"]["instructions_per_inference"] < 600
    else:
        assert result["float"]["instructions_per_inference"] > 1500
    assert (tmp_path / "bench.json").is_file() and (tmp_path / "float" / "build.sh").is_file()


@pytest.mark.parametrize("target_name", ["cortex-m4", "cortex-m33"])
def test_instruction_counter_on_loops_of_known_length(target_name, tmp_path):
    """Counts are exact to one tick, plus a constant of about 30 instructions
    (the two counter reads, the call and the model function's own entry/exit)."""
    require_tools(*ARM_TOOLS)
    target = load_target(target_name)
    tick = 1e9 / target.cpu_hz          # 40 on an386, 50 on an505
    counts = {}
    for iterations in (1000, 26000):
        c_dir = tmp_path / f"c{iterations}"
        golden = write_body_model(c_dir, loop_body(iterations))
        r = bench_model(c_dir, "m", target, tmp_path / f"fw{iterations}", variants=("float",),
                        host_outputs=golden, timeout=20)["float"]
        counts[iterations] = r["instructions_per_inference"]
        assert r["instructions_per_tick_measured"] == tick
        assert 2 * iterations - tick < counts[iterations] <= 2 * iterations + 40 + tick
    assert abs(counts[26000] - counts[1000] - 2 * 25000) < tick


def test_stack_peak_is_measured(tmp_path):
    require_tools(*ARM_TOOLS)
    body = ("    volatile uint8_t scratch[1000];\n    scratch[0] = 1;\n    scratch[999] = 2;\n"
            "    (void)scratch[0];")
    golden = write_body_model(tmp_path / "c", body)
    r = bench_model(tmp_path / "c", "m", load_target("cortex-m4"), tmp_path / "fw",
                    variants=("float",), host_outputs=golden, timeout=20)["float"]
    assert 1000 <= r["stack_bytes"] <= 1040
    assert 1000 <= r["stack_static_bytes"] <= 1040
    assert r["ram_bytes"] >= r["stack_bytes"] + 8      # plus the 1-float input and output
    fw = build_firmware(tmp_path / "c", "m", load_target("cortex-m4"), tmp_path / "small",
                        stack_size=1536)
    with pytest.raises(VstError, match="stack overflow"):
        measure(fw, run_qemu(fw.elf, fw.target, timeout=20), golden)


def test_flash_grows_with_the_weights(tmp_path):
    require_tools(*ARM_TOOLS)
    target = load_target("cortex-m4")
    builds = {}
    for n_in in (8, 64):
        c_dir = tmp_path / f"c{n_in}"
        write_tiny_model(c_dir, n_in=n_in)
        builds[n_in] = build_firmware(c_dir, "tiny", target, tmp_path / f"fw{n_in}")
    small, big = builds[8].model_sizes, builds[64].model_sizes
    assert small.text > 0 and small.rodata > 0 and small.bss > 0
    assert big.rodata - small.rodata >= (64 - 8) * 4 * 4     # 4x56 more float weights
    assert big.flash > small.flash
    assert builds[8].stack_static_bytes >= 0 and builds[8].map_file.is_file()


def test_a_model_over_the_budget_does_not_fit(tiny, tmp_path):
    require_tools(*ARM_TOOLS)
    c_dir, golden = tiny
    target = dataclasses.replace(load_target("cortex-m4"), flash_budget=256)
    r = bench_model(c_dir, "tiny", target, tmp_path, variants=("int8",),
                    host_outputs=golden, timeout=20)["int8"]
    assert r["flash_bytes"] > 256 and r["fits"] is False


def test_host_target_runs_natively_for_parity(tiny, tmp_path):
    require_tools("cc")
    c_dir, golden = tiny
    result = bench_model(c_dir, "tiny", load_target("host"), tmp_path, host_outputs=golden)
    assert result["float"]["parity_max_abs_diff"] == 0.0
    assert result["int8"]["int8_max_abs_diff_q"] == 0
    assert result["float"]["instructions_per_inference"] is None   # no counter on the host


def test_golden_header_is_read_back(tiny):
    c_dir, golden = tiny
    read = read_golden(c_dir, "tiny")
    assert np.array_equal(read["float"], golden["float"])
    assert np.array_equal(read["int8"], golden["int8"])
    assert read["label"].tolist() == golden["label"].tolist()


# ---------------------------------------------------------------- failures

def test_missing_tools_say_how_to_install(tiny, tmp_path, monkeypatch):
    c_dir, _ = tiny
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    with pytest.raises(VstError, match="arm-none-eabi-gcc not found.*apt-get install"):
        build_firmware(c_dir, "tiny", load_target("cortex-m4"), tmp_path / "fw")
    with pytest.raises(VstError, match="qemu-system-arm not found.*qemu-system-arm"):
        run_qemu(tmp_path / "firmware.elf", load_target("cortex-m4"))


def test_missing_model_files_and_bad_variant(tmp_path):
    with pytest.raises(VstError, match="generated C file not found"):
        build_firmware(tmp_path, "nothing", load_target("cortex-m4"), tmp_path / "fw")
    with pytest.raises(VstError, match="unknown firmware variant"):
        build_firmware(tmp_path, "nothing", load_target("cortex-m4"), tmp_path / "fw",
                       variant="int4")


def test_generated_c_is_compiled_with_warnings_as_errors(tmp_path):
    require_tools(*ARM_TOOLS)
    write_body_model(tmp_path / "c", "    int unused;")
    with pytest.raises(VstError, match="compiling m.c for cortex-m3 failed: .*unused"):
        build_firmware(tmp_path / "c", "m", load_target("cortex-m3"), tmp_path / "fw")


def test_failing_or_hanging_firmware_is_a_clear_error(tmp_path):
    require_tools(*ARM_TOOLS)
    target = load_target("cortex-m4")
    write_body_model(tmp_path / "bad", "    if (input[0] > 0.0f) {\n        return 7;\n    }")
    fw = build_firmware(tmp_path / "bad", "m", target, tmp_path / "fw_bad")
    with pytest.raises(VstError, match="exited with status 1.*VST error 0 7"):
        run_qemu(fw.elf, target, timeout=10)
    write_body_model(tmp_path / "hang", '    for (;;) {\n        __asm__ volatile("");\n    }')
    fw = build_firmware(tmp_path / "hang", "m", target, tmp_path / "fw_hang")
    with pytest.raises(VstError, match="timed out after 1.5 s"):
        run_qemu(fw.elf, target, timeout=1.5)
