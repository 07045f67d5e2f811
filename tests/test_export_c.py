"""Float32 C generation: compiled with gcc and compared with PyTorch.

Models: mlp, cnn_small with BatchNorm (random running statistics, folded at
generation), conv1d; each dense and with 90% of every weight matrix masked to
zero (unstructured 10% density, the case sparse storage exists for), trained
for a moment so the logits depend on the input. Small hand-made networks hit
the edges of the kernels' tiles: channel and pixel counts that are not
multiples of four, stride 2 with padding, 1x1 and border-heavy convolutions,
Conv1d, Normalize first, fully connected widths that leave 4 and 1 rows.
"""

from __future__ import annotations

import functools
import re
import shutil
import subprocess

import numpy as np
import pytest
import torch

from conftest import require_tools
from toolchain.errors import VstError
from toolchain.export.c import generate_c
from toolchain.export.c.arrays import Storage, float_literal, index_type
from toolchain.export.c.float_gen import PIX
from toolchain.models.layers import (BatchNorm, Conv1d, Conv2d, Flatten, Linear, Network,
                                     Normalize, ReLU)
from toolchain.models.torch_build import build_torch
from toolchain.models.zoo import build_network

CFLAGS = ["-std=c99", "-Wall", "-Wextra", "-Werror", "-pedantic", "-O2"]
N_SAMPLES = 64

FLOAT_HARNESS = r"""
#include <stdio.h>
#include "model.h"
/* Reads float inputs from stdin until EOF, writes float outputs to stdout. */
int main(void)
{
    static float x[VST_MODEL_INPUT_SIZE];
    float y[VST_MODEL_OUTPUT_SIZE];
    while (fread(x, sizeof x[0], VST_MODEL_INPUT_SIZE, stdin) == VST_MODEL_INPUT_SIZE) {
        if (vst_model_infer(x, y) != 0) {
            return 1;
        }
        fwrite(y, sizeof y[0], VST_MODEL_OUTPUT_SIZE, stdout);
    }
    return 0;
}
"""


