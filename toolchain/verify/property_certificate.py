"""The certificate of a VNN-LIB run: one entry per property instance.

``vst verify --vnnlib ... --json F`` writes it. It speaks about files, not a
data set: each entry names its network and property (paths relative to the
certificate's folder, with their SHA-256 and the network's weights hash), the
verdict (``verified`` = ``unsat``, ``falsified`` = ``sat``, ``unknown``; the
VNN-COMP word is kept in ``result``), the procedure that decided it, its
seconds and, for ``falsified``, the counterexample (base64 float32 in C order
of the network's input, ``engine.encode_input``). The data-set certificate
(``certificate.py``) is unchanged; this one has its own ``format``::

    {"format": "vst-property-certificate", "version": 1, "versions": {...},
     "semantics": "VNN-LIB, VNN-COMP convention: ...", "method": "complete",
     "n": 2, "counts": {"verified": 1, "falsified": 1, "unknown": 0},
     "verified_acc": 0.5, "seconds": 1.2,
     "instances": [{"index": 0, "model": "net.onnx", "model_sha256": "...",
                    "weights_sha256": "...", "vnnlib": "vnnlib/prop_0.vnnlib",
                    "vnnlib_sha256": "...", "timeout": 60.0, "verdict": "verified",
                    "result": "unsat", "procedure": "crown", "seconds": 0.1,
                    "reason": ""}, ...]}

``semantics`` says how the properties were read: the VNN-COMP convention, in
which ``<`` reads as ``<=`` (``vnnlib_reader``).

``check_property_certificate`` re-reads every file (hashes must match),
recomputes the summary, re-proves every ``verified`` claim (the bound it
names, else the complete procedure within the instance's timeout) and
re-checks every counterexample (inside the property's box, unsafe on the
network). The first claim that fails is a ``GateFailed`` (exit 1).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from toolchain.errors import GateFailed, VstError
from toolchain.verify.certificate_schema import VERDICTS, validate_property_certificate

FORMAT = "vst-property-certificate"
VERSION = 1
# How the properties were read (vnnlib_reader): the VNN-COMP convention
SEMANTICS = ("VNN-LIB, VNN-COMP convention: a property states the unsafe region (an input "
             "box and a disjunction of conjunctions of linear output constraints); strict "
             "and non-strict comparisons are read alike (< as <=, > as >=), so a "
             "counterexample may lie on the boundary of a strict constraint; unsat: no "
             "input in the box is unsafe, sat: the counterexample, checked in float32")


def build_property_certificate(loaded, outcomes, method: str, cert_path) -> dict:
    """The certificate of ``outcomes`` (``vnncomp.run_instances``), paths relative
    to the folder ``cert_path`` will be written to."""
    from toolchain.verify.engine import encode_input
    from toolchain.versions import versions

    import torch

    base = Path(cert_path).resolve().parent
    entries = []
    for k, (item, o) in enumerate(zip(loaded, outcomes)):
        entry = {"index": k, "model": _relative(item.instance.model, base),
                 "model_sha256": item.model_sha256,
                 "weights_sha256": item.model.weights_hash(),
                 "vnnlib": _relative(item.instance.vnnlib, base),
                 "vnnlib_sha256": item.vnnlib_sha256, "timeout": float(item.instance.timeout),
                 "verdict": o.verdict, "result": o.result, "procedure": o.procedure,
                 "seconds": float(o.seconds), "reason": o.reason}
        if o.counterexample is not None:
            entry["counterexample"] = encode_input(torch.from_numpy(o.counterexample))
        if o.tree is not None:
            entry["bab"] = o.tree
        entries.append(entry)
    n = len(entries)
    counts = {v: sum(e["verdict"] == v for e in entries) for v in VERDICTS}
    return {"format": FORMAT, "version": VERSION, "versions": versions(),
            "semantics": SEMANTICS, "method": method,
            "n": n, "counts": counts, "verified_acc": counts["verified"] / max(1, n),
            "seconds": float(sum(e["seconds"] for e in entries)), "instances": entries}


def _relative(path: Path, base: Path) -> str:
    return Path(os.path.relpath(Path(path).resolve(), base)).as_posix()


def load_property_certificate(path) -> dict:
    """Read and structure-check a property certificate; one-line ``VstError`` if not."""
    from toolchain.verify.certificate import Certificate, read_json

    path = Path(path)
    cert = read_json(path)
    if isinstance(cert, dict) and cert.get("format") == "vst-certificate":
        raise VstError(f"{path}: a data-set certificate; check it with "
                       f"`vst verify MODEL --certificate {path}`")
    if not isinstance(cert, dict) or cert.get("format") != FORMAT:
        raise VstError(f"{path}: not a vst property certificate (from `vst verify --vnnlib`)")
    version = cert.get("version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise VstError(f"{path}: key 'version': expected an integer >= 1, got {version!r}")
    if version > VERSION:
        raise VstError(f"{path}: certificate version {version} is newer than this vst")
    validate_property_certificate(cert, str(path))
    cert = Certificate(cert)
    cert.source = str(path)
    return cert


def certificate_instances(cert: dict, source) -> list:
    """The instances a certificate names, paths resolved from its folder."""
    from toolchain.verify.vnncomp import Instance

    base = Path(source).resolve().parent
    return [Instance(base / e["model"], base / e["vnnlib"], e["timeout"], e["index"])
            for e in cert["instances"]]


def check_property_certificate(cert: dict, source, max_timeout: float | None = None) -> str:
    """Raise ``GateFailed`` unless every claim of ``cert`` re-checks; a one-line summary.

    A claimed proof is redone within the instance's timeout, but never longer
    than ``max_timeout`` (default ``complete.RECHECK_TIMEOUT``): the checker,
    not the certificate, decides how long a check may run. Not re-proved in
    that time is not re-proved (``GateFailed``).
    """
    from toolchain.verify.complete import RECHECK_TIMEOUT
    from toolchain.verify.vnncomp import load_instances

    max_timeout = RECHECK_TIMEOUT if max_timeout is None else max_timeout

    t0 = time.perf_counter()
    entries = cert["instances"]
    _summary(cert, source)
    if cert.get("semantics", SEMANTICS) != SEMANTICS:       # absent: written before the field
        raise GateFailed(f"{source}: its semantics are not how vst reads VNN-LIB (the "
                         "VNN-COMP convention, < as <=); its claims cannot be re-checked")
    loaded = load_instances(certificate_instances(cert, source))   # files must exist: exit 2
    modules: dict[int, tuple] = {}
    for e, item in zip(entries, loaded):
        where = f"{source}: instance {e['index']} ({e['vnnlib']})"
        for key, have in (("model_sha256", item.model_sha256),
                          ("vnnlib_sha256", item.vnnlib_sha256),
                          ("weights_sha256", item.model.weights_hash())):
            if e[key] != have:
                raise GateFailed(f"{where}: {key} {e[key][:12]} does not match the file "
                                 f"({have[:12]})")
        if id(item.model) not in modules:
            modules[id(item.model)] = (item.model.torch_module().eval(), {})
        module, bounders = modules[id(item.model)]
        if e["verdict"] == "verified":
            _check_verified(where, e, item, module, bounders, min(e["timeout"], max_timeout))
        elif e["verdict"] == "falsified":
            _check_counterexample(where, e, item, module, bounders)
    c = cert["counts"]
    return (f"certificate re-checked: {len(entries)} properties ({c['verified']} verified "
            f"again, {c['falsified']} counterexamples re-checked, {c['unknown']} unknown) "
            f"in {time.perf_counter() - t0:.1f} s")


def _summary(cert: dict, source) -> None:
    entries = cert["instances"]
    n = len(entries)
    if n == 0:
        raise GateFailed(f"{source}: claims nothing (no instances)")
    if [e["index"] for e in entries] != list(range(n)):
        raise GateFailed(f"{source}: instance indices must be 0..{n - 1} in order")
    counts = {v: sum(e["verdict"] == v for e in entries) for v in VERDICTS}
    expect = {"n": n, "counts": counts, "verified_acc": counts["verified"] / n}
    for key, value in expect.items():
        claimed = cert[key]
        same = claimed == value if not isinstance(value, float) else abs(claimed - value) <= 1e-9
        if not same:
            raise GateFailed(f"{source}: claims {key} {json.dumps(claimed)} but its instances "
                             f"give {json.dumps(value)}")


def _check_verified(where, e, item, module, bounders, timeout: float) -> None:
    """A sound procedure must prove it again: the bound it names, a "bab" proof by
    replaying its split tree, else the complete procedure it names, within
    ``timeout`` seconds."""
    from toolchain.verify.bab_tree import check_proof
    from toolchain.verify.complete import decide
    from toolchain.verify.vnncomp import (BOUND_METHODS, _bounder, _program, box32,
                                         refuted_by_bounds)

    shape = tuple(item.model.network.input_shape)
    if e["procedure"] in BOUND_METHODS and refuted_by_bounds(module, bounders, shape, item.prop,
                                                             e["procedure"]):
        return
    lo, hi = box32(item.prop.lower, item.prop.upper, outward=True)
    if e["procedure"] == "bab":
        why = ("it carries no split tree ('bab')" if "bab" not in e else
               check_proof(module, _bounder(module, bounders, shape), shape, lo, hi,
                           item.prop.disjuncts, e["bab"], time_limit=timeout))
        if why is not None:
            raise GateFailed(f"{where}: claimed verified by bab, but its proof does not "
                             f"re-check: {why}")
        return
    d = decide(module, shape, lo, hi, item.prop.disjuncts, timeout=timeout,
               network=item.model.network, seed=e["index"],
               bounder=_bounder(module, bounders, shape),
               program=_program(module, bounders, shape),
               procedure="milp" if e["procedure"] == "milp" else "bab")
    if d.status == "unknown" and d.reason.startswith("timeout"):
        raise GateFailed(f"{where}: claimed verified by {e['procedure']}, but it is not proved "
                         f"again within {timeout:g} s (the check's limit: the smaller of the "
                         "certificate's timeout and --timeout)")
    if d.status != "verified":
        raise GateFailed(f"{where}: claimed verified by {e['procedure']}, but re-checking gives "
                         f"{d.status} ({d.procedure}{': ' + d.reason if d.reason else ''})")


def _check_counterexample(where, e, item, module, cache) -> None:
    from toolchain.verify.engine import decode_input
    from toolchain.verify.vnncomp import recheck_everywhere

    shape = tuple(item.model.network.input_shape)
    try:
        x = decode_input(e["counterexample"], shape).numpy()
    except ValueError as exc:
        raise VstError(f"{where}: key 'counterexample': expected base64 float32 of one input "
                       f"{shape}, got {exc}") from None
    y, why = recheck_everywhere(item, module, cache, x)
    if y is None:
        raise GateFailed(f"{where}: its counterexample {why}: not a counterexample")
