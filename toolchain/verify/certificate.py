"""Certificates are data: JSON that names the exact weights it speaks about.

A certificate holds, per eps, every sample's verdict, the method that decided
it and its margin lower bounds, with the SHA-256 of the model's weights and of
the data, and the versions of vst and its libraries.
``check_certificate`` proves a certificate belongs to a model (hash) and
re-computes a sample of its "verified" claims.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from toolchain.atomic import write_text
from toolchain.errors import GateFailed, VstError
from toolchain.verify.engine import EpsResult

FORMAT = "vst-certificate"
VERSION = 1


def build_certificate(model, dataset, results: list[EpsResult], split: str = "test") -> dict:
    from toolchain.versions import versions

    return {
        "format": FORMAT, "version": VERSION, "versions": versions(),
        "model": {"weights_sha256": model.weights_hash(),
                  "params": model.network.param_count()},
        "dataset": {"name": dataset.name, "sha256": dataset.sha256(), "split": split},
        "input_range": [0.0, 1.0], "norm": "Linf",
        "results": [{
            "eps": r.eps, "method": r.method, "n": r.n,
            "counts": {v: r.count(v) for v in ("verified", "falsified", "unknown")},
            "verified_by": r.by_method(), "verified_acc": r.verified_acc,
            "robust_acc_upper": r.robust_upper,
            "clean_acc": 1.0 - sum(s.method == "clean" for s in r.samples) / max(1, r.n),
            "seconds": r.seconds, "samples_per_second": r.n / max(r.seconds, 1e-9),
            "samples": [s.to_dict() for s in r.samples],
        } for r in results],
    }


def save_certificate(path: Path, cert: dict) -> None:
    write_text(path, json.dumps(cert, indent=1) + "\n")


def load_certificate(path: Path, any_format: bool = False) -> dict:
    """A certificate file (``any_format``: the int8 certificate too); one-line errors."""
    from toolchain.verify.int8_certificate import FORMAT as INT8_FORMAT

    path = Path(path)
    if not path.is_file():
        raise VstError(f"certificate not found: {path}")
    try:
        cert = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise VstError(f"{path}: not a certificate ({exc})") from None
    formats = (FORMAT, INT8_FORMAT) if any_format else (FORMAT,)
    if isinstance(cert, dict) and cert.get("format") == INT8_FORMAT and not any_format:
        raise VstError(f"{path}: an int8 certificate; check it against the .tflite it names")
    if not isinstance(cert, dict) or cert.get("format") not in formats:
        raise VstError(f"{path}: not a vst certificate")
    if cert.get("version", 0) > VERSION:
        raise VstError(f"{path}: certificate version {cert['version']} is newer than this vst")
    return cert


def check_certificate(cert: dict, model, dataset, *, sample: int = 20, seed: int = 0,
                      tol: float = 1e-4) -> str:
    """Raise ``GateFailed`` unless ``cert`` belongs to ``model`` and its claims re-check.

    Returns a one-line summary of what was checked.
    """
    import torch

    from toolchain.lirpa.bounds import Bounder

    if cert["model"]["weights_sha256"] != model.weights_hash():
        raise GateFailed("certificate does not belong to this model (weights hash "
                         f"{cert['model']['weights_sha256'][:12]} != {model.weights_hash()[:12]})")
    if cert["dataset"]["sha256"] != dataset.sha256():
        raise GateFailed(f"certificate speaks about other data than {dataset.name} (hash differs)")
    module = model.torch_module().eval()
    bounder = Bounder(module, dataset.input_shape)
    x, y = torch.from_numpy(dataset.x_test), torch.from_numpy(dataset.y_test)
    rng, checked = random.Random(seed), 0
    for res in cert["results"]:
        claims = [s for s in res["samples"] if s["verdict"] == "verified"]
        for s in rng.sample(claims, min(sample, len(claims))):
            i = s["index"]
            if int(y[i]) != s["label"]:
                raise GateFailed(f"certificate sample {i}: label {s['label']} != data {int(y[i])}")
            with torch.set_grad_enabled(s["method"] == "alpha-crown"):
                lb = bounder.margin_lower(x[i:i + 1], y[i:i + 1], res["eps"], s["method"])
            lb = lb.detach()[0]
            claimed = torch.tensor(s["margin_lower"])
            if not bool((lb > 0).all()) or bool((lb < claimed - tol).any()):
                raise GateFailed(f"certificate claim for sample {i} at eps={res['eps']} "
                                 f"({s['method']}) does not re-check")
            checked += 1
    return f"certificate matches model {model.weights_hash()[:12]}; {checked} claims re-checked"
