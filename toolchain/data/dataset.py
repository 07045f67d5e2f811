"""The ``Dataset`` artifact: checked, scaled arrays ready for training.

Every loader ends here (through ``prepare.assemble``), so the rest of the
pipeline can rely on one layout:

- ``x_*``: float32 in [0, 1], channels first: (N, C, H, W) images or
  (N, C, L) 1-D signals;
- ``y_*``: int64 class indices in [0, num_classes);
- ``scaling``: for data given in its own units (sensor sets), how [0, 1]
  maps back to them per channel (``scaling.ChannelScaling``); else None.

>>> import numpy as np
>>> ds = Dataset("toy", np.zeros((4, 1, 8), np.float32), np.array([0, 1, 0, 1]),
...              np.zeros((2, 1, 8), np.float32), np.array([1, 0]), 2, "made up")
>>> ds
Dataset('toy', train=4, test=2, input_shape=(1, 8), num_classes=2)
>>> len(ds.sha256())
64
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np

from toolchain.data.scaling import ChannelScaling

_ARRAYS = ("x_train", "y_train", "x_test", "y_test")


@dataclass(eq=False, repr=False)
class Dataset:
    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    num_classes: int
    source: str  # where the data came from, in words (path or built-in origin)
    scaling: ChannelScaling | None = None  # per-channel map from the data's units to [0, 1]

    def __post_init__(self) -> None:
        # Loaders give these already; converting here keeps hand-built
        # Datasets (tests, notebooks) in the same layout.
        self.x_train = np.ascontiguousarray(self.x_train, dtype=np.float32)
        self.x_test = np.ascontiguousarray(self.x_test, dtype=np.float32)
        self.y_train = np.ascontiguousarray(self.y_train, dtype=np.int64)
        self.y_test = np.ascontiguousarray(self.y_test, dtype=np.int64)
        self.num_classes = int(self.num_classes)

    @property
    def input_shape(self) -> tuple[int, ...]:
        """Shape of one sample, channels first: (C, H, W) or (C, L)."""
        return tuple(int(d) for d in self.x_train.shape[1:])

    @property
    def n_train(self) -> int:
        return int(self.x_train.shape[0])

    @property
    def n_test(self) -> int:
        return int(self.x_test.shape[0])

    def sha256(self) -> str:
        """Hash of all four arrays (dtype, shape, bytes) and ``num_classes``.

        Independent of ``name`` and ``source``: two routes to the same data
        give the same hash. Stable across runs and machines (little-endian).
        """
        h = hashlib.sha256()
        for field in _ARRAYS:
            a = getattr(self, field)
            a = np.ascontiguousarray(a, dtype=a.dtype.newbyteorder("<"))
            h.update(f"{field}:{a.dtype.str}:{a.shape};".encode())
            h.update(a.data)
        h.update(f"num_classes:{self.num_classes}".encode())
        return h.hexdigest()

    def info(self) -> dict:
        """What a run records about its data (summary.json, model file)."""
        return {
            "name": self.name,
            "source": self.source,
            "input_shape": list(self.input_shape),
            "num_classes": self.num_classes,
            "n_train": self.n_train,
            "n_test": self.n_test,
            "sha256": self.sha256(),
            "scaling": self.scaling_info(),
        }

    def scaling_info(self) -> dict | None:
        """How the [0, 1] inputs map to the data's own units (None: given in [0, 1]
        or as 8-bit levels); what a model record and ONNX metadata carry."""
        return self.scaling.info() if self.scaling is not None else None

    def __repr__(self) -> str:
        return (
            f"Dataset({self.name!r}, train={self.n_train}, test={self.n_test}, "
            f"input_shape={self.input_shape}, num_classes={self.num_classes})"
        )
