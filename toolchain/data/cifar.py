"""CIFAR-10 "python version" batches, read without ever executing code.

The spec is the ``cifar-10-batches-py`` directory (or its parent) with
``data_batch_1`` .. ``data_batch_5`` and ``test_batch``. Each batch is a
pickled dict ``{b"data": uint8 array (N, 3072), b"labels": [int, ...], ...}``
where a row holds the red, green and blue 32x32 planes, i.e. (3, 32, 32).

Pickles can run arbitrary code, so we parse them with an unpickler whose
``find_class`` returns only numpy's array-rebuilding functions and refuses
every other global (``os.system``, ``builtins.eval``, ...) before it is ever
imported or called. Plain dicts, lists, bytes, str and int need no globals.
Without ``test_batch``, a test set is split off with ``test_fraction``.
"""

from __future__ import annotations

import io
import pickle
import re
from pathlib import Path

import numpy as np

from toolchain.data.prepare import Raw
from toolchain.data.readers import list_dir, read_bytes
from toolchain.errors import VstError

try:  # numpy >= 2
    from numpy._core.multiarray import _reconstruct
    from numpy._core.numeric import _frombuffer
except ImportError:  # numpy 1.x
    from numpy.core.multiarray import _reconstruct
    from numpy.core.numeric import _frombuffer

# The only globals a CIFAR batch may name. Old pickles (Python 2, numpy 1)
# say numpy.core, numpy 2 says numpy._core; protocol 5 (Python 3.14's
# default) rebuilds arrays with _frombuffer. All of these only build arrays.
_ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy.core.numeric", "_frombuffer"): _frombuffer,
    ("numpy._core.numeric", "_frombuffer"): _frombuffer,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
}

BATCH_DIR = "cifar-10-batches-py"
BATCH_BYTES = 1 << 30         # a batch of 10,000 images is 31 MB
_TRAIN = re.compile(r"^data_batch_(\d+)$")


class _Refused(Exception):
    pass


class _NumpyOnlyUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        try:
            return _ALLOWED[(module, name)]
        except KeyError:
            raise _Refused(f"{module}.{name}") from None


def safe_unpickle(path: Path):
    """Unpickle ``path`` allowing only plain containers and numpy arrays."""
    data = read_bytes(path, BATCH_BYTES)
    try:
        # encoding="bytes": the official batches were pickled by Python 2.
        return _NumpyOnlyUnpickler(io.BytesIO(data), encoding="bytes").load()
    except _Refused as exc:
        raise VstError(
            f"{path}: refusing to unpickle '{exc}': a CIFAR batch may only hold numpy "
            "arrays and plain values (the file may be malicious)"
        ) from None
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError,
            IndexError, KeyError, MemoryError, UnicodeDecodeError) as exc:
        raise VstError(f"{path}: not a readable CIFAR batch ({type(exc).__name__}: {exc})") from None


def read_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """One batch as images (N, 3, 32, 32) uint8 and labels (N,)."""
    obj = safe_unpickle(path)
    if not isinstance(obj, dict):
        raise VstError(f"{path}: a CIFAR batch is a pickled dict, got {type(obj).__name__}")
    batch = {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in obj.items()}
    if "data" not in batch or "labels" not in batch:
        raise VstError(f"{path}: a CIFAR-10 batch needs 'data' and 'labels' entries")
    x, y = batch["data"], batch["labels"]
    if not isinstance(x, np.ndarray) or x.dtype != np.uint8 or x.ndim != 2 or x.shape[1] != 3072:
        what = f"{x.dtype} array {x.shape}" if isinstance(x, np.ndarray) else type(x).__name__
        raise VstError(f"{path}: 'data' must be a uint8 array (N, 3072), got {what}")
    try:
        y = np.asarray(y)
    except (ValueError, TypeError):
        raise VstError(f"{path}: 'labels' must be a list of integers") from None
    if y.ndim != 1 or len(y) != len(x):
        raise VstError(f"{path}: {len(x)} images but labels of shape {y.shape}")
    return x.reshape(-1, 3, 32, 32), y


def batch_dir(path: Path) -> Path | None:
    """The batches directory at or just below ``path``, if it looks like one."""
    for d in (path, path / BATCH_DIR):
        if d.is_dir() and any(_TRAIN.match(f.name) for f in list_dir(d)):
            return d
    return None


def load_cifar(path: Path) -> Raw:
    d = batch_dir(path)
    if d is None:
        raise VstError(f"{path}: no CIFAR-10 data_batch_* files here or in {BATCH_DIR}/")
    train = sorted((f for f in list_dir(d) if _TRAIN.match(f.name)),
                   key=lambda f: int(_TRAIN.match(f.name).group(1)))
    parts = [read_batch(f) for f in train]
    x = np.concatenate([p[0] for p in parts])
    y = np.concatenate([p[1] for p in parts])
    test = d / "test_batch"
    if not test.is_file():
        return Raw(x, y, None, None, f"CIFAR-10 batches in {d} (no test_batch)")
    x_test, y_test = read_batch(test)
    return Raw(x, y, x_test, y_test, f"CIFAR-10 batches in {d}")
