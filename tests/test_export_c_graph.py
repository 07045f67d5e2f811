"""C generation of graph networks: depthwise convolution, pooling, global average
pooling and Add, float and int8, compiled with gcc and compared with PyTorch
(float) and TFLite Micro (int8, bit for bit), on the host and in QEMU.

Models (``graph_export``): resnet8 / ds_cnn on mnist5k, resnet1d / ds_cnn1d on
synth1d, and two hand-made networks with odd shapes. int8 inputs: the real
samples quantized, then as many random int8 vectors.
"""

from __future__ import annotations

import subprocess

import numpy as np
import pytest
import torch

from conftest import require_tools
from graph_export import GRAPH_NETWORKS, graph_model
from test_export_c import (FLOAT_HARNESS, CFLAGS, compile_program, header_macros,
                           run_program)
from test_export_c_int8 import (ARM_CPUS, ARM_KERNELS, GOLDEN_HARNESS, INT8_HARNESS, _inputs,
                                _mnemonics, tflm_outputs)
from toolchain.export.c import generate_c
from toolchain.export.c.int8_plan import int8_plan
from toolchain.export.c.tflite_graph import read_tflite
from toolchain.models.torch_build import build_torch

KINDS = {"dwconv", "avgpool", "maxpool", "add"}


@pytest.mark.parametrize("kernels", ["dsp", "portable"])
@pytest.mark.parametrize("storage", ["dense", "sparse"])
@pytest.mark.parametrize("name", list(GRAPH_NETWORKS))
def test_int8_c_of_graph_networks_matches_tflite_micro(tmp_path, name, storage, kernels):
    """Every kernel family and storage of the convolutions (depthwise ones stay
    dense); on the host the DSP family runs its C stand-ins for SMLABB / SMLATT /
    SXTAB16 / SMMULR, QEMU runs the instructions (below)."""
    network, state, x, path = graph_model(name)
    result = generate_c(network, state, tmp_path, tflite_int8=path, storage=storage,
                        kernels=kernels)
    rows = result["int8"]["layers"]
    assert {r["storage"] for r in rows if "DEPTHWISE" not in r["layer"]} == {storage}
    assert {r["storage"] for r in rows if "DEPTHWISE" in r["layer"]} <= {"dense"}
    binary = compile_program(tmp_path, [result["files"]["int8_c"]], INT8_HARNESS)
    q_in = _inputs(network, path, x)
    expected = tflm_outputs(path, q_in)
    got = run_program(binary, q_in, np.int8, network.num_classes)
    assert int(np.sum(got != expected)) == 0
    assert len(np.unique(expected[:len(x)])) > 20            # non-trivial outputs
    kinds = {op["kind"] for op in result["int8"]["ops"]}
    assert kinds & KINDS                                      # the new operators ran


@pytest.mark.parametrize("name", list(GRAPH_NETWORKS))
def test_float_c_of_graph_networks_matches_pytorch(tmp_path, name):
    network, state, x, _ = graph_model(name)
    result = generate_c(network, state, tmp_path)
    binary = compile_program(tmp_path, [result["files"]["c"]], FLOAT_HARNESS)
    got = run_program(binary, x, np.float32, network.num_classes)
    with torch.no_grad():
        expected = build_torch(network, state).eval()(torch.from_numpy(x)).numpy()
    assert np.max(np.abs(got - expected)) < 1e-4 * max(1.0, float(np.abs(expected).max()))
    assert np.std(expected) > 0.01
    kinds = {op["kind"] for op in result["float"]["ops"]}
    assert kinds & {"dwconv", "avgpool", "maxpool", "gap", "add"}


def test_arena_in_header_and_summary_is_the_plan(tmp_path):
    """The residual model: the header's arena is the liveness plan plus the int16
    scratch; the shortcut of every block stays live while the block runs."""
    network, state, _, path = graph_model("resnet8")
    result = generate_c(network, state, tmp_path, tflite_int8=path)
    ops, activations, _, _ = int8_plan(read_tflite(path))
    macros = header_macros(tmp_path / "model_int8.h")
    assert result["int8"]["activation_bytes"] == activations
    assert int(macros["VST_MODEL_INT8_ARENA_BYTES"]) == result["int8"]["arena_bytes"]
    assert activations < result["int8"]["arena_bytes"] < activations + 4096
    source = result["files"]["int8_c"].read_text()
    assert f"static int8_t vst_arena[{activations}]" in source
    for add in (op for op in ops if op.kind == "add"):
        a, b = add.srcs
        assert a != b and add.dst not in (a, b)
    float_macros = header_macros(tmp_path / "model.h")
    assert int(float_macros["VST_MODEL_ARENA_BYTES"]) == result["float"]["arena_bytes"]


