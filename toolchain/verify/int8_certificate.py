"""The certificate of the int8 network that is flashed (``certificate_int8.json``).

It names the exact artifacts it speaks about (the SHA-256 of the .tflite and,
when given, of the generated int8 C source that carries the same weights),
the data and eps, and per sample the verdict and the margin lower bounds.
Methods (``METHODS``): ``int8``, the interval and last-layer margin form of
``int8_bounds``; ``int8-crown`` (the default), each margin the larger of that
and the back-substituted bound of ``int8_crown``. Per sample, ``method`` names
what proved a verified sample (``int8`` where the interval form alone does,
else ``int8-crown``; null when not verified). Verdicts: ``verified`` (every
margin bound >= 1 and no tie possible), ``falsified`` (the int8 network
misclassifies the unperturbed input itself: a counterexample inside the box)
or ``unknown``. ``verify_int8`` is the stage's entry (it writes the
certificate); ``check_int8_certificate`` recomputes every claim, the method
of each sample included, under the same sample rules as the float
certificate (``certificate_rules``).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from toolchain.atomic import write_text
from toolchain.epsbox import INPUT_RANGE
from toolchain.errors import GateFailed, VstError
from toolchain.verify.certificate_rules import (check_indices, check_sample_set,
                                                check_summaries, result_failure)
from toolchain.verify.certificate_schema import VERDICTS, _bad, validate_int8_certificate
from toolchain.verify.int8_bounds import Int8Bounds, sha256_file

METHODS = ("int8", "int8-crown")

FORMAT = "vst-certificate-int8"
VERSION = 1
SEMANTICS = ("TFLite int8 (TFLite Micro reference kernels, bit-exact with vst's generated C): "
             "inputs quantized with round-half-away-from-zero and clamp; per-channel "
             "requantization; the predicted class is the first maximum, ties count as "
             "not verified")
# The margins are integers computed exactly; a claim may be lower (still true), never higher.
MARGIN_TOL = 1e-9


def _first_argmax_is(outputs: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Whether the firmware's argmax (the first maximum) is the label, with no tie."""
    best = outputs.max(axis=1)
    ties = (outputs == best[:, None]).sum(axis=1) > 1
    return (np.argmax(outputs, axis=1) == y) & ~ties


def verify_int8_samples(bounds: Int8Bounds, x: np.ndarray, y: np.ndarray, eps: float,
                        method: str = "int8-crown") -> dict:
    """One certificate result (dict) for (x, y) at eps, by ``method`` (``METHODS``)."""
    import time

    from toolchain.verify.int8_crown import Int8Crown

    if method not in METHODS:
        raise VstError(f"int8 verification: unknown method {method!r} "
                       f"(one of {', '.join(METHODS)})")
    t0 = time.perf_counter()
    y = np.asarray(y, np.int64)
    result = (Int8Crown(bounds) if method == "int8-crown" else bounds).verify(x, y, eps)
    q_point, _ = bounds.quantize_box(x, 0.0)
    correct = _first_argmax_is(bounds.outputs(q_point), y)
    verdicts = np.where(result.verified, "verified", np.where(correct, "unknown", "falsified"))
    by = np.where(result.interval_verified, "int8", method)
    seconds = time.perf_counter() - t0
    samples = [{"index": i, "label": int(y[i]), "verdict": str(verdicts[i]),
                "method": str(by[i]) if result.verified[i] else None,
                "margin_lower": [float(v) for v in result.margins[i]]} for i in range(len(y))]
    n = max(len(y), 1)
    return {"eps": float(eps), "method": method, "n": len(y),
            "counts": {v: int(np.sum(verdicts == v)) for v in ("verified", "falsified", "unknown")},
            "verified_acc": float(np.mean(result.verified)) if len(y) else 0.0,
            "clean_acc": float(np.sum(correct) / n), "seconds": seconds, "samples": samples}


def build_int8_certificate(tflite_path, dataset, results: list[dict], c_source=None) -> dict:
    from toolchain.versions import versions

    return {
        "format": FORMAT, "version": VERSION, "versions": versions(), "semantics": SEMANTICS,
        "tflite": {"file": Path(tflite_path).name, "sha256": sha256_file(tflite_path)},
        "c_source": None if c_source is None else {"file": Path(c_source).name,
                                                   "sha256": sha256_file(c_source)},
        "dataset": {"name": dataset.name, "sha256": dataset.sha256(), "split": "test"},
        "input_range": list(INPUT_RANGE), "norm": "Linf", "results": results,
    }


def verify_int8(tflite_path, dataset, eps_list, n: int = 0, *, c_source=None,
                out=None, method: str = "int8-crown") -> dict:
    """The int8 verification stage (``vst verify MODEL.tflite`` and ``vst build``):
    bound the int8 network that is flashed, in its own arithmetic, on the first
    ``n`` test samples (0: all) at each eps, by ``method``; the certificate names
    the .tflite and, when given, the generated int8 C source. Written atomically
    to ``out`` when given; returned either way."""
    bounds = Int8Bounds.from_tflite(tflite_path)
    x, y = dataset.x_test[: n or None], dataset.y_test[: n or None]
    results = [verify_int8_samples(bounds, x, y, eps, method) for eps in eps_list]
    cert = build_int8_certificate(tflite_path, dataset, results, c_source)
    if out is not None:
        save_int8_certificate(out, cert)
    return cert


