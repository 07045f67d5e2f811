"""``vst build``: every stage chained, with a skip for stages whose inputs did not change.

    train -> verify -> compact -> re-verify -> export -> verify int8 -> bench -> report

Each stage has a key (a hash of what it reads: config section, input model
hash, target). ``BUILD_DIR/.vst-stages.json`` remembers each stage's key and
result; a stage whose key and outputs are unchanged is not run again.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import time
from dataclasses import asdict
from pathlib import Path

from toolchain import __version__
from toolchain.atomic import write_text
from toolchain.config import Config
from toolchain.errors import GateFailed, VstError

log = logging.getLogger("vst.build")
NAME = "model"          # C identifier of the generated model: vst_model_infer()
GOLDEN = 8              # golden vectors for the on-target self-test
LOCK_FILE = ".vst-build.lock"


def _key(*parts) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


class Stages:
    """The stage memo in ``BUILD_DIR/.vst-stages.json``."""

    def __init__(self, out: Path) -> None:
        self.path = out / ".vst-stages.json"
        try:
            self.memo = json.loads(self.path.read_text()) if self.path.is_file() else {}
        except (OSError, json.JSONDecodeError):
            self.memo = {}
        self.ran: list[str] = []
        self.skipped: list[str] = []

    def run(self, stage: str, key: str, outputs: list[Path], fn):
        entry = self.memo.get(stage)
        if entry and entry["key"] == key and all(p.exists() for p in outputs):
            self.skipped.append(stage)
            log.info("%s: inputs unchanged, skipped", stage)
            return entry["result"]
        start = time.perf_counter()
        result = fn()
        self.memo[stage] = {"key": key, "result": result, "seconds": time.perf_counter() - start,
                            "at": time.strftime("%Y-%m-%d %H:%M:%S")}
        write_text(self.path, json.dumps(self.memo, indent=1, default=str))
        self.ran.append(stage)
        return result

    def times(self) -> dict[str, dict]:
        """Per stage of this build: seconds it took when it ran, when, and
        whether this run reused it."""
        return {s: {"seconds": self.memo[s].get("seconds"), "at": self.memo[s].get("at"),
                    "reused": s in self.skipped} for s in self.ran + self.skipped}

    def reused_text(self) -> str:
        """E.g. "reused train (2026-12-02 05:00:12, 128 s), verify (...)"."""
        parts = [f"{s} ({self.memo[s].get('at', '?')}, {self.memo[s].get('seconds') or 0:.0f} s)"
                 for s in self.skipped]
        return "reused " + ", ".join(parts) if parts else ""


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
    fails (exit 1); ``VstError`` when another build holds ``out``.
    """
    with build_lock(Path(out)):
        return _build(cfg, Path(out), target_name, bench, show_progress)


