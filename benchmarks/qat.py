"""Does quantization-aware certified fine-tuning raise the int8 certificate?

For a trained model: float CROWN-verified accuracy (auto_LiRPA) and int8
verified accuracy (exact integer bounds of the exported .tflite,
``toolchain.verify.int8_bounds``) at the test eps, before and after
``finetune_int8`` for a few epochs, on the whole mnist5k test split. Models:
the default build's compacted model (``--build-dir``) and, where the int8 gap
is wider, the same model verified at a larger eps. Writes results/qat.{json,md}.

    .venv/bin/python benchmarks/qat.py --build-dir build
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, markdown, write  # noqa: E402

from toolchain.data import load_dataset  # noqa: E402
from toolchain.export.tflite import export_tflite  # noqa: E402
from toolchain.models.modelfile import load_model  # noqa: E402
from toolchain.train.qat import finetune_int8  # noqa: E402
from toolchain.verify.int8_bounds import Int8Bounds  # noqa: E402


def scores(model, data, eps_list, work: Path) -> dict:
    import torch

    from toolchain.lirpa.bounds import Bounder

    tfl = export_tflite(model, work, data.x_train, name="m")
    bounds = Int8Bounds.from_tflite(tfl["int8"])
    module = model.torch_module().eval()
    bounder = Bounder(module, data.input_shape)
    x, y = torch.from_numpy(data.x_test), torch.from_numpy(data.y_test)
    out = {}
    for eps in eps_list:
        out[f"{eps:g}"] = {
            "float_crown": bounder.count_verified(x, y, eps, "crown", 250) / len(x),
            "int8": float(bounds.verify(data.x_test, data.y_test, eps).verified.mean())}
    with torch.no_grad():
        out["float_clean"] = float((module(x).argmax(1) == y).float().mean())
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--build-dir", required=True)
    ap.add_argument("--epochs", default="1,2,4")
    ap.add_argument("--eps", default="0.1,0.15")
    ap.add_argument("--lr", default="2e-4,5e-5", help="fine-tuning learning rates to try")
    args = ap.parse_args()
    data = load_dataset("mnist5k")
    eps_list = [float(e) for e in args.eps.split(",")]
    model = load_model(Path(args.build_dir) / "compact.vst")
    rows, results = [], []
    with tempfile.TemporaryDirectory() as tmp:
        base = scores(model, data, eps_list, Path(tmp) / "base")
        results.append({"epochs": 0, "seconds": 0.0, **base})
        results[0]["lr"] = 0.0
        for lr in (float(v) for v in args.lr.split(",")):
            for epochs in (int(e) for e in args.epochs.split(",")):
                t0 = time.perf_counter()
                tuned = finetune_int8(model, data, epochs=epochs, lr=lr)
                seconds = time.perf_counter() - t0
                results.append({"epochs": epochs, "lr": lr, "seconds": seconds,
                                **scores(tuned, data, eps_list, Path(tmp) / f"e{epochs}_{lr}")})
    for r in results:
        for eps in eps_list:
            s = r[f"{eps:g}"]
            rows.append((r["epochs"], f"{r['lr']:g}", f"{r['seconds']:.0f}", f"{eps:g}",
                         f"{r['float_clean']:.1%}", f"{s['float_crown']:.1%}", f"{s['int8']:.1%}",
                         f"{(s['int8'] - s['float_crown']) * 100:+.1f}"))
    table = markdown(("QAT epochs", "lr", "seconds", "eps", "float clean", "float CROWN-verified",
                      "int8 verified", "int8 - float (points)"), rows)
    write("qat", {"machine": machine(), "model": str(Path(args.build_dir) / "compact.vst"),
                  "results": results}, table)


if __name__ == "__main__":
    main()
