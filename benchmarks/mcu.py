"""Instructions per layer and per MAC on emulated Cortex-M, vst's generated C beside CMSIS-NN.

Models: the default build's network compacted (what `vst build` flashes) and
uncompacted (the same trained weights with the pruned channels still in, so
every MAC of the dense shape is computed), and an unstructured 10%-density
cnn_4layer with dense and with CSR weight storage. Each runs as float32 and
int8 C in QEMU (``-icount shift=0``: instructions, not cycles) with the int8
kernel family of the target (SMLAD on cortex-m4/m7), timed per operator. The
int8 layers of the default model also run through Arm's CMSIS-NN s8 kernels
(``cmsis_nn.py``, same constants, outputs checked bit for bit against TFLite
Micro); without the CMSIS-NN sources those columns stay empty. Writes
results/mcu.{json,md}.

    .venv/bin/python benchmarks/mcu.py --build-dir build     # after `make build`
    .venv/bin/python benchmarks/mcu.py                        # trains short models itself
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from cmsis_nn import read_golden_inputs, run_cmsis_nn  # noqa: E402
from common import machine, markdown, write  # noqa: E402

from toolchain.bench import bench_model  # noqa: E402
from toolchain.compact import compact  # noqa: E402
from toolchain.config import config_from_dict  # noqa: E402
from toolchain.data import load_dataset  # noqa: E402
from toolchain.export.c import generate_c  # noqa: E402
from toolchain.export.tflite import export_tflite  # noqa: E402
from toolchain.models.modelfile import load_model  # noqa: E402
from toolchain.targets import load_target  # noqa: E402
from toolchain.train.trainer import train  # noqa: E402

FLOOR = {"float": 1.0, "int8": 0.5}   # instructions per MAC, compute only (DESIGN section 4)
AIMS = {"int8_per_mac": 2.0, "float_per_mac": 3.0, "cash_in": 1.15, "csr_speedup": 3.0}


def _models(args, data, root: Path) -> dict:
    """name -> (model, storage modes to measure)."""
    short = {"epochs": args.epochs, "warmup_epochs": 1, "ramp_epochs": max(1, args.epochs // 2)}
    if args.build_dir:
        trained = load_model(Path(args.build_dir) / "train" / "model.vst")
        small = load_model(Path(args.build_dir) / "compact.vst")
    else:
        trained = train(config_from_dict({"train": short}), root / "structured",
                        show_progress=False)
        small = compact(trained)[0]
    unstructured = train(config_from_dict({"sparsity": {"mode": "unstructured",
                                                        "density": 0.1}, "train": short}),
                         root / "unstructured", show_progress=False)
    return {"default compacted": (small, ("auto",)),
            "default uncompacted": (trained, ("dense",)),
            "unstructured 0.1": (unstructured, ("dense", "sparse"))}


def _rows(label, storage, target, res, c) -> list[dict]:
    rows = []
    for variant in ("float", "int8"):
        r = res[variant]
        macs = sum(layer["macs"] for layer in c[variant]["ops"])
        rows.append({"model": label, "impl": "vst", "storage": storage, "target": target.name,
                     "variant": variant,
                     "kernels": c["int8"]["kernels"] if variant == "int8" else "float",
                     "macs": macs, "instructions": r["instructions_per_inference"],
                     "per_mac": r["instructions_per_inference"] / macs,
                     "floor_per_mac": FLOOR[variant], "flash_bytes": r["flash_bytes"],
                     "ram_bytes": r["ram_bytes"], "exact": r.get("int8_max_abs_diff_q") == 0
                     if variant == "int8" else r["parity_max_abs_diff"],
                     "layers": r["layers"]})
    return rows


def _cmsis_row(label, target, work: Path, tflite, c_dir: Path) -> dict | None:
    q_in, expected = read_golden_inputs(c_dir / "m_golden.h")
    res = run_cmsis_nn(tflite, q_in, target.name, work, expected=expected)
    if res is None:
        return None
    macs = sum(layer["macs"] for layer in res["layers"])
    return {"model": label, "impl": "CMSIS-NN", "storage": "dense", "target": target.name,
            "variant": "int8", "kernels": "CMSIS-NN s8", "macs": macs,
            "instructions": res["instructions_per_inference"],
            "per_mac": res["instructions_per_inference"] / macs, "floor_per_mac": FLOOR["int8"],
            "flash_bytes": res.get("probe_flash_bytes"), "ram_bytes": res.get("probe_ram_bytes"),
            "exact": res["mismatches"] == 0, "layers": res["layers"]}


def measure(models: dict, data, targets, root: Path) -> list[dict]:
    rows = []
    for label, (model, storages) in models.items():
        work = root / label.replace(" ", "_")
        tfl = export_tflite(model, work, data.x_train, name="m")
        for target in targets:
            for storage in storages:
                c_dir = work / f"c_{target.name}_{storage}"
                c = generate_c(model.network, model.state, c_dir, name="m",
                               tflite_int8=tfl["int8"], golden_x=data.x_test[:4],
                               storage=storage, kernels=target.int8_kernels)
                res = bench_model(c_dir, "m", target, work / f"bench_{target.name}_{storage}")
                rows += _rows(label, storage, target, res, c)
            if label.startswith("default"):
                row = _cmsis_row(label, target, work / f"cmsis_{target.name}", tfl["int8"],
                                 c_dir)
                rows += [row] if row else []
    return rows


def _find(rows, **keys) -> dict | None:
    return next((r for r in rows if all(r.get(k) == v for k, v in keys.items())), None)


def aims(rows, target: str) -> list[tuple]:
    """The issue's aims, each with the measured figure (cortex-m4 int8 unless said)."""
    small = _find(rows, model="default compacted", impl="vst", target=target, variant="int8")
    big = _find(rows, model="default uncompacted", impl="vst", target=target, variant="int8")
    flt = _find(rows, model="default compacted", impl="vst", target=target, variant="float")
    cm = _find(rows, model="default compacted", impl="CMSIS-NN", target=target)
    dense = _find(rows, model="unstructured 0.1", storage="dense", target=target, variant="int8")
    csr = _find(rows, model="unstructured 0.1", storage="sparse", target=target, variant="int8")
    out = []
    if small:
        out.append(("int8 instructions per MAC, compacted default", f"<= {AIMS['int8_per_mac']}",
                    f"{small['per_mac']:.2f}" + (f" (CMSIS-NN {cm['per_mac']:.2f})" if cm else "")))
    if small and cm:
        slower = [a["name"] for a, b in zip(small["layers"], cm["layers"])
                  if a["instructions"] > b["instructions"]]
        out.append(("layers slower than CMSIS-NN", "none", ", ".join(slower) or "none"))
    if small and big:
        ratio = small["instructions"] / (big["instructions"] * small["macs"] / big["macs"])
        out.append(("compacted / (uncompacted x MAC ratio)", f"<= {AIMS['cash_in']}",
                    f"{ratio:.2f}"))
    if flt:
        out.append(("float instructions per MAC, compacted default",
                    f"<= {AIMS['float_per_mac']}", f"{flt['per_mac']:.2f}"))
    if dense and csr:
        speed = [(a["name"], a.get("density") or 0, a["instructions"] / b["instructions"])
                 for a, b in zip(dense["layers"], csr["layers"]) if a.get("macs")]
        out.append(("CSR vs dense int8 per layer at 10% density", f">= {AIMS['csr_speedup']}x",
                    ", ".join(f"{n} (density {d:.2f}) {s:.1f}x" for n, d, s in speed)))
    return out


