"""``vst build``: every stage chained, with a skip for stages whose inputs did not change.

    train -> verify -> compact -> re-verify -> export -> verify int8 -> bench -> report

Each stage is one call of its entry function, the same one its CLI subcommand
calls (``train.trainer.train``, ``verify.run_verify``, ``compact.run_compact``,
``export.run.run_exports``, ``verify.int8_certificate.verify_int8``,
``bench.bench_build``): this module only chains them. Each stage has a key (a
hash of what it reads: config section, input model hash, target) and writes
artifacts; ``BUILD_DIR/.vst-stages.json`` (``stage_memo.Stages``) remembers
each stage's key and its artifacts' hashes. A stage whose key and artifacts
are unchanged is not run again. Either way its numbers are read back from its
artifacts (``_read_*``: the model file, the certificate, ``export.json``,
``bench.json``), never from the memo.
Export subsets work: what a format did not produce is null in the summary
and the stages that need it are skipped; combinations that cannot work
(a bench without C, an int8 gate without a .tflite) are refused before
anything runs (``check_plan``).
"""

from __future__ import annotations

import contextlib
import json
import time
from dataclasses import asdict
from functools import partial
from pathlib import Path

from toolchain import __version__
from toolchain.atomic import write_text
from toolchain.build_summary import gates, ibp_sweep, make_summary
from toolchain.config import Config
from toolchain.errors import GateFailed, VstError
from toolchain.stage_memo import Stages, stage_key as _key

NAME = "model"          # C identifier of the generated model: vst_model_infer()
GOLDEN = 8              # golden vectors for the on-target self-test
LOCK_FILE = ".vst-build.lock"
INT8_METHOD = "int8-crown"   # the int8 certificate: intervals and back-substitution, the best
# What the build writes into its folder (besides the memo and the lock): files,
# and folders it replaces (checked against the inputs before work starts).
OUTPUTS = ("train/model.vst", "train/checkpoint.safetensors", "train/training.png",
           "certificate_sparse.json", "compact.vst", "certificate.json", "export",
           "certificate_int8.json", "bench", "plots", "summary.json", "report.md",
           "report.html")


@contextlib.contextmanager
def build_lock(out: Path):
    """One build at a time per output folder: an exclusive lock on
    ``out/.vst-build.lock`` (released by the OS even after kill -9); a second
    build into the same folder fails at once with one line."""
    import fcntl

    out.mkdir(parents=True, exist_ok=True)
    with open(out / LOCK_FILE, "a") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise VstError(f"another vst build is writing into {out} (lock {out / LOCK_FILE}); "
                           "wait for it or use another --out") from None
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def build(cfg: Config, out: Path, *, target_name: str | None = None, bench: bool | None = None,
          show_progress: bool = True) -> dict:
    """Run the pipeline into ``out``; return the summary (also ``out/summary.json``).

    Raises ``GateFailed`` after writing everything when a gate of ``cfg.gates``
    fails (exit 1); ``VstError`` when another build holds ``out`` or the
    config asks for what its exports cannot give (before anything runs).
    """
    check_plan(cfg, cfg.target.bench if bench is None else bench)
    with build_lock(Path(out)):
        return _build(cfg, Path(out), target_name, bench, show_progress)


def check_plan(cfg: Config, bench: bool) -> None:
    """Refuse, with one line, a config whose stages cannot all run on its exports."""
    formats = set(cfg.export.formats)
    if not formats:
        raise VstError('config: export.formats is empty; name at least one of "onnx", '
                       '"vnnlib", "tflite", "c"')
    if bench and "c" not in formats:
        raise VstError('the target bench runs the generated C: add "c" to [export] formats, '
                       "or set [target] bench = false (or pass --no-bench)")
    if not formats & {"tflite", "c"}:        # no int8 .tflite: no int8 numbers to gate on
        for gate in ("min_int8_verified", "min_int8_agreement"):
            if getattr(cfg.gates, gate) > 0:
                raise VstError(f"[gates] {gate} needs the int8 .tflite: add \"tflite\" to "
                               "[export] formats, or set the gate to 0")


