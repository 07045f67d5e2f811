"""VNN-COMP instances: read them from a .vnnlib or an instances.csv, and decide them.

An *instance* is a network, a VNN-LIB property (``verify.vnnlib_reader``)
and a timeout. ``vst verify MODEL --vnnlib PROP.vnnlib`` is one instance;
``vst verify --vnnlib instances.csv`` reads the VNN-COMP layout: one
``onnx,vnnlib,timeout`` line per instance, no header, paths relative to the
csv's folder. A MODEL given with a csv replaces the csv's network column (to
run a benchmark's properties against, say, the compacted network).

Each property's box of ``n`` inputs ``X_i`` maps onto the network's input in C
order (so (1, 784, 1), (1, 28, 28) and (784,) inputs all take a box of 784);
its ``Y_j`` are the network's outputs. Everything is read and checked (files,
csv columns, X/Y counts against each network) before anything runs or is
written.

Each instance's answer is ``unsat`` (the property holds), ``sat`` (with a
re-checked counterexample), ``unknown`` or ``timeout``; ``vnncomp_results``
writes them in the competition's result format.
"""

from __future__ import annotations

import csv
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from toolchain.errors import VstError

DEFAULT_TIMEOUT = 60.0     # seconds per property when neither csv nor --timeout says
MAX_INSTANCES_BYTES = 64 << 20
BOUND_METHODS = ("ibp", "crown", "alpha-crown")
COMPLETE_METHODS = ("complete", "all")
RESULTS = ("unsat", "sat", "unknown", "timeout")
VERDICT = {"unsat": "verified", "sat": "falsified", "unknown": "unknown", "timeout": "unknown"}


@dataclass(frozen=True)
class Instance:
    model: Path        # the network (.onnx in VNN-COMP layouts; any model vst reads)
    vnnlib: Path
    timeout: float     # seconds
    row: int = 0       # line in instances.csv (1-based; 0: from the command line)


@dataclass
class Loaded:
    """An instance with its network and property read and checked against each other."""

    instance: Instance
    model: object      # VstModel
    prop: object       # vnnlib_reader.Property
    model_sha256: str
    vnnlib_sha256: str


@dataclass
class Outcome:
    instance: Instance
    result: str                             # unsat | sat | unknown | timeout
    procedure: str                          # which step decided (complete.PROCEDURES, ibp)
    seconds: float
    counterexample: np.ndarray | None = None  # float32, the network's input shape
    outputs: np.ndarray | None = None         # float32 outputs on the counterexample
    reason: str = ""
    tree: dict | None = None                  # a "bab" proof: its leaves (complete.Decision)

    @property
    def verdict(self) -> str:
        return VERDICT[self.result]


# -- instances -------------------------------------------------------------------

def plan_instances(vnnlib: Path, model: Path | None, timeout: float | None) -> list[Instance]:
    """The instances of ``--vnnlib`` (a .vnnlib file or an instances.csv).

    ``timeout`` (the CLI's ``--timeout``) caps the csv's per-instance timeouts
    and is the timeout of a single property (default ``DEFAULT_TIMEOUT``).
    """
    vnnlib = Path(vnnlib)
    if timeout is not None and not (math.isfinite(timeout) and timeout > 0):
        raise VstError(f"--timeout must be > 0 seconds, got {timeout}")
    if vnnlib.suffix.lower() == ".csv":
        rows = read_instances(vnnlib)
        return [Instance(model or r.model, r.vnnlib,
                         min(r.timeout, timeout) if timeout else r.timeout, r.row) for r in rows]
    if model is None:
        raise VstError(f"pass MODEL with a single property ({vnnlib.name}); only an "
                       "instances.csv names its networks")
    return [Instance(model, vnnlib, timeout or DEFAULT_TIMEOUT)]


