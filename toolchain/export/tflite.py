"""TFLite export: float32 and full-integer int8 flatbuffers, and two runtimes.

The .tflite models are channels-last with batch 1: input ``(1, H, W, C)``
(``(1, L, C)`` for signals). Every function here takes and returns PyTorch
layouts: inputs are NCHW / NCL numpy arrays, transposed inside.

int8 follows the TFLite quantization spec (what the converter produces; the
tests read it back): per-channel symmetric int8 weights (zero point 0),
per-tensor asymmetric int8 activations, int32 biases with scale
``input_scale * weight_scale``; input and output tensors are int8 too (for
inputs in [0, 1] the input scale is about 1/255 with zero point -128).

Runtimes: ``"litert"`` runs ai_edge_litert with its reference kernels (no
XNNPACK); ``"tflm"`` the TFLite Micro interpreter, the kernels an MCU runs.
Their int8 results are identical except FULLY_CONNECTED requantization, which
LiteRT 2.3 rounds once and TFLM twice (gemmlowp style): a few
outputs differ by one step (``compare_runtimes``).

>>> out = export_tflite(model, "build", x_train[:300], name="model")  # doctest: +SKIP
>>> q = run_tflite(out["int8"], x_test, runtime="tflm")             # raw int8 logits
>>> logits = dequantize(q, *quant_params(out["int8"])["output"])
"""

from __future__ import annotations

import contextlib
import io
import time
import warnings
from pathlib import Path

import numpy as np

from toolchain.atomic import write_bytes
from toolchain.errors import VstError
from toolchain.export.calibration import calibration_set
from toolchain.export.keras_build import (build_keras, native_stderr, tensorflow_quiet,
                                          to_channels_last)

REPRESENTATIVE_SAMPLES = 300  # enough for stable activation ranges; conversion stays ~1 s
RUNTIMES = ("litert", "tflm")


def _tensorflow():
    with tensorflow_quiet():
        import tensorflow as tf
    return tf


def convert_float(keras_model) -> bytes:
    """The float32 flatbuffer of a Keras model."""
    tf = _tensorflow()
    converter = tf.lite.TFLiteConverter.from_keras_model(keras_model)
    with contextlib.redirect_stdout(io.StringIO()), tensorflow_quiet():
        return converter.convert()  # (it prints where it saved its temporary SavedModel)


def convert_int8(keras_model, representative_nhwc: np.ndarray) -> bytes:
    """The full-integer int8 flatbuffer, calibrated on channels-last samples."""
    tf = _tensorflow()
    converter = tf.lite.TFLiteConverter.from_keras_model(keras_model)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = lambda: ([x[None]] for x in representative_nhwc)
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    converter.inference_input_type = converter.inference_output_type = tf.int8
    with contextlib.redirect_stdout(io.StringIO()), tensorflow_quiet(), warnings.catch_warnings():
        # harmless: input statistics come from the representative data set
        warnings.filterwarnings("ignore", "Statistics for quantized inputs", UserWarning)
        return converter.convert()


def export_tflite(model, out_dir, representative: np.ndarray, *, name: str = "model",
                  samples: int = REPRESENTATIVE_SAMPLES) -> dict:
    """Write ``{name}_float.tflite`` and ``{name}_int8.tflite`` into ``out_dir``.

    ``representative`` is NCHW (or NCL) training data; ``samples`` of it
    (a fixed, seeded choice) calibrate the int8 activation ranges, without the
    few that would stretch a layer's range (``calibration.py``). Returns the two
    paths, the conversion time in seconds and how many samples were dropped:
    ``{"float": Path, "int8": Path, "seconds": s, "calibration_dropped": k}``.
    """
    representative = np.asarray(representative, dtype=np.float32)
    expected = tuple(model.network.input_shape)
    if representative.ndim < 2 or representative.shape[1:] != expected or not len(representative):
        raise VstError(f"tflite: representative data must be (N, {expected}), "
                       f"got {representative.shape}")
    if not np.all(np.isfinite(representative)):
        raise VstError("tflite: representative data contain NaN or infinity")
    start = time.perf_counter()
    keras_model = build_keras(model.network, model.state)
    paths = {"float": Path(out_dir) / f"{name}_float.tflite",
             "int8": Path(out_dir) / f"{name}_int8.tflite"}
    write_bytes(paths["float"], convert_float(keras_model))
    pick = np.sort(np.random.default_rng(0).permutation(len(representative))[:samples])
    calibration, dropped = calibration_set(keras_model, to_channels_last(representative[pick]))
    write_bytes(paths["int8"], convert_int8(keras_model, calibration))
    return {**paths, "seconds": time.perf_counter() - start, "calibration_dropped": dropped}