def _build(cfg: Config, out: Path, target_name: str | None, bench: bool | None,
           show_progress: bool) -> dict:
    from toolchain.models.modelfile import load_model
    from toolchain.targets import load_target
    from toolchain.train.loop import load_data

    t0 = time.perf_counter()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    target = load_target(target_name or cfg.target.name)
    bench = cfg.target.bench if bench is None else bench
    stages = Stages(out)
    data = load_data(cfg)
    progress = _Progress(show_progress)

    model_path = out / "train" / "model.vst"
    train_res = stages.run("train", _key(__version__, data.sha256(), cfg.data, cfg.model,
                                         cfg.sparsity, cfg.train, cfg.verify.eps),
                           [model_path], lambda: _train(cfg, out / "train", show_progress))
    model = load_model(model_path)
    progress.say(f"trained: density {train_res['density']:.3f}, {train_res['seconds']:.0f} s")

    verify_res = stages.run("verify", _key(model.weights_hash(), cfg.verify, data.sha256()),
                            [out / "certificate_sparse.json"],
                            lambda: _verify(model, data, cfg, out / "certificate_sparse.json",
                                            show_progress))
    progress.say(f"verified (sparse): {verify_res['verified_acc']:.1%} at eps={cfg.verify.eps}")

    compact_path = out / "compact.vst"
    compact_res = stages.run("compact", _key(__version__, model.weights_hash(), data.sha256()),
                             [compact_path], lambda: _compact(model, data, compact_path))
    small = load_model(compact_path)
    reverify_res = stages.run("reverify", _key(small.weights_hash(), cfg.verify, data.sha256()),
                              [out / "certificate.json"],
                              lambda: _verify(small, data, cfg, out / "certificate.json",
                                              show_progress))
    progress.say(f"compacted: {compact_res['params_before']} -> {compact_res['params_after']} "
                 f"params, verified {reverify_res['verified_acc']:.1%}")

    from toolchain.export import exportable_formats
    formats, skipped = exportable_formats(small.network, cfg.export.formats)
    export_res = stages.run("export", _key(__version__, small.weights_hash(), cfg.export,
                                           cfg.verify.eps, data.sha256(), target.int8_kernels),
                            [out / "export" / f"{NAME}.onnx"],
                            lambda: _export(small, data, cfg, out / "export", reverify_res,
                                            target.int8_kernels, formats))
    export_res["skipped"] = skipped
    said = [f"ONNX diff {export_res['onnx_max_abs_diff']:.1e}"] if "onnx" in export_res else []
    if "tflite_int8_agreement" in export_res:
        said.append(f"int8 agreement {export_res['tflite_int8_agreement']:.1%}")
    progress.say(f"exported {'/'.join(formats)}" + (f": {', '.join(said)}" if said else ""))
    for reason in dict.fromkeys(skipped.values()):
        progress.say(f"[yellow]skipped:[/yellow] {reason}")

    int8_res = None
    if export_res.get("tflite_int8"):
        tflite = out / export_res["tflite_int8"]
        from toolchain.verify.int8_bounds import sha256_file
        int8_res = stages.run("verify_int8", _key(__version__, sha256_file(tflite), cfg.verify.eps,
                                                  cfg.verify.n, data.sha256()),
                              [out / "certificate_int8.json"],
                              lambda: _verify_int8(tflite, data, cfg, out))
        progress.say(f"verified (int8, as flashed): {int8_res['verified_acc']:.1%} "
                     f"at eps={cfg.verify.eps}")

    bench_res = None
    if bench and "c" not in formats:
        bench = False
        progress.say("[yellow]warning:[/yellow] no C export, so no firmware build and QEMU run")
    elif not bench:
        progress.say("[yellow]warning:[/yellow] firmware build and QEMU run skipped "
                     "(--no-bench): no flash, RAM or instruction numbers")
    if bench:
        bench_res = stages.run("bench", _key(__version__, small.weights_hash(), asdict(target)),
                               [out / "bench" / target.name / "bench.json"],
                               lambda: _bench(out, target))
    summary = _summary(cfg, data, target, train_res, verify_res, compact_res, reverify_res,
                       export_res, bench_res, time.perf_counter() - t0, stages)
    summary["verify"]["int8_verified_acc"] = int8_res["verified_acc"] if int8_res else None
    if int8_res:
        summary["artifacts"]["certificate_int8"] = "certificate_int8.json"
    summary["ibp_sweep"] = _ibp_sweep(small, data, cfg.verify.eps)
    failed = _gates(cfg, summary)
    summary["gates"] = {"passed": not failed, "failed": failed,
                        "text": "; ".join(failed) if failed else "all passed"}
    if stages.skipped:
        progress.say(f"inputs unchanged: {stages.reused_text()}")
    run_seconds = time.perf_counter() - t0
    summary["stages"]["times"] = stages.times()
    summary["stages"]["reused"] = stages.reused_text()
    # the build's cost: what the reused stages took when they ran, plus this run
    summary["run_seconds"] = run_seconds
    summary["seconds"] = run_seconds + sum(stages.memo[s].get("seconds") or 0
                                           for s in stages.skipped)
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


def _train(cfg, out_dir: Path, show_progress: bool) -> dict:
    from toolchain.train.trainer import train

    model = train(cfg, out_dir, show_progress=show_progress)
    last = model.record["epochs"][-1]
    return {"seconds": model.record["train_seconds"], "epochs": len(model.record["epochs"]),
            "clean_acc": last["val_clean_acc"], "density": model.record["density"],
            "mode": model.record["mode"], "device": model.record.get("device", "cpu"),
            "method": model.record.get("method"), "threads": model.record.get("threads"),
            "cpus": model.record.get("cpus")}


