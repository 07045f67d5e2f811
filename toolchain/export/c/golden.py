"""Golden vectors for an on-target self-test (``NAME_golden.h``).

The float arrays hold inputs in PyTorch's layout and the logits PyTorch
computes; the label is the class PyTorch predicts. With an int8 model the
int8 arrays hold the same inputs quantized the way TFLite's QUANTIZE kernel
does (in the .tflite input layout, NHWC for images) and the int8 outputs of
the TFLite Micro interpreter for them: the C code must reproduce these bit
for bit.

>>> quantize(np.array([0.5, -1.0, 2.0]), 0.01, -3).tolist()
[47, -103, 127]
"""

from __future__ import annotations

import numpy as np

from toolchain.errors import VstError
from toolchain.export.c.arrays import c_values
from toolchain.export.c.template import render
from toolchain.export.c.tflite_graph import FLOAT32, Graph, Tensor


def quantize(x: np.ndarray, scale: float, zero_point: int) -> np.ndarray:
    """float -> int8 as TFLite's QUANTIZE kernel: round half away from zero, clamp."""
    v = np.asarray(x, dtype=np.float32) / np.float32(scale)
    rounded = np.sign(v) * np.floor(np.abs(v) + np.float32(0.5))
    return np.clip(rounded + zero_point, -128, 127).astype(np.int8)


def reference_logits(network, state, x: np.ndarray) -> np.ndarray:
    """PyTorch logits (eval mode, float32) of ``x``."""
    import torch

    from toolchain.models.torch_build import build_torch

    module = build_torch(network, state).eval()
    with torch.no_grad():
        return module(torch.from_numpy(np.asarray(x, np.float32))).numpy()


def to_tflite_layout(x: np.ndarray, tflite_shape: tuple[int, ...]) -> np.ndarray:
    """Samples (N, C, ...) in the layout of a .tflite input of ``tflite_shape`` (1, ...)."""
    sample = tuple(tflite_shape[1:])
    last = np.moveaxis(x, 1, -1) if x.ndim > 2 else x
    if last.shape[1:] == sample:
        return np.ascontiguousarray(last)
    if x.shape[1:] == sample:
        return np.ascontiguousarray(x)
    raise VstError(f"the int8 model's input {tuple(tflite_shape)} does not match "
                   f"the network's input {x.shape[1:]}")


def tflm_int8_outputs(graph: Graph, q_in: np.ndarray, io: tuple[Tensor, Tensor]) -> np.ndarray:
    """int8 outputs of the TFLite Micro interpreter for int8 inputs ``q_in`` (N, ...).

    A model with float input / output edges gets the dequantized input and its
    float output is quantized back (exact: both are multiples of the scale)."""
    from tflite_micro.python.tflite_micro import runtime

    interpreter = runtime.Interpreter.from_bytes(graph.raw)
    x_t, y_t = io
    float_in = graph.tensor(graph.inputs[0]).dtype == FLOAT32
    float_out = graph.tensor(graph.outputs[0]).dtype == FLOAT32
    outputs = []
    for sample in q_in:
        feed = sample[None]
        if float_in:
            feed = np.float32(x_t.scale) * (feed.astype(np.float32) - np.float32(x_t.zero_point))
        interpreter.set_input(feed, 0)
        interpreter.invoke()
        y = np.array(interpreter.get_output(0), copy=True).ravel()
        outputs.append(quantize(y, y_t.scale, y_t.zero_point) if float_out else y)
    return np.array(outputs, dtype=np.int8).reshape(len(q_in), -1)


def _rows(values: np.ndarray, ctype: str) -> str:
    return ",\n".join("    {\n" + c_values(row, ctype, indent="        ") + "\n    }"
                      for row in values)


def render_golden(*, banner: str, name: str, x: np.ndarray, logits: np.ndarray,
                  q_in: np.ndarray | None = None, q_out: np.ndarray | None = None) -> str:
    """The text of ``NAME_golden.h``; the int8 arrays only with ``q_in`` / ``q_out``."""
    count = len(x)
    names = dict(name=name, NAME=name.upper(), count=count)
    int8_include = int8_arrays = ""
    if q_in is not None:
        int8_include = f'#include "{name}_int8.h"\n'
        int8_arrays = render("golden_int8.h.in", **names,
                             golden_in_q=_rows(q_in.reshape(count, -1), "int8_t"),
                             golden_out_q=_rows(q_out.reshape(count, -1), "int8_t"))
    return render("golden.h.in", banner=banner, **names, int8_include=int8_include,
                  int8_arrays=int8_arrays,
                  golden_in=_rows(x.reshape(count, -1), "float"),
                  golden_out=_rows(logits.reshape(count, -1), "float"),
                  golden_label=c_values(np.argmax(logits, axis=1), "int"))