def _io_details(path) -> tuple[dict, dict]:
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(path))
    return interpreter.get_input_details()[0], interpreter.get_output_details()[0]


def quant_params(path) -> dict[str, tuple[float, int]]:
    """``{"input": (scale, zero_point), "output": (scale, zero_point)}``; scale 0 for float."""
    pick = lambda d: (float(d["quantization"][0]), int(d["quantization"][1]))  # noqa: E731
    inp, out = _io_details(path)
    return {"input": pick(inp), "output": pick(out)}


def quantize(x: np.ndarray, scale: float, zero_point: int) -> np.ndarray:
    """float -> int8 as TFLite's QUANTIZE kernel does: round half away from zero, clamp."""
    v = np.asarray(x, dtype=np.float32) / np.float32(scale)
    rounded = np.sign(v) * np.floor(np.abs(v) + np.float32(0.5))
    return np.clip(rounded + zero_point, -128, 127).astype(np.int8)


def dequantize(q: np.ndarray, scale: float, zero_point: int) -> np.ndarray:
    """int8 -> float32: ``scale * (q - zero_point)``."""
    return (np.float32(scale) * (np.asarray(q, dtype=np.int32) - zero_point)).astype(np.float32)


def run_tflite(path, x_nchw: np.ndarray, *, runtime: str = "litert") -> np.ndarray:
    """Outputs (N, classes) of a .tflite model, one sample at a time.

    Float models take and return float32. int8 models take float inputs (they
    are quantized with the model's input parameters) or int8 inputs as they
    are, and return the *raw int8 outputs* (see ``dequantize``).
    ``runtime``: ``"litert"`` (ai_edge_litert, its reference kernels) or ``"tflm"``
    (the TFLite Micro interpreter and kernels, as on the MCU).
    """
    if runtime not in RUNTIMES:
        raise VstError(f"unknown TFLite runtime {runtime!r}; choose {' or '.join(RUNTIMES)}")
    path = Path(path)
    if not path.is_file():
        raise VstError(f"TFLite model not found: {path}")
    inp, _ = _io_details(path)
    x = np.asarray(x_nchw)
    if inp["dtype"] == np.int8 and x.dtype != np.int8:
        x = quantize(x, *inp["quantization"])
    x = (np.moveaxis(x, 1, -1) if x.ndim > 2 else x).astype(inp["dtype"])
    if x.ndim < 2 or not len(x) or tuple(x.shape[1:]) != tuple(inp["shape"][1:]):
        want = tuple(inp["shape"][1:])
        want = want[-1:] + want[:-1] if len(want) > 1 else want  # back to channels-first
        raise VstError(f"{path.name}: inputs must be (N, {', '.join(map(str, want))}), "
                       f"got {np.shape(x_nchw)}")
    invoke = _litert(path.read_bytes()) if runtime == "litert" else _tflm(path.read_bytes())
    return np.concatenate([invoke(np.ascontiguousarray(sample[None])) for sample in x])


def _litert(data: bytes):
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    # Reference kernels, no XNNPACK: XNNPACK's int8 requantization may differ by one
    # step from the TFLite reference arithmetic that TFLM and our C code follow.
    interpreter = Interpreter(model_content=data, num_threads=1,
                              experimental_op_resolver_type=OpResolverType.BUILTIN_REF)
    interpreter.allocate_tensors()
    inp = interpreter.get_input_details()[0]["index"]
    out = interpreter.get_output_details()[0]["index"]

    def invoke(sample):
        interpreter.set_tensor(inp, sample)
        interpreter.invoke()
        return interpreter.get_tensor(out).copy()
    return invoke