def save_int8_certificate(path, cert: dict) -> None:
    write_text(Path(path), json.dumps(cert, indent=1) + "\n")


def is_int8_certificate(cert: dict) -> bool:
    return isinstance(cert, dict) and cert.get("format") == FORMAT


def check_int8_certificate(cert: dict, tflite_path, dataset, c_source=None) -> str:
    """Raise ``GateFailed`` unless ``cert`` names this .tflite (and ``c_source``, when
    given) and data and every claim recomputes; a one-line summary otherwise.

    The float checker's sample rules (``certificate_rules``): the first n test
    samples once each, summaries recomputed; labels come from the data; every
    verdict and margin is recomputed (the int8 bounds are exact integer
    arithmetic, so a claimed margin above the recomputed one is a lie). A
    malformed file is a ``VstError`` (exit 2).
    """
    source = getattr(cert, "source", "certificate")
    if not is_int8_certificate(cert):
        raise VstError(f"{source}: not an int8 certificate (check a float certificate "
                       "against its .vst or .onnx model)")
    validate_int8_certificate(cert, source)
    name = Path(tflite_path).name
    if cert["tflite"]["sha256"] != sha256_file(tflite_path):
        raise GateFailed(f"{source}: certificate does not belong to {name} (sha256 differs)")
    if c_source is not None:
        if cert["c_source"] is None:
            raise GateFailed(f"{source}: names no C source; cannot vouch for "
                             f"{Path(c_source).name}")
        if cert["c_source"]["sha256"] != sha256_file(c_source):
            raise GateFailed(f"{source}: certificate does not belong to "
                             f"{Path(c_source).name} (sha256 differs)")
    if cert["dataset"]["sha256"] != dataset.sha256():
        raise GateFailed(f"{source}: certificate speaks about other data than {dataset.name} "
                         "(hash differs)")
    if not cert["results"]:
        raise GateFailed(f"{source}: claims nothing (results is empty)")
    bounds = Int8Bounds.from_tflite(tflite_path)
    for r, res in enumerate(cert["results"]):
        _check_result(source, f"results[{r}]", res, bounds, dataset)
    n = sum(len(r["samples"]) for r in cert["results"])
    c_text = "" if c_source is None else f" and {Path(c_source).name}"
    return (f"int8 certificate matches {name}{c_text}: all {n} verdicts and their margins "
            f"recomputed over {len(cert['results'])} eps")


def _check_result(source: str, where: str, res: dict, bounds: Int8Bounds, dataset) -> None:
    samples = res["samples"]
    classes = bounds.y_t.size
    check_indices(source, where, samples, len(dataset.x_test))
    for k, s in enumerate(samples):
        if s["label"] >= classes:
            raise _bad(source, f"{where}.samples[{k}].label", f"a class in [0, {classes})",
                       s["label"])
        if len(s["margin_lower"]) != classes:
            raise _bad(source, f"{where}.samples[{k}].margin_lower",
                       f"{classes} margins (one per class, the label's own 0)",
                       s["margin_lower"])
    check_sample_set(source, where, res)
    n = len(samples)
    count = {v: sum(s["verdict"] == v for s in samples) for v in VERDICTS}
    check_summaries(source, where, res, {
        "counts": count, "verified_acc": count["verified"] / n,
        "clean_acc": 1.0 - count["falsified"] / n})
    index = np.array([s["index"] for s in samples], np.int64)
    fresh = verify_int8_samples(bounds, dataset.x_test[index], dataset.y_test[index],
                                float(res["eps"]), res["method"])["samples"]
    fail = result_failure(source, where, res)
    for claimed, again in zip(samples, fresh):
        why = _claim_fails(claimed, again)
        if why:
            raise fail(f"sample {claimed['index']}: claim does not re-check: {why}")


def _claim_fails(claimed: dict, again: dict) -> str:
    """Why one sample's claim does not hold against its recomputation ("" if it does)."""
    if claimed["label"] != again["label"]:
        return f"label {claimed['label']} != the data's {again['label']}"
    if claimed["verdict"] != again["verdict"]:
        return f"claims {claimed['verdict']}, recomputed {again['verdict']}"
    if "method" in claimed and claimed["method"] != again["method"]:
        return f"claims it proved by {claimed['method']}, recomputed {again['method']}"
    mine = np.asarray(claimed["margin_lower"], np.float64)
    fresh = np.asarray(again["margin_lower"], np.float64)
    others = np.arange(len(fresh)) != again["label"]
    if claimed["verdict"] == "verified" and not np.all(mine[others] >= 1.0):
        return "claimed verified, but its own margins are not all >= 1"
    if np.any(mine > fresh + MARGIN_TOL):
        j = int(np.argmax(mine - fresh))
        return (f"claimed margin {mine[j]:.6g} (class {j}) is higher than the recomputed "
                f"int8 bound {fresh[j]:.6g}")
    return ""
