"""Graph models on the MCU: `vst build` of a resnet8 and a ds_cnn config end to end.

Each config (MLPerf Tiny's shapes on mnist5k: resnet8 16/32/64 channels, ds_cnn
64; dense training, so the benchmark measures the MLPerf shapes; a short
certified schedule) is built with `vst build --target cortex-m4`: training,
float certificate, compaction, ONNX / TFLite / C export, the int8 certificate
and the QEMU run of the int8 and float C with per-operator instruction counts.
Then, from the build's own files:

- the same int8 C on cortex-m7 (``bench_model``),
- the same int8 layers through CMSIS-NN's s8 kernels on cortex-m4 (``cmsis_nn.py``:
  ``arm_convolve_wrapper_s8``, ``arm_depthwise_conv_wrapper_s8``, ``arm_avgpool_s8``,
  ``arm_elementwise_add_s8``, ``arm_fully_connected_s8``; outputs checked against
  TFLite Micro),
- the arena beside TFLite Micro's ``arena_used_bytes``, flash, and the int8
  certificate beside the float CROWN certificate.

Writes results/graph_mcu.{json,md}. One build at a time (2 shared cores):

    nice -n 10 .venv/bin/python benchmarks/graph_mcu.py --work /tmp/graph_mcu
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from cmsis_nn import read_golden_inputs, run_cmsis_nn  # noqa: E402
from common import machine, markdown, write  # noqa: E402

from toolchain.bench import bench_model  # noqa: E402
from toolchain.targets import load_target  # noqa: E402

CONFIGS = {
    "resnet8": '[model]\narch = "resnet8"\n',
    "ds_cnn": '[model]\narch = "ds_cnn"\n',
}
COMMON = ('[data]\ndataset = "mnist5k"\n[sparsity]\nmethod = "dense"\ndensity = 1.0\n'
          '[train]\nepochs = {epochs}\nwarmup_epochs = 1\nramp_epochs = {ramp}\neps = 0.05\n'
          'threads = {threads}\n[verify]\neps = 0.02\nn = {n}\n[export]\nvnnlib_n = 4\n'
          '[target]\nname = "cortex-m4"\n')


def run_build(name: str, work: Path, args) -> dict:
    """`vst build` of one config (kept when its summary exists); its summary."""
    out = work / name
    if not (out / "summary.json").is_file():
        config = work / f"{name}.toml"
        config.write_text(CONFIGS[name] + COMMON.format(epochs=args.epochs,
                                                        ramp=max(1, args.epochs // 2),
                                                        threads=args.threads, n=args.n))
        res = subprocess.run([sys.executable, "-m", "toolchain", "build", "--config",
                              str(config), "--out", str(out)], capture_output=True, text=True)
        if res.returncode != 0:
            raise SystemExit(f"vst build {name} failed: {res.stderr.strip()}")
    return json.loads((out / "summary.json").read_text())


def measure(name: str, work: Path, summary: dict) -> dict:
    out = work / name
    c_dir, tflite = out / "export" / "c", out / summary["export"]["tflite_int8"]
    m4 = summary["target"]["variants"]["int8"]
    m7 = bench_model(c_dir, "model", load_target("cortex-m7"), out / "bench_m7",
                     variants=("int8",))["int8"]
    q_in, expected = read_golden_inputs(c_dir / "model_golden.h")
    cmsis = run_cmsis_nn(tflite, q_in, "cortex-m4", out / "cmsis_nn", expected=expected)
    macs = sum(layer["macs"] for layer in m4["layers"])
    c_int8 = summary["export"]["c"]["int8"]
    return {
        "model": name, "macs": macs,
        "vst_m4": {"instructions": m4["instructions_per_inference"],
                   "per_mac": m4["instructions_per_inference"] / macs,
                   "exact": m4["int8_max_abs_diff_q"] == 0, "flash_bytes": m4["flash_bytes"],
                   "ram_bytes": m4["ram_bytes"], "layers": m4["layers"]},
        "vst_m7": {"instructions": m7["instructions_per_inference"],
                   "per_mac": m7["instructions_per_inference"] / macs,
                   "exact": m7["int8_max_abs_diff_q"] == 0, "layers": m7["layers"]},
        "cmsis_m4": None if cmsis is None else {
            "instructions": cmsis["instructions_per_inference"],
            "per_mac": cmsis["instructions_per_inference"] / macs,
            "exact": cmsis["mismatches"] == 0, "flash_bytes": cmsis["probe_flash_bytes"],
            "ram_bytes": cmsis["probe_ram_bytes"], "layers": cmsis["layers"]},
        "arena": {"vst_bytes": c_int8["arena_bytes"],
                  "vst_activation_bytes": c_int8["activation_bytes"],
                  "tflm": c_int8["tflm_arena"]},
        "weight_bytes": c_int8["weight_bytes"],
        "certificate": {"eps": summary["eps"], "float_crown": summary["compact"]["verified_acc"],
                        "int8": summary["verify"]["int8_verified_acc"],
                        "clean_float": summary["train"]["clean_acc"],
                        "int8_acc": summary["export"]["int8_acc"]},
        "train_seconds": summary["train"]["seconds"],
    }


def _per_mac(row: dict) -> str:
    return f"{row['instructions_per_mac']:.2f}" if row.get("macs") else "-"


def layer_table(row: dict) -> str:
    cm = (row["cmsis_m4"] or {}).get("layers") or []
    m7 = row["vst_m7"]["layers"]
    body = []
    for k, layer in enumerate(row["vst_m4"]["layers"]):
        other = cm[k] if k < len(cm) else {}
        body.append((layer["name"], layer["kind"], f"{layer['macs']:,}",
                     f"{layer['instructions']:,}", _per_mac(layer),
                     f"{other['instructions']:,}" if other else "-",
                     _per_mac(other) if other else "-",
                     f"{m7[k]['instructions']:,}" if k < len(m7) else "-"))
    return markdown(("layer", "kind", "MACs", "vst M4 instr", "vst instr/MAC",
                     "CMSIS-NN M4 instr", "CMSIS-NN instr/MAC", "vst M7 instr"), body)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--work", default="build/graph_mcu")
    ap.add_argument("--models", default="resnet8,ds_cnn")
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--n", type=int, default=200, help="test samples certified")
    args = ap.parse_args()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    rows = [measure(name, work, run_build(name, work, args)) for name in args.models.split(",")]
    table = markdown(
        ("model", "MACs", "vst M4 instr/MAC", "CMSIS-NN M4 instr/MAC", "vst M7 instr/MAC",
         "exact (vst, CMSIS-NN)", "arena vst / TFLM used (head)", "flash B vst / CMSIS-NN",
         "float CROWN / int8 certified"),
        [(r["model"], f"{r['macs']:,}", f"{r['vst_m4']['per_mac']:.2f}",
          f"{r['cmsis_m4']['per_mac']:.2f}" if r["cmsis_m4"] else "-",
          f"{r['vst_m7']['per_mac']:.2f}",
          f"{r['vst_m4']['exact']}, {r['cmsis_m4']['exact'] if r['cmsis_m4'] else '-'}",
          f"{r['arena']['vst_bytes']:,} / {r['arena']['tflm']['total']:,} "
          f"({r['arena']['tflm']['head']:,})",
          f"{r['vst_m4']['flash_bytes']:,} / "
          f"{r['cmsis_m4']['flash_bytes'] if r['cmsis_m4'] else 0:,}",
          f"{r['certificate']['float_crown']:.1%} / {r['certificate']['int8']:.1%} "
          f"(eps {r['certificate']['eps']})") for r in rows])
    parts = [table]
    for r in rows:
        parts += [f"\nPer layer, {r['model']} int8:\n", layer_table(r)]
    write("graph_mcu", {"machine": machine(), "counter": "QEMU -icount shift=0, instructions",
                        "source": f"vst build, dense, {args.epochs} epochs", "results": rows},
          "\n".join(parts))


if __name__ == "__main__":
    main()
