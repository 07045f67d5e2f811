"""Scratch space for libraries, when ``HOME`` or ``TMPDIR`` cannot be written.

matplotlib keeps its config and font cache under ``~/.config`` / ``~/.cache``
and falls back to a temporary folder, and (with no writable temporary folder)
to the working directory or an error; TensorFlow's chatter is captured in a
temporary file. A command that only needs to draw a PNG or convert a model must
not fail, or litter the working directory, because of where the user's home
is. So:

- ``pyplot(near)``: matplotlib's pyplot on the Agg backend; when its own
  folders cannot be written, ``MPLCONFIGDIR`` is pointed at a fresh private
  folder (``scratch_dir``) first. Nothing changes when they can, and nothing
  changes on import of this module.
- ``scratch_dir(near)``: a fresh folder removed at exit, in the first writable
  of ``TMPDIR`` / ``TEMP`` / ``TMP`` / ``/tmp`` / ``/var/tmp``, else in
  ``near`` (where the command writes its output anyway), never the working
  directory;
- ``ensure_tempdir(near)``: the same for Python's ``tempfile`` (TensorFlow
  needs one to import), set only when no usual temporary folder is writable.
- ``scratch_file()``: an anonymous file for captured output: in memory
  (``memfd``) where the system has it, else a temporary file.
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from pathlib import Path
from typing import BinaryIO

from toolchain.errors import VstError


def pyplot(near: str | os.PathLike):
    """``matplotlib.pyplot`` (Agg) with a config/cache folder it can write."""
    import sys

    if "matplotlib" not in sys.modules and "MPLCONFIGDIR" not in os.environ:
        home = Path.home() if _home_known() else None
        config = os.environ.get("XDG_CONFIG_HOME") or (home and home / ".config")
        cache = os.environ.get("XDG_CACHE_HOME") or (home and home / ".cache")
        if not all(base and _writable(Path(base) / "matplotlib") for base in (config, cache)):
            os.environ["MPLCONFIGDIR"] = str(scratch_dir(near))
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def ensure_tempdir(near: str | os.PathLike) -> None:
    """Python's ``tempfile`` (TensorFlow asks it for a folder as it imports) picks
    the working directory, or fails, when no usual temporary folder can be
    written: give it a scratch folder beside ``near`` instead. Nothing changes
    when a usual one can be written."""
    if not any(_writable(Path(base), create=False) for base in _temp_folders()):
        tempfile.tempdir = str(scratch_dir(near))


def _temp_folders() -> list[str]:
    folders = [os.environ.get(v) for v in ("TMPDIR", "TEMP", "TMP")]
    return [f for f in folders if f] + ["/tmp", "/var/tmp", "/usr/tmp"]


def scratch_dir(near: str | os.PathLike) -> Path:
    """A fresh private folder, removed when the process exits."""
    candidates = _temp_folders() + [str(Path(near))]
    for base in candidates:
        try:
            path = tempfile.mkdtemp(prefix=".vst-scratch-", dir=base)
        except OSError:
            continue
        atexit.register(shutil.rmtree, path, True)
        return Path(path)
    tried = ", ".join(candidates)
    raise VstError(f"no writable folder for scratch files (tried {tried})")


def scratch_file() -> BinaryIO:
    """An anonymous read/write binary file that needs no writable folder."""
    if hasattr(os, "memfd_create"):
        try:
            return os.fdopen(os.memfd_create("vst-scratch", getattr(os, "MFD_CLOEXEC", 0)),
                             "w+b")
        except OSError:
            pass
    return tempfile.TemporaryFile()


def _home_known() -> bool:
    try:
        Path.home()
        return True
    except (RuntimeError, KeyError):
        return False


def _writable(folder: Path, create: bool = True) -> bool:
    """Whether ``folder`` exists (or, with ``create``, can be made) and takes a new file."""
    try:
        if create:
            folder.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".vst-probe-", dir=folder)
        os.close(fd)
        os.unlink(probe)
        return True
    except OSError:
        return False