def read_instances(path: Path) -> list[Instance]:
    """``onnx,vnnlib,timeout`` per line (no header), paths relative to the csv's folder."""
    from toolchain.inputs import read_input
    from toolchain.verify.vnnlib_reader import parse_number

    path = Path(path)
    data = read_input(path, "instances file", limit=MAX_INSTANCES_BYTES, gunzip=False)
    try:
        lines = data.decode("utf-8").splitlines()
    except UnicodeDecodeError as exc:
        raise VstError(f"{path}: cannot read ({exc})") from None
    out = []
    rows = csv.reader(lines)
    while True:
        try:
            fields = next(rows)
        except StopIteration:
            break
        except csv.Error as exc:           # a field past csv's limit, a stray quote
            raise VstError(f"{path}:{rows.line_num}: not a CSV line ({exc})") from None
        number = rows.line_num
        fields = [f.strip() for f in fields]
        if not any(fields):
            continue
        if len(fields) != 3 or not fields[0] or not fields[1]:
            raise VstError(f"{path}:{number}: expected onnx,vnnlib,timeout, got "
                           f"{len(fields)} columns ({','.join(fields)[:60]!r})")
        seconds = parse_number(fields[2])
        if seconds is None or not (math.isfinite(seconds) and seconds > 0):
            raise VstError(f"{path}:{number}: timeout must be a number of seconds > 0, got "
                           f"{fields[2]!r}")
        out.append(Instance(path.parent / fields[0], path.parent / fields[1], seconds, number))
    if not out:
        raise VstError(f"{path}: no instances (expected onnx,vnnlib,timeout lines)")
    return out


def load_instances(instances: list[Instance]) -> list[Loaded]:
    """Read every network (once each) and property; check the X/Y counts. No output."""
    from toolchain.inputs import check_input
    from toolchain.verify import load_any_model
    from toolchain.verify.int8_bounds import sha256_file
    from toolchain.verify.vnnlib_reader import read_vnnlib

    models: dict[Path, tuple] = {}
    out = []
    for inst in instances:
        key = inst.model.resolve()
        if key not in models:
            check_input(inst.model, "model")
            models[key] = (load_any_model(inst.model), sha256_file(inst.model))
        model, model_hash = models[key]
        prop = read_vnnlib(inst.vnnlib)
        check_sizes(prop, model, inst)
        out.append(Loaded(inst, model, prop, model_hash, sha256_file(inst.vnnlib)))
    return out


def check_sizes(prop, model, inst: Instance) -> None:
    """The property's X/Y counts are the network's; its box fits in float32."""
    shape = tuple(model.network.input_shape)
    big = float(np.finfo(np.float32).max)
    if np.any(np.abs(prop.lower) > big) or np.any(np.abs(prop.upper) > big):
        raise VstError(f"{inst.vnnlib}: an input bound is beyond the float32 range")
    n_in, n_out = math.prod(shape), model.network.num_classes
    if prop.lower.size != n_in:
        raise VstError(f"{inst.vnnlib}: declares {prop.lower.size} inputs X_i, "
                       f"{inst.model.name} takes {n_in} (input {shape})")
    if prop.n_outputs != n_out:
        raise VstError(f"{inst.vnnlib}: declares {prop.n_outputs} outputs Y_j, "
                       f"{inst.model.name} has {n_out}")


# -- deciding --------------------------------------------------------------------

def run_instances(loaded: list[Loaded], method: str, *, on_done=None, procedure: str = "bab",
                  clock=time.perf_counter) -> list[Outcome]:
    """Decide every instance with ``method``; ``on_done(outcome)`` after each.

    ``complete`` / ``all``: ``complete.decide`` (cheap bounds and PGD, then the
    complete procedure, within the instance's timeout). ``ibp`` / ``crown`` /
    ``alpha-crown``: that bound on the property's rows, then PGD; incomplete,
    so what neither settles is ``unknown``. ``procedure`` and ``clock`` go to
    ``decide`` (benchmarks compare "bab" with "milp" and count CPU time).
    """
    if method not in BOUND_METHODS + COMPLETE_METHODS:
        raise VstError(f"unknown method {method!r} for properties; choose "
                       + ", ".join(BOUND_METHODS + COMPLETE_METHODS))
    cache: dict[int, tuple] = {}
    out = []
    for item in loaded:
        key = id(item.model)
        if key not in cache:
            cache[key] = (item.model.torch_module().eval(), {})
        module, bounders = cache[key]
        t0 = clock()
        if method in COMPLETE_METHODS:
            outcome = _complete(item, module, bounders, procedure, clock)
        else:
            outcome = _bounds_then_attack(item, module, bounders, method)
        outcome.seconds = clock() - t0
        if outcome.result == "unknown" and outcome.seconds >= item.instance.timeout:
            outcome.result = "timeout"
        out.append(outcome)
        if on_done is not None:
            on_done(outcome)
    return out


