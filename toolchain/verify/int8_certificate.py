"""The certificate of the int8 network that is flashed (``certificate_int8.json``).

It names the exact artifacts it speaks about (the SHA-256 of the .tflite and,
when given, of the generated int8 C source that carries the same weights),
the data and eps, and per sample the verdict and the margin lower bounds of
``int8_bounds``. Verdicts: ``verified`` (every margin bound >= 1 and no tie
possible), ``falsified`` (the int8 network misclassifies the unperturbed input
itself: a counterexample inside the box) or ``unknown``.
``check_int8_certificate`` recomputes every claim.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from toolchain.atomic import write_text
from toolchain.epsbox import INPUT_RANGE
from toolchain.errors import GateFailed, VstError
from toolchain.verify.int8_bounds import Int8Bounds, sha256_file

FORMAT = "vst-certificate-int8"
VERSION = 1
SEMANTICS = ("TFLite int8 (TFLite Micro reference kernels, bit-exact with vst's generated C): "
             "inputs quantized with round-half-away-from-zero and clamp; per-channel "
             "requantization; the predicted class is the first maximum, ties count as "
             "not verified")


def _first_argmax_is(outputs: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Whether the firmware's argmax (the first maximum) is the label, with no tie."""
    best = outputs.max(axis=1)
    ties = (outputs == best[:, None]).sum(axis=1) > 1
    return (np.argmax(outputs, axis=1) == y) & ~ties


def verify_int8_samples(bounds: Int8Bounds, x: np.ndarray, y: np.ndarray, eps: float) -> dict:
    """One certificate result (dict) for (x, y) at eps."""
    import time

    t0 = time.perf_counter()
    y = np.asarray(y, np.int64)
    result = bounds.verify(x, y, eps)
    q_point, _ = bounds.quantize_box(x, 0.0)
    correct = _first_argmax_is(bounds.outputs(q_point), y)
    verdicts = np.where(result.verified, "verified", np.where(correct, "unknown", "falsified"))
    seconds = time.perf_counter() - t0
    samples = [{"index": i, "label": int(y[i]), "verdict": str(verdicts[i]),
                "margin_lower": [float(v) for v in result.margins[i]]} for i in range(len(y))]
    n = max(len(y), 1)
    return {"eps": float(eps), "method": "int8", "n": len(y),
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


def save_int8_certificate(path, cert: dict) -> None:
    write_text(Path(path), json.dumps(cert, indent=1) + "\n")


def is_int8_certificate(cert: dict) -> bool:
    return isinstance(cert, dict) and cert.get("format") == FORMAT


def check_int8_certificate(cert: dict, tflite_path, dataset) -> str:
    """Raise ``GateFailed`` unless ``cert`` names this .tflite and data and every
    claim, verdict and summary recomputes; a one-line summary otherwise."""
    try:
        if cert["tflite"]["sha256"] != sha256_file(tflite_path):
            raise GateFailed(f"certificate does not belong to {Path(tflite_path).name} "
                             "(sha256 differs)")
        if cert["dataset"]["sha256"] != dataset.sha256():
            raise GateFailed(f"certificate speaks about other data than {dataset.name}")
        bounds = Int8Bounds.from_tflite(tflite_path)
        for res in cert["results"]:
            index = np.array([s["index"] for s in res["samples"]], np.int64)
            if len(index) and (index.min() < 0 or index.max() >= len(dataset.x_test)):
                raise GateFailed("certificate names samples the data does not have")
            again = verify_int8_samples(bounds, dataset.x_test[index], dataset.y_test[index],
                                        float(res["eps"]))
            for claimed, fresh in zip(res["samples"], again["samples"]):
                if claimed["verdict"] != fresh["verdict"] or claimed["label"] != fresh["label"]:
                    raise GateFailed(f"certificate sample {claimed['index']} at eps={res['eps']}: "
                                     f"claims {claimed['verdict']}, recomputed {fresh['verdict']}")
            if res["counts"] != again["counts"] or \
                    abs(res["verified_acc"] - again["verified_acc"]) > 1e-12:
                raise GateFailed(f"certificate summary at eps={res['eps']} does not match "
                                 "its samples")
    except (KeyError, TypeError, ValueError) as exc:
        raise VstError(f"not a readable int8 certificate ({type(exc).__name__}: {exc})") from None
    n = sum(len(r["samples"]) for r in cert["results"])
    return f"int8 certificate matches {Path(tflite_path).name}; {n} verdicts recomputed"