def _verify(model, data, cfg, path: Path, show_progress: bool) -> dict:
    """Verify at the config's eps, write the certificate to ``path``, return its numbers."""
    from toolchain.train.distributed import resolve_device
    from toolchain.verify import verify_model
    from toolchain.verify.certificate import build_certificate, save_certificate

    device = resolve_device(cfg.verify.device)
    result = verify_model(model, data, [cfg.verify.eps], cfg.verify.method, cfg.verify.n,
                          show_progress=show_progress, device=device,
                          timeout=cfg.verify.timeout)
    cert = build_certificate(model, data, result)
    cert["versions"]["device"] = device.type
    save_certificate(path, cert)
    res = cert["results"][0]
    return {k: res[k] for k in ("method", "eps", "n", "clean_acc", "verified_acc",
                                "robust_acc_upper", "samples_per_second")} | {
        "verdicts": [s["verdict"] for s in res["samples"]], "device": device.type}


def _compact(model, data, path: Path) -> dict:
    import torch

    from toolchain.compact import compact, max_abs_diff
    from toolchain.models.modelfile import save_model

    small, report = compact(model)
    diff = max_abs_diff(model, small, torch.from_numpy(data.x_test))
    small.record["compaction"]["max_abs_diff"] = diff
    save_model(path, small)
    b, a = report["before"], report["after"]
    return {"params_before": b["params"], "params_after": a["params"], "macs_before": b["macs"],
            "macs_after": a["macs"], "nonzero_after": a["nonzero"], "max_abs_diff": diff,
            "bytes_before": b["bytes_float32"], "bytes_after": a["bytes_float32"],
            "layers_before": report["layers_before"], "layers_after": report["layers_after"],
            "note": report["note"]}


def _export(small, data, cfg, out: Path, reverify: dict, kernels: str, formats) -> dict:
    from toolchain.export.run import run_exports

    return run_exports(small, data, out, formats=formats, name=NAME,
                       eps=cfg.verify.eps, vnnlib_n=cfg.export.vnnlib_n, golden=GOLDEN,
                       verified_acc=reverify["verified_acc"], kernels=kernels)


def _verify_int8(tflite: Path, data, cfg, out: Path) -> dict:
    """Bound the flashed int8 network in its own arithmetic; certificate_int8.json."""
    from toolchain.verify.int8_bounds import Int8Bounds
    from toolchain.verify.int8_certificate import (build_int8_certificate,
                                                   save_int8_certificate, verify_int8_samples)

    n = cfg.verify.n or None
    res = verify_int8_samples(Int8Bounds.from_tflite(tflite), data.x_test[:n], data.y_test[:n],
                              cfg.verify.eps)
    c_source = out / "export" / "c" / f"{NAME}_int8.c"
    cert = build_int8_certificate(tflite, data, [res], c_source if c_source.is_file() else None)
    save_int8_certificate(out / "certificate_int8.json", cert)
    return {k: res[k] for k in ("eps", "n", "verified_acc", "clean_acc", "counts", "seconds")}


def _bench(out: Path, target) -> dict:
    from toolchain.bench import bench_model

    return bench_model(out / "export" / "c", NAME, target, out / "bench" / target.name)


