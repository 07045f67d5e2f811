"""The structure a float certificate must have: types, ranges, finiteness.

``validate_certificate`` is what ``load_certificate`` runs on every file: a
malformed certificate is one ``VstError`` line naming the file, the key and
what was expected (exit 2). What needs the model and the data (indices within
the test split, the number of margins) is checked by ``check_certificate``.
"""

from __future__ import annotations

import json
import math

from toolchain.epsbox import INPUT_RANGE
from toolchain.errors import VstError
from toolchain.verify.steps import BOUND_METHODS, CASCADES

VERDICTS = ("verified", "falsified", "unknown")
COMPLETE_METHODS = ("milp", "bab")          # complete verification (verify/complete.py)
# Which step may decide which verdict (engine.verify_samples).
DECIDERS = {"verified": BOUND_METHODS + COMPLETE_METHODS,
            "falsified": ("clean", "pgd") + COMPLETE_METHODS, "unknown": ("none",)}
# A falsified sample decided by one of these carries its counterexample.
COUNTEREXAMPLE_METHODS = ("pgd",) + COMPLETE_METHODS


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v) -> bool:
    return (isinstance(v, (int, float)) and not isinstance(v, bool)) and math.isfinite(v)


def _show(v) -> str:
    text = json.dumps(v) if not isinstance(v, float) or math.isfinite(v) else repr(v)
    return text if len(text) <= 40 else text[:37] + "..."


def _bad(source: str, key: str, expected: str, got) -> VstError:
    return VstError(f"{source}: key '{key}': expected {expected}, got {_show(got)}")


def _need(source, obj, key, where, test, expected):
    """``obj[key]`` if present and ``test(value)``, else a one-line error."""
    name = f"{where}.{key}" if where else key
    if key not in obj:
        raise VstError(f"{source}: key '{name}' is missing (expected {expected})")
    value = obj[key]
    if not test(value):
        raise _bad(source, name, expected, value)
    return value


def validate_certificate(cert: dict, source: str = "certificate") -> None:
    """Types, ranges, finiteness and lengths of a float certificate; ``VstError`` if not.

    What needs the model and data (sample indices within the data, the number
    of margins) is checked by ``check_certificate``.
    """
    model = _need(source, cert, "model", "", _is_dict, "an object")
    _need(source, model, "weights_sha256", "model", _hexdigest, "a SHA-256 hex digest")
    _need(source, model, "params", "model", _nonneg_int, "an integer >= 0")
    _validate_data_box(source, cert)
    if "shard" in cert:
        shard = _need(source, cert, "shard", "", _is_dict, "an object")
        count = _need(source, shard, "count", "shard", lambda v: _is_int(v) and v >= 1,
                      "an integer >= 1")
        _need(source, shard, "index", "shard", lambda v: _is_int(v) and 0 <= v < count,
              f"an integer in [0, {count})")
        _need(source, shard, "total", "shard", lambda v: _is_int(v) and v >= 1,
              "an integer >= 1")
    for where, res in _results(source, cert, CASCADES):
        for verdict in ("verified", "falsified"):
            key = f"{verdict}_by"
            if key not in res and verdict == "falsified":
                continue            # written before certificates counted falsified steps
            by = _need(source, res, key, where, _is_dict, "an object")
            for m, k in by.items():
                if m not in DECIDERS[verdict] or not _nonneg_int(k):
                    raise _bad(source, f"{where}.{key}", "counts of "
                               + ", ".join(DECIDERS[verdict]), {m: k})
        _need(source, res, "robust_acc_upper", where, _frac, "a number in [0, 1]")
        _need(source, res, "samples_per_second", where, lambda v: _is_num(v) and v >= 0,
              "a finite number >= 0")
        for k, s in enumerate(res["samples"]):
            _validate_sample(source, f"{where}.samples[{k}]", s)


def validate_int8_certificate(cert: dict, source: str = "certificate") -> None:
    """Types, ranges and finiteness of an int8 certificate (``int8_certificate.py``).

    The same data, box and per-result fields as a float certificate; the
    artifacts are the .tflite (and optionally the generated C), not weights.
    """
    for key in ("tflite", "c_source"):
        if key == "c_source" and cert.get(key, "absent") is None:
            continue                          # written without the C source
        art = _need(source, cert, key, "", _is_dict, "an object")
        _need(source, art, "file", key, lambda v: isinstance(v, str), "a file name")
        _need(source, art, "sha256", key, _hexdigest, "a SHA-256 hex digest")
    _validate_data_box(source, cert)
    for where, res in _results(source, cert, ("int8", "int8-crown")):
        for k, s in enumerate(res["samples"]):
            at = f"{where}.samples[{k}]"
            _validate_sample_core(source, at, s)
            if "method" in s or res["method"] != "int8":   # absent in older int8 certificates
                # what proved it (null: not verified); the checker recomputes which
                provers = (None, "int8", res["method"])
                _need(source, s, "method", at, lambda v: v in provers,
                      "null, " + ", ".join(sorted(set(provers[1:]))))


