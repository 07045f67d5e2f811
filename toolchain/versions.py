"""What makes a run reproducible: vst's version and each library's, read from
package metadata (no imports, so it is cheap)."""

from __future__ import annotations

import platform
from importlib import metadata

from toolchain import __version__

LIBRARIES = ("torch", "numpy", "auto-lirpa", "onnx", "onnxruntime", "tensorflow-cpu",
             "ai-edge-litert", "tflite-micro", "safetensors", "click")


def versions() -> dict[str, str]:
    out = {"vst": __version__, "python": platform.python_version()}
    for name in LIBRARIES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out
