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

One file per instance, ``<network stem>__<property stem>.txt`` (a repeated
name gets ``__2``, ``__3``, ...), plus ``results.csv`` (network, property,
result, seconds, procedure, file), each written atomically.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from toolchain.verify.vnncomp import RESULTS, Instance, Outcome


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
    """``<network stem>__<property stem>.txt``; a repeated name gets ``__2``, ``__3``, ..."""
    seen: dict[str, int] = {}
    names = []
    for inst in instances:
        base = f"{inst.model.stem}__{inst.vnnlib.stem}"
        seen[base] = seen.get(base, 0) + 1
        names.append(f"{base}.txt" if seen[base] == 1 else f"{base}__{seen[base]}.txt")
    return names


def write_result(results_dir: Path, name: str, outcome: Outcome) -> Path:
    from toolchain.atomic import write_text

    path = Path(results_dir) / name
    write_text(path, result_text(outcome))
    return path


def write_summary(results_dir: Path, outcomes: list[Outcome], names: list[str]) -> Path:
    """``results.csv``: network, property, result, seconds, procedure, result file."""
    from toolchain.atomic import write_text

    rows = [",".join((str(o.instance.model), str(o.instance.vnnlib), o.result,
                      f"{o.seconds:.3f}", o.procedure, name)) + "\n"
            for o, name in zip(outcomes, names)]
    path = Path(results_dir) / "results.csv"
    write_text(path, "".join(rows))
    return path


def print_outcomes(outcomes: list[Outcome], method: str) -> None:
    from toolchain.display import console, table

    table(("property", "network", "result", "by", "seconds"),
          [(o.instance.vnnlib.name, o.instance.model.name, o.result, o.procedure,
            f"{o.seconds:.2f}") for o in outcomes],
          title=f"VNN-LIB properties ({method})")
    console().print(f"{len(outcomes)} properties: " + ", ".join(
        f"{sum(o.result == r for o in outcomes)} {r}" for r in RESULTS))
