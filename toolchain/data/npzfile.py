"""User data as ``.npz``: arrays ``x``, ``y`` and optionally ``x_test``, ``y_test``.

``x_train`` / ``y_train`` are accepted as names for ``x`` / ``y``. Without a
test set, ``load_dataset`` splits one off with its seeded ``test_fraction``.
Loaded with ``allow_pickle=False``: an npz never runs code.

>>> np.savez("mine.npz", x=images_uint8, y=labels)          # doctest: +SKIP
>>> load_dataset("mine.npz", test_fraction=0.2, seed=0)       # doctest: +SKIP
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from toolchain.data.prepare import Raw
from toolchain.data.readers import check_values, reading
from toolchain.errors import VstError
from toolchain.inputs import open_input

_NAMES = {"x": ("x", "x_train"), "y": ("y", "y_train"), "x_test": ("x_test",), "y_test": ("y_test",)}


def load_npz(path: Path) -> Raw:
    with open_input(path, "data file") as fh, reading(path):
        with np.load(fh, allow_pickle=False) as z:
            keys = set(z.files)
            used = [next(n for n in names if n in keys) for names in _NAMES.values()
                    if any(n in keys for n in names)]
            check_values(path, sum(_claimed_values(z, path, key) for key in used),
                         f"the headers of {', '.join(used)}")
            arrays = {role: _get(z, path, names, keys) for role, names in _NAMES.items()}
    for role in ("x", "y"):
        if arrays[role] is None:
            raise VstError(
                f"{path}: no array '{role}' (found: {', '.join(sorted(keys)) or 'none'}); "
                "an npz data set needs 'x' and 'y', optionally 'x_test' and 'y_test'"
            )
    return Raw(arrays["x"], arrays["y"], arrays["x_test"], arrays["y_test"], f"npz file {path}")


def _claimed_values(z, path: Path, key: str) -> int:
    """The number of values array ``key``'s .npy header claims, read before its data
    is inflated (a small npz can claim terabytes). A member that is no .npy
    array would be read whole, so it is refused."""
    import numpy.lib.format as npy

    names = z.zip.namelist()
    member = f"{key}.npy" if f"{key}.npy" in names else key
    with z.zip.open(member) as fh:
        try:
            version = npy.read_magic(fh)
        except ValueError:
            raise VstError(f"{path}: '{key}' is not a .npy array") from None
        read = npy.read_array_header_1_0 if version == (1, 0) else npy.read_array_header_2_0
        shape, _, _ = read(fh)
    return math.prod(shape)


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
