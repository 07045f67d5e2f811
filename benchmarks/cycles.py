"""Cycles per layer and per inference on the cycle model: vst's int8 C beside CMSIS-NN.

The trained default model of a `vst build` (its ``compact.vst`` and
``export/model_int8.tflite``; not retrained) is generated again as int8 C with
the current generator and run, on each target, as vst's self-test firmware and
as the CMSIS-NN harness (``cmsis_nn.py``: the same layers, each one CMSIS-NN
s8 call, outputs checked against TFLite Micro). Both ELFs run in QEMU
(instructions, exact outputs) and on the cycle model (``toolchain.cycles``:
cycles per layer and per inference, cycles per MAC, ms at the target's clock,
uJ, the model's own seconds); on cortex-m4 also with 0 flash wait states,
and with each layer's cycles by cause (instruction class, branch refill,
flash wait states) to see where they go. Writes results/cycles.{json,md}
and results/cycles.png (cycles per layer, vst vs CMSIS-NN).

    VST_CMSIS_NN=/work/shared/third_party/CMSIS-NN nice -n 10 \\
        .venv/bin/python benchmarks/cycles.py --build-dir /work/defbuild
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from cmsis_nn import cycle_numbers, read_golden_inputs, run_cmsis_nn  # noqa: E402
from common import RESULTS, machine, markdown, write  # noqa: E402

from toolchain.bench import bench_model  # noqa: E402
from toolchain.targets import load_target  # noqa: E402

AIMS = {"cycles_per_mac": 2.0, "fewer_than_cmsis": 1.8, "model_seconds": 30.0}


def generate(build_dir: Path, work: Path, kernels: str) -> Path:
    """The build's compacted model as int8 C from the current generator, with
    the build's golden inputs; the C folder."""
    from toolchain.export.c import generate_c
    from toolchain.models.modelfile import load_model

    model = load_model(build_dir / "compact.vst")
    c_dir = work / f"c_{kernels}"
    q_in, _ = read_golden_inputs(build_dir / "export" / "c" / "model_golden.h")
    golden_x = _golden_float(build_dir, len(q_in))
    generate_c(model.network, model.state, c_dir, name="model",
               tflite_int8=build_dir / "export" / "model_int8.tflite", golden_x=golden_x,
               kernels=kernels)
    return c_dir


def _golden_float(build_dir: Path, count: int):
    """The float test inputs of the build's golden vectors: the first ``count``
    test samples of its data set (as ``vst export`` takes them)."""
    import json

    from toolchain.config import config_from_dict
    from toolchain.data import load_data

    summary = json.loads((build_dir / "summary.json").read_text())
    data = load_data(config_from_dict(summary.get("config", {})))
    return data.x_test[:count]


def _zero_wait(target):
    clock = dataclasses.replace(target.clock, flash_wait_states=0)
    return dataclasses.replace(target, clock=clock)


def measure(build_dir: Path, target_name: str, work: Path, detail: bool) -> dict:
    target = load_target(target_name)
    c_dir = generate(build_dir, work, target.int8_kernels)
    t0 = time.perf_counter()
    vst = bench_model(c_dir, "model", target, work / f"vst_{target.name}",
                      variants=("int8",))["int8"]
    vst["bench_seconds"] = time.perf_counter() - t0
    q_in, expected = read_golden_inputs(c_dir / "model_golden.h")
    cm = run_cmsis_nn(build_dir / "export" / "model_int8.tflite", q_in, target.name,
                      work / "cmsis", expected=expected, cycles=True, profile=detail)
    row = {"target": target.name, "part": target.clock.part, "mhz": target.clock.mhz,
           "wait_states": target.clock.flash_wait_states, "macs": sum(
               layer["macs"] for layer in vst["layers"]), "vst": vst, "cmsis_nn": cm}
    if detail:
        rows = [{k: layer[k] for k in ("name", "kind", "macs")} for layer in vst["layers"]]
        row["vst_profile"] = cycle_numbers(vst["elf"], target, rows, profile=True)
        row["vst_zero_wait"] = cycle_numbers(vst["elf"], _zero_wait(target), rows)
        if cm is not None:
            row["cmsis_zero_wait"] = cycle_numbers(cm["elf"], _zero_wait(target), cm["layers"])
    return row


