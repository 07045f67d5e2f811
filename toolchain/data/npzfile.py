"""User data as ``.npz``: arrays ``x``, ``y`` and optionally ``x_test``, ``y_test``.

``x_train`` / ``y_train`` are accepted as names for ``x`` / ``y``. Without a
test set, ``load_dataset`` splits one off with its seeded ``test_fraction``.
Loaded with ``allow_pickle=False``: an npz never runs code.

Sensor data in its own units adds ``channel_min`` and ``channel_range`` (one
value per channel; from the training split, or the sensor's full scale):
``x`` is then (N, C, L) channels first in any numeric dtype, and vst maps
each channel into [0, 1] itself and records the map (``scaling.py``).

>>> np.savez("mine.npz", x=images_uint8, y=labels)          # doctest: +SKIP
>>> load_dataset("mine.npz", test_fraction=0.2, seed=0)       # doctest: +SKIP
>>> np.savez("imu.npz", x=x, y=y, x_test=xt, y_test=yt,     # doctest: +SKIP
...          channel_min=x.min(axis=(0, 2)), channel_range=np.ptp(x, axis=(0, 2)))
"""

from __future__ import annotations

import io
import math
import zipfile
from pathlib import Path

import numpy as np

from toolchain.data.prepare import Raw
from toolchain.data.readers import check_values, reading
from toolchain.data.scaling import ChannelScaling
from toolchain.errors import VstError
from toolchain.inputs import open_input

_NAMES = {"x": ("x", "x_train"), "y": ("y", "y_train"), "x_test": ("x_test",),
          "y_test": ("y_test",), "channel_min": ("channel_min",),
          "channel_range": ("channel_range",)}


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
    lo, span = arrays["channel_min"], arrays["channel_range"]
    if (lo is None) != (span is None):
        raise VstError(f"{path}: has {'channel_min' if span is None else 'channel_range'} "
                       "without its partner; per-channel scaling needs both")
    scaling = None if lo is None else ChannelScaling.checked(lo, span, str(path))
    return Raw(arrays["x"], arrays["y"], arrays["x_test"], arrays["y_test"], f"npz file {path}",
               scaling)


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


def npz_bytes(arrays: dict[str, np.ndarray]) -> bytes:
    """A deterministic ``np.savez_compressed``-compatible archive of ``arrays``:
    fixed zip timestamps and modes, so the same arrays give the same bytes
    (the conversion scripts in ``scripts/`` rely on it for reproducible hashes)."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as zf:
        for name, arr in arrays.items():
            npy = io.BytesIO()
            np.lib.format.write_array(npy, np.ascontiguousarray(arr), allow_pickle=False)
            info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            zf.writestr(info, npy.getvalue(), compresslevel=9)
    return buf.getvalue()
