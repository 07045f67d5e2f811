"""Export stage: the layer list to ONNX, VNN-LIB and TFLite (C lives in ``c``).

Submodules, each imported only when that format is asked for (they pull in
torch, onnx or tensorflow):

- ``onnx``: ``export_onnx(model, path)`` and ``onnx_parity(model, path, x)``;
- ``vnnlib``: ``write_vnnlib(out_dir, onnx_name, x, y, eps)`` (VNN-COMP properties);
- ``keras_build`` / ``tflite``: the network (any DAG of vst's layers) rebuilt in
  Keras (NHWC), converted to float32 and full-integer int8 ``.tflite``, run with
  LiteRT or TFLM.
"""

from __future__ import annotations

from pathlib import Path

from toolchain.errors import VstError


def same_padding_matches(size: int, kernel: int, stride: int, padding: int) -> bool:
    """True when TF's ``padding="same"`` equals PyTorch's symmetric ``padding``.

    >>> same_padding_matches(28, 4, 2, 1), same_padding_matches(64, 5, 2, 2)
    (True, False)
    """
    torch_out = (size + 2 * padding - kernel) // stride + 1
    same_out = -(-size // stride)
    total = max((same_out - 1) * stride + kernel - size, 0)
    return torch_out == same_out and total // 2 == padding


def check_exportable(network, what: str) -> None:
    """VstError, one line naming the first layer ``what`` (TFLite, C) cannot
    export, before any work is done; ONNX exports every network.

    TFLite and C take every layer kind, wired as any DAG, except a grouped
    convolution that is not depthwise (TFLite Micro has no grouped CONV_2D)
    and a padded max pooling that TF's "same" padding does not reproduce (TF
    pads max pooling with -inf only as "same"; zeros would change the maximum).

    >>> from toolchain.models.layers import Conv2d, Network
    >>> check_exportable(Network((4, 6, 6), (Conv2d(4, 4, 3, groups=2),)), "TFLite")
    Traceback (most recent call last):
    toolchain.errors.VstError: TFLite export: layer 0 (conv2d with groups 2) is not supported by the TFLite and C exporters (a grouped convolution must be depthwise: groups = in_channels); export onnx instead
    """
    from toolchain.models import layers as L

    in_shapes = network.in_shapes()
    for i, layer in enumerate(network.layers):
        groups = getattr(layer, "groups", 1)
        if groups != 1 and groups != layer.in_channels:
            raise VstError(f"{what} export: layer {i} ({layer.kind} with groups {groups}) is not "
                           "supported by the TFLite and C exporters (a grouped convolution must "
                           "be depthwise: groups = in_channels); export onnx instead")
        if isinstance(layer, (L.MaxPool2d, L.MaxPool1d)) and layer.padding and not all(
                same_padding_matches(s, layer.kernel, layer.stride, layer.padding)
                for s in in_shapes[i][1:]):
            raise VstError(f"{what} export: layer {i} ({layer.kind} with padding "
                           f"{layer.padding}) pads where TF's \"same\" max pooling would not; "
                           "use padding 0 or a size that TF pads alike; export onnx instead")


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
