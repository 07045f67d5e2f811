"""The export stage's entry: every requested format, each checked against the model.

``run_exports(model, data, out_dir, formats=...)`` writes ONNX (+ parity vs
PyTorch), VNN-LIB properties, TFLite float and int8 (+ parity, int8 agreement,
LiteRT vs TFLM), and C (TFLM array, standalone float/int8 inference, golden
vectors; ``kernels`` is the int8 kernel family, ``dsp`` or ``portable``; the
int8 arena beside TFLite Micro's for the same model).
Returns the numbers and the paths relative to ``out_dir.parent``, and writes
them to ``out_dir/export.json``. ``vst export`` and ``vst build`` both call it.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np

from toolchain.atomic import write_text
from toolchain.errors import VstError
from toolchain.scratch import ensure_tempdir

FORMATS = ("onnx", "vnnlib", "tflite", "c")
EXPORT_JSON = "export.json"     # the numbers and paths run_exports returns
PARITY_SAMPLES = 1000       # test inputs for the parity checks (the whole mnist5k test split)


def run_exports(model, data, out_dir, *, formats=FORMATS, name: str = "model",
                eps: float = 0.1, vnnlib_n: int = 100, golden: int = 8,
                verified_acc: float | None = None, kernels: str = "dsp",
                exclusive: bool = False, skipped: dict | None = None) -> dict:
    """Every format into ``out_dir``, and the numbers into ``out_dir/export.json``,
    all or nothing: they are written into a staging folder inside it and moved
    into place only when every one of them was written and checked; a failure
    leaves ``out_dir`` as it was. ``exclusive``: ``out_dir`` then holds this
    export only (``vst build``'s folder): what an earlier export with other
    formats left there is removed. ``skipped``: formats asked for that this
    network cannot take, and why (recorded as ``skipped``)."""
    # TensorFlow's C++ logging (oneDNN notices, absl) is noise for a vst user.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    check_formats(formats)
    from toolchain.export import check_exportable
    from toolchain.export.c import check_name
    check_name(name)                    # it names files: checked before anything is written
    for fmt, what in (("tflite", "TFLite"), ("c", "C")):
        if fmt in formats:
            check_exportable(model.network, what)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    ensure_tempdir(out_dir)             # TensorFlow needs one, even under a read-only TMPDIR
    for stale in out_dir.glob(".export-*"):     # left by a killed run
        shutil.rmtree(stale, ignore_errors=True)
    stage = Path(tempfile.mkdtemp(prefix=".export-", dir=out_dir))
    try:
        res = _run(model, data, stage, out_dir.name, formats, name, eps, vnnlib_n, golden,
                   verified_acc, kernels)
        if skipped is not None:
            res["skipped"] = skipped
        write_text(stage / EXPORT_JSON, json.dumps(res, indent=1, default=str) + "\n")
        if exclusive:
            fresh = {entry.name for entry in stage.iterdir()}
            for old in out_dir.iterdir():
                if old != stage and old.name not in fresh:
                    _remove(old)
        for entry in sorted(stage.iterdir()):
            target = out_dir / entry.name
            if target.is_dir() and not target.is_symlink():
                shutil.rmtree(target)
            os.replace(entry, target)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    return res


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink()


def check_formats(formats) -> None:
    """One line for an empty list or a format vst does not know (the first, in order)."""
    unknown = [f for f in formats if f not in FORMATS]
    if unknown:
        raise VstError(f"unknown export format {unknown[0]!r}; choose from {', '.join(FORMATS)}")
    if not formats:
        raise VstError("no export format given")


def export_outputs(out_dir, formats, name: str = "model") -> list[Path]:
    """What ``run_exports`` writes into ``out_dir`` for ``formats`` (files, and
    folders it replaces as a whole): checked against the inputs before work."""
    from toolchain.export.vnnlib import INSTANCES, PROPERTY_DIR

    out_dir, formats = Path(out_dir), set(formats)
    paths = []
    if formats & {"onnx", "vnnlib"}:
        paths.append(out_dir / f"{name}.onnx")
    if "vnnlib" in formats:
        paths += [out_dir / PROPERTY_DIR, out_dir / INSTANCES]
    if formats & {"tflite", "c"}:
        paths += [out_dir / f"{name}_float.tflite", out_dir / f"{name}_int8.tflite"]
    if "c" in formats:
        paths.append(out_dir / "c")
    return paths + [out_dir / EXPORT_JSON]


def _run(model, data, out_dir: Path, shown: str, formats, name, eps, vnnlib_n, golden,
         verified_acc, kernels) -> dict:
    """The exports into ``out_dir`` (the staging folder); paths in the result are
    shown under ``shown`` (the final folder's name)."""
    rel = lambda p: str(Path(shown) / Path(p).relative_to(out_dir))  # noqa: E731
    x, y = data.x_test[:PARITY_SAMPLES], data.y_test[:PARITY_SAMPLES]
    res: dict = {"formats": list(formats)}
    files: dict[str, Path] = {}
    if "onnx" in formats or "vnnlib" in formats:
        from toolchain.export.onnx import export_onnx, onnx_parity

        meta = {"eps": f"{eps:g}", "certificate_weights_sha256": model.weights_hash(),
                "dataset": data.name, "input_range": "0,1"}
        if data.scaling is not None:   # inputs came in their own units: how to map them
            meta["input_scaling"] = json.dumps(data.scaling_info())
            meta["eps_in_input_units"] = json.dumps(data.scaling.eps_in_units(eps))
        if verified_acc is not None:
            meta["verified_acc"] = f"{verified_acc:.6f}"
        files["onnx"] = export_onnx(model, out_dir / f"{name}.onnx", metadata=meta)
        res["onnx"], res["onnx_max_abs_diff"] = rel(files["onnx"]), onnx_parity(model, files["onnx"], x)
    if "vnnlib" in formats:
        from toolchain.export.vnnlib import write_vnnlib

        n = min(vnnlib_n, len(data.x_test))
        write_vnnlib(out_dir, f"{name}.onnx", data.x_test[:n], data.y_test[:n], eps)
        files["vnnlib"] = out_dir / "vnnlib"
        res["vnnlib_dir"], res["vnnlib_count"] = rel(files["vnnlib"]), n
    tfl = None
    if "tflite" in formats or "c" in formats:
        tfl = _tflite(model, data, out_dir, name, x, y, res, rel)
        files.update(tflite_float=tfl["float"], tflite_int8=tfl["int8"])
    if "c" in formats:
        from toolchain.export.c import generate_c

        c = generate_c(model.network, model.state, out_dir / "c", name=name,
                       tflite_int8=tfl["int8"], golden_x=data.x_test[:golden], kernels=kernels)
        files["c"] = out_dir / "c"
        res["c_dir"] = rel(files["c"])
        res["c"] = {"float": c["float"], "int8": c["int8"], "golden_count": c["golden_count"]}
        if c["int8"] is not None:
            from toolchain.export.tflite import tflm_arena

            # the same model's arena in TFLite Micro (arena_used_bytes = total), beside ours
            c["int8"]["tflm_arena"] = tflm_arena(tfl["int8"])
    from toolchain.export import artifact_sizes
    res["sizes"] = artifact_sizes(files)
    return res


def _tflite(model, data, out_dir: Path, name: str, x: np.ndarray, y: np.ndarray, res: dict, rel):
    from toolchain.export.tflite import compare_runtimes, export_tflite, tflite_report

    tfl = export_tflite(model, out_dir, data.x_train, name=name)
    report = tflite_report(model, tfl, x, y)
    runtimes = compare_runtimes(tfl["int8"], x[:200])
    res.update({"tflite_float": rel(tfl["float"]), "tflite_int8": rel(tfl["int8"]),
                "tflite_seconds": tfl["seconds"],
                "tflite_calibration_dropped": tfl["calibration_dropped"],
                "tflite_float_max_abs_diff": report["float_max_abs_diff"],
                "tflite_int8_agreement": report["int8_agreement"],
                "tflite_int8_max_abs_diff": report["int8_max_abs_diff"],
                "torch_acc": report.get("torch_acc"), "float_acc": report.get("float_acc"),
                "int8_acc": report.get("int8_acc"), "litert_vs_tflm_int8": runtimes})
    return tfl
