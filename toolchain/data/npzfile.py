"""User data as ``.npz``: arrays ``x``, ``y`` and optionally ``x_test``, ``y_test``.

``x_train`` / ``y_train`` are accepted as names for ``x`` / ``y``. Without a
test set, ``load_dataset`` splits one off with its seeded ``test_fraction``.
Loaded with ``allow_pickle=False``: an npz never runs code.

>>> np.savez("mine.npz", x=images_uint8, y=labels)          # doctest: +SKIP
>>> load_dataset("mine.npz", test_fraction=0.2, seed=0)       # doctest: +SKIP
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from toolchain.data.prepare import Raw
from toolchain.data.readers import reading
from toolchain.errors import VstError

_NAMES = {"x": ("x", "x_train"), "y": ("y", "y_train"), "x_test": ("x_test",), "y_test": ("y_test",)}


def load_npz(path: Path) -> Raw:
    with reading(path):
        with np.load(path, allow_pickle=False) as z:
            keys = set(z.files)
            arrays = {role: _get(z, path, names, keys) for role, names in _NAMES.items()}
    for role in ("x", "y"):
        if arrays[role] is None:
            raise VstError(
                f"{path}: no array '{role}' (found: {', '.join(sorted(keys)) or 'none'}); "
                "an npz data set needs 'x' and 'y', optionally 'x_test' and 'y_test'"
            )
    return Raw(arrays["x"], arrays["y"], arrays["x_test"], arrays["y_test"], f"npz file {path}")


def _get(z, path: Path, names: tuple[str, ...], keys: set[str]) -> np.ndarray | None:
    for name in names:
        if name in keys:
            try:
                return z[name]
            except ValueError:  # object arrays need pickle, which we refuse
                raise VstError(
                    f"{path}: array '{name}' is an object array (ragged, e.g. images with "
                    "inconsistent shapes?); store one numeric array of equal-shaped samples"
                ) from None
    return None
