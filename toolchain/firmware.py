"""Firmware build: generated model C + ``firmware_templates/`` -> an ELF.

For model NAME in ``c_dir`` (``NAME.c``/``.h`` float, ``NAME_int8.c``/``.h``
int8, ``NAME_golden.h`` golden vectors) and a target, two images are linked
from the same objects:

- ``firmware.elf``: the self-test (``main.c``) that runs every golden vector
  and prints the outputs, counter ticks and stack over semihosting;
- ``probe.elf``: the smallest program that runs the model once
  (``main_probe.c``). Its size is what the model costs on a part: startup,
  model, the library code it pulls in and its input/output buffers, without
  the golden vectors and printing of the self-test.

The gcc steps run from Python; ``build.sh`` in the output directory repeats
them. The host target compiles with the host ``cc`` for parity runs only.

>>> fw = build_firmware("build/c", "mnist", load_target("cortex-m4"), "build/fw")  # doctest: +SKIP
>>> fw.model_sizes.flash, fw.model_sizes.static_ram     # doctest: +SKIP
(23560, 4112)
"""

from __future__ import annotations

import shlex
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from string import Template

from toolchain import __version__
from toolchain.atomic import atomic_path, write_text
from toolchain.errors import VstError
from toolchain.targets import REPO_ROOT, Target

TEMPLATES = REPO_ROOT / "firmware_templates"
INSTALL_HINT = ("apt-get install --no-install-recommends "
                "gcc-arm-none-eabi libnewlib-arm-none-eabi qemu-system-arm")
VARIANTS = ("float", "int8")
STACK_SIZE = 32 * 1024   # reserved, not counted: the used peak is measured
MODEL_WARNINGS = ("-std=c99", "-Wall", "-Wextra", "-Werror", "-pedantic")
# The golden header defines every array static; main.c uses only some.
# Startup code puts the stack top (an object address) in the vector table of
# function pointers: fine on Cortex-M, not ISO C, so no -pedantic here.
HARNESS_WARNINGS = ("-std=c99", "-Wall", "-Wextra", "-Werror", "-Wno-unused-const-variable")
ARM_SOURCES = ("startup_cortexm.c", "port_cortexm.c")
# size -A section name -> the category it counts toward
SECTION_KIND = {".text": "text", ".rodata": "rodata", ".ARM.exidx": "rodata",
                ".data": "data", ".bss": "bss"}


@dataclass(frozen=True)
class Sizes:
    """Bytes per section kind of one image; flash and static RAM derive from them.

    >>> Sizes(text=900, rodata=100, data=8, bss=40).flash
    1008
    """

    text: int
    rodata: int
    data: int
    bss: int

    @property
    def flash(self) -> int:
        return self.text + self.rodata + self.data

    @property
    def static_ram(self) -> int:
        return self.data + self.bss


@dataclass(frozen=True)
class FirmwareBuild:
    elf: Path                       # the self-test program (host: an executable)
    map_file: Path | None
    target: Target
    variant: str
    sizes: Sizes | None             # self-test image, golden vectors included
    model_sizes: Sizes | None       # size probe: what the model costs on a part
    stack_static_bytes: int | None  # sum of the model's -fstack-usage frames
    stack_reserved: int = 0         # stack the linker script sets aside (painted)


def require_tool(name: str) -> str:
    """The tool's path, or a VstError that says how to install it."""
    path = shutil.which(name)
    if path is None:
        raise VstError(f"{name} not found; install it with: {INSTALL_HINT}")
    return path


def model_files(c_dir: Path, name: str, variant: str) -> tuple[Path, Path]:
    """(source, header) of the model variant, checked to exist with its golden header."""
    if variant not in VARIANTS:
        raise VstError(f"unknown firmware variant {variant!r}; known: {', '.join(VARIANTS)}")
    stem = name if variant == "float" else f"{name}_int8"
    paths = (c_dir / f"{stem}.c", c_dir / f"{stem}.h", c_dir / f"{name}_golden.h")
    for path in paths:
        if not path.is_file():
            raise VstError(f"generated C file not found: {path} (run `vst export --format c`)")
    return paths[0], paths[1]