def aims(row: dict) -> list[tuple]:
    vst, cm = row["vst"], (row["cmsis_nn"] or {}).get("cycles")
    out = [("int8 cycles per MAC", f"<= {AIMS['cycles_per_mac']}",
            f"{vst['cycles_per_mac']:.2f}", vst["cycles_per_mac"] <= AIMS["cycles_per_mac"])]
    if cm:
        ratio = cm["cycles_per_inference"] / vst["cycles_per_inference"]
        out.append(("CMSIS-NN cycles / vst cycles", f">= {AIMS['fewer_than_cmsis']}",
                     f"{ratio:.2f}", ratio >= AIMS["fewer_than_cmsis"]))
        slower = [a["name"] for a, b in zip(vst["layers"], cm["layers"])
                  if a["cycles"] > b["cycles"]]
        out.append(("layers slower than CMSIS-NN in cycles", "none",
                    ", ".join(slower) or "none", not slower))
    seconds = vst["cycle_model"]["seconds"]
    out.append(("modelling one firmware (s)", f"<= {AIMS['model_seconds']:.0f}",
                f"{seconds:.1f}", seconds <= AIMS["model_seconds"]))
    return out


def layer_table(row: dict) -> str:
    vst, cm = row["vst"], (row["cmsis_nn"] or {}).get("cycles") or {}
    cm_layers = cm.get("layers") or []
    body = []
    layers = [*vst["layers"], {"name": "**inference**", "kind": "", "macs": row["macs"],
                               "cycles": vst["cycles_per_inference"],
                               "instructions": vst["instructions_per_inference"],
                               "ms": vst["ms_per_inference"], "uj": vst["uj_per_inference"]}]
    others = [*cm_layers, {"cycles": cm.get("cycles_per_inference"),
                           "instructions_model": cm.get("instructions_per_inference_model"),
                           "ms": cm.get("ms_per_inference")}] if cm else []
    for k, a in enumerate(layers):
        b = others[k] if k < len(others) else {}
        cells = [a["name"], a["kind"], f"{a['macs']:,}", f"{a['instructions']:,}",
                 f"{a['cycles']:,}", f"{a['cycles'] / a['macs']:.2f}", f"{a['ms']:.3f}",
                 f"{a['uj']:.1f}"]
        if b.get("cycles"):
            cells += [f"{b['instructions_model']:,}", f"{b['cycles']:,}",
                      f"{b['cycles'] / a['macs']:.2f}", f"{b['ms']:.3f}",
                      f"{b['cycles'] / a['cycles']:.2f}"]
        else:
            cells += ["-"] * 5
        body.append(cells)
    return markdown(("layer", "kind", "MACs", "vst instr", "vst cycles", "vst cyc/MAC",
                     "vst ms", "vst uJ", "CMSIS-NN instr", "CMSIS-NN cycles",
                     "CMSIS-NN cyc/MAC", "CMSIS-NN ms", "CMSIS-NN / vst"), body)


CAUSES = ("alu", "load", "load_double", "store", "dsp_mul", "branch", "branch_refill",
          "data_wait", "fetch_wait")