def _tflm(data: bytes):
    from tflite_micro.python.tflite_micro import runtime

    interpreter = runtime.Interpreter.from_bytes(data)

    def invoke(sample):
        interpreter.set_input(sample, 0)
        interpreter.invoke()
        return np.array(interpreter.get_output(0), copy=True)
    return invoke


def tflm_arena(path) -> dict[str, int]:
    """The tensor arena TFLite Micro uses for the model after one inference (all
    zero input), as its RecordingMicroAllocator reports it (the Python
    interpreter has no ``arena_used_bytes``; it prints the same totals):
    ``total`` (= ``arena_used_bytes``), ``head`` (the planned tensors and
    scratch buffers) and ``tail`` (persistent: tensor and node structs,
    per-channel quantization data)."""
    import re

    from tflite_micro.python.tflite_micro import runtime

    interpreter = runtime.Interpreter.from_bytes(Path(path).read_bytes())
    detail = interpreter.get_input_details(0)
    interpreter.set_input(np.zeros(detail["shape"], detail["dtype"]), 0)
    interpreter.invoke()
    with native_stderr() as text:
        interpreter.print_allocations()
    found = dict(re.findall(r"Arena allocation (total|head|tail) (\d+) bytes", "".join(text)))
    if set(found) != {"total", "head", "tail"}:
        raise VstError(f"{Path(path).name}: TFLite Micro did not report its arena")
    return {k: int(v) for k, v in found.items()}


def compare_runtimes(path, x_nchw: np.ndarray) -> dict:
    """How closely LiteRT and TFLM agree on an int8 model's raw outputs.

    Same int8 arithmetic except FULLY_CONNECTED requantization (see the module
    docstring), so a few outputs may differ by one step. Keys: ``max_step_diff``,
    ``equal_fraction`` (of output values), ``top1_agreement``.
    """
    litert = run_tflite(path, x_nchw, runtime="litert").astype(np.int32)
    tflm = run_tflite(path, x_nchw, runtime="tflm").astype(np.int32)
    return {"max_step_diff": int(np.max(np.abs(litert - tflm))),
            "equal_fraction": float(np.mean(litert == tflm)),
            "top1_agreement": float(np.mean(litert.argmax(1) == tflm.argmax(1)))}


def tflite_report(model, paths: dict, x_nchw: np.ndarray, y: np.ndarray | None = None, *,
                  runtime: str = "litert") -> dict:
    """Float parity and int8 agreement of exported models on ``x`` (NCHW).

    Keys: ``float_max_abs_diff`` (float TFLite vs PyTorch logits),
    ``int8_agreement`` (top-1 of int8 == top-1 of float TFLite),
    ``int8_max_abs_diff`` (dequantized int8 vs PyTorch), and with labels
    ``y``: ``torch_acc``, ``float_acc``, ``int8_acc``.
    """
    import torch

    x = np.asarray(x_nchw, dtype=np.float32)
    with torch.no_grad():
        reference = model.torch_module().eval()(torch.from_numpy(x)).numpy()
    floats = run_tflite(paths["float"], x, runtime=runtime)
    ints = dequantize(run_tflite(paths["int8"], x, runtime=runtime),
                      *quant_params(paths["int8"])["output"])
    report = {"float_max_abs_diff": float(np.max(np.abs(floats - reference))),
              "int8_max_abs_diff": float(np.max(np.abs(ints - reference))),
              "int8_agreement": float(np.mean(ints.argmax(1) == floats.argmax(1)))}
    if y is not None:
        for key, logits in (("torch_acc", reference), ("float_acc", floats), ("int8_acc", ints)):
            report[key] = float(np.mean(logits.argmax(1) == np.asarray(y)))
    return report
