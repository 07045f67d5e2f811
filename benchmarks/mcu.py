"""Instructions per inference and per MAC on an emulated Cortex-M4 (QEMU mps2-an386).

Models (cnn_4layer on mnist5k, short certified training): dense float; the
structured model compacted, float and int8; an unstructured 10%-density model
with dense and with sparse (CSR) weight storage, float and int8. Counts come
from SysTick under ``-icount shift=0`` (instructions, not cycles). Beside them,
the floor from the brief: about one FMA instruction per float MAC plus its
loads, and half an instruction per int8 MAC with SMLAD (two MACs each).
Storage ``auto`` picks dense or CSR per layer, whichever is smaller: int8
weights that quantize to zero can make CSR smaller even for a "dense" model.
Writes results/mcu.{json,md}.

    .venv/bin/python benchmarks/mcu.py [--epochs 5]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, markdown, write  # noqa: E402

from toolchain.bench import bench_model  # noqa: E402
from toolchain.compact import compact  # noqa: E402
from toolchain.config import config_from_dict  # noqa: E402
from toolchain.data import load_dataset  # noqa: E402
from toolchain.export.c import generate_c  # noqa: E402
from toolchain.export.tflite import export_tflite  # noqa: E402
from toolchain.targets import load_target  # noqa: E402
from toolchain.train.loop import train  # noqa: E402

FLOOR = {"float": 1.0, "int8": 0.5}   # instructions per MAC, compute only (DESIGN section 4)


def nonzero_macs(model) -> int:
    """MACs that touch a nonzero weight (what a sparse kernel must do)."""
    total = 0
    for i, (layer, shape) in enumerate(zip(model.network.layers, model.network.shapes())):
        w = model.state.get(f"{i}.weight")
        if w is None or not hasattr(layer, "weight_shape"):
            continue
        positions = 1
        for s in shape[1:]:
            positions *= s
        total += int((w != 0).sum()) * positions
    return total


def measure(label, model, data, root: Path, target, storage="auto") -> list[tuple]:
    work = root / label.replace(" ", "_")
    tfl = export_tflite(model, work, data.x_train, name="m")
    c = generate_c(model.network, model.state, work / "c", name="m", tflite_int8=tfl["int8"],
                   golden_x=data.x_test[:4], storage=storage)
    res = bench_model(work / "c", "m", target, work / "bench")
    rows = []
    for variant in ("float", "int8"):
        r = res[variant]
        macs, nz = model.network.macs(), nonzero_macs(model)
        layers = c[variant]["layers"]
        rows.append({"model": label, "variant": variant, "storage": storage,
                     "layer_storage": "/".join(layer["storage"][0] for layer in layers),
                     "macs": macs, "nonzero_macs": nz,
                     "instructions": r["instructions_per_inference"],
                     "per_mac": r["instructions_per_inference"] / macs,
                     "per_nonzero_mac": r["instructions_per_inference"] / nz,
                     "floor_per_mac": FLOOR[variant], "flash_bytes": r["flash_bytes"],
                     "ram_bytes": r["ram_bytes"], "top1_agreement": r["top1_agreement"]})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--epochs", type=int, default=5)
    args = ap.parse_args()
    data, target = load_dataset("mnist5k"), load_target("cortex-m4")
    short = {"epochs": args.epochs, "warmup_epochs": 1, "ramp_epochs": max(1, args.epochs // 2)}
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        dense = train(config_from_dict({"sparsity": {"method": "dense"}, "train": short}),
                      root / "dense", show_progress=False)
        results += measure("dense", dense, data, root, target)
        structured = train(config_from_dict({"train": short}), root / "structured",
                           show_progress=False)
        results += measure("structured 0.3 compacted", compact(structured)[0], data, root, target)
        unstructured = train(config_from_dict({"sparsity": {"mode": "unstructured",
                                                            "density": 0.1}, "train": short}),
                             root / "unstructured", show_progress=False)
        for storage in ("dense", "sparse"):
            results += measure(f"unstructured 0.1 {storage}", unstructured, data, root, target,
                               storage=storage)
    rows = [(r["model"], r["variant"], f"{r['storage']} ({r['layer_storage']})",
             f"{r['macs']:,}", f"{r['nonzero_macs']:,}",
             f"{r['instructions']:,}", f"{r['per_mac']:.2f}", f"{r['per_nonzero_mac']:.2f}",
             f"{r['floor_per_mac']:.1f}", f"{r['flash_bytes']:,}", f"{r['ram_bytes']:,}")
            for r in results]
    table = markdown(("model", "variant", "storage (per layer d/s)", "MACs", "nonzero MACs",
                      "instructions",
                      "instr/MAC", "instr/nonzero MAC", "floor instr/MAC", "flash B", "RAM B"),
                     rows)
    write("mcu", {"machine": machine(), "target": "cortex-m4 (QEMU mps2-an386, icount)",
                  "results": results}, table)


if __name__ == "__main__":
    main()