def _build(cfg: Config, out: Path, target_name: str | None, bench: bool | None,
           show_progress: bool) -> dict:
    from toolchain.bench import bench_build, bench_dir
    from toolchain.compact import run_compact
    from toolchain.data import load_data
    from toolchain.export import exportable_formats
    from toolchain.export.run import EXPORT_JSON, run_exports
    from toolchain.models.modelfile import load_model
    from toolchain.targets import load_target
    from toolchain.train.trainer import train
    from toolchain.verify import run_verify
    from toolchain.verify.int8_bounds import sha256_file
    from toolchain.verify.int8_certificate import verify_int8

    t0 = time.perf_counter()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    target = load_target(target_name or cfg.target.name)
    bench = cfg.target.bench if bench is None else bench
    stages = Stages(out)
    data = load_data(cfg)
    progress = _Progress(show_progress)
    verify = partial(run_verify, dataset=data, eps_list=[cfg.verify.eps],
                     method=cfg.verify.method, n=cfg.verify.n, device=cfg.verify.device,
                     timeout=cfg.verify.timeout, show_progress=show_progress)

    model_path = out / "train" / "model.vst"
    train_res = stages.run("train", _key(__version__, data.sha256(), cfg.data, cfg.model,
                                         cfg.sparsity, cfg.train, cfg.verify.eps),
                           [model_path],
                           lambda: train(cfg, out / "train", show_progress=show_progress),
                           lambda: _read_train(model_path))
    model = load_model(model_path)
    progress.say(f"trained: density {train_res['density']:.3f}, {train_res['seconds']:.0f} s")

    sparse_cert = out / "certificate_sparse.json"
    verify_res = stages.run("verify", _key(model.weights_hash(), cfg.verify, data.sha256()),
                            [sparse_cert], lambda: verify(model, out=sparse_cert),
                            lambda: _read_certificate(sparse_cert, model, data))
    progress.say(f"verified (sparse): {verify_res['verified_acc']:.1%} at eps={cfg.verify.eps}")

    compact_path = out / "compact.vst"
    compact_res = stages.run("compact", _key(__version__, model.weights_hash(), data.sha256()),
                             [compact_path], lambda: run_compact(model, data, compact_path),
                             lambda: _read_compact(model, compact_path))
    small = load_model(compact_path)
    cert_path = out / "certificate.json"
    reverify_res = stages.run("reverify", _key(small.weights_hash(), cfg.verify, data.sha256()),
                              [cert_path], lambda: verify(small, out=cert_path),
                              lambda: _read_certificate(cert_path, small, data))
    progress.say(f"compacted: {compact_res['params_before']} -> {compact_res['params_after']} "
                 f"params, verified {reverify_res['verified_acc']:.1%}")

    formats, skipped = exportable_formats(small.network, cfg.export.formats)
    export_dir = out / "export"
    export_res = stages.run("export", _key(__version__, small.weights_hash(), cfg.export,
                                           cfg.verify.eps, data.sha256(), target.int8_kernels),
                            [export_dir],
                            lambda: run_exports(small, data, export_dir, formats=formats,
                                                name=NAME, eps=cfg.verify.eps,
                                                vnnlib_n=cfg.export.vnnlib_n, golden=GOLDEN,
                                                verified_acc=reverify_res["verified_acc"],
                                                kernels=target.int8_kernels, exclusive=True,
                                                skipped=skipped),
                            lambda: _read_json(export_dir / EXPORT_JSON))
    shown = [f"{what} {export_res[k]:{fmt}}" for what, k, fmt in (
        ("ONNX diff", "onnx_max_abs_diff", ".1e"),
        ("int8 agreement", "tflite_int8_agreement", ".1%")) if export_res.get(k) is not None]
    progress.say("exported " + ", ".join(formats) + (": " + ", ".join(shown) if shown else ""))
    for reason in dict.fromkeys((export_res.get("skipped") or {}).values()):
        progress.say(f"[yellow]skipped:[/yellow] {reason}")

    int8_res = None
    int8_cert = out / "certificate_int8.json"
    if export_res.get("tflite_int8"):
        tflite = out / export_res["tflite_int8"]
        c_source = export_dir / "c" / f"{NAME}_int8.c"      # the C that carries its weights
        int8_res = stages.run("verify_int8", _key(__version__, sha256_file(tflite), cfg.verify.eps,
                                                  cfg.verify.n, data.sha256(), INT8_METHOD),
                              [int8_cert],
                              lambda: verify_int8(tflite, data, [cfg.verify.eps], cfg.verify.n,
                                                  c_source=c_source if c_source.is_file()
                                                  else None, out=int8_cert,
                                                  method=INT8_METHOD),
                              lambda: _read_int8_certificate(int8_cert, tflite, data))
        progress.say(f"verified (int8, as flashed): {int8_res['verified_acc']:.1%} "
                     f"at eps={cfg.verify.eps}")
    elif int8_cert.exists():         # an earlier build's, for a .tflite no longer exported
        int8_cert.unlink()

    bench_res = None
    if bench and "c" not in formats:
        bench = False
        progress.say("[yellow]warning:[/yellow] no C export, so no firmware build and QEMU run")
    elif not bench:
        progress.say("[yellow]warning:[/yellow] firmware build and QEMU run skipped "
                     "(--no-bench): no flash, RAM or instruction numbers")
    if bench:
        bench_res = stages.run("bench", _key(__version__, small.weights_hash(), asdict(target)),
                               [bench_dir(out, target)], lambda: bench_build(out, target, NAME),
                               lambda: _read_json(bench_dir(out, target) / "bench.json"))
    summary = make_summary(cfg, data, target, train_res, verify_res, compact_res, reverify_res,
                           export_res, bench_res, time.perf_counter() - t0, stages)
    summary["verify"]["int8_verified_acc"] = int8_res["verified_acc"] if int8_res else None
    if int8_res:
        summary["artifacts"]["certificate_int8"] = "certificate_int8.json"
    summary["ibp_sweep"] = ibp_sweep(small, data, cfg.verify.eps)
    failed = gates(cfg, summary)
    summary["gates"] = {"passed": not failed, "failed": failed,
                        "text": "; ".join(failed) if failed else "all passed"}
    if stages.skipped:
        progress.say(f"inputs unchanged: {stages.reused_text()}")
    run_seconds = time.perf_counter() - t0
    summary["stages"]["times"] = stages.times()
    summary["stages"]["reused"] = stages.reused_text()
    # the build's cost: what the reused stages took when they ran, plus this run
    summary["run_seconds"] = run_seconds
    summary["seconds"] = run_seconds + sum(stages.seconds(s) for s in stages.skipped)
    from toolchain.report import write_reports
    write_reports(out, summary)
    write_text(out / "summary.json", json.dumps(summary, indent=1) + "\n")
    if failed:
        raise GateFailed("; ".join(failed))
    return summary


