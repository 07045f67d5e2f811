"""Published board figures against the cycle model: MLPerf Tiny KWS and ResNet-8 on CMSIS-NN.

The MLPerf Tiny KWS reference model (DS-CNN, ``kws_ref_model``): input 49 x 10
x 1 (MFCC frames), Conv2D 64 filters 10 x 4 stride 2 SAME + BN + ReLU, four
blocks of DepthwiseConv2D 3 x 3 SAME + BN + ReLU and Conv2D 64 1 x 1 + BN +
ReLU, AveragePooling2D 25 x 5, Dense 12 (2,656,768 MACs). vst's IR has square
kernels only, so the shape is built here in Keras with seeded random weights
(speed does not depend on the values) and converted to a full-int8 .tflite
calibrated on random inputs; the final Softmax (12 values) is left out.
Its layers run through CMSIS-NN's s8 kernels in the side-by-side harness
(``cmsis_nn.py``, outputs checked against TFLite Micro) and the ELF on the
cycle model of ``cortex-m4`` (STM32L4R5 at 120 MHz, 5 flash wait states: the
NUCLEO-L4R5ZI of MLPerf Tiny's reference submissions).

The MLPerf Tiny image-classification ResNet-8 (32 x 32 x 3, 16/32/64
channels, identity shortcut in the first stage, 1 x 1 projections in the
others: vst's zoo ``resnet8`` is that shape) is built from vst's IR with
torch's seeded initial weights and exported by vst's own TFLite path.

The published figures they are compared with (``PUBLISHED``), both on the
NUCLEO-L4R5ZI (Cortex-M4) at 120 MHz: KWS, the MLPerf Tiny v0.5 reference
submission (TensorFlow Lite Micro 2.3.1), 181.9 ms per inference; ResNet-8,
microTVM with CMSIS-NN, about 3.7 cycles per MAC; both as quoted in vst
issue 24 (no network here to fetch the result tables). Writes
results/mlperf_tiny.{json,md}.

    VST_CMSIS_NN=/work/shared/third_party/CMSIS-NN nice -n 10 .venv/bin/python benchmarks/mlperf_tiny.py
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from cmsis_nn import run_cmsis_nn  # noqa: E402
from common import machine, markdown, write  # noqa: E402

from toolchain.targets import load_target  # noqa: E402

INPUT = (49, 10, 1)            # H, W, C: 49 MFCC frames of 10 coefficients
FILTERS, BLOCKS, CLASSES = 64, 4, 12
PUBLISHED_RESNET8 = {
    "cycles_per_mac": 3.7,
    "what": "MLPerf Tiny image classification (ResNet-8), microTVM with CMSIS-NN on the "
            "NUCLEO-L4R5ZI (Cortex-M4, 120 MHz): about 3.7 cycles per MAC",
    "source": "MLPerf Tiny results as quoted in vst issue 24 (a cycles-per-MAC figure "
              "derived from the published latency)",
    "other_figures": {"X-CUBE-AI, same board": "about 1.6 cycles per MAC"},
}
PUBLISHED = {
    "figure_ms": 181.9,
    "what": "MLPerf Tiny v0.5, keyword spotting (DS-CNN), reference submission: "
            "TensorFlow Lite Micro on the NUCLEO-L4R5ZI (Cortex-M4, 120 MHz), latency per "
            "inference",
    "source": "MLPerf Tiny v0.5 results (mlcommons.org, inference-tiny-05), as quoted in "
              "vst issue 24; the KWS reference was switched to CMSIS-NN kernels in "
              "mlcommons/tiny PR #85 (merged in June 2021), before the v0.5 publication",
    "other_figures_ms": {"X-CUBE-AI (STMicroelectronics), same board, as quoted in issue 24": 63.0},
}
AIM_ERROR = 0.20


def kws_keras(seed: int = 0):
    """The KWS reference DS-CNN shape in Keras with seeded random weights."""
    from toolchain.export.keras_build import tensorflow_quiet

    with tensorflow_quiet():
        import tensorflow as tf
    tf.keras.utils.set_random_seed(seed)
    layers = tf.keras.layers
    x = inputs = tf.keras.Input(INPUT, batch_size=1)
    x = layers.Conv2D(FILTERS, (10, 4), strides=(2, 2), padding="same")(x)
    x = layers.ReLU()(layers.BatchNormalization()(x))
    for _ in range(BLOCKS):
        x = layers.DepthwiseConv2D((3, 3), padding="same")(x)
        x = layers.ReLU()(layers.BatchNormalization()(x))
        x = layers.Conv2D(FILTERS, (1, 1), padding="same")(x)
        x = layers.ReLU()(layers.BatchNormalization()(x))
    x = layers.AveragePooling2D(pool_size=(25, 5))(x)
    x = layers.Dense(CLASSES)(layers.Reshape((FILTERS,))(x))
    model = tf.keras.Model(inputs, x)
    rng = np.random.default_rng(seed)
    for layer in model.layers:      # non-trivial BN statistics, so activations vary
        if isinstance(layer, layers.BatchNormalization):
            n = layer.gamma.shape[0]
            layer.set_weights([rng.uniform(0.5, 1.5, n).astype(np.float32),
                               rng.normal(0, 0.1, n).astype(np.float32),
                               rng.normal(0, 0.1, n).astype(np.float32),
                               rng.uniform(0.5, 2.0, n).astype(np.float32)])
    return model


def macs() -> int:
    """MACs of the shape: conv 25*5*64*40, per block 25*5*64*9 + 25*5*64*64, dense 64*12."""
    h, w = 25, 5
    return h * w * FILTERS * 40 + BLOCKS * (h * w * FILTERS * 9 + h * w * FILTERS * FILTERS) \
        + FILTERS * CLASSES


def kws_tflite(work: Path, seed: int = 0, count: int = 4) -> tuple[Path, np.ndarray]:
    """The int8 .tflite (calibrated on random inputs) and ``count`` int8 test inputs."""
    from toolchain.export.tflite import convert_int8, quant_params, quantize

    rng = np.random.default_rng(seed)
    calibration = rng.normal(0, 1, (32, *INPUT)).astype(np.float32)
    path = work / "kws_int8.tflite"
    work.mkdir(parents=True, exist_ok=True)
    path.write_bytes(convert_int8(kws_keras(seed), calibration))
    scale, zero = quant_params(path)["input"]
    q = quantize(rng.normal(0, 1, (count, *INPUT)).astype(np.float32), scale, zero)
    return path, q.reshape(count, -1)


def resnet8_tflite(work: Path, seed: int = 0, count: int = 2) -> tuple[Path, np.ndarray, int]:
    """MLPerf Tiny's ResNet-8 shape from vst's zoo with torch's seeded initial
    weights, exported by vst; the int8 .tflite, ``count`` int8 inputs, its MACs."""
    import torch

    from toolchain.export.tflite import export_tflite, quant_params, quantize
    from toolchain.models.modelfile import VstModel
    from toolchain.models.torch_build import build_torch
    from toolchain.models.zoo import build_network

    network = build_network("resnet8", (3, 32, 32), 10)
    torch.manual_seed(seed)
    model = VstModel(network, build_torch(network).state_dict())
    rng = np.random.default_rng(seed)
    paths = export_tflite(model, work, rng.uniform(0, 1, (64, 3, 32, 32)).astype(np.float32),
                          name="resnet8")
    scale, zero = quant_params(paths["int8"])["input"]
    x = rng.uniform(0, 1, (count, 32, 32, 3)).astype(np.float32)
    return paths["int8"], quantize(x, scale, zero).reshape(count, -1), network.macs()


def measure(work: Path, target_name: str, model: str) -> dict | None:
    if model == "kws":
        tflite, q_in = kws_tflite(work)
        n_macs = macs()
    else:
        tflite, q_in, n_macs = resnet8_tflite(work)
    res = run_cmsis_nn(tflite, q_in, target_name, work / "cmsis", cycles=True, timeout=600)
    if res is None:
        return None
    cyc = res["cycles"]
    ms = cyc["ms_per_inference"]
    row = {"model": model, "target": target_name, "macs": n_macs,
           "mismatches": res["mismatches"], "instructions": res["instructions_per_inference"],
           "cycles": cyc["cycles_per_inference"], "cycles_per_mac": cyc["cycles_per_mac"],
           "ms": ms, "uj": cyc["uj_per_inference"],
           "model_seconds": cyc["cycle_model"]["seconds"],
           "layers": [{k: r.get(k) for k in ("name", "kind", "macs", "cycles",
                                               "cycles_per_mac", "ms")}
                      for r in cyc["layers"]]}
    if model == "kws":
        row.update(published=f"{PUBLISHED['figure_ms']} ms",
                   error=ms / PUBLISHED["figure_ms"] - 1.0)
    else:
        row.update(published=f"{PUBLISHED_RESNET8['cycles_per_mac']} cyc/MAC",
                   error=cyc["cycles_per_mac"] / PUBLISHED_RESNET8["cycles_per_mac"] - 1.0)
    return row


NAMES = {"kws": "KWS DS-CNN (MLPerf Tiny shape)", "resnet8": "ResNet-8 (MLPerf Tiny shape)"}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--target", default="cortex-m4")
    ap.add_argument("--models", default="kws,resnet8")
    args = ap.parse_args(argv)
    target = load_target(args.target)
    with tempfile.TemporaryDirectory() as tmp:
        rows = [measure(Path(tmp) / m, target.name, m) for m in args.models.split(",")]
    rows = [r for r in rows if r is not None]
    if not rows:
        return
    clock = target.clock
    table = markdown(
        ("model", "MACs", "CMSIS-NN instr", "model cycles", "cyc/MAC",
         f"model ms @{clock.mhz:g} MHz ({clock.flash_wait_states} WS)", "published",
         "error", f"within {AIM_ERROR:.0%}", "exact vs TFLM", "model s"),
        [(NAMES[r["model"]], f"{r['macs']:,}", f"{r['instructions']:,}",
          f"{r['cycles']:,}", f"{r['cycles_per_mac']:.2f}", f"{r['ms']:.1f}",
          r["published"], f"{r['error']:+.0%}", abs(r["error"]) <= AIM_ERROR,
          r["mismatches"] == 0, f"{r['model_seconds']:.1f}") for r in rows])
    parts = [table, f"\nPublished: {PUBLISHED['what']}; {PUBLISHED['source']}.",
             f"{PUBLISHED_RESNET8['what']}; {PUBLISHED_RESNET8['source']}."]
    for r in rows:
        parts += [f"\nPer layer, {NAMES[r['model']]} (CMSIS-NN on the cycle model):\n",
                  markdown(("layer", "kind", "MACs", "cycles", "cyc/MAC", "ms"),
                           [(x["name"], x["kind"], f"{x['macs']:,}", f"{x['cycles']:,}",
                             f"{x['cycles_per_mac']:.2f}" if x.get("cycles_per_mac") else "-",
                             f"{x['ms']:.2f}") for x in r["layers"]])]
    write("mlperf_tiny", {"machine": machine(), "published": [PUBLISHED, PUBLISHED_RESNET8],
                          "target": target.name, "part": clock.part, "mhz": clock.mhz,
                          "wait_states": clock.flash_wait_states, "results": rows},
          "\n".join(parts))


if __name__ == "__main__":
    main()
