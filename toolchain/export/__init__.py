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

from toolchain.errors import VstError

# What the TFLite and C exporters know: chains of these kinds, no grouped convolution.
# Graph operators (Add, pooling, depthwise) reach TFLite and C in a later issue.
CHAIN_KINDS = ("normalize", "conv2d", "conv1d", "linear", "batchnorm", "relu", "flatten")


def check_exportable(network, what: str) -> None:
    """VstError, one line naming the first operator ``what`` (TFLite, C) cannot
    export, before any work is done; ONNX exports every network.

    >>> from toolchain.models.layers import Add, Network, ReLU
    >>> check_exportable(Network((2,), (ReLU(), Add()), ((-1,), (-1, 0))), "TFLite")
    Traceback (most recent call last):
    toolchain.errors.VstError: TFLite export: layer 1 (add) is not supported by the TFLite and C exporters yet; export onnx instead
    """
    for i, layer in enumerate(network.layers):
        kind = layer.kind if getattr(layer, "groups", 1) == 1 else f"grouped {layer.kind}"
        if kind not in CHAIN_KINDS:
            raise VstError(f"{what} export: layer {i} ({kind}) is not supported by the TFLite "
                           "and C exporters yet; export onnx instead")
    if not network.is_chain:
        raise VstError(f"{what} export: branching networks are not supported by the TFLite "
                       "and C exporters yet; export onnx instead")


def exportable_formats(network, formats) -> tuple[list[str], dict[str, str]]:
    """The formats of ``formats`` this network can be exported to, and for each
    one it cannot, why (what ``vst build`` skips on a graph network)."""
    keep, skipped = [], {}
    for fmt in formats:
        try:
            if fmt in ("tflite", "c"):
                check_exportable(network, {"tflite": "TFLite", "c": "C"}[fmt])
            keep.append(fmt)
        except VstError as exc:
            skipped[fmt] = str(exc)
    return keep, skipped


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
