"""The ``vst`` command line: thin click commands, one per pipeline stage.

Each subcommand parses its options and calls the stage's entry function.
Heavy libraries are imported inside the commands, so ``vst --help`` is fast.
Errors the user caused (``VstError``) and failed gates (``GateFailed``) become
one line on stderr with exit code 2 and 1.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import click

from toolchain import __version__
from toolchain.cli_verify import certificate, verify
from toolchain.errors import GateFailed, VstError

log = logging.getLogger("vst")


class VstGroup(click.Group):
    """A click group that turns vst's own exceptions into one-line exits."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except (VstError, GateFailed) as exc:
            click.echo(f"vst: error: {exc}" if isinstance(exc, VstError) else f"vst: gate failed: {exc}",
                       err=True)
            ctx.exit(exc.exit_code)
        except OSError as exc:   # an unwritable output, a full disk, a vanished input
            where = f"{exc.filename}: " if exc.filename else ""
            click.echo(f"vst: error: {where}{exc.strerror or exc}", err=True)
            ctx.exit(2)
        except KeyboardInterrupt:
            from toolchain.process import EXIT_INTERRUPTED, say_interrupted

            say_interrupted()
            ctx.exit(EXIT_INTERRUPTED)
        except click.UsageError as exc:      # one line, like every other bad input
            name = exc.ctx.command_path if exc.ctx else "vst"
            click.echo(f"vst: error: {exc.format_message()} (see `{name} --help`)", err=True)
            ctx.exit(2)
        except (click.exceptions.Exit, click.ClickException):
            raise
        except Exception as exc:  # noqa: BLE001 - the contract: one line, never a traceback
            if (ctx.obj or {}).get("verbose", 0) > 1:
                raise
            click.echo(f"vst: error: {type(exc).__name__}: {exc} (unexpected; run with -vv "
                       "for the traceback and please report it)", err=True)
            ctx.exit(2)


@click.group(cls=VstGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "--version", prog_name="vst")
@click.option("-v", "--verbose", count=True, help="More output (repeat for debug).")
@click.option("-q", "--quiet", is_flag=True, help="Only errors and final results.")
@click.pass_context
def cli(ctx, verbose: int, quiet: bool) -> None:
    """vst: sparse, certifiably robust neural networks for microcontrollers.

    \b
    Pipeline: train (sparse + certified) -> verify -> compact -> re-verify
              -> export (ONNX, VNN-LIB, TFLite, C) -> firmware -> QEMU bench
    Start with `vst build --target cortex-m4` (built-in MNIST default).
    """
    level = logging.ERROR if quiet else (logging.DEBUG if verbose > 1 else
                                         logging.INFO if verbose else logging.WARNING)
    logging.basicConfig(level=level, format="%(message)s", stream=sys.stderr)
    ctx.obj = {"quiet": quiet, "verbose": verbose}


@cli.command()
@click.argument("path", default="vst.toml", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--force", is_flag=True, help="Overwrite an existing file.")
def init(path: Path, force: bool) -> None:
    """Write a commented default config to PATH (default vst.toml)."""
    from toolchain.atomic import check_writable, write_text
    from toolchain.config import default_config_text

    if path.exists() and not force:
        raise VstError(f"{path} exists; use --force to overwrite")
    check_writable(path)
    write_text(path, default_config_text())
    click.echo(f"wrote {path}")


@cli.command()
@click.argument("name", required=False)
def datasets(name: str | None) -> None:
    """List the built-in data sets, or show one (NAME) channel by channel.

    The last column translates eps 0.01 on vst's [0, 1] inputs into the data's
    own units (per channel: 0.01 x the range that maps onto [0, 1])."""
    from toolchain.data import list_builtin
    from toolchain.display import table

    if name is not None:
        from toolchain.data.builtin import EPS_EXAMPLE, describe

        lines, channels = describe(name)
        click.echo("\n".join(lines))
        return table(("channel", "min", "range", f"eps {EPS_EXAMPLE:g} ="), channels)
    rows = list_builtin()
    table(("name", "input shape", "classes", "train/test", "size", "what",
           f"eps {rows[0]['eps_example']:g} in own units"),
          [(d["name"], "x".join(map(str, d["input_shape"])), str(d["num_classes"]),
            f"{d['n_train']}/{d['n_test']}",
            _human_bytes(d["size_bytes"]) if d["size_bytes"] else "generated",
            d["description"].split(";")[0].split(",")[0], d["eps_example_in_units"])
           for d in rows])
    click.echo("Details: `vst datasets NAME`. Provenance and licences: "
               "toolchain/data/PROVENANCE.md")


@cli.command()
def targets() -> None:
    """List the targets in targets/*.toml."""
    from toolchain.display import table
    from toolchain.targets import list_targets

    rows = [(t.name, t.qemu_machine or "native", t.float_abi, t.int8_kernels,
             _human_bytes(t.flash_budget) if t.flash_budget else "-",
             _human_bytes(t.ram_budget) if t.ram_budget else "-", t.part)
            for t in list_targets()]
    table(("name", "qemu machine", "float", "int8 kernels", "flash budget", "ram budget",
           "typical part"), rows)


@cli.command()
@click.option("--config", "config_path", type=click.Path(path_type=Path),
              help="vst.toml (default: ./vst.toml if it exists, else the built-in default).")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="Folder for model.vst, training.png and the checkpoint.")
