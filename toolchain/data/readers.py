"""Small file-reading helpers shared by the loaders: one-line errors for I/O."""

from __future__ import annotations

import contextlib
import gzip
import pickle
import zipfile
import zlib
from pathlib import Path
from typing import Iterator

from toolchain.errors import VstError

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

GZIP_MAGIC = b"\x1f\x8b"


def is_gzip(path: Path) -> bool:
    with open(path, "rb") as fh:
        return fh.read(2) == GZIP_MAGIC


def read_bytes(path: Path) -> bytes:
    """The file's bytes, gunzipped when it starts with the gzip magic."""
    with reading(path):
        raw = path.read_bytes()
        return gzip.decompress(raw) if raw[:2] == GZIP_MAGIC else raw


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
