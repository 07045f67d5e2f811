"""MNIST-style IDX files (``*-ubyte``, plain or ``.gz``).

The spec is either an images file, e.g. ``train-images-idx3-ubyte.gz``
(its labels file is found beside it by name, and a test set is split off
with ``test_fraction``), or a directory holding the standard pairs::

    train-images-idx3-ubyte[.gz]   train-labels-idx1-ubyte[.gz]
    t10k-images-idx3-ubyte[.gz]    t10k-labels-idx1-ubyte[.gz]   (optional)

(``train-images.idx3-ubyte`` with a dot, as some mirrors name it, works too.)
Format: 2 zero bytes, a type code, the number of dimensions, then each
dimension as a big-endian uint32, then the values, big-endian.
"""

from __future__ import annotations

import math
import re
import struct
from pathlib import Path

import numpy as np

from toolchain.data.prepare import Raw
from toolchain.data.readers import check_values, list_dir
from toolchain.errors import VstError
from toolchain.inputs import open_stream

_TYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
_STANDARD = re.compile(r"^(train|t10k)-(images|labels)[-.]idx[13]-ubyte(\.gz)?$")


def is_idx_name(name: str) -> bool:
    return re.search(r"-ubyte(\.gz)?$", name) is not None


def read_idx(path: Path) -> np.ndarray:
    """Parse one IDX file into a native-endian numpy array. The header's shape is
    checked against ``MAX_VALUES`` before the data is read (or inflated)."""
    with open_stream(path, "data file") as fh:
        head = fh.read(4)
        if len(head) < 4 or head[0] != 0 or head[1] != 0 or head[2] not in _TYPES:
            raise VstError(f"{path}: not an IDX file (bad magic number)")
        ndim = head[3]
        dims_raw = fh.read(4 * ndim)
        if ndim == 0 or len(dims_raw) < 4 * ndim:
            raise VstError(f"{path}: truncated IDX header")
        dims = struct.unpack(f">{ndim}I", dims_raw)
        check_values(path, math.prod(dims), f"its IDX header says shape {dims}")
        dtype = np.dtype(_TYPES[head[2]])
        expected = int(np.prod(dims, dtype=np.int64)) * dtype.itemsize
        raw = fh.read(expected + 1)
    if len(raw) != expected:
        got = f"{len(raw)}" if len(raw) <= expected else "more"
        raise VstError(
            f"{path}: IDX header says shape {dims} ({expected} bytes of data) but the file "
            f"has {got}; truncated or corrupt"
        )
    arr = np.frombuffer(raw, dtype=dtype).reshape(dims)
    return arr.astype(dtype.newbyteorder("="))


def labels_for(images: Path) -> Path:
    """The labels file that pairs with an images file, found by name."""
    name = images.name.removesuffix(".gz")
    if "images" not in name:
        raise VstError(f"{images}: expected an IDX images file name containing 'images'")
    base = name.replace("images", "labels").replace("idx3", "idx1")
    candidates = [images.with_name(base), images.with_name(base + ".gz")]
    for c in candidates:
        if c.is_file():
            return c
    raise VstError(f"{images}: no labels file beside it (looked for {candidates[0].name}[.gz])")


def _pair(images: Path) -> tuple[np.ndarray, np.ndarray]:
    x = read_idx(images)
    labels_path = labels_for(images)
    y = read_idx(labels_path)
    if y.ndim != 1:
        raise VstError(f"{labels_path}: labels must be 1-D, got shape {y.shape}")
    if len(x) != len(y):
        raise VstError(f"{images.name}: {len(x)} images but {labels_path.name} has {len(y)} labels")
    return x, y


def load_idx(path: Path) -> Raw:
    if path.is_file():
        x, y = _pair(path)
        return Raw(x, y, None, None, f"IDX files {path} (+ labels)")
    found = {}
    for f in list_dir(path):
        m = _STANDARD.match(f.name)
        if m and m.group(2) == "images":
            found.setdefault(m.group(1), f)
    if "train" not in found:
        raise VstError(f"{path}: no train-images-idx3-ubyte[.gz] in this directory")
    x, y = _pair(found["train"])
    if "t10k" not in found:
        return Raw(x, y, None, None, f"IDX files in {path} (train only)")
    x_test, y_test = _pair(found["t10k"])
    return Raw(x, y, x_test, y_test, f"IDX files in {path}")


def has_idx_files(path: Path) -> bool:
    return any(_STANDARD.match(f.name) for f in list_dir(path))