@click.option("--resume", is_flag=True, help="Continue from the checkpoint in OUT.")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default=None,
              help="auto: CUDA when available, else CPU (default: the config's [train] device).")
@click.pass_context
def train(ctx, config_path, out, resume, device) -> None:
    """Train a sparse, certified network (VeriSparse).

    Writes OUT/model.vst, OUT/training.png and a per-epoch checkpoint.
    Data parallel: `torchrun --nproc-per-node N -m toolchain train ...`.
    """
    from dataclasses import replace

    from toolchain.atomic import check_outputs, check_writable
    from toolchain.cli_verify import data_file
    from toolchain.device import resolve_device
    from toolchain.train.checkpoint import CHECKPOINT
    from toolchain.train.distributed import World
    from toolchain.train.loop import MODEL_FILE
    from toolchain.train.trainer import train as run_training

    cfg = _load_config(config_path, ctx)
    if device is not None:
        cfg.train = replace(cfg.train, device=device)
    resolve_device(cfg.train.device)                  # "cuda" without CUDA: exit 2 now
    check_outputs({"--config": _config_path(config_path),
                   "the config's data": data_file(cfg.data.dataset)},
                  [("--out", out / name) for name in (MODEL_FILE, CHECKPOINT, "training.png")])
    check_writable(out, directory=True)
    model = run_training(cfg, out, resume=resume, show_progress=not ctx.obj["quiet"])
    if not World.from_env().main:
        return
    last = model.record["epochs"][-1]
    click.echo(f"wrote {out / MODEL_FILE}: density {model.record['density']:.3f}, "
               f"clean {last['val_clean_acc']:.1%}, IBP-verified {last['val_ibp_verified_acc']:.1%} "
               f"at eps={cfg.verify.eps} (validation), {model.record['train_seconds']:.0f} s")


def _config_path(given: Path | None) -> Path | None:
    """--config, else ./vst.toml when it exists (as `vst init` leaves it), else None
    (the built-in default)."""
    return given if given is not None else (Path("vst.toml") if Path("vst.toml").is_file()
                                            else None)


def _load_config(given: Path | None, ctx):
    """The config of ``_config_path``; once it has loaded, the first line says which."""
    from toolchain.config import load_config

    path = _config_path(given)
    cfg = load_config(path)
    if not ctx.obj["quiet"]:
        click.echo(f"vst: config {path if path is not None else '(built-in default)'}", err=True)
    return cfg


cli.add_command(verify)
cli.add_command(certificate)


@cli.command()
@click.argument("model", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help="Where to write the compacted model file.")
@click.option("--data", help="Data for the exactness check (default: the model's own).")
@click.option("--no-fold-bn", is_flag=True, help="Keep BatchNorm layers separate.")
@click.option("--json", "json_path", type=click.Path(dir_okay=False, path_type=Path),
              help="Write the size report (per layer and totals) as JSON.")
def compact(model, out, data, no_fold_bn, json_path) -> None:
    """Physically remove pruned channels from MODEL (structured sparsity).

    The result is a smaller dense network with the same function: the largest
    output difference on the test split is measured and printed.
    """
    import json

    from toolchain.atomic import check_outputs, check_writable, write_text
    from toolchain.cli_verify import data_file
    from toolchain.compact import run_compact
    from toolchain.display import table
    from toolchain.models.modelfile import load_model
    from toolchain.verify import resolve_dataset

    check_outputs({"MODEL": model, "--data": data_file(data)},
                  {"--out": out, "--json": json_path})
    for path in (out, json_path):
        if path is not None:
            check_writable(path)
    src = load_model(model)
    dataset = resolve_dataset(src, data)
    _, report = run_compact(src, dataset, out, fold_bn=not no_fold_bn)
    if json_path:
        write_text(json_path, json.dumps(report, indent=1) + "\n")
    diff = report["max_abs_diff"]
    b, a = report["before"], report["after"]
    table(("", "params", "nonzero", "MACs", "float32 bytes", "int8 bytes"),
          [(name, str(t["params"]), str(t["nonzero"]), str(t["macs"]), str(t["bytes_float32"]),
            str(t["bytes_int8"])) for name, t in (("before", b), ("after", a))])
    if report["note"]:
        click.echo(f"note: {report['note']}")
    click.echo(f"wrote {out}: params {b['params']} -> {a['params']} "
               f"({a['params'] / b['params']:.1%}), max |diff| {diff:.2e} on "
               f"{len(dataset.x_test)} test inputs")