def _complete(item: Loaded, module, bounders: dict, procedure: str = "bab",
              clock=time.perf_counter) -> Outcome:
    """``complete.decide`` on the box rounded outward to float32 (a proof covers the
    exact box); a counterexample is then re-checked on the exact box."""
    from toolchain.verify.complete import decide

    inst, prop = item.instance, item.prop
    shape = tuple(item.model.network.input_shape)
    lo, hi = box32(prop.lower, prop.upper, outward=True)
    d = decide(module, shape, lo, hi, prop.disjuncts, timeout=inst.timeout,
               network=item.model.network, seed=inst.row,
               bounder=_bounder(module, bounders, shape),
               program=_program(module, bounders, shape), procedure=procedure, clock=clock)
    if d.status == "verified":
        return Outcome(inst, "unsat", d.procedure, d.seconds, tree=d.tree)
    if d.status == "falsified" and d.counterexample is not None:
        return _sat_or_unknown(item, module, bounders, d.counterexample, d.procedure)
    result = "timeout" if "timeout" in d.reason.lower() else "unknown"
    return Outcome(inst, result, d.procedure, d.seconds, reason=d.reason)


def _bounds_then_attack(item: Loaded, module, bounders: dict, method: str) -> Outcome:
    from toolchain.verify.spec_attack import spec_pgd

    inst, prop = item.instance, item.prop
    shape = tuple(item.model.network.input_shape)
    if refuted_by_bounds(module, bounders, shape, prop, method):
        return Outcome(inst, "unsat", method, 0.0)
    lo, hi = box32(prop.lower, prop.upper, outward=False)
    if np.all(lo <= hi):
        adv = spec_pgd(module, shape, lo, hi, prop.disjuncts, seed=inst.row)
        if adv is not None:
            return _sat_or_unknown(item, module, bounders, adv, "pgd")
    return Outcome(inst, "unknown", "none", 0.0,
                   reason=f"{method} bounds do not prove it and PGD found no counterexample "
                          "(incomplete: --method complete decides)")


def refuted_by_bounds(module, bounders: dict, shape, prop, method: str) -> bool:
    """Does ``method`` prove that no disjunct is reachable (each has a row ``a.y <= c``
    whose lower bound over the box exceeds ``c``)? Sound; one bound pass for all rows.

    The float64 box is rounded outward to float32. CROWN and alpha-CROWN bound
    the rows directly (``Bounder.box_bounds``); IBP bounds the logits and then
    each row by interval arithmetic.
    """
    import torch

    bounder = _bounder(module, bounders, shape)
    lo, hi = box32(prop.lower, prop.upper, outward=True)
    a64 = np.concatenate([a for a, _ in prop.disjuncts])
    a, c = a64.astype(np.float32), np.concatenate([c for _, c in prop.disjuncts])
    # rows bounded with float32 coefficients: where rounding changed one, ask a margin
    inexact = np.any(a.astype(np.float64) != a64, axis=1)
    c = np.where(inexact, c + 1e-5 * (1.0 + np.abs(c)), c)
    lo_t, hi_t = (torch.from_numpy(v.reshape((1,) + tuple(shape))) for v in (lo, hi))
    if method == "ibp":
        with torch.no_grad():
            y_lo, y_hi = bounder.logit_bounds((lo_t + hi_t) / 2, float(np.max(hi - lo)) + 1.0,
                                              "ibp", x_min=lo_t, x_max=hi_t)
        y_lo, y_hi = y_lo.double().reshape(-1).numpy(), y_hi.double().reshape(-1).numpy()
        lb = np.maximum(a64, 0) @ y_lo + np.minimum(a64, 0) @ y_hi
    else:
        lb_t, _ = bounder.box_bounds(lo_t, hi_t, torch.from_numpy(a), method)
        lb = lb_t.double().cpu().numpy()
    refuted = lb > c
    start = 0
    for a_d, _ in prop.disjuncts:
        if not refuted[start:start + len(a_d)].any():
            return False
        start += len(a_d)
    return True


