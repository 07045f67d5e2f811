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
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path

from toolchain.errors import VstError
from toolchain.inputs import MAX_TOML_BYTES, read_input

REPO_ROOT = Path(__file__).resolve().parent.parent
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
# GCC's -mfloat-abi values for Arm, and "native" for a target that runs on the host
FLOAT_ABIS = ("soft", "softfp", "hard", "native")


def targets_dir() -> Path:
    return Path(os.environ.get("VST_TARGETS_DIR", REPO_ROOT / "targets"))


@dataclass(frozen=True)
class Clock:
    """The part the cycle model's milliseconds and microjoules are for (``[clock]``).

    Flash wait states at that clock; the flash accelerator (prefetch buffer
    and caches) as ``toolchain.cycles.emulate.FlashModel`` models it; run
    current per MHz (typical, from the named datasheet) and supply voltage.
    """

    part: str
    mhz: float
    flash_wait_states: int
    flash_line_bytes: int
    icache_bytes: int
    dcache_bytes: int
    run_ua_per_mhz: float
    supply_v: float
    source: str

    @property
    def watts(self) -> float:
        """Run power at this clock: I = ua_per_mhz * mhz, P = I * V."""
        return self.run_ua_per_mhz * 1e-6 * self.mhz * self.supply_v


# [clock] key -> (type, low, high): every key is required, bounds inclusive
CLOCK_FIELDS = {"mhz": (float, 1, 1000), "flash_wait_states": (int, 0, 15),
                "flash_line_bytes": (int, 4, 64), "icache_bytes": (int, 0, 1 << 20),
                "dcache_bytes": (int, 0, 1 << 20), "run_ua_per_mhz": (float, 1, 2000),
                "supply_v": (float, 0.9, 5.5)}


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
    clock: Clock | None = None    # None: cycles only, no milliseconds or energy

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


def _table(data: dict, key: str, where: str) -> dict:
    value = data.get(key, {})
    if not isinstance(value, dict):
        raise VstError(f"target {where}: [{key}] must be a table, got {value!r}")
    return value


def _size(table: dict, key: str, where: str, required: bool = False) -> int:
    if required and key not in table:
        raise VstError(f"target {where}: missing key {key!r}")
    value = table.get(key, 0)
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < 2 ** 32:
        raise VstError(f"target {where}: {key} must be an integer in [0, 2^32), got {value!r}")
    return value


def _clock(data: dict, where: str) -> Clock | None:
    if "clock" not in data:
        return None
    table = _table(data, "clock", where)
    values = {}
    for key, (typ, low, high) in CLOCK_FIELDS.items():
        if key not in table:
            raise VstError(f"target {where}: [clock] missing key {key!r}")
        value = table[key]
        if isinstance(value, bool) or not isinstance(value, (int, float)) or \
                (typ is int and not isinstance(value, int)) or not low <= value <= high:
            raise VstError(f"target {where}: clock.{key} must be a {typ.__name__} in "
                           f"[{low}, {high}], got {value!r}")
        values[key] = typ(value)
    if values["flash_line_bytes"] & (values["flash_line_bytes"] - 1):
        raise VstError(f"target {where}: clock.flash_line_bytes must be a power of two")
    return Clock(part=_get(table, "part", str, where), source=_get(table, "source", str, where),
                 **values)


def _parse(path: Path) -> Target:
    raw = read_input(path, "target file", limit=MAX_TOML_BYTES, gunzip=False)
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise VstError(f"target file {path}: not a readable TOML file ({exc})") from None
    where = path.stem
    cpu, qemu = _table(data, "cpu", where), _table(data, "qemu", where)
    memory, budget = _table(data, "memory", where), _table(data, "budget", where)
    name = _get(data, "name", str, where)
    if not NAME_PATTERN.fullmatch(name):
        raise VstError(f"target {where}: name {name!r} must be letters, digits, '.', '_' or '-' "
                       "(it names output folders)")
    flags = _get(cpu, "cflags", list, where)
    if not all(isinstance(f, str) for f in flags):
        raise VstError(f"target {where}: cpu.cflags must be a list of strings")
    machine = qemu.get("machine")
    if machine is not None and (not isinstance(machine, str) or not NAME_PATTERN.fullmatch(machine)):
        raise VstError(f"target {where}: qemu.machine must be a machine name, got {machine!r}")
    float_abi = _get(cpu, "float_abi", str, where)
    if float_abi not in FLOAT_ABIS:
        raise VstError(f"target {where}: cpu.float_abi must be one of {', '.join(FLOAT_ABIS)}, "
                       f"got {float_abi!r}")
    other = [f for f in flags if f.startswith("-mfloat-abi=") and f != f"-mfloat-abi={float_abi}"]
    if other:
        raise VstError(f"target {where}: cpu.float_abi is {float_abi!r} but cflags say {other[0]}")
    cpu_hz = _get(qemu, "cpu_hz", int, where, default=0) if qemu else 0
    if machine is not None and not 0 < cpu_hz < 2 ** 32:
        raise VstError(f"target {where}: qemu.cpu_hz must be a clock in Hz, got {cpu_hz!r}")
    return Target(
        name=name,
        description=_get(data, "description", str, where),
        part=_get(data, "part", str, where, default=""),
        cflags=tuple(flags),
        float_abi=float_abi,
        dsp=_get(cpu, "dsp", bool, where, default=False),
        qemu_machine=machine,
        cpu_hz=cpu_hz,
        flash_origin=_size(memory, "flash_origin", where),
        flash_size=_size(memory, "flash_size", where),
        ram_origin=_size(memory, "ram_origin", where),
        ram_size=_size(memory, "ram_size", where),
        flash_budget=_size(budget, "flash_bytes", where, required=True),
        ram_budget=_size(budget, "ram_bytes", where, required=True),
        clock=_clock(data, where),
    )


def list_targets() -> list[Target]:
    return [_parse(p) for p in sorted(targets_dir().glob("*.toml"))]


def load_target(name: str) -> Target:
    """A target by name (``cortex-m4``) or by path to its TOML file."""
    if name.endswith(".toml"):
        return _parse(Path(name))
    path = targets_dir() / f"{name}.toml"
    if not path.is_file():
        names = [p.stem for p in targets_dir().glob("*.toml")]
        close = difflib.get_close_matches(name, names, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise VstError(f"unknown target {name!r}{hint}; known: {', '.join(sorted(names))}")
    return _parse(path)
