"""VeriSparse vs dense vs HYDRA at equal wall-time budgets (issue 13, item 1).

For each setting (architecture x density) and each method

- ``dense``: certified training of the whole network;
- ``hydra``: dense certified pre-training, score pruning, certified
  fine-tuning, in HYDRA's proportions 2 : 1 : 1 of the epochs;
- ``verisparse-unstructured``: dynamic sparse training, single weights;
- ``verisparse-structured``: the structured method the default build uses
  (``STRUCTURED`` below; ``structured_ablation.py`` says why),
- ``hydra-structured``: HYDRA pruning whole channels (the fair opponent of
  the structured method: the same deployed size after compaction),

trains at each budget (the base schedule of 30 epochs, the default build's,
times 1, 2, 4: epochs, warm-up and ramp all scale) and seed, and measures
wall seconds, clean, IBP- and CROWN-verified accuracy on all 1,000 mnist5k
test images at eps 0.1, and the deployed size (nonzero weights, which for
structured masks is the size after compaction). Sparse methods at the same
density have the same deployed size by construction (same per-layer budget).

Writes results/train_vs_baselines.{json,md} and one Pareto plot per setting
(verified accuracy against wall time, mean and spread over seeds):
results/pareto_<arch>_<density>.png. The full grid (2 architectures x 2
densities x 3 budgets x 3 seeds) takes many CPU hours; the flags pick a part:

    .venv/bin/python benchmarks/train_vs_baselines.py --arch cnn_small --density 0.1 \\
        --budgets 1 2 --seeds 0
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
from common import RESULTS, evaluate, machine, markdown, write  # noqa: E402

from toolchain.config import config_from_dict  # noqa: E402
from toolchain.data import load_dataset  # noqa: E402
from toolchain.train.trainer import train  # noqa: E402

EPS = 0.1
BASE_EPOCHS = 30
STRUCTURED = {"method": "verisparse-gradual", "importance": "magnitude", "start_factor": 3.0,
              "soft": True}
METHODS = {
    "dense": {"method": "dense"},
    "hydra": {"method": "hydra", "mode": "unstructured"},
    "hydra-structured": {"method": "hydra", "mode": "structured"},
    "verisparse-unstructured": {"method": "verisparse", "mode": "unstructured"},
    "verisparse-structured": {**STRUCTURED, "mode": "structured"},
}


def config(arch: str, density: float, method: str, budget: float, seed: int, threads: int = 0):
    epochs = round(BASE_EPOCHS * budget)
    spars = dict(METHODS[method], density=density)
    if spars["method"] == "hydra":
        # HYDRA's proportions: half pre-training, a quarter each scoring and fine-tuning
        spars |= {"hydra_score_epochs": max(1, epochs // 4),
                  "hydra_finetune_epochs": max(1, epochs // 4)}
        epochs = max(1, epochs - 2 * (epochs // 4))
    return config_from_dict({
        "model": {"arch": arch}, "sparsity": spars,
        "train": {"epochs": epochs, "warmup_epochs": max(1, epochs // 15),
                  "ramp_epochs": max(1, epochs // 2), "seed": seed, "threads": threads},
        "verify": {"eps": EPS}})


def run_one(arch, density, method, budget, seed, data, threads=0) -> dict:
    cfg = config(arch, density, method, budget, seed, threads)
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        model = train(cfg, Path(tmp), show_progress=False)
        seconds = time.perf_counter() - t0
    deployed = sum(int((v != 0).sum()) for k, v in model.state.items()
                   if k.endswith(".weight") and model.network.layers[int(k.split(".")[0])].kind
                   in ("conv2d", "conv1d", "linear"))
    return {"arch": arch, "density": density, "method": method, "budget": budget, "seed": seed,
            "epochs_total": len(model.record["epochs"]), "wall_seconds": seconds,
            "deployed_weights": deployed, "threads": model.record.get("threads"),
            **evaluate(model, data, EPS)}


def summarize(results: list[dict]) -> list[dict]:
    groups: dict[tuple, list[dict]] = {}
    for r in results:
        groups.setdefault((r["arch"], r["density"], r["method"], r["budget"]), []).append(r)
    out = []
    for (arch, density, method, budget), rs in sorted(groups.items()):
        row = {"arch": arch, "density": density, "method": method, "budget": budget,
               "seeds": len(rs)}
        for key in ("wall_seconds", "deployed_weights", "clean_acc", "ibp_verified_acc",
                    "crown_verified_acc"):
            values = [r[key] for r in rs]
            row[key] = statistics.fmean(values)
            row[key + "_sd"] = statistics.stdev(values) if len(values) > 1 else 0.0
        out.append(row)
    return out


def plot(summary: list[dict]) -> list[str]:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    files = []
    for arch, density in sorted({(s["arch"], s["density"]) for s in summary}):
        fig, ax = plt.subplots(figsize=(6, 4))
        for method in METHODS:
            pts = sorted((s for s in summary if (s["arch"], s["density"], s["method"])
                          == (arch, density, method)), key=lambda s: s["wall_seconds"])
            if not pts:
                continue
            ax.errorbar([p["wall_seconds"] for p in pts],
                        [100 * p["crown_verified_acc"] for p in pts],
                        yerr=[100 * p["crown_verified_acc_sd"] for p in pts],
                        marker="o", capsize=3, label=method)
        ax.set_xlabel("training wall time (s, 2 CPU cores)")
        ax.set_ylabel("CROWN-verified accuracy (%), eps 0.1")
        ax.set_title(f"{arch}, density {density}")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        name = f"pareto_{arch}_{density}.png"
        fig.tight_layout()
        fig.savefig(RESULTS / name, dpi=110)
        plt.close(fig)
        files.append(name)
    return files


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--arch", nargs="+", default=["cnn_small", "cnn_4layer"])
    ap.add_argument("--density", nargs="+", type=float, default=[0.1, 0.3])
    ap.add_argument("--budgets", nargs="+", type=float, default=[1, 2, 4])
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    ap.add_argument("--threads", type=int, default=0, help="train.threads (0: auto)")
    ap.add_argument("--name", default="train_vs_baselines")
    ap.add_argument("--merge", nargs="*", help="only merge these result names into --name")
    ap.add_argument("--append", action="store_true",
                    help="add to the results already in results/train_vs_baselines.json")
    args = ap.parse_args()
    if args.merge:
        return merge(args.name, args.merge)
    data = load_dataset("mnist5k")
    path = RESULTS / f"{args.name}.json"
    results = (json.loads(path.read_text()).get("results", [])
               if args.append and path.exists() else [])
    done = {(r["arch"], r["density"], r["method"], r["budget"], r["seed"]) for r in results}
    for arch in args.arch:
        for density in args.density:
            for budget in args.budgets:
                for method in args.methods:
                    if method == "dense" and density != args.density[0]:
                        continue                    # dense does not depend on the density
                    for seed in args.seeds:
                        key = (arch, density if method != "dense" else args.density[0],
                               method, budget, seed)
                        if key in done:
                            continue
                        r = run_one(arch, key[1], method, budget, seed, data, args.threads)
                        results.append(r)
                        print({k: r[k] for k in ("arch", "density", "method", "budget", "seed",
                                                 "wall_seconds", "crown_verified_acc")},
                              flush=True)
                        summary = summarize(results)
                        write(args.name, {"machine": machine(), "eps": EPS,
                                                     "dataset": "mnist5k",
                                                     "base_epochs": BASE_EPOCHS,
                                                     "results": results, "summary": summary},
                              table(summary))
    plot(summarize(results))


def merge(name: str, parts: list[str]) -> None:
    """One table and plot from runs made in parallel (e.g. two one-thread workers)."""
    payloads = [json.loads((RESULTS / f"{p}.json").read_text()) for p in parts]
    results = [r for p in payloads for r in p["results"]]
    summary = summarize(results)
    write(name, {**payloads[0], "results": results, "summary": summary, "merged_from": parts},
          table(summary))
    plot(summary)


def table(summary: list[dict]) -> str:
    rows = [(s["arch"], s["density"], s["method"], f"{s['budget']:g}x", s["seeds"],
             f"{s['wall_seconds']:.0f}", s["deployed_weights"] and f"{s['deployed_weights']:.0f}",
             f"{s['clean_acc']:.1%}", f"{s['ibp_verified_acc']:.1%}",
             f"{s['crown_verified_acc']:.1%}" + (f" ± {s['crown_verified_acc_sd']:.1%}"
                                                 if s["seeds"] > 1 else ""))
            for s in summary]
    return markdown(("model", "density", "method", "budget", "seeds", "wall s",
                     "deployed weights", "clean", "IBP-verified", "CROWN-verified (mean ± sd over seeds)"),
                    rows)


if __name__ == "__main__":
    main()
