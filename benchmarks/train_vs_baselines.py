"""VeriSparse vs dense vs HYDRA on mnist5k at eps = 0.1 (issue: training benchmark).

For cnn_small and mlp at density 0.1, unstructured and structured, trains
VeriSparse, HYDRA (dense certified pre-training + score pruning + certified
fine-tuning, same budget) and the dense baseline with one schedule (VeriSparse
also with 1.5x the epochs, about HYDRA's wall time), then
measures on the 1,000 test images: wall seconds, epochs, clean accuracy, IBP-
and CROWN-verified accuracy. Writes results/train_vs_baselines.{json,md}.

    .venv/bin/python benchmarks/train_vs_baselines.py [--epochs 30] [--quick]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import evaluate, machine, markdown, write  # noqa: E402

from toolchain.config import config_from_dict  # noqa: E402
from toolchain.data import load_dataset  # noqa: E402
from toolchain.train.loop import train  # noqa: E402

EPS = 0.1


def runs():
    """(arch, method, mode, epoch factor): verisparse also with 1.5x epochs, about
    HYDRA's wall time (its three phases), so the two can be compared at equal time."""
    for arch in ("cnn_small", "mlp"):
        yield arch, "dense", "-", 1.0
        for mode in ("unstructured", "structured"):
            yield arch, "verisparse", mode, 1.0
            yield arch, "verisparse", mode, 1.5
            yield arch, "hydra", mode, 1.0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--density", type=float, default=0.1)
    ap.add_argument("--quick", action="store_true", help="3 epochs, for a smoke run")
    args = ap.parse_args()
    epochs = 3 if args.quick else args.epochs
    data = load_dataset("mnist5k")
    rows, results = [], []
    for arch, method, mode, factor in runs():
        run_epochs = round(epochs * factor)
        cfg = config_from_dict({
            "model": {"arch": arch},
            "sparsity": {"method": method, "mode": mode if mode != "-" else "structured",
                         "density": args.density,
                         # HYDRA: half the schedule to train scores, half to fine-tune
                         "hydra_score_epochs": max(1, epochs // 2),
                         "hydra_finetune_epochs": max(1, epochs // 2)},
            "train": {"epochs": run_epochs, "warmup_epochs": max(1, run_epochs // 15),
                      "ramp_epochs": max(1, run_epochs // 2)},
            "verify": {"eps": EPS}})
        with tempfile.TemporaryDirectory() as tmp:
            t0 = time.perf_counter()
            model = train(cfg, Path(tmp), show_progress=False)
            seconds = time.perf_counter() - t0
        metrics = evaluate(model, data, EPS)
        # HYDRA: pre-training + score training + fine-tuning epochs
        n_epochs = run_epochs + (2 * max(1, epochs // 2) if method == "hydra" else 0)
        res = {"arch": arch, "method": method, "mode": mode, "density": model.record["density"],
               "wall_seconds": seconds, "epochs": n_epochs, **metrics}
        results.append(res)
        rows.append((arch, method, mode, f"{res['density']:.3f}", f"{seconds:.0f}", n_epochs,
                     f"{metrics['clean_acc']:.1%}", f"{metrics['ibp_verified_acc']:.1%}",
                     f"{metrics['crown_verified_acc']:.1%}"))
        print(rows[-1], flush=True)
    table = markdown(("model", "method", "mode", "density", "wall s", "epochs", "clean",
                      "IBP-verified", "CROWN-verified"), rows)
    write("train_vs_baselines", {"machine": machine(), "eps": EPS, "dataset": "mnist5k",
                                 "results": results}, table)


if __name__ == "__main__":
    main()