def _hexdigest(v) -> bool:
    return isinstance(v, str) and len(v) == 64 and all(c in "0123456789abcdef" for c in v)


def _is_dict(v) -> bool:
    return isinstance(v, dict)


def _nonneg_int(v) -> bool:
    return _is_int(v) and v >= 0


def _frac(v) -> bool:
    return _is_num(v) and 0.0 <= v <= 1.0


def _validate_data_box(source: str, cert: dict) -> None:
    """The data set (hash, test split), the input range and the norm."""
    data = _need(source, cert, "dataset", "", _is_dict, "an object")
    _need(source, data, "sha256", "dataset", _hexdigest, "a SHA-256 hex digest")
    _need(source, data, "split", "dataset", lambda v: v == "test", '"test"')
    _need(source, cert, "input_range", "", lambda v: v == list(INPUT_RANGE),
          str(list(INPUT_RANGE)))
    _need(source, cert, "norm", "", lambda v: v == "Linf", '"Linf"')


def _results(source: str, cert: dict, methods):
    """(where, result) for each result, after the fields every certificate's results
    share (eps, method, n, counts, rates, seconds, a list of samples) are checked."""
    results = _need(source, cert, "results", "", lambda v: isinstance(v, list), "a list")
    for r, res in enumerate(results):
        where = f"results[{r}]"
        if not isinstance(res, dict):
            raise _bad(source, where, "an object", res)
        _need(source, res, "eps", where, lambda v: _is_num(v) and v >= 0,
              "a finite number >= 0")
        _need(source, res, "method", where, lambda v: v in methods,
              "one of " + ", ".join(methods))
        _need(source, res, "n", where, _nonneg_int, "an integer >= 0")
        counts = _need(source, res, "counts", where, _is_dict, "an object")
        for v in VERDICTS:
            _need(source, counts, v, f"{where}.counts", _nonneg_int, "an integer >= 0")
        for key in ("verified_acc", "clean_acc"):
            _need(source, res, key, where, _frac, "a number in [0, 1]")
        _need(source, res, "seconds", where, lambda v: _is_num(v) and v >= 0,
              "a finite number >= 0")
        _need(source, res, "samples", where, lambda v: isinstance(v, list), "a list")
        yield where, res


def _validate_sample_core(source: str, where: str, s) -> str:
    """Index, label, verdict and margin lower bounds of one sample; its verdict."""
    if not isinstance(s, dict):
        raise _bad(source, where, "an object", s)
    _need(source, s, "index", where, _nonneg_int, "an integer >= 0")
    _need(source, s, "label", where, _nonneg_int, "an integer >= 0")
    verdict = _need(source, s, "verdict", where, lambda v: v in VERDICTS,
                    "one of " + ", ".join(VERDICTS))
    _need(source, s, "margin_lower", where,
          lambda v: isinstance(v, list) and all(_is_num(m) for m in v),
          "a list of finite numbers")
    return verdict


def _validate_sample(source: str, where: str, s) -> None:
    verdict = _validate_sample_core(source, where, s)
    methods = DECIDERS[verdict]
    _need(source, s, "method", where, lambda v: v in methods,
          f"for a {verdict} sample one of " + ", ".join(methods))
    if "seconds" in s:              # per-sample time (absent in older certificates)
        _need(source, s, "seconds", where, lambda v: _is_num(v) and v >= 0,
              "a finite number >= 0")
    if "counterexample" in s:
        # Re-checked on samples falsified by pgd / milp / bab; on any other it claims nothing.
        _need(source, s, "counterexample", where, lambda v: isinstance(v, str),
              "a base64 string")
    if "bab" in s:                  # a branch-and-bound proof (verify/bab_tree.py)
        validate_bab_tree(s["bab"], f"{where}.bab", source)