def cause_table(row: dict) -> str:
    """Each layer's cycles by cause, vst and CMSIS-NN (profiled last inference)."""
    body = []
    for impl, numbers in (("vst", row.get("vst_profile")),
                          ("CMSIS-NN", (row.get("cmsis_nn") or {}).get("cycles"))):
        for layer in (numbers or {}).get("layers", []):
            parts = layer.get("breakdown") or {}
            other = sum(v for k, v in parts.items() if k not in CAUSES)
            body.append([impl, layer["name"], f"{sum(parts.values()):,}",
                         *(f"{parts.get(k, 0):,}" for k in CAUSES), f"{other:,}"])
    return markdown(("impl", "layer", "cycles", *CAUSES, "other"), body)


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    fig, axes = plt.subplots(1, len(rows), figsize=(4.5 * len(rows), 3.6), squeeze=False)
    for ax, row in zip(axes[0], rows):
        names = [layer["name"] for layer in row["vst"]["layers"]]
        x = np.arange(len(names))
        ax.bar(x - 0.2, [layer["cycles"] for layer in row["vst"]["layers"]], 0.4, label="vst")
        cm = (row["cmsis_nn"] or {}).get("cycles")
        if cm:
            ax.bar(x + 0.2, [layer["cycles"] for layer in cm["layers"]], 0.4, label="CMSIS-NN")
        ax.set_xticks(x, names, rotation=30, ha="right", fontsize=8)
        ax.set_title(f"{row['target']} ({row['part']}, {row['mhz']:g} MHz, "
                     f"{row['wait_states']} WS)", fontsize=9)
        ax.set_ylabel("cycles per inference (cycle model)")
        ax.legend(fontsize=8)
    fig.tight_layout()
    RESULTS.mkdir(exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def summary_table(rows: list[dict]) -> str:
    body = []
    for r in rows:
        v, cm = r["vst"], (r["cmsis_nn"] or {}).get("cycles") or {}
        zero = r.get("vst_zero_wait")
        body.append((r["target"], f"{r['part']} {r['mhz']:g} MHz, {r['wait_states']} WS",
                     f"{r['macs']:,}", f"{v['cycles_per_inference']:,}",
                     f"{v['cycles_per_mac']:.2f}",
                     f"{zero['cycles_per_mac']:.2f}" if zero else "-",
                     f"{v['ms_per_inference']:.2f}", f"{v['uj_per_inference']:.0f}",
                     f"{cm['cycles_per_inference']:,}" if cm else "-",
                     f"{cm['cycles_per_mac']:.2f}" if cm else "-",
                     f"{cm['ms_per_inference']:.2f}" if cm else "-",
                     f"{cm['cycles_per_inference'] / v['cycles_per_inference']:.2f}" if cm
                     else "-",
                     f"{v['int8_max_abs_diff_q'] == 0}, "
                     f"{r['cmsis_nn']['mismatches'] == 0 if r['cmsis_nn'] else '-'}",
                     f"{v['cycle_model']['seconds']:.1f}"))
    return markdown(("target", "clock", "MACs", "vst cycles", "vst cyc/MAC",
                     "vst cyc/MAC 0 WS", "vst ms", "vst uJ", "CMSIS-NN cycles",
                     "CMSIS-NN cyc/MAC", "CMSIS-NN ms", "CMSIS-NN / vst",
                     "exact (vst, CMSIS-NN)", "model s"), body)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--build-dir", required=True, help="a `vst build` folder (default config)")
    ap.add_argument("--targets", default="cortex-m4,cortex-m7,cortex-m33")
    ap.add_argument("--name", default="cycles", help="results/NAME.{json,md,png}")
    args = ap.parse_args(argv)
    build_dir = Path(args.build_dir)
    with tempfile.TemporaryDirectory() as tmp:
        rows = [measure(build_dir, t, Path(tmp) / t, detail=(k == 0))
                for k, t in enumerate(args.targets.split(","))]
    plot(rows, RESULTS / f"{args.name}.png")
    parts = [summary_table(rows)]
    for r in rows:
        parts += [f"\nPer layer on {r['target']}:\n", layer_table(r)]
    parts += [f"\nCycles by cause per layer on {rows[0]['target']} (last inference):\n",
              cause_table(rows[0]),
              f"\nAims on {rows[0]['target']}:\n",
              markdown(("aim", "target", "measured", "met"), aims(rows[0]))]
    for r in rows:
        for key in ("vst", "cmsis_nn"):
            if r.get(key):
                r[key].pop("outputs", None)
    write(args.name, {"machine": machine(), "source": str(build_dir),
                      "counter": "cycles: toolchain.cycles model; instructions: QEMU -icount",
                      "results": rows}, "\n".join(parts))


if __name__ == "__main__":
    main()
