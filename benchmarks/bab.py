"""Branch and bound (issue 25) against today's MILP on mnistfc-shaped networks.

Networks: naturally trained MLPs 784-256x2, 256x4 and 256x6 on mnist5k (plain
cross-entropy, Adam 1e-3, batch 64, ``--epochs`` epochs, seed 0). Per network
and eps: the first ``--n`` test images as VNN-LIB properties written by our
exporter (``export.vnnlib.write_vnnlib`` beside the ``export.onnx`` file, read
back with ``vnncomp.load_instances``: the ONNX import is what gets verified),
each decided by ``vnncomp.run_instances(method="all")`` -- CROWN, PGD,
alpha-CROWN, then the complete procedure -- once with branch and bound
(``procedure="bab"``, the new cascade) and once with the MILP (``"milp"``,
today's), ``--timeout`` seconds each. Every counterexample is re-checked on
the float model and on onnxruntime (``run_instances`` does it before it says
sat); every verified instance is attacked by a longer PGD (200 steps, 20
restarts per disjunct): a success would be an unsound answer.

Time: the timeout counts this process's CPU time (``clock=time.process_time``)
on one thread, so the budget means the same on a shared machine; wall time is
recorded beside it. Run it niced, one process at a time, and in pieces:

    OMP_NUM_THREADS=1 nice -n 10 .venv/bin/python benchmarks/bab.py \\
        --nets 256x2 --eps 0.03 [--n 15] [--procedures bab,milp] [--append]

Writes results/bab.{json,md}, or ``--name``'s (``--append`` keeps the cells already
there).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, machine, markdown, train_natural, write  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

NETS = {"256x2": 2, "256x4": 4, "256x6": 6}
# bab: the cascade's complete step (branch and bound, then the MILP on what it left
# open); milp: the MILP alone (the cascade before issue 25); bab-only / bab-widest:
# branch and bound alone for the whole budget, BaBSR or widest-interval branching;
# bab-refine: bab after the LP refinement of ReLU layer 2 (verify/refine.py).
PROCEDURES = ("bab", "milp", "bab-only", "bab-widest", "bab-refine")


def natural_mlp(depth: int, data, epochs: int, seed: int = 0):
    """784-256xdepth-10 trained with plain cross-entropy (``common.train_natural``),
    and its clean test accuracy."""
    from toolchain.models.zoo import mlp

    model = train_natural(mlp(data.input_shape, 10, widths=(256,) * depth), data, epochs, seed)
    module = model.torch_module().eval()
    with torch.no_grad():
        acc = float((module(torch.from_numpy(data.x_test)).argmax(1)
                     == torch.from_numpy(data.y_test)).float().mean())
    return model, acc


def instances(model, data, eps: float, n: int, timeout: float, folder: Path):
    """The exporter's ONNX + VNN-LIB files for the first n test images, loaded back."""
    from toolchain.export.onnx import export_onnx
    from toolchain.export.vnnlib import write_vnnlib
    from toolchain.verify.vnncomp import load_instances, read_instances

    export_onnx(model, folder / "net.onnx")
    write_vnnlib(folder, "net.onnx", data.x_test[:n], data.y_test[:n], eps, timeout=timeout)
    return load_instances(read_instances(folder / "instances.csv"))


def run_cell(loaded, procedure: str, rows=None) -> list[dict]:
    from toolchain.verify import bab, complete, refine
    from toolchain.verify.spec_attack import spec_pgd
    from toolchain.verify.vnncomp import box32, run_instances

    name = "milp" if procedure == "milp" else "bab"
    saved = bab.HEURISTICS, complete.BAB_SHARE, complete.REFINE_LAYERS, refine.refine
    spent = []                            # per refinement: (seconds, LPs, stabilized)

    def timed(*a, **kw):
        out = saved[3](*a, **kw)
        spent.append((out.seconds, out.lps, out.stabilized))
        return out
    if procedure == "bab-refine":
        complete.REFINE_LAYERS, refine.refine = 1, timed
    if procedure == "bab-widest":
        bab.HEURISTICS = ("widest", "babsr")
    if procedure in ("bab-only", "bab-widest"):
        complete.BAB_SHARE = 1.0
    out = []
    try:
        for item in loaded:
            if rows and item.instance.row not in rows:
                continue
            wall = time.perf_counter()
            spent.clear()
            o = run_instances([item], "all", procedure=name, clock=time.process_time)[0]
            wall = time.perf_counter() - wall
            broken = False
            if o.verdict == "verified":        # a longer attack on every proof
                module = item.model.torch_module().eval()
                lo, hi = box32(item.prop.lower, item.prop.upper, outward=False)
                broken = spec_pgd(module, tuple(item.model.network.input_shape), lo, hi,
                                  item.prop.disjuncts, steps=200, restarts=20,
                                  seed=1) is not None
            tree = o.tree or {}
            out.append({"row": item.instance.row, "result": o.result, "verdict": o.verdict,
                        "procedure": o.procedure, "cpu_seconds": o.seconds,
                        "wall_seconds": wall, "reason": o.reason,
                        "domains": tree.get("domains", _open_domains(o.reason)),
                        "leaves": len(tree.get("leaves", [])),
                        "ort_rechecked": o.verdict == "falsified",
                        "refine": [list(x) for x in spent],
                        "pgd_breaks_verified": broken})
            print(f"    {procedure} prop {item.instance.row}: {o.result} by {o.procedure} in "
                  f"{o.seconds:.1f} CPU s ({wall:.0f} s wall) {o.reason[:90]}", flush=True)
    finally:
        bab.HEURISTICS, complete.BAB_SHARE, complete.REFINE_LAYERS, refine.refine = saved
    return out