@cli.command()
@click.argument("model", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--format", "formats", default="onnx,vnnlib,tflite,c", show_default=True,
              help="Comma-separated: onnx, vnnlib, tflite, c.")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="Folder for the exported files (and export.json).")
@click.option("--data", help="Data for calibration and parity checks (default: the model's own).")
@click.option("--eps", type=float, help="eps for VNN-LIB properties (default: the model's).")
@click.option("--name", default="model", show_default=True, help="C identifier of the model.")
@click.option("--vnnlib-n", type=click.IntRange(1, 100000), default=100, show_default=True,
              help="VNN-LIB properties to write (the first N test samples).")
@click.option("--kernels", type=click.Choice(["dsp", "portable"]), default="dsp",
              show_default=True,
              help="int8 C kernels: dsp (SMLAD, for Cortex-M4/M7/M33; exact but slower "
                   "elsewhere) or portable (plain C, e.g. Cortex-M3).")
def export(model, formats, out, data, eps, name, vnnlib_n, kernels) -> None:
    """Export MODEL to ONNX, VNN-LIB, TFLite (float, int8) and C, each checked against it."""
    from toolchain.atomic import check_outputs, check_writable
    from toolchain.cli_verify import data_file
    from toolchain.display import table
    from toolchain.export.c import check_name
    from toolchain.export.run import check_formats, export_outputs, run_exports
    from toolchain.verify import default_eps, load_any_model, resolve_dataset

    fmts = [f.strip() for f in formats.split(",") if f.strip()]
    if not fmts:
        raise VstError(f"--format names no format, got {formats!r}")
    check_formats(fmts)
    if eps is not None:
        from toolchain.eps import check_eps

        check_eps(eps, "--eps")
    check_name(name)
    check_outputs({"MODEL": model, "--data": data_file(data)},
                  [("--out", p) for p in export_outputs(out, fmts, name)])
    check_writable(out, directory=True)
    vst_model = load_any_model(model)
    dataset = resolve_dataset(vst_model, data)
    eps = eps if eps is not None else (default_eps(vst_model) if "vnnlib" in fmts else 0.0)
    res = run_exports(vst_model, dataset, out, formats=fmts, name=name, eps=eps,
                      vnnlib_n=vnnlib_n, kernels=kernels)
    rows = [(k, f"{v:.3g}" if isinstance(v, float) else str(v)) for k, v in res.items()
            if isinstance(v, (int, float, str)) and k != "formats"]
    table(("check / artifact", "value"), rows)


@cli.command()
@click.argument("build_dir", type=click.Path(file_okay=False, path_type=Path))
@click.option("--target", "target_name", default="cortex-m4", show_default=True,
              help="Target name (see `vst targets`) or a target TOML file.")
@click.option("--name", default="model", show_default=True, help="C identifier of the model.")
def bench(build_dir, target_name, name) -> None:
    """Build firmware from BUILD_DIR/export/c and measure it in QEMU.

    Reports flash, RAM, instructions per inference (QEMU -icount: instructions,
    not cycles) and parity with the host on the golden vectors. Exit 1 when
    the model does not fit the target's flash/RAM budget.
    """
    from toolchain.bench import bench_build
    from toolchain.display import table
    from toolchain.targets import load_target

    target = load_target(target_name)
    res = bench_build(build_dir, target, name)
    variants = [v for v in ("float", "int8") if v in res]
    rows = [(v, _fmt(res[v].get("flash_bytes")), _fmt(res[v].get("ram_bytes")),
             _fmt(res[v].get("instructions_per_inference")), _parity(res[v]),
             f"{res[v]['top1_agreement']:.0%}", str(res[v].get("fits"))) for v in variants]
    table(("variant", "flash B", "RAM B", "instructions", "parity vs host", "top-1", "fits"),
          rows, title=f"{target.name} ({target.qemu_machine or 'host'}); instructions per "
                      "inference under QEMU icount, not cycles")
    unfit = [v for v in variants if res[v].get("fits") is False]
    if unfit:
        v = res[unfit[0]]
        raise GateFailed(f"{unfit[0]} model needs flash {v['flash_bytes']} B / RAM "
                         f"{v['ram_bytes']} B; {target.name} has {target.flash_budget} B / "
                         f"{target.ram_budget} B")


