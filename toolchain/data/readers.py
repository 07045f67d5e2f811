"""Small file-reading helpers shared by the loaders: one-line errors for I/O,
and the size limits a data file is held to before it is decompressed.

Every file goes through ``toolchain.inputs`` (regular files only, gzip
inflated on the fly). A data set holds at most ``MAX_VALUES`` numbers (4 GiB
as the float32 vst trains on); a loader checks what the file's own header
claims (npz array headers, IDX dimensions) against it before reading the
data, and a CSV is read as at most ``MAX_CSV_BYTES`` of text, so neither a
lying header nor a small compressed bomb can exhaust memory.
"""

from __future__ import annotations

import contextlib
import pickle
import zipfile
import zlib
from pathlib import Path
from typing import Iterator

from toolchain.errors import VstError
from toolchain.inputs import read_input

MAX_VALUES = 1 << 30          # numbers in one data set: 4 GiB as float32
MAX_CSV_BYTES = 1 << 30       # CSV text, after decompression (larger data: use .npz)

# What reading a damaged or unreadable file can raise; each becomes one line.
READ_ERRORS = (
    OSError,
    EOFError,
    ValueError,
    zlib.error,
    zipfile.BadZipFile,
    pickle.UnpicklingError,
    UnicodeDecodeError,
)


def read_bytes(path: Path, limit: int) -> bytes:
    """The data file's bytes, gunzipped when it starts with the gzip magic; more
    than ``limit`` bytes (after decompression) is one line."""
    return read_input(path, "data file", limit=limit)


def check_values(path: Path, n: int, what: str) -> None:
    """Refuse a data file whose headers (``what``) claim more than ``MAX_VALUES`` numbers."""
    if n > MAX_VALUES:
        raise VstError(f"{path}: {n:,} values ({what}); vst reads at most {MAX_VALUES:,} "
                       "values per data set (4 GiB as float32)")


@contextlib.contextmanager
def reading(path: Path, what: str = "cannot read") -> Iterator[None]:
    """Turn low-level read failures inside the block into one VstError line."""
    try:
        yield
    except READ_ERRORS as exc:
        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise VstError(f"{what} {path}: {detail}") from None


def list_dir(path: Path) -> list[Path]:
    """The entries of a directory, sorted; unreadable -> one VstError line."""
    with reading(path, "cannot list"):
        return sorted(path.iterdir())
