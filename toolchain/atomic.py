"""Atomic file writes: a killed run never leaves a half-written artifact.

Write to a temporary file in the same directory, fsync, give it the mode the
umask asks for, then ``os.replace`` (atomic on POSIX within one file system).
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import Iterator


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success rename it over ``path``.

    >>> with atomic_path("out.json") as tmp:   # doctest: +SKIP
    ...     tmp.write_text("{}")
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp)
    try:
        yield tmp
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        # mkstemp made it 0600: honour the umask as open() would (and keep a
        # program executable when the caller made it so)
        executable = os.stat(tmp).st_mode & 0o111
        os.chmod(tmp, _file_mode(0o777 if executable else 0o666))
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def _file_mode(base: int = 0o666) -> int:
    """``base`` less the process umask: the mode a plain ``open(path, "w")`` gives."""
    umask = os.umask(0)
    os.umask(umask)
    return base & ~umask


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_text(path: str | os.PathLike, text: str) -> None:
    write_bytes(path, text.encode("utf-8"))


def check_writable(path: str | os.PathLike, *, directory: bool = False) -> None:
    """Fail now, with one line, if ``path`` (a file, or with ``directory`` a folder)
    cannot be written: before long work starts, not after it. Creates nothing:
    the nearest existing folder on the way must take a new file."""
    from toolchain.errors import VstError

    path = Path(path)
    if path.exists() and path.is_dir() != directory:
        raise VstError(f"{path} exists and is {'not ' if directory else ''}a directory")
    folder = path if directory else path.parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    if not folder.is_dir():
        raise VstError(f"cannot write {path}: {folder} is not a directory")
    try:
        fd, probe = tempfile.mkstemp(prefix=".vst-write-check.", dir=folder)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise VstError(f"cannot write {path}: {exc.strerror or exc}") from None


def check_outputs(inputs, outputs) -> None:
    """Refuse now, with one line, an output that would overwrite an input or another
    output: before any work starts, so nothing is lost.

    ``inputs`` and ``outputs`` map what the user calls each path (``MODEL``,
    ``--json``) to the path (``None``: not given): dicts, or lists of pairs.
    Paths compare as the files they name: symlinks resolved, ``./x`` is
    ``x``, and existing files by device and inode (a hard link). An output may be a folder the command
    replaces as a whole (``export/c``): every path below it counts as it.

    >>> check_outputs({"MODEL": "m.vst"}, {"--json": "./m.vst"})   # doctest: +SKIP
    VstError: --json ./m.vst would overwrite MODEL (m.vst); choose another path
    """
    from toolchain.errors import VstError

    pairs = lambda d: d.items() if isinstance(d, dict) else d  # noqa: E731
    ins = [(name, Path(p), _real(p)) for name, p in pairs(inputs) if p is not None]
    outs = [(name, Path(p), _real(p)) for name, p in pairs(outputs) if p is not None]
    for k, (name, path, real) in enumerate(outs):
        for in_name, in_path, in_real in ins:
            if _covers(real, in_real) or _same_file(path, in_path):
                raise VstError(f"{name} {path} would overwrite {in_name} ({in_path}); "
                               "choose another path")
        for other, other_path, other_real in outs[:k]:
            if _covers(real, other_real) or _covers(other_real, real) or \
                    _same_file(path, other_path):
                raise VstError(f"{other} {other_path} and {name} {path} are the same file; "
                               "each would overwrite the other")


def _real(path) -> Path:
    return Path(os.path.realpath(os.path.abspath(path)))


def _covers(out: Path, other: Path) -> bool:
    """``other`` is ``out`` or lies inside it."""
    return other == out or out in other.parents


def _same_file(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:             # one of them does not exist (yet)
        return False
