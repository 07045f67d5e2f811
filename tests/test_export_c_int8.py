"""int8 C generation: compiled with gcc and compared with TFLite Micro, bit for bit.

The int8 .tflite files are made once per module (Keras rebuild + TFLite
converter, full-integer int8 with a representative set of real samples) for
mlp (dense weights), cnn_small with BatchNorm and conv1d (both 30% density).
Also: the golden header self-test for float and int8, and every generated
file compiled for Cortex-M4 (hard float) and Cortex-M3 (soft float).
"""

from __future__ import annotations

import contextlib
import io
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import require_tools
from test_export_c import (NETWORKS, compile_program, dataset, header_macros, random_state,
                           run_program, trained)
from toolchain.errors import VstError
from toolchain.export.c import generate_c
from toolchain.export.c.golden import quantize, reference_logits, to_tflite_layout
from toolchain.export.c.int8_plan import quantize_multiplier
from toolchain.export.c.tflite_graph import read_tflite
from toolchain.models.layers import Conv2d, Flatten, Linear, Network, ReLU

DENSITY = {"mlp": 1.0, "cnn_small_bn": 0.3, "conv1d": 0.3}

INT8_HARNESS = r"""
#include <stdio.h>
#include "model_int8.h"
/* Reads int8 inputs from stdin until EOF, writes int8 outputs to stdout. */
int main(void)
{
    static int8_t x[VST_MODEL_INT8_INPUT_SIZE];
    int8_t y[VST_MODEL_INT8_OUTPUT_SIZE];
    while (fread(x, 1, sizeof x, stdin) == sizeof x) {
        if (vst_model_int8_infer(x, y) != 0) {
            return 1;
        }
        fwrite(y, 1, sizeof y, stdout);
    }
    return 0;
}
"""


def _converter(keras_model, representative, int8_io: bool):
    import tensorflow as tf

    converter = tf.lite.TFLiteConverter.from_keras_model(keras_model)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = lambda: ([s[None]] for s in representative)
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    if int8_io:
        converter.inference_input_type = converter.inference_output_type = tf.int8
    with contextlib.redirect_stdout(io.StringIO()):
        return converter.convert()


def _tflite(keras_model, representative, path, int8_io=True):
    path.write_bytes(_converter(keras_model, representative, int8_io))
    return path


def tflm_outputs(path, q_in: np.ndarray) -> np.ndarray:
    from tflite_micro.python.tflite_micro import runtime

    interpreter = runtime.Interpreter.from_file(str(path))
    out = []
    for sample in q_in:
        interpreter.set_input(sample[None], 0)
        interpreter.invoke()
        out.append(np.array(interpreter.get_output(0)).ravel())
    return np.array(out, dtype=np.int8)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """arch -> (network, state, int8 .tflite path, float test inputs NCHW / NCL)."""
    from toolchain.export.keras_build import build_keras, to_channels_last

    root = tmp_path_factory.mktemp("int8")
    out = {}
    for arch, (_, data_name) in NETWORKS.items():
        network, state, x = trained(arch, DENSITY[arch])
        representative = to_channels_last(dataset(data_name).x_train[:200])
        path = _tflite(build_keras(network, state), representative, root / f"{arch}.tflite")
        out[arch] = (network, state, path, x)
    return out


def _inputs(network, path, x) -> np.ndarray:
    """Real samples quantized in the .tflite layout, then random int8 inputs too."""
    from ai_edge_litert.interpreter import Interpreter

    detail = Interpreter(model_path=str(path)).get_input_details()[0]
    scale, zero_point = detail["quantization"]
    real = quantize(to_tflite_layout(x, tuple(detail["shape"])), scale, zero_point)
    rng = np.random.default_rng(0)
    noise = rng.integers(-128, 128, size=real.shape, dtype=np.int8)
    return np.concatenate([real, noise])


