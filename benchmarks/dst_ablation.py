"""Does dynamic sparse training help? cnn_small at density 0.1 on mnist5k, eps 0.1.

Structured: default DST (drop 0.3 every 50 steps, RigL regrowth), no updates
(static random mask), gentler updates (drop 0.1 every 200 steps), random
(SET) regrowth. Unstructured: default vs static. IBP-verified accuracy on the
1,000 test images. Writes results/dst_ablation.{json,md}.

    .venv/bin/python benchmarks/dst_ablation.py
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import evaluate, machine, markdown, write  # noqa: E402

from toolchain.config import config_from_dict  # noqa: E402
from toolchain.data import load_dataset  # noqa: E402
from toolchain.train.trainer import train  # noqa: E402

VARIANTS = {
    "structured, default DST": {"density": 0.1},
    "structured, static mask": {"density": 0.1, "drop_fraction": 0.0},
    "structured, drop 0.1 every 200 steps": {"density": 0.1, "drop_fraction": 0.1,
                                             "update_every": 200},
    "structured, random regrowth (SET)": {"density": 0.1, "regrow": "random"},
    "unstructured, default DST": {"mode": "unstructured", "density": 0.1},
    "unstructured, static mask": {"mode": "unstructured", "density": 0.1, "drop_fraction": 0.0},
}


def main() -> None:
    data = load_dataset("mnist5k")
    results, rows = [], []
    for name, sparsity in VARIANTS.items():
        cfg = config_from_dict({"model": {"arch": "cnn_small"},
                                "sparsity": {"method": "verisparse", **sparsity},
                                "verify": {"eps": 0.1}})
        with tempfile.TemporaryDirectory() as tmp:
            t0 = time.perf_counter()
            model = train(cfg, Path(tmp), show_progress=False)
            seconds = time.perf_counter() - t0
        metrics = evaluate(model, data, 0.1, ("ibp",))
        results.append({"variant": name, "sparsity": sparsity, "wall_seconds": seconds,
                        **metrics})
        rows.append((name, f"{seconds:.0f}", f"{metrics['clean_acc']:.1%}",
                     f"{metrics['ibp_verified_acc']:.1%}"))
        print(rows[-1], flush=True)
    write("dst_ablation", {"machine": machine(), "results": results},
          markdown(("cnn_small, density 0.1", "wall s", "clean", "IBP-verified"), rows))


if __name__ == "__main__":
    main()
