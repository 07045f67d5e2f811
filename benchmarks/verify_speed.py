"""Verification and inference speed: dense vs sparse-masked vs compacted models.

Trains cnn_4layer on mnist5k (dense, and structured at density 0.3 and 0.1,
same short schedule), compacts the sparse ones, then measures per model:
samples/second of IBP, CROWN (whole test split) and alpha-CROWN (first 20),
verified accuracy at eps 0.1, and CPU inference time (batch of 1,000, and
batch 1). Writes results/verify_speed.{json,md}.

    .venv/bin/python benchmarks/verify_speed.py [--epochs 30]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, markdown, write  # noqa: E402

import torch  # noqa: E402

from toolchain.compact import compact  # noqa: E402
from toolchain.config import config_from_dict  # noqa: E402
from toolchain.data import load_dataset  # noqa: E402
from toolchain.lirpa.bounds import Bounder  # noqa: E402
from toolchain.train.trainer import train  # noqa: E402

EPS = 0.1
COUNTS = {"ibp": 1000, "crown": 1000, "alpha-crown": 20}


def speed(model, data) -> dict:
    module = model.torch_module().eval()
    bounder = Bounder(module, data.input_shape)
    x, y = torch.from_numpy(data.x_test), torch.from_numpy(data.y_test)
    out = {"params": model.network.param_count(), "macs": model.network.macs()}
    for method, n in COUNTS.items():
        t0 = time.perf_counter()
        verified = bounder.count_verified(x[:n], y[:n], EPS, method,
                                          250 if method != "alpha-crown" else 20)
        seconds = time.perf_counter() - t0
        out[method] = {"n": n, "seconds": seconds, "samples_per_second": n / seconds,
                       "verified_acc": verified / n}
    with torch.no_grad():
        t0 = time.perf_counter()
        module(x)
        out["infer_batch1000_ms"] = 1000 * (time.perf_counter() - t0)
        t0 = time.perf_counter()
        for i in range(200):
            module(x[i:i + 1])
        out["infer_single_us"] = 1e6 * (time.perf_counter() - t0) / 200
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--epochs", type=int, default=30)
    args = ap.parse_args()
    data = load_dataset("mnist5k")
    models = {}
    with tempfile.TemporaryDirectory() as tmp:
        for label, method, density in (("dense", "dense", 1.0), ("structured 0.3", "verisparse", 0.3),
                                       ("structured 0.1", "verisparse", 0.1)):
            cfg = config_from_dict({"sparsity": {"method": method, "density": density},
                                    "train": {"epochs": args.epochs}})
            model = train(cfg, Path(tmp) / label.replace(" ", "_"), show_progress=False)
            models[f"{label} (masked)" if method != "dense" else label] = model
            if method != "dense":
                models[f"{label} (compacted)"] = compact(model)[0]
    results, rows = {}, []
    for label, model in models.items():
        r = speed(model, data)
        results[label] = r
        rows.append((label, r["params"], r["macs"],
                     *(f"{r[m]['samples_per_second']:.1f}" for m in COUNTS),
                     f"{r['crown']['verified_acc']:.1%}", f"{r['infer_batch1000_ms']:.1f}",
                     f"{r['infer_single_us']:.0f}"))
        print(rows[-1], flush=True)
    table = markdown(("model", "params", "MACs", "IBP samples/s", "CROWN samples/s",
                      "alpha-CROWN samples/s", "CROWN-verified", "infer 1000 (ms)",
                      "infer 1 (us)"), rows)
    write("verify_speed", {"machine": machine(), "eps": EPS, "counts": COUNTS,
                           "results": results}, table)


if __name__ == "__main__":
    main()
