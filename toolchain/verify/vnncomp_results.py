"""VNN-COMP result files: one per instance, plus a ``results.csv`` summary.

Result files follow VNN-COMP 2021-2023 (newer years renamed ``unsat`` /
``sat`` to ``holds`` / ``violated``; vst writes the older words, which the
competition's scripts still read). The first line is ``unsat`` (the property
holds: no input in the box reaches the unsafe outputs), ``sat`` (a
counterexample follows), ``unknown`` (the method could not decide) or
``timeout``. After ``sat``, the input and the network's float32 outputs on
it::

    sat
    ((X_0 0.25)
     (X_1 0.5)
     (Y_0 -1.0)
     (Y_1 2.0))

One file per instance, ``<network stem>__<property stem>.txt``, plus
``results.csv`` (network, property, result, seconds, procedure, file; written
with the csv module, so a comma or quote in a path is quoted), each written
atomically. Where two instances would share a name (the same base names in
other folders, the same instance twice, names that differ only in case), each
of them gets ``__`` and 8 hex digits of a hash of its position and paths:
unique per instance and the same on every run of the same instance list.
"""

from __future__ import annotations

import csv
import hashlib
import io
from collections import Counter
from pathlib import Path

import numpy as np

from toolchain.verify.vnncomp import RESULTS, Instance, Outcome

SUMMARY = "results.csv"


def result_text(outcome: Outcome) -> str:
    """The VNN-COMP result file of one instance (see the module docstring)."""
    if outcome.result != "sat":
        return outcome.result + "\n"
    pairs = [f"(X_{i} {_number(v)})" for i, v in enumerate(outcome.counterexample.ravel())]
    pairs += [f"(Y_{j} {_number(v)})" for j, v in enumerate(outcome.outputs.ravel())]
    return "sat\n(" + "\n ".join(pairs) + ")\n"


def _number(value) -> str:
    """The float32 value exactly, as the shortest decimal that reads back to it."""
    return repr(float(np.float32(value)))


def result_names(instances: list[Instance]) -> list[str]:
    """One file name per instance, unique ignoring case (see the module docstring)."""
    bases = [f"{inst.model.stem}__{inst.vnnlib.stem}" for inst in instances]
    count = Counter(b.casefold() for b in bases)
    names: list[str] = []
    used: set[str] = set()
    for k, (inst, base) in enumerate(zip(instances, bases)):
        tag = hashlib.sha256(f"{k}\0{inst.model.resolve()}\0{inst.vnnlib.resolve()}"
                             .encode()).hexdigest()
        plain = [f"{base}.txt"] if count[base.casefold()] == 1 else []
        # the position is hashed too, so the 64-digit name is unique among them
        name = next(c for c in plain + [f"{base}__{tag[:d]}.txt" for d in (8, 16, 64)]
                    if c.casefold() not in used)
        used.add(name.casefold())
        names.append(name)
    return names


def write_result(results_dir: Path, name: str, outcome: Outcome) -> Path:
    from toolchain.atomic import write_text

    path = Path(results_dir) / name
    write_text(path, result_text(outcome))
    return path


def write_summary(results_dir: Path, outcomes: list[Outcome], names: list[str]) -> Path:
    """``results.csv``: network, property, result, seconds, procedure, result file;
    one row per outcome (the instances done, when a run was interrupted)."""
    from toolchain.atomic import write_text

    text = io.StringIO()
    rows = csv.writer(text, lineterminator="\n")
    for o, name in zip(outcomes, names):
        rows.writerow((str(o.instance.model), str(o.instance.vnnlib), o.result,
                       f"{o.seconds:.3f}", o.procedure, name))
    path = Path(results_dir) / SUMMARY
    write_text(path, text.getvalue())
    return path


def print_outcomes(outcomes: list[Outcome], method: str) -> None:
    from toolchain.display import console, table

    table(("property", "network", "result", "by", "seconds"),
          [(o.instance.vnnlib.name, o.instance.model.name, o.result, o.procedure,
            f"{o.seconds:.2f}") for o in outcomes],
          title=f"VNN-LIB properties ({method})")
    console().print(f"{len(outcomes)} properties: " + ", ".join(
        f"{sum(o.result == r for o in outcomes)} {r}" for r in RESULTS))