def _summary(cfg, data, target, tr, ve, co, rv, ex, be, seconds, stages) -> dict:
    from toolchain.versions import versions

    variant = (be or {}).get("int8") or (be or {}).get("float") or {}
    same = ve["verdicts"] == rv["verdicts"]
    return {
        "dataset": data.name, "model": cfg.model.arch, "eps": cfg.verify.eps,
        "sparsity": {"method": cfg.sparsity.method, "mode": tr["mode"], "density": tr["density"],
                     "params_total": co["params_before"], "params_nonzero": co["nonzero_after"]},
        "train": {"seconds": tr["seconds"], "epochs": tr["epochs"], "clean_acc": tr["clean_acc"],
                  "device": tr.get("device", "cpu"), "threads": tr.get("threads"),
                  "cpus": tr.get("cpus")},
        "verify": {k: ve[k] for k in ("method", "eps", "n", "clean_acc", "verified_acc",
                                      "robust_acc_upper")} | {"device": ve.get("device", "cpu")},
        "compact": {"params_before": co["params_before"], "params_after": co["params_after"],
                    "macs_before": co["macs_before"], "macs_after": co["macs_after"],
                    "max_abs_diff": co["max_abs_diff"], "verified_acc": rv["verified_acc"],
                    "verdicts_identical": same},
        "export": {k: ex.get(k) for k in ("onnx", "tflite_float", "tflite_int8", "c_dir",
                                          "vnnlib_dir", "onnx_max_abs_diff",
                                          "tflite_float_max_abs_diff", "tflite_int8_agreement",
                                          "int8_acc", "float_acc", "sizes", "c",
                                          "litert_vs_tflm_int8", "skipped")},
        # Sizes and counts of the deployable variant (int8 when built); parity of
        # each variant against the host running the same arithmetic.
        "target": {"name": target.name, "variant": variant.get("variant"),
                   "flash_bytes": variant.get("flash_bytes"), "ram_bytes": variant.get("ram_bytes"),
                   "instructions_per_inference": variant.get("instructions_per_inference"),
                   "parity_max_abs_diff": ((be or {}).get("float") or {}).get("parity_max_abs_diff"),
                   "int8_parity_max_steps": ((be or {}).get("int8") or {}).get("int8_max_abs_diff_q"),
                   "top1_agreement": min((v["top1_agreement"] for v in (be or {}).values()
                                          if isinstance(v, dict)), default=None),
                   "fits": variant.get("fits"),
                   "flash_budget": target.flash_budget, "ram_budget": target.ram_budget,
                   "benched": be is not None, "variants": be},
        "artifacts": {"model": "train/model.vst", "compact_model": "compact.vst",
                      "certificate": "certificate.json", "report": "report.html",
                      "summary_md": "report.md", "export": "export"},
        "stages": {"ran": stages.ran, "skipped": stages.skipped},
        "compact_layers": {"before": co["layers_before"], "after": co["layers_after"]},
        "seconds": seconds, "config": cfg.to_dict(), "versions": versions(),
    }


def _ibp_sweep(model, data, eps: float) -> list[dict]:
    """IBP-verified accuracy at a few eps around the test eps (cheap: one pass each)."""
    import torch

    from toolchain.lirpa.bounds import Bounder

    module = model.torch_module().eval()
    bounder = Bounder(module, data.input_shape)
    x, y = torch.from_numpy(data.x_test), torch.from_numpy(data.y_test)
    return [{"eps": f * eps, "verified_acc": bounder.count_verified(x, y, f * eps) / len(x)}
            for f in (0.0, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0)]


def _gates(cfg, summary: dict) -> list[str]:
    g, failed = cfg.gates, []
    if not summary["compact"]["verdicts_identical"]:
        failed.append("compaction changed a verification verdict")
    v = summary["compact"]["verified_acc"]
    if v < g.min_verified:
        failed.append(f"verified {v:.1%} < required {g.min_verified:.1%} at eps={summary['eps']:g}")
    v8 = summary["verify"].get("int8_verified_acc")
    if v8 is not None and v8 < g.min_int8_verified:
        failed.append(f"int8 verified {v8:.1%} < required {g.min_int8_verified:.1%} "
                      f"at eps={summary['eps']:g}")
    agree = summary["export"].get("tflite_int8_agreement")
    if agree is not None and agree < g.min_int8_agreement:
        failed.append(f"int8 agreement {agree:.1%} < required {g.min_int8_agreement:.1%}")
    t = summary["target"]
    if g.fit_target and t["benched"] and t["fits"] is False:
        failed.append(f"model needs flash {t['flash_bytes']} B / RAM {t['ram_bytes']} B, "
                      f"{t['name']} has {t['flash_budget']} B / {t['ram_budget']} B")
    return failed


def check_out_dir(out: Path) -> None:
    from toolchain.atomic import check_writable

    if out.exists() and not out.is_dir():
        raise VstError(f"--out {out} exists and is not a directory")
    check_writable(out, directory=True)
