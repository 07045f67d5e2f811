"""Certified-training throughput under CPU load: torch threads and OpenMP waiting (issue 13, item 4).

The certified step is small-batch work (batch 32), so its speed depends on how
the OpenMP threads that torch runs behave when other processes share the
CPUs. For each thread setting and each kind of load, a fresh process trains
the default model (cnn_4layer, structured 0.3) for a few epochs at full eps
(no warm-up: every step is a CROWN-IBP step) and reports training seconds.

Loads: ``none``; ``busy``: one pure-Python busy loop per CPU this process may
use; ``vst``: a second default training running beside it (a CI runner with
two jobs). Settings: ``NAME=threads[,ENV=VALUE...]``, e.g. ``2-spin3k=2,GOMP_SPINCOUNT=3000``
(libgomp's idle threads spin 300,000 times before they sleep, by default);
``auto`` is what ``vst train`` picks by itself (``train.threads = 0``: the
CPUs that other processes leave free at the start).

    .venv/bin/python benchmarks/train_load.py [--epochs 3] [--repeats 2]

Writes results/train_load.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, markdown, write  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
SETTINGS = ("auto=0", "1=1", "2=2", "2-spin3k=2,GOMP_SPINCOUNT=3000")
LOADS = ("none", "busy", "vst")

# The child: one training, its own seconds on stdout as JSON.
CHILD = """
import json, sys, tempfile, time, torch
from pathlib import Path
from toolchain.config import config_from_dict
from toolchain.train.trainer import train
epochs, threads, forever = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3] == "1"
cfg = config_from_dict({"train": {"epochs": epochs, "warmup_epochs": 0, "ramp_epochs": epochs,
                                  "threads": threads}})
while True:
    with tempfile.TemporaryDirectory() as d:
        t0 = time.perf_counter()
        m = train(cfg, Path(d), show_progress=False)
        print(json.dumps({"seconds": time.perf_counter() - t0,
                          "threads": m.record.get("threads"),
                          "epochs": [e["seconds"] for e in m.record["epochs"]]}), flush=True)
    if not forever:
        break
"""


def _child(epochs: int, threads: int, env: dict, forever: bool = False, **kw):
    return subprocess.Popen([sys.executable, "-c", CHILD, str(epochs), str(threads),
                             "1" if forever else "0"], cwd=ROOT, env={**os.environ, **env},
                            stdout=subprocess.PIPE, text=True, **kw)


def _load(kind: str, epochs: int) -> list[subprocess.Popen]:
    if kind == "none":
        return []
    if kind == "busy":
        n = len(os.sched_getaffinity(0))
        return [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(n)]
    procs = [_child(epochs, 0, {}, forever=True, stderr=subprocess.DEVNULL)]
    time.sleep(8)                                   # let it reach its training steps
    return procs


def parse_setting(text: str) -> tuple[str, int, dict]:
    name, _, rest = text.partition("=")
    threads, *envs = rest.split(",")
    return name, int(threads), dict(e.split("=", 1) for e in envs)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--setting", action="append", help="NAME=threads[,ENV=V] (repeatable)")
    ap.add_argument("--load", action="append", choices=LOADS)
    args = ap.parse_args()
    settings = [parse_setting(s) for s in (args.setting or SETTINGS)]
    results, rows = [], []
    for load in args.load or LOADS:
        for name, threads, env in settings:
            runs = []
            for _ in range(args.repeats):
                others = _load(load, args.epochs)
                try:
                    child = _child(args.epochs, threads, env)
                    out, _ = child.communicate()
                finally:
                    for p in others:
                        p.kill()
                        p.wait()
                runs.append(json.loads(out.strip().splitlines()[-1]))
            best = min(r["seconds"] for r in runs)
            results.append({"load": load, "setting": name, "threads_asked": threads, "env": env,
                            "threads_used": runs[0]["threads"], "runs": runs,
                            "best_seconds": best})
            print(results[-1], flush=True)
    alone = {r["setting"]: r["best_seconds"] for r in results if r["load"] == "none"}
    fastest_alone = min(alone.values()) if alone else float("nan")
    for r in results:
        rows.append((r["load"], r["setting"], r["threads_used"],
                     " / ".join(f"{x['seconds']:.1f}" for x in r["runs"]),
                     f"{r['best_seconds'] / fastest_alone:.2f}x"))
    table = markdown(("load", "setting", "threads", f"seconds ({args.epochs} epochs, each run)",
                      "best vs fastest unloaded"), rows)
    write("train_load", {"machine": machine(), "cpus_usable": len(os.sched_getaffinity(0)),
                         "epochs": args.epochs, "results": results}, table)


if __name__ == "__main__":
    main()