@pytest.mark.parametrize("cpu", list(ARM_CPUS))
def test_graph_c_compiles_for_cortex_m_with_the_cores_instructions(tmp_path, cpu):
    """Every generated file (float, int8, model array, golden self-test) compiles
    with -std=c99 -Wall -Wextra -Werror -pedantic; the DSP family's depthwise
    kernel uses SXTAB16 / SMLABB / SMLATT on Cortex-M4, the M3 build none."""
    require_tools("arm-none-eabi-gcc", "arm-none-eabi-objdump")
    network, state, x, path = graph_model("odd2d")
    files = generate_c(network, state, tmp_path / "c", tflite_int8=path, golden_x=x[:4],
                       kernels=ARM_KERNELS[cpu])["files"]
    (tmp_path / "selftest.c").write_text(GOLDEN_HARNESS)
    sources = [files["c"], files["int8_c"], files["model_data_c"], tmp_path / "selftest.c"]
    for source in sources:
        obj = tmp_path / (source.stem + ".o")
        cmd = ["arm-none-eabi-gcc", *ARM_CPUS[cpu], *CFLAGS, "-I", str(tmp_path / "c"),
               "-c", str(source), "-o", str(obj)]
        result = subprocess.run(cmd, capture_output=True, text=True)
        assert result.returncode == 0, result.stderr
    code = _mnemonics(tmp_path / "model_int8.o")
    dsp = ARM_KERNELS[cpu] == "dsp"
    assert {"sxtab16", "smlabb", "smlatt", "smmulr"} <= code if dsp else \
        not ({"sxtab16", "smlabb", "smlatt", "smmulr", "smlad"} & code)


def test_golden_self_test_of_a_graph_model_on_the_host(tmp_path):
    network, state, x, path = graph_model("resnet1d")
    result = generate_c(network, state, tmp_path, tflite_int8=path, golden_x=x[:12])
    files = result["files"]
    binary = compile_program(tmp_path, [files["c"], files["int8_c"], files["model_data_c"]],
                             GOLDEN_HARNESS, exe="golden")
    out = subprocess.run([binary], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["0", "0", str(path.stat().st_size)]


QEMU_CASES = [("cortex-m4", "resnet1d"), ("cortex-m4", "ds_cnn"), ("cortex-m3", "resnet1d"),
              ("cortex-m3", "ds_cnn")]


@pytest.mark.parametrize("target_name,name", QEMU_CASES)
def test_graph_kernels_on_the_target_reproduce_tflite_micro(tmp_path, target_name, name):
    """In QEMU, a residual and a depthwise model with the real SMLABB / SXTAB16 /
    SMMULR on Cortex-M4 and the portable kernels on Cortex-M3: the golden int8
    outputs (TFLM's) bit for bit, the float ones within float rounding, and the
    self-test times every operator, Add and pooling included."""
    require_tools("arm-none-eabi-gcc", "arm-none-eabi-size", "qemu-system-arm")
    from toolchain.bench import bench_model
    from toolchain.targets import load_target

    target = load_target(target_name)
    network, state, x, path = graph_model(name)
    generate_c(network, state, tmp_path / "c", tflite_int8=path, golden_x=x[:4],
               kernels=target.int8_kernels)
    result = bench_model(tmp_path / "c", "model", target, tmp_path / "bench", timeout=60)
    assert result["int8"]["int8_max_abs_diff_q"] == 0 and result["int8"]["golden_count"] == 4
    assert result["float"]["parity_max_abs_diff"] < 1e-4
    kinds = [row["kind"] for row in result["int8"]["layers"]]
    assert ("add" in kinds) == (name == "resnet1d") and ("dwconv" in kinds) == (name == "ds_cnn")
    assert "avgpool" in kinds and all(r["instructions"] > 0 for r in result["int8"]["layers"])