def _parity(r: dict) -> str:
    """float: largest difference from the host's float outputs; int8: from TFLM's, in steps."""
    if r.get("variant") == "int8" and r.get("int8_max_abs_diff_q") is not None:
        return f"{r['int8_max_abs_diff_q']} steps"
    return f"{r['parity_max_abs_diff']:.1e}"


def _fmt(v) -> str:
    return "-" if v is None else f"{v:,}"


@cli.command()
@click.option("--config", "config_path", type=click.Path(path_type=Path),
              help="vst.toml (default: ./vst.toml if it exists, else the built-in default "
                   "build on mnist5k).")
@click.option("--target", "target_name", help="Target name or TOML file (default: config's).")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=Path("build"),
              show_default=True, help="The build folder (summary.json, report.html, ...).")
@click.option("--no-bench", is_flag=True, help="Skip the firmware build and QEMU run.")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default=None,
              help="Train and verify here; auto: CUDA when available, else CPU "
                   "(default: the config's [train] / [verify] device).")
@click.pass_context
def build(ctx, config_path, target_name, out, no_bench, device) -> None:
    """Run the whole pipeline: train -> verify -> compact -> re-verify -> export -> bench.

    Writes OUT/summary.json, OUT/report.md and OUT/report.html; stages whose
    inputs did not change are skipped on the next run. Exit 1 when a gate of
    the config fails (after writing everything).
    """
    from toolchain.atomic import check_outputs
    from toolchain.build import LOCK_FILE, OUTPUTS, build as run_build, check_out_dir
    from toolchain.cli_verify import data_file
    from toolchain.stage_memo import MEMO_FILE
    from toolchain.targets import load_target

    from dataclasses import replace

    from toolchain.device import resolve_device

    cfg = _load_config(config_path, ctx)
    if device is not None:
        cfg.train, cfg.verify = replace(cfg.train, device=device), replace(cfg.verify, device=device)
    resolve_device(cfg.train.device), resolve_device(cfg.verify.device)   # exit 2 now
    target = target_name or cfg.target.name
    load_target(target)                               # a bad target leaves no folder behind
    check_outputs({"--config": _config_path(config_path),
                   "the config's data": data_file(cfg.data.dataset),
                   "--target": target if Path(target).is_file() else None},
                  [("--out", out / name) for name in OUTPUTS + (MEMO_FILE, LOCK_FILE)])
    check_out_dir(out)
    summary = run_build(cfg, out, target_name=target_name, bench=False if no_bench else None,
                        show_progress=not ctx.obj["quiet"])
    t = summary["target"]
    click.echo(f"wrote {out}/summary.json and {out}/report.html: verified "
               f"{summary['compact']['verified_acc']:.1%} at eps={summary['eps']:g} "
               f"({summary['verify']['method']}), params {summary['compact']['params_after']:,}, "
               + (f"{t['instructions_per_inference']:,} instructions/inference on {t['name']}, "
                  if t.get("instructions_per_inference") else "")
               + f"{summary['seconds']:.0f} s"
               + (f" ({summary['stages']['reused']}; this run {summary['run_seconds']:.0f} s)"
                  if summary["stages"].get("reused") else ""))


def _human_bytes(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


GLOBAL_FLAGS = ("-q", "--quiet", "-v", "-vv", "-vvv", "--verbose")


def hoist_global_flags(args: list[str]) -> list[str]:
    """``vst verify m.vst -q`` means ``vst -q verify m.vst``: the global -v / -q
    flags are accepted after the subcommand too (not after ``--``).

    >>> hoist_global_flags(["verify", "m.vst", "-q"])
    ['-q', 'verify', 'm.vst']
    """
    end = args.index("--") if "--" in args else len(args)
    flags = [a for a in args[:end] if a in GLOBAL_FLAGS]
    return flags + [a for a in args[:end] if a not in GLOBAL_FLAGS] + args[end:]


def main() -> None:
    """The command line. Ctrl-C handling and the standard streams are installed
    first (``toolchain.process``); the ``vst`` script and ``python -m toolchain``
    enter through ``toolchain.__main__``, which installs them before this
    module (and click) is even imported."""
    from toolchain.process import install

    install()
    cli(args=hoist_global_flags(sys.argv[1:]), prog_name="vst")


if __name__ == "__main__":
    main()
