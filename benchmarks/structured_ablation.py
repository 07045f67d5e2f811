"""Which structured sparse method certifies best? (issue 13, item 2)

One setting (default: cnn_small, structured, density 0.1, mnist5k, eps 0.1,
the default 30-epoch schedule, seed 0), every candidate, losers included:

- ``dst``: VeriSparse as published here so far (random mask at the target,
  drop 0.3 / RigL regrowth every 50 steps, cosine decay, frozen last 25%);
- ``static``: the random mask, never updated;
- ``gradual-*``: ``verisparse-gradual``: random start at ``start_factor`` times
  the target, cubic shrink to it by the end of the eps ramp, then fixed;
  importance ``magnitude`` or ``taylor``; ``soft``: pruned channels may come
  back until the target is reached; ``f1`` (soft at the budget all along) is
  the authors' follow-up "soft channel pruning";
- ``wide-*``: the same method on a network of twice the channels / widths,
  at the density that gives the same number of weights after compaction
  (sparse-wide vs dense-narrow);
- ``*-ibp``: trained on IBP bounds alone (no CROWN-IBP phase: cheaper steps),
  ``-45ep`` with 1.5x the epochs;
- ``hydra-ibp``: the baseline with IBP-only pre-training too (``-half``: half
  the epochs);
- ``hydra``: the baseline (dense pre-training, score pruning, fine-tuning).

Reports wall seconds, the weights after compaction, clean, IBP- and
CROWN-verified accuracy on all 1,000 test images. Writes
results/structured_ablation.{json,md}.

    .venv/bin/python benchmarks/structured_ablation.py [--arch cnn_small] [--density 0.1]
        [--only gradual-taylor-f3 ...] [--seed 0]
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
from toolchain.train.trainer import train  # noqa: E402

GRADUAL = {"method": "verisparse-gradual"}
VARIANTS = {
    "dst": {"method": "verisparse"},
    "static": {"method": "verisparse", "update_every": 10**9},
    "gradual-magnitude-f3": {**GRADUAL, "importance": "magnitude", "start_factor": 3.0},
    "gradual-taylor-f3": {**GRADUAL, "importance": "taylor", "start_factor": 3.0},
    "gradual-taylor-dense": {**GRADUAL, "importance": "taylor", "start_factor": 1000.0},
    "soft-taylor-f1": {**GRADUAL, "importance": "taylor", "start_factor": 1.0, "soft": True},
    "soft-taylor-f3": {**GRADUAL, "importance": "taylor", "start_factor": 3.0, "soft": True},
    "soft-magnitude-f3": {**GRADUAL, "importance": "magnitude", "start_factor": 3.0,
                          "soft": True},
    "soft-magnitude-f6": {**GRADUAL, "importance": "magnitude", "start_factor": 6.0,
                          "soft": True},
    "soft-magnitude-dense": {**GRADUAL, "importance": "magnitude", "start_factor": 1000.0,
                             "soft": True},
    "wide-gradual-taylor-f3": {**GRADUAL, "importance": "taylor", "start_factor": 3.0,
                               "wide": 2},
    "wide-soft-magnitude-f3": {**GRADUAL, "importance": "magnitude", "start_factor": 3.0,
                               "soft": True, "wide": 2},
    "soft-magnitude-f3-ibp": {**GRADUAL, "importance": "magnitude", "start_factor": 3.0,
                              "soft": True, "train": {"crown_ibp": False}},
    "soft-magnitude-f3-ibp-45ep": {**GRADUAL, "importance": "magnitude", "start_factor": 3.0,
                                   "soft": True, "train": {"crown_ibp": False, "epochs": 45,
                                                           "ramp_epochs": 22,
                                                           "warmup_epochs": 3}},
    "hydra": {"method": "hydra", "hydra_score_epochs": 15, "hydra_finetune_epochs": 15},
    "hydra-ibp": {"method": "hydra", "hydra_score_epochs": 15, "hydra_finetune_epochs": 15,
                  "train": {"crown_ibp": False}},
    "hydra-ibp-half": {"method": "hydra", "hydra_score_epochs": 7, "hydra_finetune_epochs": 7,
                       "train": {"crown_ibp": False, "epochs": 16, "warmup_epochs": 1,
                                 "ramp_epochs": 8}},
}
WIDTHS = {"cnn_small": ((8, 16), (64,)), "cnn_4layer": ((16, 32), (100,)), "mlp": ((), (256, 256))}


def deployed_weights(arch: str, channels, widths, mode: str, density: float, shape, classes):
    """Conv/Linear weights that can be nonzero (= after compaction, structured)."""
    import torch

    from toolchain.models.zoo import build_network
    from toolchain.sparsity.masks import Sparsifier

    net = build_network(arch, shape, classes, channels=channels or None, widths=widths or None)
    return Sparsifier(net, mode, density, "erk", torch.Generator()).kept_weights()


def matched_density(arch, channels, widths, mode, target: int, shape, classes) -> float:
    """The density at which the given (wider) network keeps ``target`` weights."""
    lo, hi = 1e-4, 1.0
    for _ in range(40):
        mid = (lo + hi) / 2
        if deployed_weights(arch, channels, widths, mode, mid, shape, classes) > target:
            hi = mid
        else:
            lo = mid
    return lo


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--arch", default="cnn_small")
    ap.add_argument("--density", type=float, default=0.1)
    ap.add_argument("--mode", default="structured")
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--eps", type=float, default=0.1)
    ap.add_argument("--only", nargs="*", help="variant names (default: all)")
    ap.add_argument("--name", default="structured_ablation")
    ap.add_argument("--threads", type=int, default=0, help="train.threads (0: auto)")
    ap.add_argument("--merge", nargs="*", help="only merge these result names into --name")
    args = ap.parse_args()
    if args.merge:
        return merge(args.name, args.merge)
    data = load_dataset("mnist5k")
    channels, widths = WIDTHS[args.arch]
    target = deployed_weights(args.arch, channels, widths, args.mode, args.density,
                              data.input_shape, data.num_classes)
    results = []
    for name in args.only or VARIANTS:
        spars = dict(VARIANTS[name])
        wide = spars.pop("wide", 1)
        train_over = spars.pop("train", {})
        model_cfg = {"arch": args.arch}
        density = args.density
        if wide > 1:
            model_cfg["channels"] = [c * wide for c in channels]
            model_cfg["widths"] = [w * wide for w in widths]
            density = matched_density(args.arch, model_cfg["channels"], model_cfg["widths"],
                                      args.mode, target, data.input_shape, data.num_classes)
        cfg = config_from_dict({
            "model": model_cfg,
            "sparsity": {"mode": args.mode, "density": density, **spars},
            "train": {"epochs": args.epochs, "seed": args.seed, "threads": args.threads,
                      **train_over},
            "verify": {"eps": args.eps}})
        with tempfile.TemporaryDirectory() as tmp:
            t0 = time.perf_counter()
            model = train(cfg, Path(tmp), show_progress=False)
            seconds = time.perf_counter() - t0
        kept = sum(int((v != 0).sum()) for k, v in model.state.items()
                   if k.endswith(".weight") and k in model.masks) if model.masks else None
        metrics = evaluate(model, data, args.eps)
        res = {"variant": name, "config": cfg.to_dict()["sparsity"], "wide": wide,
               "threads": model.record.get("threads"),
               "density": model.record["density"], "deployed_weights": kept,
               "wall_seconds": seconds, **metrics}
        results.append(res)
        print({k: res[k] for k in ("variant", "wall_seconds", "crown_verified_acc")}, flush=True)
        write(args.name, {"machine": machine(), "arch": args.arch, "mode": args.mode,
                          "target_density": args.density, "target_weights": target,
                          "eps": args.eps, "epochs": args.epochs, "seed": args.seed,
                          "results": results}, table(results))


def table(results: list[dict]) -> str:
    rows = [(r["variant"], f"{r['density']:.3f}", r["deployed_weights"],
             f"{r['wall_seconds']:.0f}", r.get("threads", ""), f"{r['clean_acc']:.1%}",
             f"{r['ibp_verified_acc']:.1%}", f"{r['crown_verified_acc']:.1%}")
            for r in results]
    return markdown(("variant", "density", "weights after compaction", "wall s", "threads",
                     "clean", "IBP-verified", "CROWN-verified"), rows)


def merge(name: str, parts: list[str]) -> None:
    """One table from runs made in parallel (e.g. two one-thread workers)."""
    import json

    from common import RESULTS
    payloads = [json.loads((RESULTS / f"{p}.json").read_text()) for p in parts]
    results = [r for p in payloads for r in p["results"]]
    order = list(VARIANTS)
    results.sort(key=lambda r: order.index(r["variant"]) if r["variant"] in order else 99)
    write(name, {**payloads[0], "results": results, "merged_from": parts}, table(results))


if __name__ == "__main__":
    main()