def glue_values(name: str, variant: str) -> dict[str, str]:
    """What vst_glue.h.in needs to bind main.c to one model and variant."""
    is_int8 = variant == "int8"
    stem = f"{name}_int8" if is_int8 else name
    return {
        "version": __version__, "name": name, "variant": variant,
        "is_int8": "1" if is_int8 else "0",
        "model_header": f"{stem}.h",
        "elem_type": "int8_t" if is_int8 else "float",
        "prefix": f"VST_{stem.upper()}",
        "golden_prefix": f"VST_{name.upper()}",
        "golden_in": f"vst_{name}_golden_in_q" if is_int8 else f"vst_{name}_golden_in",
        "infer": f"vst_{stem}_infer",
    }


def linker_values(target: Target, stack_size: int) -> dict[str, str]:
    return {
        "version": __version__, "target": target.name, "machine": target.qemu_machine,
        "flash_origin": hex(target.flash_origin), "flash_size": hex(target.flash_size),
        "ram_origin": hex(target.ram_origin), "ram_size": hex(target.ram_size),
        "stack_size": hex(stack_size),
    }


def _fill(template: str, values: dict[str, str], path: Path) -> Path:
    text = Template((TEMPLATES / template).read_text(encoding="utf-8")).substitute(values)
    write_text(path, text)
    return path


class _Steps:
    """Runs the gcc steps and records them in build.sh."""

    def __init__(self, out_dir: Path):
        self.out_dir = out_dir
        self.lines = [f"#!/bin/sh\n# generated by vst {__version__}: the firmware build steps",
                      "set -e", f"cd {shlex.quote(str(out_dir))}"]

    def run(self, argv: list[str], what: str, renames: dict[Path, Path] | None = None) -> None:
        """Run one step; ``renames`` maps temporary outputs to the names build.sh shows."""
        shown = list(argv)
        for tmp, final in (renames or {}).items():
            shown = [arg.replace(str(tmp), final.name) for arg in shown]
        self.lines.append(shlex.join(shown))
        proc = subprocess.run(argv, cwd=self.out_dir, capture_output=True, text=True)
        if proc.returncode != 0:
            log = (proc.stderr or proc.stdout).strip()
            errors = [ln for ln in log.splitlines() if "error" in ln] or log.splitlines()[-1:]
            write_text(self.out_dir / "build.log", log + "\n")
            raise VstError(f"{what} failed: {errors[0] if errors else 'no output'} "
                           f"(full log: {self.out_dir / 'build.log'})")

    def save(self) -> None:
        write_text(self.out_dir / "build.sh", "\n".join(self.lines) + "\n")


def read_sizes(elf: Path) -> Sizes:
    """Section sizes from ``arm-none-eabi-size -A``, summed per kind."""
    argv = [require_tool("arm-none-eabi-size"), "-A", str(elf)]
    out = subprocess.run(argv, capture_output=True, text=True, check=True).stdout
    kinds = dict.fromkeys(("text", "rodata", "data", "bss"), 0)
    for line in out.splitlines():
        fields = line.split()
        if len(fields) == 3 and fields[0] in SECTION_KIND:
            kinds[SECTION_KIND[fields[0]]] += int(fields[1])
    return Sizes(**kinds)


def static_stack(su_file: Path) -> int | None:
    """Sum of the frames in a ``-fstack-usage`` file: an upper bound on the
    model's own stack when nothing recurses; None if a frame is dynamic."""
    total = 0
    for line in su_file.read_text(encoding="utf-8").splitlines():
        _, size, kind = line.rsplit("\t", 2)
        if kind == "dynamic":
            return None
        total += int(size)
    return total


def _copy_templates(src: Path, names: tuple[str, ...]) -> None:
    """Copy template files beside the build, each marked as generated."""
    for name in names:
        text = (TEMPLATES / name).read_text(encoding="utf-8")
        mark = f"/* generated by vst {__version__} from firmware_templates/{name} */\n"
        write_text(src / name, mark + text)


def _link(steps: _Steps, gcc: str, flags: list[str], objs: list[str],
          stem: str) -> tuple[Path, Path]:
    elf, map_file = steps.out_dir / f"{stem}.elf", steps.out_dir / f"{stem}.map"
    with atomic_path(elf) as tmp_elf, atomic_path(map_file) as tmp_map:
        steps.run([gcc, *flags, "-nostartfiles", "-T", "src/linker.ld", "-Wl,--gc-sections",
                   "-Wl,--no-warn-rwx-segments", f"-Wl,-Map={tmp_map}",
                   "--specs=nano.specs", "--specs=nosys.specs", *objs, "-lm",
                   "-o", str(tmp_elf)], f"linking {stem}.elf", {tmp_elf: elf, tmp_map: map_file})
    return elf, map_file


