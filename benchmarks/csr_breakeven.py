"""The CSR vs dense break-even density in cycles (issue 24, item 5), on the cycle model.

A network with the default model's second convolution and first fully
connected layer (input 9 x 14 x 14, Conv2d 9 -> 17 kernel 4 stride 2 pad 1,
ReLU, Flatten, Linear 833 -> 56, ReLU, Linear 56 -> 10) gets seeded random
unstructured masks at each density of a sweep on the conv and the first FC
layer; its C is generated with dense and with CSR weights (float and int8),
and each firmware runs on the target's cycle model (cortex-m4: STM32L4R5,
120 MHz, 5 flash wait states). Per layer the CSR / dense cycle ratio; the
break-even is where it crosses 1 (linear between the two densities around
it). ``toolchain/export/c/int8_gen.py`` and ``float_gen.py`` take CSR below
these densities (``SPARSE_BELOW``). Writes results/csr_breakeven.{json,md}.

    nice -n 10 .venv/bin/python benchmarks/csr_breakeven.py
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, markdown, write  # noqa: E402

from toolchain.bench import bench_model  # noqa: E402
from toolchain.targets import load_target  # noqa: E402

DENSITIES = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7)
SWEPT = {0: "conv", 4: "fc"}   # layer index in NETWORK -> kind (the last FC stays dense)
KINDS = {"int8": {"conv": "conv", "fc": "fc"}, "float": {"conv": "conv", "fc": "dense"}}


def network():
    from toolchain.models import layers as L

    return L.Network((9, 14, 14), (L.Conv2d(9, 17, 4, 2, 1), L.ReLU(), L.Flatten(),
                                   L.Linear(17 * 7 * 7, 56), L.ReLU(), L.Linear(56, 10)))


def _state(net, density: float, seed: int) -> dict:
    import torch

    from toolchain.models.torch_build import build_torch

    torch.manual_seed(seed)
    state = build_torch(net).state_dict()
    gen = torch.Generator().manual_seed(seed + 1)
    for index in (0, 3):
        w = state[f"{index}.weight"]
        w.mul_((torch.rand(w.shape, generator=gen) < density).float())
    return state


def measure(density: float, target, work: Path, seed: int = 0) -> dict:
    """Per variant and swept layer: dense and CSR cycles at ``density``."""
    from toolchain.export.c import generate_c
    from toolchain.export.tflite import export_tflite
    from toolchain.models.modelfile import VstModel

    net = network()
    model = VstModel(net, _state(net, density, seed))
    rng = np.random.default_rng(seed)
    x = rng.uniform(0, 1, (64, *net.input_shape)).astype(np.float32)
    tfl = export_tflite(model, work, x, name="m")
    out = {"density": density}
    for storage in ("dense", "sparse"):
        c_dir = work / f"c_{storage}"
        generate_c(net, model.state, c_dir, name="m", tflite_int8=tfl["int8"],
                   golden_x=x[:2], storage=storage, kernels=target.int8_kernels)
        res = bench_model(c_dir, "m", target, work / f"bench_{storage}")
        for variant in ("float", "int8"):
            weighted = [layer for layer in res[variant]["layers"] if layer.get("macs")]
            for layer, kind in zip(weighted, ("conv", "fc")):
                key = f"{variant}_{kind}"
                out.setdefault(key, {})[storage] = layer["cycles"]
                out[key]["measured_density"] = layer.get("density")
                if variant == "int8":
                    out[key][f"{storage}_exact"] = res[variant]["int8_max_abs_diff_q"] == 0
    for key in [k for k in out if k != "density"]:
        out[key]["ratio"] = out[key]["sparse"] / out[key]["dense"]
    return out


def break_even(rows: list[dict], key: str) -> float | None:
    """The density where CSR / dense cycles crosses 1 (linear between the two
    sweep points around it); None if CSR wins or loses over the whole sweep."""
    points = [(r["density"], r[key]["ratio"]) for r in rows]
    for (d0, r0), (d1, r1) in zip(points, points[1:]):
        if r0 < 1.0 <= r1:
            return d0 + (1.0 - r0) * (d1 - d0) / (r1 - r0)
    return None


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--target", default="cortex-m4")
    args = ap.parse_args(argv)
    target = load_target(args.target)
    with tempfile.TemporaryDirectory() as tmp:
        rows = [measure(d, target, Path(tmp) / f"d{d}") for d in DENSITIES]
    keys = [f"{v}_{k}" for v in ("int8", "float") for k in ("conv", "fc")]
    even = {key: break_even(rows, key) for key in keys}
    table = markdown(("density", *(f"{k} CSR/dense cycles" for k in keys)),
                     [(f"{r['density']:.1f}", *(
                         f"{r[k]['ratio']:.2f} ({r[k]['sparse']:,} / {r[k]['dense']:,})"
                         for k in keys)) for r in rows])
    summary = markdown(("layer", "break-even density (cycles)"),
                       [(k, f"{v:.2f}" if v is not None else "none in sweep")
                        for k, v in even.items()])
    write("csr_breakeven", {"machine": machine(), "target": target.name,
                            "clock": {"part": target.clock.part, "mhz": target.clock.mhz,
                                      "wait_states": target.clock.flash_wait_states},
                            "break_even": even, "results": rows},
          f"CSR / dense cycles per layer on {target.name} ({target.clock.part}, "
          f"{target.clock.flash_wait_states} WS), cycle model:\n\n{table}\n\n{summary}")


if __name__ == "__main__":
    main()
