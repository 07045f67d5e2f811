"""Every file the user names is opened here: regular files only, read with a cap.

A FIFO would block ``open`` (or a read) forever, a device such as
``/dev/zero`` never ends, and a small ``.gz`` can inflate to more bytes than
the machine has. So every reader (config, target, model, checkpoint, ONNX,
.tflite, certificate, VNN-LIB, instances.csv, data sets) goes through one of:

- ``check_input(path, what)``: the path names an existing regular file (for
  libraries that take a path: safetensors, onnx, TFLite);
- ``open_input(path, what)``: that, race-free: opened non-blocking, then the
  opened file itself is checked (a FIFO opens at once and is refused);
- ``open_stream(path, what)``: that, gunzipping on the fly when the file
  starts with the gzip magic (a reader with a cap reads no more than it needs);
- ``read_input(path, what, limit=...)``: its bytes, gunzipped when they start
  with the gzip magic, never more than ``limit`` bytes after decompression.

Each problem is one ``VstError`` line naming the file.

>>> read_input("/dev/zero", "data file")            # doctest: +SKIP
VstError: /dev/zero: not a regular file (a character device); a data file must be...
"""

from __future__ import annotations

import contextlib
import gzip
import os
import stat
import zlib
from pathlib import Path
from typing import BinaryIO, Iterator

from toolchain.errors import VstError

GZIP_MAGIC = b"\x1f\x8b"
MAX_TOML_BYTES = 1 << 20          # a config or target file is a page of TOML
_KINDS = ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"),
          (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"),
          (stat.S_ISDIR, "a directory"))


def _kind(mode: int) -> str:
    return next((name for test, name in _KINDS if test(mode)), "not a plain file")


def _refuse(path, what: str, mode: int) -> VstError:
    return VstError(f"{path}: not a regular file ({_kind(mode)}); a {what} must be a "
                    "regular file")


def check_input(path: str | os.PathLike, what: str = "input file") -> Path:
    """``path`` if it names an existing regular file (symlinks followed), else one line."""
    path = Path(path)
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        raise VstError(f"{what} not found: {path}") from None
    except OSError as exc:
        raise VstError(f"cannot read {path}: {exc.strerror or exc}") from None
    if not stat.S_ISREG(mode):
        raise _refuse(path, what, mode)
    return path


def open_input(path: str | os.PathLike, what: str = "input file") -> BinaryIO:
    """``path`` opened for binary reading, refused unless it is a regular file.

    Opened with ``O_NONBLOCK`` so that a FIFO without a writer cannot block the
    open; the check is on the opened file, so nothing can be swapped in between.
    """
    path = Path(path)
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(path, flags)
    except FileNotFoundError:
        raise VstError(f"{what} not found: {path}") from None
    except OSError as exc:
        raise VstError(f"cannot read {path}: {exc.strerror or exc}") from None
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        os.close(fd)
        raise _refuse(path, what, mode)
    if hasattr(os, "set_blocking"):
        os.set_blocking(fd, True)
    return os.fdopen(fd, "rb")


@contextlib.contextmanager
def open_stream(path: str | os.PathLike, what: str = "input file", *,
                gunzip: bool = True) -> Iterator[BinaryIO]:
    """``open_input``, decompressing on the fly when the file starts with the gzip
    magic (and ``gunzip``): reads of n bytes inflate only what they return, so a
    caller that reads with a cap never holds more. Read errors are one line."""
    with open_input(path, what) as fh:
        stream = gzip.GzipFile(fileobj=fh, mode="rb") if gunzip and \
            fh.peek(2)[:2] == GZIP_MAGIC else fh
        try:
            yield stream
        except (OSError, EOFError, zlib.error) as exc:   # BadGzipFile is an OSError
            detail = str(exc).strip().splitlines()[0] if str(exc).strip() else "truncated"
            raise VstError(f"cannot read {path}: {detail}") from None


def read_input(path: str | os.PathLike, what: str = "input file", *,
               limit: int | None = None, gunzip: bool = True) -> bytes:
    """The bytes of ``path`` (gunzipped when it starts with the gzip magic and
    ``gunzip``); more than ``limit`` bytes (after decompression) is one line,
    found while reading, before more than that is in memory."""
    with open_stream(path, what, gunzip=gunzip) as stream:
        data = stream.read(-1 if limit is None else limit + 1)
        compressed = isinstance(stream, gzip.GzipFile)
    if limit is not None and len(data) > limit:
        raise too_big(path, limit, " once decompressed" if compressed else "")
    return data


def too_big(path, limit: int, how: str = "") -> VstError:
    return VstError(f"{path}: more than {_human(limit)}{how}; vst reads at most that from "
                    "such a file")


def _human(n: int) -> str:
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:g} {unit}" if unit == "bytes" else f"{n:.3g} {unit}"
        n /= 1024
    return str(n)
