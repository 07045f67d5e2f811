"""User data as CSV: one sample per row, the label in the FIRST column.

The other columns are the features (pixels or signal values), read in C
order. An optional header row is detected: a first row in which no field is a
number (a first row with some numbers is data, and any field in it that is not
a number is an error). ``.csv.gz`` is read too, as at most ``MAX_CSV_BYTES``
of text. Features become shape (1, F) unless
``load_dataset(..., input_shape=(C, H, W))`` reshapes them.

Scaling: when every feature is a whole number and some exceed 1, the
features are 8-bit levels (0..255) and are divided by 255, like uint8 arrays;
otherwise they are floats and must already lie in [0, 1].

    label,p0,p1,p2,p3          <- optional header
    3,0,255,12,0
    1,0.0,1.0,0.5,0.25         <- a float file instead
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import numpy as np

from toolchain.data.prepare import Raw
from toolchain.data.readers import MAX_CSV_BYTES, read_bytes, reading
from toolchain.errors import VstError


def load_csv(path: Path) -> Raw:
    raw = read_bytes(path, MAX_CSV_BYTES)
    with reading(path):
        text = raw.decode("utf-8-sig")
    del raw
    first = next((ln for ln in io.StringIO(text) if ln.strip()), None)
    if first is None:
        raise VstError(f"{path}: the CSV file is empty")
    header = 1 if _is_header(first) else 0
    with reading(path, "cannot parse CSV"), warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "input contained no data"
        table = np.loadtxt(io.StringIO(text), delimiter=",", dtype=np.float64, skiprows=header, ndmin=2)
    if table.shape[0] == 0:
        raise VstError(f"{path}: the CSV file has a header but no data rows")
    if table.shape[1] < 2:
        raise VstError(f"{path}: each row needs a label column and at least one feature column")
    y, x = table[:, 0], table[:, 1:]
    if np.isfinite(x).all() and (x == np.round(x)).all() and x.max() > 1:
        if x.min() < 0 or x.max() > 255:
            raise VstError(
                f"{path}: whole-number features are read as 8-bit levels 0..255, found "
                f"{x.min():g}..{x.max():g}; scale features to [0, 1] instead"
            )
        x = x.astype(np.uint8)
    return Raw(x, y, None, None, f"CSV file {path}")


def _is_header(line: str) -> bool:
    """A header names columns: no field of it reads as a number. A first row with
    some numbers (``3,0,24nan``) is data, and a bad field in it is an error, not
    a header silently dropped."""
    for field in line.split(","):
        try:
            float(field)
        except ValueError:
            continue
        return False
    return True