class _Progress:
    def __init__(self, show: bool) -> None:
        self.show = show

    def say(self, text: str) -> None:
        if self.show:
            from toolchain.display import console
            console(stderr=True).print(f"[bold]vst build[/bold] {text}")


def _read_train(model_path: Path) -> dict:
    """The training numbers, from the record in the model file."""
    from toolchain.models.modelfile import load_model

    record = load_model(model_path).record
    last = record["epochs"][-1]
    return {"seconds": record["train_seconds"], "epochs": len(record["epochs"]),
            "clean_acc": last["val_clean_acc"], "density": record["density"],
            "mode": record["mode"], "device": record.get("device", "cpu"),
            "method": record.get("method"), "threads": record.get("threads"),
            "cpus": record.get("cpus")}


def _read_certificate(path: Path, model, data) -> dict:
    """The verification numbers, from the certificate (it must name this model and data)."""
    from toolchain.verify.certificate import load_certificate

    cert = load_certificate(path)
    if cert["model"]["weights_sha256"] != model.weights_hash() or \
            cert["dataset"]["sha256"] != data.sha256() or len(cert["results"]) != 1:
        raise VstError(f"{path} speaks about another model or data")
    res = cert["results"][0]
    return {k: res[k] for k in ("method", "eps", "n", "clean_acc", "verified_acc",
                                "robust_acc_upper", "samples_per_second")} | {
        "verdicts": [s["verdict"] for s in res["samples"]],
        "device": cert["versions"].get("device", "cpu")}


def _read_compact(model, path: Path) -> dict:
    """The compaction numbers, from the compacted model (its layers and its record)."""
    import math

    from toolchain.compact import size_report
    from toolchain.models.modelfile import load_model

    small = load_model(path)
    if small.record.get("compacted_from") != model.weights_hash():
        raise VstError(f"{path} was not compacted from this model")
    diff = small.record["compaction"]["max_abs_diff"]
    if not (isinstance(diff, float) and math.isfinite(diff) and diff >= 0):
        raise VstError(f"{path}: compaction.max_abs_diff is not a number >= 0")
    size = size_report(model, small)
    b, a = size["before"], size["after"]
    return {"params_before": b["params"], "params_after": a["params"], "macs_before": b["macs"],
            "macs_after": a["macs"], "nonzero_after": a["nonzero"], "max_abs_diff": diff,
            "bytes_before": b["bytes_float32"], "bytes_after": a["bytes_float32"],
            "layers_before": size["layers_before"], "layers_after": size["layers_after"],
            "note": size["note"]}


def _read_json(path: Path) -> dict:
    value = json.loads(path.read_text())
    if not isinstance(value, dict):
        raise VstError(f"{path}: not a JSON object")
    return value


def _read_int8_certificate(path: Path, tflite: Path, data) -> dict:
    """The int8 numbers, from the int8 certificate (it must name this .tflite and data)."""
    from toolchain.verify.certificate import load_certificate
    from toolchain.verify.int8_bounds import sha256_file

    cert = load_certificate(path, any_format=True)
    if cert.get("format") != "vst-certificate-int8" or len(cert["results"]) != 1 or \
            cert["tflite"]["sha256"] != sha256_file(tflite) or \
            cert["dataset"]["sha256"] != data.sha256():
        raise VstError(f"{path} speaks about another .tflite or data")
    res = cert["results"][0]
    return {k: res[k] for k in ("eps", "method", "n", "verified_acc", "clean_acc", "counts",
                                "seconds")}


def check_out_dir(out: Path) -> None:
    from toolchain.atomic import check_writable

    if out.exists() and not out.is_dir():
        raise VstError(f"--out {out} exists and is not a directory")
    check_writable(out, directory=True)