@pytest.mark.parametrize("kernels", ["dsp", "portable"])
@pytest.mark.parametrize("storage", ["dense", "sparse"])
@pytest.mark.parametrize("arch", list(NETWORKS))
def test_int8_c_matches_tflite_micro_bit_for_bit(tmp_path, models, arch, storage, kernels):
    """Every kernel family and storage; on the host the DSP family runs its
    portable stand-ins for SMLAD / SXTB16 (QEMU runs the real instructions)."""
    network, state, path, x = models[arch]
    q_in = _inputs(network, path, x)
    result = generate_c(network, state, tmp_path, tflite_int8=path, storage=storage,
                        kernels=kernels)
    assert {row["storage"] for row in result["int8"]["layers"]} == {storage}
    assert result["int8"]["kernels"] == kernels
    binary = compile_program(tmp_path, [result["files"]["int8_c"]], INT8_HARNESS)
    got = run_program(binary, q_in, np.int8, network.num_classes)
    expected = tflm_outputs(path, q_in)
    assert int(np.sum(got != expected)) == 0
    real = expected[:len(x)]
    assert len(np.unique(real)) > 20                       # non-trivial activations
    float_top1 = reference_logits(network, state, x).argmax(1)
    assert np.mean(real.argmax(1) == float_top1) >= 0.8     # the int8 model is faithful


def test_int8_header_documents_layout_and_quantization(tmp_path, models):
    network, state, path, _ = models["cnn_small_bn"]
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(path))
    (in_scale, in_zp), (out_scale, out_zp) = (
        interpreter.get_input_details()[0]["quantization"],
        interpreter.get_output_details()[0]["quantization"])
    generate_c(network, state, tmp_path, tflite_int8=path)
    macros = header_macros(tmp_path / "model_int8.h")
    assert int(macros["VST_MODEL_INT8_INPUT_SIZE"]) == 784
    assert int(macros["VST_MODEL_INT8_OUTPUT_SIZE"]) == 10
    assert np.float32(macros["VST_MODEL_INT8_INPUT_SCALE"][:-1]) == np.float32(in_scale)
    # zero points are parenthesized: -128 must not glue onto an expression
    assert macros["VST_MODEL_INT8_INPUT_ZERO_POINT"] == f"({in_zp})"
    assert np.float32(macros["VST_MODEL_INT8_OUTPUT_SCALE"][:-1]) == np.float32(out_scale)
    assert macros["VST_MODEL_INT8_OUTPUT_ZERO_POINT"] == f"({out_zp})"
    header = (tmp_path / "model_int8.h").read_text()
    assert " * NHWC: index" in header and "*  *" not in header
    assert int(macros["VST_MODEL_INT8_ARENA_BYTES"]) > 0


GOLDEN_HARNESS = r"""
#include <math.h>
#include <stdio.h>
#include "model_golden.h"
#include "model_data.h"
/* Float and int8 self-test on the golden vectors: prints the failures of each. */
int main(void)
{
    float y[VST_MODEL_OUTPUT_SIZE];
    int8_t q[VST_MODEL_INT8_OUTPUT_SIZE];
    int s, i, float_fail = 0, int8_fail = 0;
    for (s = 0; s < VST_MODEL_GOLDEN_COUNT; ++s) {
        int bad = 0;
        vst_model_infer(vst_model_golden_in[s], y);
        for (i = 0; i < VST_MODEL_OUTPUT_SIZE; ++i) {
            bad |= fabsf(y[i] - vst_model_golden_out[s][i]) > 1e-4f;
        }
        float_fail += bad;
        vst_model_int8_infer(vst_model_golden_in_q[s], q);
        for (i = 0; i < VST_MODEL_INT8_OUTPUT_SIZE; ++i) {
            int8_fail += q[i] != vst_model_golden_out_q[s][i];
        }
    }
    printf("%d %d %u\n", float_fail, int8_fail, g_model_data_size);
    return 0;
}
"""


@pytest.fixture(scope="module")
def full_set(models, tmp_path_factory):
    """Every file generate_c writes, for conv1d with int8 and 16 golden samples."""
    network, state, path, x = models["conv1d"]
    out_dir = tmp_path_factory.mktemp("full")
    return generate_c(network, state, out_dir, tflite_int8=path, golden_x=x[:16]), path


