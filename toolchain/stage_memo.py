"""The stage memo of ``vst build``: ``BUILD_DIR/.vst-stages.json``.

Per stage it remembers the key of what the stage read (``stage_key``: a hash
of config sections, input hashes, target), the SHA-256 of every output it
wrote, when it ran and how long it took. It never holds a stage's numbers:

- a stage is reused only when its entry has the right shape, its key is the
  same and every output is still there with the hash it had when written;
- a reused stage, like one that just ran, takes its numbers from its outputs
  (``read``), so editing the memo cannot change what the build reports;
- an entry of the wrong shape, or outputs that cannot be read back, mean
  "run the stage again", never a crash.

Only the bookkeeping (seconds, when) comes from the memo; it is checked for
type and range like everything else read from disk.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import time
from pathlib import Path

from toolchain.atomic import write_text
from toolchain.errors import VstError

log = logging.getLogger("vst.build")
MEMO_FILE = ".vst-stages.json"


def stage_key(*parts) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


def digest(path: Path) -> str:
    """SHA-256 of a file, or of a folder's files (their relative paths and contents)."""
    h = hashlib.sha256()
    if path.is_dir():
        for f in sorted(p for p in path.rglob("*") if p.is_file()):
            h.update(f.relative_to(path).as_posix().encode() + b"\0")
            h.update(bytes.fromhex(digest(f)))
        return "dir:" + h.hexdigest()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


class Stages:
    """The memo of one build folder (see the module docstring)."""

    def __init__(self, out: Path) -> None:
        self.out = Path(out)
        self.path = self.out / MEMO_FILE
        try:
            memo = json.loads(self.path.read_text()) if self.path.is_file() else {}
        except (OSError, UnicodeDecodeError, ValueError, RecursionError):
            memo = {}
        self.memo: dict = memo if isinstance(memo, dict) else {}
        self.ran: list[str] = []
        self.skipped: list[str] = []

    def run(self, stage: str, key: str, outputs: list[Path], fn, read):
        """``read()`` after ``fn()`` wrote ``outputs``; ``fn`` is skipped when the
        memo shows the same key and the same outputs."""
        if self._reusable(stage, key, outputs):
            try:
                result = read()
            except (VstError, OSError, KeyError, TypeError, ValueError) as exc:
                log.info("%s: outputs unreadable (%s), running it again", stage, exc)
            else:
                self.skipped.append(stage)
                log.info("%s: inputs unchanged, skipped", stage)
                return result
        start = time.perf_counter()
        fn()
        self.memo[stage] = {"key": key,
                            "outputs": {self._name(p): digest(p) for p in outputs},
                            "seconds": time.perf_counter() - start,
                            "at": time.strftime("%Y-%m-%d %H:%M:%S")}
        write_text(self.path, json.dumps(self.memo, indent=1))
        self.ran.append(stage)
        return read()

    def _name(self, path: Path) -> str:
        return Path(path).relative_to(self.out).as_posix()

    def _reusable(self, stage: str, key: str, outputs: list[Path]) -> bool:
        entry = self.memo.get(stage)
        if not (isinstance(entry, dict) and entry.get("key") == key
                and isinstance(entry.get("outputs"), dict) and _seconds(entry) is not None
                and isinstance(entry.get("at"), str) and len(entry["at"]) <= 64):
            return False
        recorded = entry["outputs"]
        if set(recorded) != {self._name(p) for p in outputs}:
            return False
        try:
            return all(p.exists() and recorded[self._name(p)] == digest(p) for p in outputs)
        except OSError:
            return False

    def seconds(self, stage: str) -> float:
        return _seconds(self.memo[stage]) or 0.0

    def times(self) -> dict[str, dict]:
        """Per stage of this build: seconds it took when it ran, when, and
        whether this run reused it."""
        return {s: {"seconds": self.seconds(s), "at": self.memo[s]["at"],
                    "reused": s in self.skipped} for s in self.ran + self.skipped}

    def reused_text(self) -> str:
        """E.g. "reused train (2026-12-02 05:00:12, 128 s), verify (...)"."""
        parts = [f"{s} ({self.memo[s]['at']}, {self.seconds(s):.0f} s)" for s in self.skipped]
        return "reused " + ", ".join(parts) if parts else ""


def _seconds(entry: dict) -> float | None:
    v = entry.get("seconds")
    ok = isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v >= 0
    return float(v) if ok else None