def validate_bab_tree(tree, where: str, source: str) -> None:
    """Structure of a recorded branch-and-bound proof (``verify/bab_tree.py``); ``VstError`` naming the key if it is malformed."""
    if not isinstance(tree, dict):
        raise _bad(source, where, "an object (the branch-and-bound proof)", tree)
    domains = tree.get("domains")
    if not (_nonneg_int(domains) and domains >= 1):
        raise _bad(source, f"{where}.domains", "an integer >= 1", domains)
    if not isinstance(tree.get("heuristic"), str):
        raise _bad(source, f"{where}.heuristic", "a string", tree.get("heuristic"))
    opened = tree.get("open")
    if not (isinstance(opened, list) and opened and all(_nonneg_int(d) for d in opened)
            and len(set(opened)) == len(opened)):
        raise _bad(source, f"{where}.open", "a non-empty list of distinct disjunct indices",
                   opened)
    leaves = tree.get("leaves")
    if not (isinstance(leaves, list) and leaves):
        raise _bad(source, f"{where}.leaves", "a non-empty list of split sets", leaves)
    for k, leaf in enumerate(leaves):
        if not (isinstance(leaf, list) and all(
                isinstance(s, list) and len(s) == 3 and _nonneg_int(s[0]) and _nonneg_int(s[1])
                and s[2] in (0, 1) and not isinstance(s[2], bool) for s in leaf)):
            raise _bad(source, f"{where}.leaves[{k}]",
                       "a list of splits [relu, neuron, 0 or 1]", leaf)
    if "root" in tree and tree["root"] not in ("alpha-crown",):
        raise _bad(source, f"{where}.root", '"alpha-crown" (the root\'s ReLU bounds)',
                   tree["root"])
    refined = tree.get("refined", [])
    if not isinstance(refined, list):
        raise _bad(source, f"{where}.refined", "a list of refined bounds", refined)
    for k, e in enumerate(refined):
        if not (isinstance(e, list) and len(e) == 4 and _nonneg_int(e[0]) and _nonneg_int(e[1])
                and all(isinstance(v, (int, float)) and not isinstance(v, bool)
                        and math.isfinite(v) for v in e[2:]) and e[2] <= e[3]):
            raise _bad(source, f"{where}.refined[{k}]",
                       "[relu, neuron, lower, upper] with finite lower <= upper", e)
    if refined and "root" not in tree:
        raise _bad(source, f"{where}.root", '"alpha-crown" beside refined bounds', None)


# -- property certificates (vst verify --vnnlib; property_certificate.py) --------

# Which procedure may decide which verdict of a VNN-LIB property, and the
# VNN-COMP result word each verdict is written as.
PROPERTY_DECIDERS = {"verified": ("ibp", "crown", "alpha-crown", "bab", "milp"),
                     "falsified": ("pgd", "bab", "milp"),
                     "unknown": ("ibp", "crown", "alpha-crown", "pgd", "bab", "milp", "none")}
PROPERTY_RESULTS = {"verified": ("unsat",), "falsified": ("sat",),
                    "unknown": ("unknown", "timeout")}
PROPERTY_METHODS = ("ibp", "crown", "alpha-crown", "all", "complete")


def validate_property_certificate(cert: dict, source: str = "certificate") -> None:
    """Types and ranges of a property certificate; ``VstError`` naming the key if not."""
    hexdigest, nonneg_int = _hexdigest, _nonneg_int
    path = lambda v: isinstance(v, str) and bool(v.strip())  # noqa: E731
    _need(source, cert, "method", "", lambda v: v in PROPERTY_METHODS,
          "one of " + ", ".join(PROPERTY_METHODS))
    _need(source, cert, "n", "", nonneg_int, "an integer >= 0")
    counts = _need(source, cert, "counts", "", lambda v: isinstance(v, dict), "an object")
    for v in VERDICTS:
        _need(source, counts, v, "counts", nonneg_int, "an integer >= 0")
    _need(source, cert, "verified_acc", "", lambda v: _is_num(v) and 0 <= v <= 1,
          "a number in [0, 1]")
    _need(source, cert, "seconds", "", lambda v: _is_num(v) and v >= 0, "a finite number >= 0")
    entries = _need(source, cert, "instances", "", lambda v: isinstance(v, list), "a list")
    for k, e in enumerate(entries):
        where = f"instances[{k}]"
        if not isinstance(e, dict):
            raise _bad(source, where, "an object", e)
        _need(source, e, "index", where, nonneg_int, "an integer >= 0")
        for key in ("model", "vnnlib"):
            _need(source, e, key, where, path, "a path")
        for key in ("model_sha256", "weights_sha256", "vnnlib_sha256"):
            _need(source, e, key, where, hexdigest, "a SHA-256 hex digest")
        _need(source, e, "timeout", where, lambda v: _is_num(v) and v > 0,
              "a number of seconds > 0")
        _need(source, e, "seconds", where, lambda v: _is_num(v) and v >= 0,
              "a finite number >= 0")
        verdict = _need(source, e, "verdict", where, lambda v: v in VERDICTS,
                        "one of " + ", ".join(VERDICTS))
        _need(source, e, "result", where, lambda v: v in PROPERTY_RESULTS[verdict],
              f"for a {verdict} instance " + " or ".join(PROPERTY_RESULTS[verdict]))
        _need(source, e, "procedure", where, lambda v: v in PROPERTY_DECIDERS[verdict],
              f"for a {verdict} instance one of " + ", ".join(PROPERTY_DECIDERS[verdict]))
        _need(source, e, "reason", where, lambda v: isinstance(v, str), "a string")
        if "bab" in e:
            validate_bab_tree(e["bab"], f"{where}.bab", source)
        if verdict == "falsified" or "counterexample" in e:
            _need(source, e, "counterexample", where, lambda v: isinstance(v, str),
                  "a base64 string (a falsified instance carries its counterexample)")


# -- re-checking ----------------------------------------------------------------