def _bounder(module, cache: dict, shape):
    """One ``Bounder`` per network (tracing it is the slow part), kept in ``cache``."""
    from toolchain.lirpa.bounds import Bounder

    if "bounder" not in cache:
        cache["bounder"] = Bounder(module, shape)
    return cache["bounder"]


def _program(module, cache: dict, shape):
    """One reading of the network for the MILP per network, kept in ``cache``."""
    from toolchain.verify.affine_program import ProgramReader

    if "program" not in cache:
        cache["program"] = ProgramReader(module, shape)
    return cache["program"]


def box32(lower, upper, *, outward: bool):
    """The float64 box as float32, rounded outward (sound for bounds) or inward
    (every float32 point inside is inside the exact box: for attacks)."""
    lo, hi = np.asarray(lower, np.float32), np.asarray(upper, np.float32)
    lower, upper = np.asarray(lower, np.float64), np.asarray(upper, np.float64)
    down, up = np.float32(-np.inf), np.float32(np.inf)
    if outward:
        lo = np.where(lo > lower, np.nextafter(lo, down), lo)
        hi = np.where(hi < upper, np.nextafter(hi, up), hi)
    else:
        lo = np.where(lo < lower, np.nextafter(lo, up), lo)
        hi = np.where(hi > upper, np.nextafter(hi, down), hi)
    return lo.astype(np.float32), hi.astype(np.float32)


def recheck(module, prop, shape, x) -> np.ndarray | None:
    """The float32 outputs on ``x`` if ``x`` lies in the exact box and they are
    unsafe (a true counterexample on the float model), else None."""
    import torch

    x = np.asarray(x, np.float32).reshape(tuple(shape))
    flat = x.reshape(-1).astype(np.float64)
    if not (np.all(np.isfinite(flat)) and np.all(flat >= prop.lower)
            and np.all(flat <= prop.upper)):
        return None
    with torch.no_grad():
        y = module(torch.from_numpy(x.copy())[None]).reshape(-1).numpy().astype(np.float32)
    return y if prop.unsafe(y) else None


def _sat_or_unknown(item: Loaded, module, cache: dict, x, procedure: str) -> Outcome:
    """A re-checked counterexample, moved (by at most one float32 step per input)
    into the exact box when it was found in the outward-rounded one."""
    shape = tuple(item.model.network.input_shape)
    lo, hi = box32(item.prop.lower, item.prop.upper, outward=False)
    x = np.clip(np.asarray(x, np.float32).reshape(-1), lo, hi).reshape(shape)
    y, why = recheck_everywhere(item, module, cache, x)
    if y is None:
        return Outcome(item.instance, "unknown", "none", 0.0,
                       reason=f"the {procedure} counterexample {why}")
    return Outcome(item.instance, "sat", procedure, 0.0, x, y)


def recheck_everywhere(item: Loaded, module, cache: dict, x):
    """``(outputs, "")`` if ``x`` is a counterexample on the float model and, for an
    ONNX network, on onnxruntime too (``ort_check``); else ``(None, why)``."""
    from toolchain.verify.ort_check import OrtRunner, unsafe_on_onnxruntime

    y = recheck(module, item.prop, tuple(item.model.network.input_shape), x)
    if y is None:
        return None, "is outside the box or not unsafe on the float model"
    if item.instance.model.suffix.lower() == ".onnx":
        if "ort" not in cache:
            cache["ort"] = OrtRunner(item.instance.model)
        ok, y_ort = unsafe_on_onnxruntime(cache["ort"], item.prop, x)
        if not ok:
            return None, (f"is not unsafe on onnxruntime (max |onnxruntime - torch| "
                          f"{float(np.max(np.abs(y_ort - y))):.3g})")
    return y, ""