def build_firmware(c_dir, name: str, target: Target, out_dir, *, variant: str = "float",
                   opt: str = "-O2", stack_size: int = STACK_SIZE) -> FirmwareBuild:
    """Compile the model with the target's flags and link the self-test and the probe."""
    c_dir, out_dir = Path(c_dir).resolve(), Path(out_dir).resolve()
    source, _ = model_files(c_dir, name, variant)
    if target.is_host:
        return _build_host(c_dir, name, target, out_dir, source, variant, opt)
    if target.flash_size <= 0 or target.ram_size <= 0:
        raise VstError(f"target {target.name}: [memory] needs flash_size and ram_size")
    gcc = require_tool("arm-none-eabi-gcc")
    src, obj = out_dir / "src", out_dir / "obj"
    _copy_templates(src, ("port.h", "main.c", "main_probe.c") + ARM_SOURCES)
    obj.mkdir(parents=True, exist_ok=True)
    _fill("vst_glue.h.in", glue_values(name, variant), src / "vst_glue.h")
    _fill("linker.ld.in", linker_values(target, stack_size), src / "linker.ld")
    steps = _Steps(out_dir)
    flags = [*target.cflags, opt, "-ffunction-sections", "-fdata-sections"]
    includes = ["-I", "src", "-I", str(c_dir)]
    model_obj, profiled_obj = f"obj/{source.stem}.o", f"obj/{source.stem}_profiled.o"
    steps.run([gcc, *flags, *MODEL_WARNINGS, "-fstack-usage", *includes, "-c", str(source),
               "-o", model_obj], f"compiling {source.name} for {target.name}")
    # The self-test times each operator (VST_MARK calls); the size probe has no marks.
    steps.run([gcc, *flags, *MODEL_WARNINGS, "-DVST_PROFILE", *includes, "-c", str(source),
               "-o", profiled_obj], f"compiling {source.name} with operator marks")
    for name_c in ("main.c", "main_probe.c") + ARM_SOURCES:
        steps.run([gcc, *flags, *HARNESS_WARNINGS, *includes, "-c", f"src/{name_c}",
                   "-o", f"obj/{Path(name_c).stem}.o"], f"compiling {name_c}")
    port = [f"obj/{Path(s).stem}.o" for s in ARM_SOURCES]
    elf, map_file = _link(steps, gcc, flags, ["obj/main.o", profiled_obj, *port], "firmware")
    probe, _ = _link(steps, gcc, flags, ["obj/main_probe.o", model_obj, *port], "probe")
    steps.save()
    return FirmwareBuild(elf=elf, map_file=map_file, target=target, variant=variant,
                         sizes=read_sizes(elf), model_sizes=read_sizes(probe),
                         stack_static_bytes=static_stack(out_dir / f"obj/{source.stem}.su"),
                         stack_reserved=stack_size)


def _build_host(c_dir: Path, name: str, target: Target, out_dir: Path, source: Path,
                variant: str, opt: str) -> FirmwareBuild:
    """The same main.c with the host port: a native program for parity runs."""
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        raise VstError("no host C compiler (cc) found; install one, e.g. apt-get install gcc")
    src = out_dir / "src"
    _copy_templates(src, ("port.h", "main.c", "port_host.c"))
    (out_dir / "obj").mkdir(parents=True, exist_ok=True)
    _fill("vst_glue.h.in", glue_values(name, variant), src / "vst_glue.h")
    steps = _Steps(out_dir)
    flags, includes = [*target.cflags, opt], ["-I", "src", "-I", str(c_dir)]
    model_obj = f"obj/{source.stem}.o"
    steps.run([cc, *flags, *MODEL_WARNINGS, "-DVST_PROFILE", *includes, "-c", str(source),
               "-o", model_obj],
              f"compiling {source.name} for the host")
    exe = out_dir / "firmware"
    with atomic_path(exe) as tmp:
        steps.run([cc, *flags, *HARNESS_WARNINGS, *includes, "src/main.c", "src/port_host.c",
                   model_obj, "-lm", "-o", str(tmp)], "linking the host program", {tmp: exe})
        tmp.chmod(0o755)
    steps.save()
    return FirmwareBuild(elf=exe, map_file=None, target=target, variant=variant,
                         sizes=None, model_sizes=None, stack_static_bytes=None)