def compile_program(out_dir, sources, harness: str, exe: str = "prog", flags=()) -> str:
    """Compile the harness with the generated ``sources`` using host gcc; the binary path."""
    require_tools("gcc")
    (out_dir / f"{exe}_main.c").write_text(harness)
    binary = out_dir / exe
    cmd = ["gcc", *CFLAGS, *flags, "-I", str(out_dir), str(out_dir / f"{exe}_main.c"),
           *[str(s) for s in sources], "-o", str(binary), "-lm"]
    result = subprocess.run(cmd, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    return str(binary)


def run_program(binary: str, data: np.ndarray, out_dtype, n_out: int) -> np.ndarray:
    result = subprocess.run([binary], input=np.ascontiguousarray(data).tobytes(),
                            capture_output=True, check=True, timeout=60)
    return np.frombuffer(result.stdout, dtype=out_dtype).reshape(len(data), n_out)


def header_macros(path) -> dict[str, str]:
    return dict(re.findall(r"#define (VST_\w+) (\S+)", path.read_text()))


def random_state(network: Network, density: float, seed: int = 0) -> dict:
    """Torch's initial weights (realistic scale), random BN statistics, and an
    unstructured mask keeping ``density`` of each Conv/Linear weight."""
    torch.manual_seed(seed)
    state = build_torch(network).state_dict()
    gen = torch.Generator().manual_seed(seed + 1)
    for key, value in state.items():
        if key.endswith("running_var"):
            value.copy_(torch.rand(value.shape, generator=gen) * 1.5 + 0.5)
        elif key.endswith("running_mean"):
            value.copy_(torch.randn(value.shape, generator=gen) * 0.1)
        elif key.endswith(".weight") and value.ndim == 1:   # BN gamma
            value.copy_(torch.rand(value.shape, generator=gen) + 0.5)
        elif key.endswith(".bias") and key[:-4] + "running_mean" in state:   # BN beta
            value.copy_(torch.randn(value.shape, generator=gen) * 0.1)
        elif key.endswith(".weight") and density < 1.0:
            value.mul_((torch.rand(value.shape, generator=gen) < density).float())
    return state


def fit(network: Network, state: dict, x: np.ndarray, y: np.ndarray, steps: int = 60) -> dict:
    """A few seconds of plain training (Adam, cross-entropy) that keeps zero weights
    zero, so activations and logits become data-dependent as in a real model."""
    module = build_torch(network, state).train()
    masks = {n: (p != 0).float() for n, p in module.named_parameters() if p.ndim > 1}
    optimizer = torch.optim.Adam(module.parameters(), lr=3e-3)
    gen = torch.Generator().manual_seed(0)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    for _ in range(steps):
        batch = torch.randint(0, len(xt), (64,), generator=gen)
        loss = torch.nn.functional.cross_entropy(module(xt[batch]), yt[batch])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        with torch.no_grad():
            for name, param in module.named_parameters():
                if name in masks:
                    param.mul_(masks[name])
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


NETWORKS = {
    "mlp": (lambda: build_network("mlp", (1, 28, 28), 10, widths=(32, 16)), "mnist5k"),
    "cnn_small_bn": (lambda: build_network("cnn_small", (1, 28, 28), 10, channels=(4, 8),
                                           widths=(16,), batchnorm=True), "mnist5k"),
    "conv1d": (lambda: build_network("conv1d", (1, 64), 4, channels=(4, 8), widths=(16,)),
               "synth1d"),
}


@functools.cache
def dataset(name: str):
    from toolchain.data import load_dataset

    return load_dataset(name)


@functools.cache
def trained(arch: str, density: float) -> tuple[Network, dict, np.ndarray]:
    """(network, briefly trained state, N_SAMPLES test inputs); cached across tests."""
    build, data_name = NETWORKS[arch]
    network, data = build(), dataset(data_name)
    state = fit(network, random_state(network, density, seed=7),
                data.x_train[:800], data.y_train[:800])
    return network, state, data.x_test[:N_SAMPLES]


def float_outputs(tmp_path, network, state, x, flags=(), **kwargs) -> tuple[np.ndarray, dict]:
    result = generate_c(network, state, tmp_path, **kwargs)
    binary = compile_program(tmp_path, [result["files"]["c"]], FLOAT_HARNESS, flags=flags)
    return run_program(binary, x, np.float32, network.num_classes), result


# Shapes chosen against the tiles (4 channels x 4 pixels, 8/4/1 output rows).
EDGE_NETWORKS = {
    # Normalize first; 3 -> 5 channels, 3x3 stride 2 padding 1: 5x5 = 25 pixels;
    # a 1x1 conv to 7 channels; fully connected 175 -> 13 (8 + 4 + 1 rows) -> 3.
    "odd_2d": Network((3, 9, 9), (
        Normalize((0.5, 0.4, 0.3), (0.25, 0.5, 2.0)), Conv2d(3, 5, 3, 2, 1), ReLU(),
        Conv2d(5, 7, 1), ReLU(), Flatten(), Linear(175, 13), ReLU(), Linear(13, 3))),
    # Conv1d, kernel 5 stride 2 padding 2 on 37 samples (19 out), then kernel 3.
    "odd_1d": Network((2, 37), (
        Conv1d(2, 6, 5, 2, 2), ReLU(), Conv1d(6, 3, 3, 1, 1), ReLU(), Flatten(),
        Linear(57, 10))),
    # Mostly border: 5x5 kernel, stride 3, padding 2 on 8x8 (3x3 out); 2 channels.
    "border": Network((1, 8, 8), (
        Conv2d(1, 2, 5, 3, 2), ReLU(), Conv2d(2, 9, 3, 1, 1), ReLU(), Flatten(),
        Linear(81, 4))),
}


def edge_case(arch: str, density: float) -> tuple[Network, dict, np.ndarray]:
    network = EDGE_NETWORKS[arch]
    x = np.random.default_rng(3).standard_normal((16, *network.input_shape)).astype(np.float32)
    return network, random_state(network, density, seed=5), x


@pytest.mark.parametrize("density", [1.0, 0.3])
@pytest.mark.parametrize("arch", list(EDGE_NETWORKS))
def test_float_c_edge_geometries_match_pytorch(tmp_path, arch, density):
    network, state, x = edge_case(arch, density)
    with torch.no_grad():
        expected = build_torch(network, state).eval()(torch.from_numpy(x)).numpy()
    got, _ = float_outputs(tmp_path, network, state, x)
    assert np.max(np.abs(got - expected)) < 1e-4 * max(1.0, float(np.max(np.abs(expected))))
    assert np.std(expected) > 0.01


@pytest.mark.parametrize("fused", [False, True], ids=["mul_add", "fmaf"])
@pytest.mark.parametrize("arch", list(EDGE_NETWORKS))
def test_dense_and_sparse_identical_on_edge_geometries(tmp_path, arch, fused):
    """Also with the fused multiply-add the Cortex-M4 build uses (``fmaf``, here
    from libm: defining the Arm feature macro selects that branch on the host)."""
    network, state, x = edge_case(arch, 0.3)
    flags = ["-D__ARM_FEATURE_FMA=1"] if fused else []
    outputs = {storage: float_outputs(tmp_path / storage, network, state, x, flags=flags,
                                      storage=storage)[0]
               for storage in ("dense", "sparse")}
    assert np.array_equal(outputs["dense"], outputs["sparse"])
    with torch.no_grad():
        expected = build_torch(network, state).eval()(torch.from_numpy(x)).numpy()
    assert np.max(np.abs(outputs["dense"] - expected)) < 1e-4 * max(1.0, np.abs(expected).max())


@pytest.mark.parametrize("density", [1.0, 0.1])
@pytest.mark.parametrize("arch", list(NETWORKS))
def test_float_c_matches_pytorch(tmp_path, arch, density):
    network, state, x = trained(arch, density)
    with torch.no_grad():
        expected = build_torch(network, state).eval()(torch.from_numpy(x)).numpy()
    got, result = float_outputs(tmp_path, network, state, x)
    assert np.max(np.abs(got - expected)) < 1e-4
    assert np.std(expected) > 0.1                      # the logits are not trivial
    kinds = {row["storage"] for row in result["float"]["layers"]}
    assert kinds == ({"dense"} if density == 1.0 else {"sparse"})


@pytest.mark.parametrize("arch", list(NETWORKS))
def test_dense_and_sparse_storage_give_identical_outputs(tmp_path, arch):
    network, state, x = trained(arch, 0.1)
    outputs = {}
    for storage in ("dense", "sparse"):
        outputs[storage], result = float_outputs(tmp_path / storage, network, state, x,
                                                 storage=storage)
        assert {row["storage"] for row in result["float"]["layers"]} == {storage}
    assert np.array_equal(outputs["dense"], outputs["sparse"])


def test_sparse_storage_is_smaller_at_10_percent_density(tmp_path):
    network = NETWORKS["mlp"][0]()
    state = random_state(network, 0.1)
    dense = generate_c(network, state, tmp_path / "d", storage="dense")["float"]
    auto = generate_c(network, state, tmp_path / "a")["float"]
    assert auto["weight_bytes"] < 0.25 * dense["weight_bytes"]
    for row in auto["layers"]:
        assert row["sparse_bytes"] < row["dense_bytes"]
        assert row["nnz"] < 0.2 * np.prod(row["shape"])
    macros = header_macros(tmp_path / "a" / "model.h")
    assert int(macros["VST_MODEL_WEIGHT_BYTES"]) == auto["weight_bytes"]


def test_auto_storage_takes_csr_only_below_the_break_even_density(tmp_path):
    from toolchain.export.c.float_gen import SPARSE_BELOW

    network = EDGE_NETWORKS["odd_2d"]
    seen = set()
    for density in (0.3, 0.5, 0.7):
        layers = generate_c(network, random_state(network, density), tmp_path / str(density),
                            storage="auto")["float"]["layers"]
        for row in layers:
            kind = row["layer"].split(":")[1]
            below = row["nnz"] / np.prod(row["shape"]) < SPARSE_BELOW[kind]
            expect = "sparse" if below and row["sparse_bytes"] < row["dense_bytes"] else "dense"
            assert row["storage"] == expect, (density, row)
            seen.add((density, kind, row["storage"]))
    # SPARSE_BELOW (cycles, benchmarks/csr_breakeven.py): conv 0.62, fully connected
    # 0.46: at 0.5 the convolutions are CSR and the large FC dense
    assert {(0.3, "conv", "sparse"), (0.5, "conv", "sparse"), (0.5, "dense", "dense"),
            (0.7, "conv", "dense"), (0.7, "dense", "dense")} <= seen, seen


def test_header_sizes_and_liveness_arena(tmp_path):
    network = NETWORKS["cnn_small_bn"][0]()
    result = generate_c(network, random_state(network, 1.0), tmp_path, name="digits")
    macros = header_macros(tmp_path / "digits.h")
    assert macros["VST_DIGITS_INPUT_SIZE"] == "784"
    assert macros["VST_DIGITS_OUTPUT_SIZE"] == "10"
    # conv1 (4x14x14) at 0 and conv2 (8x7x7) after it are live together; fc1 (16)
    # reuses conv1's place; logits go to output; the im2col scratch holds PIX
    # patches of conv2 (4 channels x 4x4 taps)
    assert int(macros["VST_DIGITS_ARENA_BYTES"]) == 4 * (4 * 14 * 14 + 8 * 7 * 7 + PIX * 64)
    assert result["float"]["arena_bytes"] == 4 * (784 + 392 + PIX * 64)
    assert result["float"]["activation_bytes"] == 4 * (784 + 392)
    source = (tmp_path / "digits.c").read_text()
    assert "malloc" not in source and "int vst_digits_infer(const float *input" in source
    assert "static const float l0_w[" in source
    assert "static float vst_arena[1176] VST_ALIGN(4) VST_ARENA_ATTR;" in source
    assert "input, vst_arena + 0, patch);" in source          # conv1 writes at 0
    assert "vst_arena + 784, patch);" in source               # conv2 after it
    assert "vst_arena + 0);" in source and ", output);" in source
    assert f"#define VST_PIX {PIX}\n" in source
    assert f"static float patch[{PIX * 64}] VST_ALIGN(4) VST_ARENA_ATTR;" in source
    for key, path in result["files"].items():
        mark = '{\n "generated_by": "vst ' if key == "ops" else "/* generated by vst "
        assert path.read_text().startswith(mark)


GOLDEN_HARNESS = r"""
#include <math.h>
#include <stdio.h>
#include "model_golden.h"
/* On-target style self-test: prints the number of failing golden samples. */
int main(void)
{
    float y[VST_MODEL_OUTPUT_SIZE];
    int s, i, failures = 0;
    for (s = 0; s < VST_MODEL_GOLDEN_COUNT; ++s) {
        int best = 0, bad = 0;
        vst_model_infer(vst_model_golden_in[s], y);
        for (i = 0; i < VST_MODEL_OUTPUT_SIZE; ++i) {
            bad |= fabsf(y[i] - vst_model_golden_out[s][i]) > 1e-4f;
            best = y[i] > y[best] ? i : best;
        }
        failures += bad || best != vst_model_golden_label[s];
    }
    printf("%d\n", failures);
    return 0;
}
"""


def test_golden_header_self_test_passes(tmp_path):
    network, state, x = trained("conv1d", 0.1)
    result = generate_c(network, state, tmp_path, golden_x=x[:20])
    assert result["golden_count"] == 20
    golden = result["files"]["golden"].read_text()
    assert "#define VST_MODEL_GOLDEN_COUNT 20" in golden and "golden_in_q" not in golden
    binary = compile_program(tmp_path, [result["files"]["c"]], GOLDEN_HARNESS)
    assert subprocess.run([binary], capture_output=True, text=True).stdout.strip() == "0"


ARRAY_HARNESS = r"""
#include <stdint.h>
#include <stdio.h>
#include "m_model_data.h"
int main(void)
{
    unsigned int i, sum = 0;
    for (i = 0; i < g_m_model_data_size; ++i) {
        sum = sum * 31u + g_m_model_data[i];
    }
    printf("%u %u %u\n", g_m_model_data_size, sum, (unsigned)((uintptr_t)g_m_model_data % 16u));
    return 0;
}
"""


@pytest.mark.parametrize("std", ["c99", "c11", "c++11"])
def test_model_data_array_holds_the_flatbuffer_aligned(tmp_path, std):
    payload = bytes(range(256)) * 3 + b"TFL3"
    (tmp_path / "m.tflite").write_bytes(payload)
    network = NETWORKS["mlp"][0]()
    files = generate_c(network, random_state(network, 1.0), tmp_path, name="m",
                       tflite_for_array=tmp_path / "m.tflite")["files"]
    assert "extern const unsigned char g_m_model_data[];" in files["model_data_h"].read_text()
    source = files["model_data_c"]
    assert "alignas(16) const unsigned char g_m_model_data[]" in source.read_text()
    cplusplus = std.startswith("c++")
    compiler = ["g++", "-x", "c++"] if cplusplus else ["gcc"]
    if shutil.which(compiler[0]) is None:
        pytest.skip(f"{compiler[0]} missing")
    (tmp_path / "main.c").write_text(ARRAY_HARNESS)
    binary = tmp_path / "arr"
    cmd = [*compiler, f"-std={std}", "-Wall", "-Wextra", "-Werror", "-pedantic",
           "-I", str(tmp_path), str(tmp_path / "main.c"), str(source), "-o", str(binary)]
    subprocess.run(cmd, check=True, capture_output=True)
    out = subprocess.run([str(binary)], capture_output=True, text=True, check=True).stdout
    expected = 0
    for b in payload:
        expected = (expected * 31 + b) % 2**32
    assert out.split() == [str(len(payload)), str(expected), "0"]


def test_bad_inputs_are_one_line_errors_and_write_nothing(tmp_path):
    network = NETWORKS["mlp"][0]()
    state = random_state(network, 1.0)
    with pytest.raises(VstError, match="not a C identifier"):
        generate_c(network, state, tmp_path / "a", name="2model")
    with pytest.raises(VstError, match="storage"):
        generate_c(network, state, tmp_path / "b", storage="csr")
    with pytest.raises(VstError, match="golden inputs"):
        generate_c(network, state, tmp_path / "c", golden_x=np.zeros((3, 1, 27, 28)))
    bad = dict(state)
    bad["1.weight"] = bad["1.weight"].clone()
    bad["1.weight"][0, 0] = float("nan")
    with pytest.raises(VstError, match="NaN"):
        generate_c(network, bad, tmp_path / "d")
    loose_bn = Network((8,), (Linear(8, 4), ReLU(), BatchNorm(4)))
    with pytest.raises(VstError, match="BatchNorm at layer 2"):
        generate_c(loose_bn, build_torch(loose_bn).state_dict(), tmp_path / "e")
    assert not any(tmp_path.rglob("*.[ch]"))


def test_storage_choice_and_literals():
    assert index_type(255) == ("uint8_t", 1) and index_type(65536) == ("uint32_t", 4)
    m = np.zeros((3, 300), np.float32)
    m[0, 299], m[2, 5] = 1.0, -2.0
    s = Storage.of(m)
    assert s.kind == "sparse" and s.index_ctype == "uint16_t"        # column 299 > 255
    assert s.row_ctype == "uint8_t"                                   # 2 nonzeros
    assert list(s.row_ptr) == [0, 1, 1, 2] and list(s.cols) == [299, 5]
    assert s.sparse_bytes == 2 * 4 + 2 * 2 + 4 * 1
    wide = np.zeros((2, 200), np.float32)
    wide[:, :150] = 1.0                                               # 300 nonzeros
    w = Storage.of(wide, "sparse")
    assert (w.index_ctype, w.row_ctype) == ("uint8_t", "uint16_t") and w.types == "uint8_uint16"
    assert w.sparse_bytes == 300 * (4 + 1) + 3 * 2
    assert Storage.of(np.ones((2, 2), np.float32)).kind == "dense"
    for v in (0.1, -3.4028235e38, 1e-45, 0.0, 123456.7, 2.0 ** -20):
        text = float_literal(v)
        assert text.endswith("f") and np.float32(float(text[:-1])) == np.float32(v)
    with pytest.raises(VstError):
        float_literal(float("inf"))
