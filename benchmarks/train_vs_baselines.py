"""VeriSparse vs dense vs HYDRA at equal training budgets, three seeds (issues 13, 27).

The grid: architecture x density x budget x method x schedule x seed.

- methods: ``dense`` (certified training of the whole network), ``hydra``
  and ``hydra-structured`` (dense certified pre-training, score pruning,
  certified fine-tuning in HYDRA's proportions 2 : 1 : 1 of the epochs; single
  weights or whole channels), ``verisparse-dst`` (the seed's dynamic sparse
  training from a random mask at the target, single weights),
  ``verisparse-gradual-structured`` (the default build's method: a random
  start at 3x the density shrunk by soft magnitude pruning, whole channels)
  and ``verisparse-gradual-unstructured`` (the same on single weights);
- schedules: ``crown-ibp`` (the default: CROWN-IBP, beta 1 -> 0 over the
  ramp) and ``ibp`` (IBP bounds only: cheaper steps);
- budgets: the base schedule (30 epochs, the default build's) times 0.5, 1,
  2, 4: epochs, warm-up and ramp all scale.

Each run trains on **one** torch thread; ``--jobs 2`` runs two side by side
(one per core of the 2-core machine), each in a fresh process. A run records
wall and CPU seconds of ``train()`` (CPU seconds of a one-thread run are its
wall time on an idle core, so they stay comparable when the machine is
busier than two runs), clean, IBP- and CROWN-verified accuracy on all 1,000
mnist5k test images at eps 0.1, the same on the run's own 200 held-out
validation images (``train.val_size``; what the default schedule is chosen
by, never the test split), and the deployed size (nonzero weights; for
structured masks the size after compaction).

Results accumulate in results/<name>.json; every finished run is written at
once, and a rerun skips what is there, so the grid runs in pieces of an hour
or two. ``grid_report.py`` turns the results into the tables, the Pareto
plots and the aims:

    .venv/bin/python benchmarks/train_vs_baselines.py --arch cnn_small --density 0.1 \\
        --budgets 1 --seeds 0 1 2 --jobs 2
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from multiprocessing import get_context
from pathlib import Path
from types import SimpleNamespace

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, evaluate, machine, write  # noqa: E402
from grid_report import key, report  # noqa: E402

EPS = 0.1
BASE_EPOCHS = 30
GRADUAL = {"method": "verisparse-gradual", "importance": "magnitude", "start_factor": 3.0,
           "soft": True}
METHODS = {
    "dense": {"method": "dense"},
    "hydra": {"method": "hydra", "mode": "unstructured"},
    "hydra-structured": {"method": "hydra", "mode": "structured"},
    "verisparse-dst": {"method": "verisparse", "mode": "unstructured"},
    "verisparse-gradual-structured": {**GRADUAL, "mode": "structured"},
    "verisparse-gradual-unstructured": {**GRADUAL, "mode": "unstructured"},
}
SCHEDULES = {"crown-ibp": True, "ibp": False}       # train.crown_ibp


def config(arch: str, density: float, method: str, schedule: str, budget: float, seed: int):
    from toolchain.config import config_from_dict

    epochs = max(2, round(BASE_EPOCHS * budget))
    spars = dict(METHODS[method], density=density)
    if spars["method"] == "hydra":
        # HYDRA's proportions: half pre-training, a quarter each scoring and fine-tuning
        spars |= {"hydra_score_epochs": max(1, epochs // 4),
                  "hydra_finetune_epochs": max(1, epochs // 4)}
        epochs = max(1, epochs - 2 * (epochs // 4))
    return config_from_dict({
        "model": {"arch": arch}, "sparsity": spars,
        "train": {"epochs": epochs, "warmup_epochs": max(1, epochs // 15),
                  "ramp_epochs": max(1, epochs // 2), "seed": seed, "threads": 1,
                  "crown_ibp": SCHEDULES[schedule]},
        "verify": {"eps": EPS}})


def run_one(point: tuple) -> dict:
    """One grid point in this (fresh) process: train on one thread, evaluate."""
    import torch

    from toolchain.data import load_dataset
    from toolchain.train.loop import split_validation
    from toolchain.train.trainer import train

    arch, density, method, schedule, budget, seed = point
    torch.set_num_threads(1)
    data = load_dataset("mnist5k")
    cfg = config(arch, density, method, schedule, budget, seed)
    with tempfile.TemporaryDirectory() as tmp:
        t0, c0 = time.perf_counter(), time.process_time()
        model = train(cfg, Path(tmp), show_progress=False)
        seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
    layers = model.network.layers
    deployed = sum(int((v != 0).sum()) for k, v in model.state.items()
                   if k.endswith(".weight")
                   and layers[int(k.split(".")[0])].kind in ("conv2d", "conv1d", "linear"))
    _, _, x_val, y_val = split_validation(data, cfg.train.val_size, seed)
    val = SimpleNamespace(x_test=x_val.numpy(), y_test=y_val.numpy(),
                          input_shape=data.input_shape)
    return {"arch": arch, "density": density, "method": method, "schedule": schedule,
            "budget": budget, "seed": seed, "epochs_total": len(model.record["epochs"]),
            "wall_seconds": seconds, "cpu_seconds": cpu, "deployed_weights": deployed,
            "threads": model.record.get("threads"), **evaluate(model, data, EPS),
            **{f"val_{k}": v for k, v in evaluate(model, val, EPS).items()
               if k.endswith("_acc")}}


def grid(args) -> list[tuple]:
    """The keys to run, cheapest cells first: a cell's seeds finish before the next."""
    keys = []
    for arch in args.arch:
        for budget in args.budgets:
            for density in args.density:
                for seed in args.seeds:
                    for method in args.methods:
                        for schedule in args.schedules:
                            d = 1.0 if method == "dense" else density
                            keys.append((arch, d, method, schedule, budget, seed))
    return list(dict.fromkeys(keys))            # dense appears once per (arch, budget)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--arch", nargs="+", default=["cnn_small", "cnn_4layer"])
    ap.add_argument("--density", nargs="+", type=float, default=[0.1, 0.3])
    ap.add_argument("--budgets", nargs="+", type=float, default=[1, 2])
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    ap.add_argument("--schedules", nargs="+", default=list(SCHEDULES), choices=list(SCHEDULES))
    ap.add_argument("--jobs", type=int, default=2, help="runs side by side (one thread each)")
    ap.add_argument("--name", default="grid")
    args = ap.parse_args()
    path = RESULTS / f"{args.name}.json"
    results = json.loads(path.read_text())["results"] if path.exists() else []
    done = {key(r) for r in results}
    todo = [k for k in grid(args) if k not in done]
    print(f"{len(todo)} runs to do, {len(done)} already in {path.name}", flush=True)
    # spawn: a fresh interpreter per run (maxtasksperchild), no torch state shared
    with ProcessPoolExecutor(args.jobs, mp_context=get_context("spawn"),
                             max_tasks_per_child=1) as pool:
        futures = {pool.submit(run_one, k): k for k in todo}
        for fut in as_completed(futures):
            r = fut.result()
            results.append(r)
            print({k: r[k] for k in ("arch", "density", "method", "schedule", "budget", "seed",
                                     "cpu_seconds", "crown_verified_acc",
                                     "val_crown_verified_acc")}, flush=True)
            _save(args.name, results)


def _save(name: str, results: list[dict]) -> None:
    results = sorted(results, key=key)
    write(name, {"machine": machine(), "eps": EPS, "dataset": "mnist5k",
                 "base_epochs": BASE_EPOCHS, "threads_per_run": 1, "results": results},
          report(results, plots=False))


if __name__ == "__main__":
    main()
