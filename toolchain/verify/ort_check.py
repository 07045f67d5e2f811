"""Counterexamples re-checked on onnxruntime: the ONNX file as written.

vst verifies its own import of an ONNX network (``models.onnx_import``); a
VNN-COMP judge runs the file itself with onnxruntime. So before a ``sat`` is
reported, its input also goes through onnxruntime, fed in the graph's own
input shape (free axes set to 1), and the outputs must be unsafe there too.
An import bug (a wrong axis order, say) then shows as a refused
counterexample, never as a wrong ``sat``.

>>> run = OrtRunner("net.onnx")              # doctest: +SKIP
>>> run(x_flat).shape                        # doctest: +SKIP
(10,)
"""

from __future__ import annotations

import math

import numpy as np

from toolchain.errors import VstError

# onnxruntime's names of the input element types vst can feed
INPUT_TYPES = {"tensor(float)": np.float32, "tensor(double)": np.float64,
               "tensor(float16)": np.float16}


class OrtRunner:
    """One onnxruntime session of an ONNX file (CPU, one thread)."""

    def __init__(self, path) -> None:
        from toolchain.export.onnx import ort_session

        self.session = ort_session(path)
        first = self.session.get_inputs()[0]
        self.name = first.name
        self.shape = [d if isinstance(d, int) and d > 0 else 1 for d in first.shape]
        if first.type not in INPUT_TYPES:
            raise VstError(f"{path}: input {first.name!r} is {first.type}; vst feeds float "
                           f"inputs ({', '.join(INPUT_TYPES)})")
        self.dtype = INPUT_TYPES[first.type]

    def __call__(self, x: np.ndarray) -> np.ndarray:
        """The first output, flattened, for one input ``x`` (any shape, C order),
        fed in the graph's own input type (a float32 counterexample is exact in
        float64; a float16 graph gets it rounded, as it would from any caller)."""
        x = np.asarray(x, np.float32).reshape(-1)
        if x.size != math.prod(self.shape):
            raise VstError(f"onnxruntime input {self.name!r} takes {self.shape}, "
                           f"got {x.size} values")
        feed = x.astype(self.dtype).reshape(self.shape)
        return np.asarray(self.session.run(None, {self.name: feed})[0],
                          np.float64).reshape(-1)


def unsafe_on_onnxruntime(runner: OrtRunner, prop, x) -> tuple[bool, np.ndarray]:
    """Whether onnxruntime's outputs on ``x`` meet the property's unsafe region."""
    y = runner(x)
    return prop.unsafe(y), y