def test_golden_self_test_float_and_int8(full_set):
    result, path = full_set
    files = result["files"]
    assert set(files) == {"h", "c", "int8_h", "int8_c", "model_data_h", "model_data_c", "golden",
                          "ops"}
    out_dir = files["c"].parent
    binary = compile_program(out_dir, [files["c"], files["int8_c"], files["model_data_c"]],
                             GOLDEN_HARNESS, exe="golden")
    out = subprocess.run([binary], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["0", "0", str(path.stat().st_size)]
    text = files["golden"].read_text()
    assert "static const int8_t vst_model_golden_out_q[16][VST_MODEL_INT8_OUTPUT_SIZE]" in text


ARM_CPUS = {
    "cortex-m4-hard": ["-mcpu=cortex-m4", "-mthumb", "-mfloat-abi=hard", "-mfpu=fpv4-sp-d16"],
    "cortex-m3-soft": ["-mcpu=cortex-m3", "-mthumb", "-mfloat-abi=soft"],
}


ARM_KERNELS = {"cortex-m4-hard": "dsp", "cortex-m3-soft": "portable"}


@pytest.mark.parametrize("storage", ["sparse", "dense"])
@pytest.mark.parametrize("cpu", list(ARM_CPUS))
def test_every_generated_file_compiles_for_cortex_m(models, cpu, storage, tmp_path):
    """conv1d at 30% density, every layer sparse or every layer dense, with the
    int8 kernel family of the core."""
    require_tools("arm-none-eabi-gcc")
    network, state, path, x = models["conv1d"]
    files = generate_c(network, state, tmp_path / "c", tflite_int8=path, golden_x=x[:4],
                       storage=storage, kernels=ARM_KERNELS[cpu])["files"]
    kernel = f"vst_conv_{ARM_KERNELS[cpu]}(" if storage == "dense" else "vst_conv_sparse_uint8_u"
    assert kernel in files["int8_c"].read_text()
    (tmp_path / "selftest.c").write_text(GOLDEN_HARNESS)
    sources = [files["c"], files["int8_c"], files["model_data_c"], tmp_path / "selftest.c"]
    for source in sources:
        cmd = ["arm-none-eabi-gcc", *ARM_CPUS[cpu], "-std=c99", "-Wall", "-Wextra", "-Werror",
               "-pedantic", "-O2", "-I", str(tmp_path / "c"), "-c", str(source),
               "-o", str(tmp_path / (source.stem + ".o"))]
        result = subprocess.run(cmd, capture_output=True, text=True)
        assert result.returncode == 0, result.stderr
    assert len(list(tmp_path.glob("*.o"))) == 4


def test_float_io_model_with_quantize_edges(tmp_path, models):
    """A .tflite with float input/output (QUANTIZE / DEQUANTIZE edges) still gives
    int8 C that matches the interpreter through the golden vectors."""
    from toolchain.export.keras_build import build_keras, to_channels_last

    network, state, _, x = models["mlp"]
    rep = to_channels_last(dataset("mnist5k").x_train[:100])
    path = _tflite(build_keras(network, state), rep, tmp_path / "f.tflite", int8_io=False)
    result = generate_c(network, state, tmp_path, tflite_int8=path, golden_x=x[:32])
    binary = compile_program(tmp_path, [result["files"]["c"], result["files"]["int8_c"],
                                        result["files"]["model_data_c"]], GOLDEN_HARNESS)
    out = subprocess.run([binary], capture_output=True, text=True, check=True).stdout.split()
    assert out[:2] == ["0", "0"]
    names = [op.name for op in read_tflite(path).ops]
    assert names[0] == "QUANTIZE" and names[-1] == "DEQUANTIZE"


def test_unsupported_operator_is_named(tmp_path):
    import keras

    network = Network((1, 4, 4), (Flatten(), Linear(16, 3)))
    inputs = keras.Input((4, 4, 1), batch_size=1)
    h = keras.layers.Dense(3, activation="softmax")(keras.layers.Flatten()(inputs))
    rep = np.random.default_rng(0).random((20, 4, 4, 1), dtype=np.float32)
    path = _tflite(keras.Model(inputs, h), rep, tmp_path / "softmax.tflite")
    state = {"1.weight": torch.zeros(3, 16), "1.bias": torch.zeros(3)}
    with pytest.raises(VstError, match="SOFTMAX"):
        generate_c(network, state, tmp_path / "out", tflite_int8=path)
    assert not (tmp_path / "out").exists()
    with pytest.raises(VstError, match="not a readable"):
        (tmp_path / "junk.tflite").write_bytes(b"\x00" * 8)
        generate_c(network, state, tmp_path / "out", tflite_int8=tmp_path / "junk.tflite")


def test_tflite_of_another_network_is_rejected(tmp_path, models):
    network, state, _, _ = models["conv1d"]
    with pytest.raises(VstError, match="do not match the network"):
        generate_c(network, state, tmp_path, tflite_int8=models["mlp"][2])
    assert not list(tmp_path.iterdir())


def test_transpose_and_pad_operators_are_bit_exact(tmp_path):
    """Conv -> Flatten with no Linear after it: Keras permutes to channels-first
    (a TRANSPOSE op); k3/s2/p1 on 6x6 is not TF's SAME (a PAD op)."""
    from toolchain.export.keras_build import build_keras, to_channels_last

    network = Network((2, 6, 6), (Conv2d(2, 3, 3, 2, 1), ReLU(), Flatten()))
    state = random_state(network, 1.0)
    rng = np.random.default_rng(1)
    x = rng.random((64, 2, 6, 6), dtype=np.float32)
    path = _tflite(build_keras(network, state), to_channels_last(x), tmp_path / "t.tflite")
    assert {"PAD", "TRANSPOSE"} <= {op.name for op in read_tflite(path).ops}
    result = generate_c(network, state, tmp_path, tflite_int8=path)
    binary = compile_program(tmp_path, [result["files"]["int8_c"]], INT8_HARNESS)
    q_in = _inputs(network, path, x)
    expected = tflm_outputs(path, q_in)
    assert np.array_equal(run_program(binary, q_in, np.int8, 27), expected)
    assert len(np.unique(expected)) > 20


def test_quantize_multiplier_matches_tflite_examples():
    assert quantize_multiplier(0.0) == (0, 0)
    assert quantize_multiplier(0.5) == (1 << 30, 0)
    assert quantize_multiplier(1.0) == (1 << 30, 1)
    q, shift = quantize_multiplier(0.00123)
    assert 1 << 30 <= q < 1 << 31 and abs(q * 2.0 ** (shift - 31) - 0.00123) < 1e-12
    assert quantize_multiplier(1e-12) == (0, 0)          # shift below -31 -> zero
    assert quantize_multiplier(0.9999999999) == (1 << 30, 1)   # rounds up to 2**31



def _mnemonics(obj) -> set[str]:
    """The instruction mnemonics in an object file's disassembly."""
    text = subprocess.run(["arm-none-eabi-objdump", "-d", "--no-show-raw-insn", str(obj)],
                          capture_output=True, text=True, check=True).stdout
    return {line.split("\t")[1].split(".")[0] for line in text.splitlines()
            if line.startswith(" ") and line.count("\t") >= 1 and ":" in line.split("\t")[0]}


@pytest.mark.parametrize("cpu", list(ARM_CPUS))
def test_dsp_kernels_use_smlad_only_where_the_core_has_it(models, cpu, tmp_path):
    """The DSP family compiles to SMLAD / SXTB16 on Cortex-M4; on Cortex-M3 the
    portable family has neither (the M3 has no DSP extension)."""
    require_tools("arm-none-eabi-gcc", "arm-none-eabi-objdump")
    network, state, path, _ = models["cnn_small_bn"]
    files = generate_c(network, state, tmp_path / "c", tflite_int8=path, storage="dense",
                       kernels=ARM_KERNELS[cpu])["files"]
    obj = tmp_path / "m.o"
    subprocess.run(["arm-none-eabi-gcc", *ARM_CPUS[cpu], "-std=c99", "-O2", "-c",
                    str(files["int8_c"]), "-o", str(obj)], check=True)
    code = _mnemonics(obj)
    dsp = ARM_KERNELS[cpu] == "dsp"
    assert "ldr" in code and ("smlad" in code) == dsp and ("sxtb16" in code) == dsp


def _odd_network():
    """Odd channel and pixel counts, taps not a multiple of 8, stride 2 with
    padding (TF SAME), a 2x2 VALID conv and an FC whose rows are not a multiple
    of 4: every tail path of the tiled kernels."""
    return Network((3, 9, 9), (Conv2d(3, 5, 3, 2, 1), ReLU(), Conv2d(5, 3, 2, 1, 0), ReLU(),
                               Flatten(), Linear(48, 7)))


@pytest.mark.parametrize("kernels", ["dsp", "portable"])
@pytest.mark.parametrize("storage", ["dense", "sparse"])
def test_tail_paths_are_bit_exact(tmp_path, storage, kernels):
    from toolchain.export.keras_build import build_keras, to_channels_last

    network = _odd_network()
    state = random_state(network, 0.5, seed=3)
    x = np.random.default_rng(3).random((48, 3, 9, 9), dtype=np.float32)
    path = _tflite(build_keras(network, state), to_channels_last(x), tmp_path / "odd.tflite")
    result = generate_c(network, state, tmp_path, tflite_int8=path, storage=storage,
                        kernels=kernels)
    binary = compile_program(tmp_path, [result["files"]["int8_c"]], INT8_HARNESS)
    q_in = _inputs(network, path, x)
    expected = tflm_outputs(path, q_in)
    assert np.array_equal(run_program(binary, q_in, np.int8, 7), expected)
    assert len(np.unique(expected)) > 20


QEMU_CASES = [("cortex-m4", "dense"), ("cortex-m4", "sparse"), ("cortex-m3", "dense"),
              ("cortex-m3", "sparse")]


@pytest.mark.parametrize("target_name,storage", QEMU_CASES)
def test_kernels_on_the_target_reproduce_tflite_micro(models, tmp_path, target_name, storage):
    """In QEMU, with the real SMLAD / SXTB16 on Cortex-M4 and the portable
    kernels on Cortex-M3: the golden int8 outputs (TFLM's) bit for bit, and the
    self-test times every operator."""
    require_tools("arm-none-eabi-gcc", "arm-none-eabi-size", "qemu-system-arm")
    from toolchain.bench import bench_model
    from toolchain.targets import load_target

    target = load_target(target_name)
    network, state, path, x = models["cnn_small_bn"]
    generate_c(network, state, tmp_path / "c", tflite_int8=path, golden_x=x[:6],
               storage=storage, kernels=target.int8_kernels)
    result = bench_model(tmp_path / "c", "model", target, tmp_path / "bench",
                         variants=("int8",), timeout=30)["int8"]
    assert result["int8_max_abs_diff_q"] == 0 and result["golden_count"] == 6
    layers = result["layers"]
    assert [row["kind"] for row in layers] == ["conv", "conv", "fc", "fc"]
    assert all(row["storage"] == storage and row["instructions"] > 0 for row in layers)
    total = sum(row["instructions"] for row in layers)
    assert total <= result["instructions_per_inference"] <= total + 200


def test_auto_storage_takes_csr_only_where_it_is_smaller_and_faster():
    from toolchain.export.c.arrays import Storage
    from toolchain.export.c.int8_gen import SPARSE_BELOW

    matrix = np.zeros((8, 64), np.int8)
    matrix[:, :16] = 1                                   # density 0.25, CSR is smaller
    assert Storage.of(matrix, "auto").kind == "sparse"
    assert Storage.of(matrix, "auto", sparse_below=0.2).kind == "dense"
    assert Storage.of(matrix, "sparse", sparse_below=0.2).kind == "sparse"
    for kind, limit in SPARSE_BELOW.items():             # the measured break-even decides
        for cols, expect in ((int(64 * limit) - 1, "sparse"), (int(64 * limit) + 1, "dense")):
            matrix = np.zeros((8, 64), np.int8)
            matrix[:, :cols] = 1
            assert Storage.of(matrix, "auto", sparse_below=limit).kind == expect, (kind, cols)


def test_break_even_densities_are_the_benchmarks_cycles():
    """SPARSE_BELOW (int8 and float) are the break-even densities that
    benchmarks/csr_breakeven.py measured in cycles on cortex-m4, to two digits."""
    import json

    from toolchain.export.c import float_gen, int8_gen

    results = Path(__file__).resolve().parent.parent / "benchmarks/results/csr_breakeven.json"
    measured = json.loads(results.read_text())
    assert measured["target"] == "cortex-m4"
    even = measured["break_even"]
    assert int8_gen.SPARSE_BELOW == {"conv": round(even["int8_conv"], 2),
                                     "fc": round(even["int8_fc"], 2)}
    assert float_gen.SPARSE_BELOW == {"conv": round(even["float_conv"], 2),
                                      "dense": round(even["float_fc"], 2)}


def _tflite_requantize(acc: int, mult: int, shift: int, offset: int, lo: int, hi: int) -> int:
    """TFLite's MultiplyByQuantizedMultiplier (gemmlowp's two roundings), in Python."""
    left, right = max(shift, 0), max(-shift, 0)
    x = ((acc << left) + 2 ** 31) % 2 ** 32 - 2 ** 31          # int32 wrap, as in C
    ab = x * mult
    nudge = (1 << 30) if ab >= 0 else 1 - (1 << 30)
    high = abs(ab + nudge) // 2 ** 31 * (1 if ab + nudge >= 0 else -1)   # truncating division
    mask = (1 << right) - 1
    threshold = (mask >> 1) + (1 if high < 0 else 0)
    v = (high >> right) + (1 if (high & mask) > threshold else 0) + offset
    return min(max(v, lo), hi)


@pytest.mark.parametrize("all_right", [0, 1])
def test_requantization_equals_tflite_on_random_values(tmp_path, all_right):
    """Both paths of vst_requantize (the short one for right shifts and the
    general one) against TFLite's arithmetic, on random accumulators,
    multipliers and shifts, with a ReLU clamp and with the full int8 range."""
    from toolchain.export.c.int8_gen import KERNELS
    from toolchain.export.c.template import kernels

    rng = np.random.default_rng(7 + all_right)
    n = 4000
    mult = rng.integers(1 << 30, 1 << 31, n)
    shift = rng.integers(-20, 0, n) if all_right else rng.integers(-20, 4, n)
    acc = rng.integers(-(1 << 29), 1 << 29, n) >> rng.integers(0, 28, n)
    code = kernels(KERNELS, [("base", {}), ("requant", {})])
    cases = []
    for lo, hi, offset in ((-128, 127, -3), (-20, 127, -20)):
        arrays = "\n".join(f"static const {t} {name}[{n}] = {{{', '.join(map(str, v))}}};"
                           for t, name, v in (("int32_t", "mult", mult), ("int8_t", "shift", shift),
                                              ("int32_t", "acc", acc)))
        cases.append((lo, hi, offset, arrays))
    for k, (lo, hi, offset, arrays) in enumerate(cases):
        source = tmp_path / f"rq{k}.c"
        source.write_text(f"""#include <stdint.h>
#include <stdio.h>
#include <string.h>
{code}
{arrays}
int main(void)
{{
    static const vst_requant q = {{0, {offset}, {lo}, {hi}, {all_right}, mult, shift}};
    int i;
    for (i = 0; i < {n}; ++i) {{
        printf("%d\\n", vst_requantize(acc[i], &q, i));
    }}
    return 0;
}}
""")
        binary = tmp_path / f"rq{k}"
        subprocess.run(["gcc", "-std=c99", "-Wall", "-Wextra", "-Werror", "-O2", str(source),
                        "-o", str(binary)], check=True)
        got = [int(v) for v in subprocess.run([str(binary)], capture_output=True, text=True,
                                              check=True).stdout.split()]
        expected = [_tflite_requantize(int(a), int(m), int(s), offset, lo, hi)
                    for a, m, s in zip(acc, mult, shift)]
        assert got == expected
        assert len(set(expected)) > 50


def test_weights_and_arena_go_into_the_sections_the_user_names(models, tmp_path):
    """-DVST_WEIGHTS_ATTR / -DVST_ARENA_ATTR place every constant array and every
    buffer (float and int8) into named sections, e.g. external flash and DTCM."""
    require_tools("arm-none-eabi-gcc", "arm-none-eabi-objdump")
    network, state, path, _ = models["cnn_small_bn"]
    files = generate_c(network, state, tmp_path / "c", tflite_int8=path)["files"]
    place = ['-DVST_WEIGHTS_ATTR=__attribute__((section(".ext_flash")))',
             '-DVST_ARENA_ATTR=__attribute__((section(".dtcm")))']
    for key in ("c", "int8_c"):
        obj = tmp_path / f"{key}.o"
        subprocess.run(["arm-none-eabi-gcc", *ARM_CPUS["cortex-m4-hard"], "-std=c99", "-O2",
                        "-Wall", "-Wextra", "-Werror", "-pedantic", *place, "-c",
                        str(files[key]), "-o", str(obj)], check=True)
        sections = subprocess.run(["arm-none-eabi-objdump", "-h", str(obj)], capture_output=True,
                                  text=True, check=True).stdout
        sizes = {line.split()[1]: int(line.split()[2], 16) for line in sections.splitlines()
                 if line.strip()[:1].isdigit()}
        assert sizes.get(".ext_flash", 0) > 1000 and sizes.get(".dtcm", 0) > 1000, sizes
        assert sizes.get(".rodata", 0) < 200 and sizes.get(".bss", 0) < 64, sizes
