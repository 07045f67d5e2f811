"""What the command line sets up first, before click or any heavy import: Ctrl-C
and standard streams that may be closed.

Ctrl-C (SIGINT). The first one raises ``KeyboardInterrupt`` where the program
is, so ``finally`` blocks run (temporary files go, nothing half-written is
renamed into place) and the CLI ends with one line, ``vst: interrupted``, and
exit 130. A second one while that unwinds (a slow cleanup, a library that
swallowed the first) ends the process at once, with the same line (written
once) and the same code: never a traceback. Once the line is written, Ctrl-C
is ignored for the little that is left (Python's own shutdown). A shell that started vst with
SIGINT ignored (a background job) keeps it ignored.

Streams. A closed stdout or stderr (``vst ... >&-``) gets ``/dev/null`` on its
descriptor, so no file vst opens later can land on fd 1 and receive its
output. A stdout whose reader has left (``vst ... | head -0``: EPIPE) is
swapped for ``/dev/null`` at the first failed write, and the command carries
on: its files are written and its gates decide the exit code, as if the
output had been read.

``toolchain.__main__.main`` calls ``install()`` before anything else.
"""

from __future__ import annotations

import io
import os
import signal
import sys

INTERRUPTED = "vst: interrupted"
EXIT_INTERRUPTED = 130
_state = {"signals": 0, "said": False, "installed": False}


def install() -> None:
    """Install the Ctrl-C handler and mend the standard streams; idempotent."""
    if _state["installed"]:
        return
    _state["installed"] = True
    _mend_closed_descriptors()
    if sys.stdout is not None and not isinstance(sys.stdout, _ForgivingStdout):
        sys.stdout = _ForgivingStdout(sys.stdout)
    if signal.getsignal(signal.SIGINT) is not signal.SIG_IGN:
        signal.signal(signal.SIGINT, _on_sigint)


def _on_sigint(signum, frame) -> None:
    _state["signals"] += 1
    if _state["signals"] == 1:
        raise KeyboardInterrupt
    say_interrupted()
    os._exit(EXIT_INTERRUPTED)


def say_interrupted() -> None:
    """Write ``vst: interrupted`` to stderr: once per process once ``install``ed
    (a second Ctrl-C must not add a line), each time otherwise (in-process tests)."""
    if _state["said"] and _state["installed"]:
        return
    _state["said"] = True
    if _state["installed"]:
        # what is left is the way out (Python's shutdown would put the default
        # handler back, and a second Ctrl-C there would kill with a traceback)
        try:
            signal.signal(signal.SIGINT, signal.SIG_IGN)
        except ValueError:                 # not the main thread
            pass
    try:
        sys.stderr.write(INTERRUPTED + "\n")
        sys.stderr.flush()
    except Exception:  # noqa: BLE001 - reentered from the handler, or stderr is gone
        try:
            os.write(2, (INTERRUPTED + "\n").encode())
        except OSError:
            pass


def exit_interrupted() -> None:
    """The end of an interrupted command: the line, then exit 130 (cleanup runs)."""
    say_interrupted()
    sys.exit(EXIT_INTERRUPTED)


def _mend_closed_descriptors() -> None:
    """Give a closed fd 0, 1 or 2 ``/dev/null`` (and Python a stream on it)."""
    for fd, name, mode in ((0, "stdin", "r"), (1, "stdout", "w"), (2, "stderr", "w")):
        try:
            os.fstat(fd)
            continue
        except OSError:
            pass
        null = os.open(os.devnull, os.O_RDWR)
        if null != fd:
            os.dup2(null, fd)
            os.close(null)
        if getattr(sys, name) is None:
            setattr(sys, name, io.TextIOWrapper(io.FileIO(fd, mode, closefd=False),
                                                write_through=True))


class _ForgivingStdout(io.TextIOBase):
    """``sys.stdout`` that, once its reader has gone (EPIPE), discards what is
    written: fd 1 is pointed at ``/dev/null`` so the buffered rest (and Python's
    flush at exit) fails nowhere."""

    def __init__(self, stream) -> None:
        self._stream = stream

    def _gone(self) -> None:
        null = os.open(os.devnull, os.O_WRONLY)
        try:
            os.dup2(null, self._stream.fileno())
        except (OSError, ValueError, io.UnsupportedOperation):
            pass
        finally:
            os.close(null)

    def write(self, text: str) -> int:
        try:
            return self._stream.write(text)
        except BrokenPipeError:
            self._gone()
            return len(text)

    def flush(self) -> None:
        try:
            self._stream.flush()
        except BrokenPipeError:
            self._gone()
            try:
                self._stream.flush()      # the rest of the buffer, now into /dev/null
            except OSError:
                pass

    def writable(self) -> bool:
        return True

    def isatty(self) -> bool:
        return self._stream.isatty()

    def fileno(self) -> int:
        return self._stream.fileno()

    @property
    def encoding(self):
        return self._stream.encoding

    @property
    def errors(self):
        return self._stream.errors

    @property
    def buffer(self):
        return self._stream.buffer

    def __getattr__(self, name):
        return getattr(self._stream, name)