def _open_domains(reason: str):
    """The domains a branch and bound that ran out of time had bounded (its reason)."""
    import re

    m = re.search(r"of (\d+) domains still open", reason)
    return int(m.group(1)) if m else None


def summary(runs: list[dict]) -> dict:
    secs = [r["cpu_seconds"] for r in runs]
    return {"n": len(runs), "proved": sum(r["verdict"] == "verified" for r in runs),
            "falsified": sum(r["verdict"] == "falsified" for r in runs),
            "timeouts": sum(r["verdict"] == "unknown" for r in runs),
            "median_cpu_seconds": statistics.median(secs) if secs else 0.0,
            "median_wall_seconds": statistics.median([r["wall_seconds"] for r in runs])
            if runs else 0.0,
            "by": {p: sum(r["procedure"] == p for r in runs)
                   for p in sorted({r["procedure"] for r in runs})},
            "domains": sum(r["domains"] or 0 for r in runs),
            "unsound": sum(r["pgd_breaks_verified"] for r in runs)}


def main() -> None:
    from toolchain.data import load_dataset

    ap = argparse.ArgumentParser()
    ap.add_argument("--nets", default=",".join(NETS), help="of " + ", ".join(NETS))
    ap.add_argument("--eps", default="0.03,0.05")
    ap.add_argument("--n", type=int, default=15, help="first N test images")
    ap.add_argument("--timeout", type=float, default=60.0, help="CPU seconds per instance")
    ap.add_argument("--epochs", type=int, default=3, help="natural training epochs")
    ap.add_argument("--procedures", default="bab,milp", help="of " + ", ".join(PROCEDURES))
    ap.add_argument("--rows", default="", help="only these instances.csv rows (1-based)")
    ap.add_argument("--append", action="store_true", help="keep the cells already written")
    ap.add_argument("--name", default="bab", help="results/NAME.{json,md} (default bab)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    data = load_dataset("mnist5k")
    old = RESULTS / f"{args.name}.json"
    cells = json.loads(old.read_text())["cells"] if args.append and old.is_file() else {}
    for net in args.nets.split(","):
        model, acc = natural_mlp(NETS[net], data, args.epochs)
        for eps in (float(e) for e in args.eps.split(",")):
            with tempfile.TemporaryDirectory() as tmp:
                loaded = instances(model, data, eps, args.n, args.timeout, Path(tmp))
                for proc in args.procedures.split(","):
                    print(f"{net} eps {eps:g} {proc}", flush=True)
                    t0, c0 = time.perf_counter(), time.process_time()
                    rows = {int(r) for r in args.rows.split(",") if r}
                    runs = run_cell(loaded, proc, rows)
                    cells[f"{net} eps {eps:g} {proc}" + (f" rows {args.rows}" if rows
                                                         else "")] = {
                        "net": net, "eps": eps, "procedure": proc, "clean_acc": acc,
                        "rows": sorted(rows),
                        "params": model.network.param_count(), "runs": runs,
                        "summary": summary(runs), "wall_seconds": time.perf_counter() - t0,
                        "cpu_seconds": time.process_time() - c0}
                    _write(args, cells)


def _write(args, cells) -> None:
    rows = []
    for key, c in sorted(cells.items()):
        s = c["summary"]
        proc = c["procedure"] + (f" (rows {','.join(map(str, c['rows']))})"
                                 if c.get("rows") else "")
        rows.append((c["net"], f"{c['clean_acc']:.3f}", f"{c['eps']:g}", proc, s["n"],
                     s["proved"], s["falsified"], s["timeouts"],
                     f"{(s['proved'] + s['falsified']) / max(1, s['n']):.0%}",
                     f"{s['median_cpu_seconds']:.1f}", f"{s['median_wall_seconds']:.1f}",
                     s["domains"], s["unsound"]))
    table = markdown(("net", "clean acc", "eps", "complete step", "n", "proved", "falsified",
                      "timeouts", "settled", "median CPU s", "median wall s",
                      "BaB domains bounded", "unsound"), rows)
    write(args.name, {"machine": machine(), "args": vars(args), "cells": cells}, table)


if __name__ == "__main__":
    main()
