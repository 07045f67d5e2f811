"""Target descriptions: ``targets/<name>.toml`` read into a ``Target``.

Targets are data, not code: a new board is a new TOML file. The directory is
the repository's ``targets/`` (override with ``VST_TARGETS_DIR``); a path to
a ``.toml`` file also names a target.

>>> load_target("cortex-m4").qemu_machine     # doctest: +SKIP
'mps2-an386'
"""

from __future__ import annotations

import difflib
import os
import tomllib
from dataclasses import dataclass
from pathlib import Path

from toolchain.errors import VstError

REPO_ROOT = Path(__file__).resolve().parent.parent


def targets_dir() -> Path:
    return Path(os.environ.get("VST_TARGETS_DIR", REPO_ROOT / "targets"))


@dataclass(frozen=True)
class Target:
    name: str
    description: str
    part: str
    cflags: tuple[str, ...]
    float_abi: str
    dsp: bool                     # DSP extension (SMLAD): picks the int8 kernel family
    qemu_machine: str | None      # None: runs on the host, not in QEMU
    cpu_hz: int
    flash_origin: int
    flash_size: int
    ram_origin: int
    ram_size: int
    flash_budget: int             # bytes; 0 means no budget
    ram_budget: int

    @property
    def is_host(self) -> bool:
        return self.qemu_machine is None

    @property
    def int8_kernels(self) -> str:
        """The int8 kernel family the C generator uses for this target."""
        return "dsp" if self.dsp else "portable"


def _get(table: dict, key: str, typ: type, where: str, default=None):
    if key not in table:
        if default is not None:
            return default
        raise VstError(f"target {where}: missing key {key!r}")
    value = table[key]
    if not isinstance(value, typ):
        raise VstError(f"target {where}: {key} must be {typ.__name__}, got {value!r}")
    return value


def _parse(path: Path) -> Target:
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise VstError(f"target file {path}: {exc}") from None
    where = path.stem
    cpu, qemu = data.get("cpu", {}), data.get("qemu", {})
    memory, budget = data.get("memory", {}), data.get("budget", {})
    return Target(
        name=_get(data, "name", str, where),
        description=_get(data, "description", str, where),
        part=_get(data, "part", str, where, default=""),
        cflags=tuple(_get(cpu, "cflags", list, where)),
        float_abi=_get(cpu, "float_abi", str, where),
        dsp=_get(cpu, "dsp", bool, where, default=False),
        qemu_machine=qemu.get("machine"),
        cpu_hz=_get(qemu, "cpu_hz", int, where, default=0) if qemu else 0,
        flash_origin=memory.get("flash_origin", 0),
        flash_size=memory.get("flash_size", 0),
        ram_origin=memory.get("ram_origin", 0),
        ram_size=memory.get("ram_size", 0),
        flash_budget=_get(budget, "flash_bytes", int, where),
        ram_budget=_get(budget, "ram_bytes", int, where),
    )


def list_targets() -> list[Target]:
    return [_parse(p) for p in sorted(targets_dir().glob("*.toml"))]


def load_target(name: str) -> Target:
    """A target by name (``cortex-m4``) or by path to its TOML file."""
    if name.endswith(".toml"):
        path = Path(name)
        if not path.is_file():
            raise VstError(f"target file not found: {path}")
        return _parse(path)
    path = targets_dir() / f"{name}.toml"
    if not path.is_file():
        names = [p.stem for p in targets_dir().glob("*.toml")]
        close = difflib.get_close_matches(name, names, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise VstError(f"unknown target {name!r}{hint}; known: {', '.join(sorted(names))}")
    return _parse(path)