def layer_table(rows, target: str) -> str:
    """Per layer of the compacted default int8 model: vst beside CMSIS-NN."""
    vst = _find(rows, model="default compacted", impl="vst", target=target, variant="int8")
    cm = _find(rows, model="default compacted", impl="CMSIS-NN", target=target)
    if vst is None:
        return ""
    body = []
    for k, layer in enumerate(vst["layers"]):
        other = cm["layers"][k] if cm and k < len(cm["layers"]) else {}
        body.append((layer["name"], f"{layer['macs']:,}", f"{layer['instructions']:,}",
                     f"{layer.get('instructions_per_mac', 0):.2f}",
                     f"{other['instructions']:,}" if other else "-",
                     f"{other['instructions_per_mac']:.2f}" if other else "-"))
    return markdown(("layer", "MACs", "vst instr", "vst instr/MAC", "CMSIS-NN instr",
                     "CMSIS-NN instr/MAC"), body)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--build-dir", help="a `vst build` output dir (its default model)")
    ap.add_argument("--targets", default="cortex-m4,cortex-m7")
    ap.add_argument("--epochs", type=int, default=5)
    args = ap.parse_args()
    data = load_dataset("mnist5k")
    targets = [load_target(t) for t in args.targets.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        rows = measure(_models(args, data, Path(tmp)), data, targets, Path(tmp))
    table = markdown(("model", "impl", "target", "variant", "kernels / storage", "MACs",
                      "instructions", "instr/MAC", "floor", "flash B", "RAM B", "exact"),
                     [(r["model"], r["impl"], r["target"], r["variant"],
                       f"{r['kernels']} / {r['storage']}", f"{r['macs']:,}",
                       f"{r['instructions']:,}", f"{r['per_mac']:.2f}",
                       f"{r['floor_per_mac']:.1f}", f"{r['flash_bytes'] or 0:,}",
                       f"{r['ram_bytes'] or 0:,}",
                       r["exact"] if isinstance(r["exact"], bool) else f"{r['exact']:.1e}")
                      for r in rows])
    parts = [table]
    for target in targets:
        parts += [f"\nPer layer, default compacted int8 on {target.name}:\n",
                  layer_table(rows, target.name),
                  f"\nAims on {target.name}:\n",
                  markdown(("aim", "target", "measured"), aims(rows, target.name))]
    write("mcu", {"machine": machine(), "counter": "QEMU -icount shift=0, instructions",
                  "source": args.build_dir or f"short training, {args.epochs} epochs",
                  "results": rows}, "\n".join(parts))


if __name__ == "__main__":
    main()
