"""Export stage: the layer list to ONNX, VNN-LIB and TFLite (C lives in ``c``).

Submodules, each imported only when that format is asked for (they pull in
torch, onnx or tensorflow):

- ``onnx``: ``export_onnx(model, path)`` and ``onnx_parity(model, path, x)``;
- ``vnnlib``: ``write_vnnlib(out_dir, onnx_name, x, y, eps)`` (VNN-COMP properties);
- ``keras_build`` / ``tflite``: the layer list rebuilt in Keras (NHWC), converted
  to float32 and full-integer int8 ``.tflite``, run with LiteRT or TFLM.
"""

from __future__ import annotations

from pathlib import Path


def artifact_sizes(paths: dict[str, Path]) -> dict[str, int]:
    """Size in bytes of each artifact file (a folder counts the files inside it).

    >>> artifact_sizes({})
    {}
    """
    sizes = {}
    for key, path in paths.items():
        path = Path(path)
        if path.is_dir():
            sizes[key] = sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
        else:
            sizes[key] = path.stat().st_size
    return sizes
