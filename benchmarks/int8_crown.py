"""int8-crown against the interval form and the float CROWN certificate (issue 26).

On a built model (``--build-dir``: ``compact.vst`` and
``export/model_int8.tflite``), on the whole mnist5k test split, per eps:

- float CROWN (auto_LiRPA) on the compacted float model, at eps and at the
  eps of the int8 box (the quantized box is what the device sees: at eps 0.1
  on inputs k/255 the ends x +- 25.5/255 round to 26 steps, at 0.15 to 38);
- int8 as flashed: the interval / margin form (``--method int8``) and
  int8-crown (``--method int8-crown``), verified share and seconds per 1,000;
- an upper bound on what any sound int8 method can verify: PGD on the float
  model, each step's input quantized and run through the int8 reference
  (a misclassified or tied int8 output is a counterexample);
- what the rounding costs (a diagnostic, unsound): int8-crown with the
  rounding terms of the hidden layers' requantizations, then of all of them,
  set to 0;
- soundness: for every ``--every``-th sample, random and corner points of its
  box quantized as the firmware does, run through the integer reference of
  the generated C (``Int8Bounds.outputs``, bit-exact with the C and TFLite
  Micro in the tests) and, for every fifth of those samples, through TFLite
  Micro itself (asserted equal): no point below a claimed margin, no verified
  sample misclassified or tied.

Writes results/int8_crown.{json,md}. Run with ``nice -n 10 OMP_NUM_THREADS=1``.

    PYTHONPATH=. .venv/bin/python benchmarks/int8_crown.py --build-dir /work/defbuild
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, markdown, write  # noqa: E402

from toolchain.data import load_dataset  # noqa: E402
from toolchain.export.tflite import run_tflite  # noqa: E402
from toolchain.verify.int8_bounds import Int8Bounds  # noqa: E402
from toolchain.verify.int8_certificate import _first_argmax_is  # noqa: E402
from toolchain.verify.int8_crown import Int8Crown  # noqa: E402


def soundness(bounds, tflite, x, y, res, eps, every: int, points: int) -> dict:
    checked = below = wrong = tflm_checked = 0
    for k, i in enumerate(range(0, len(x), every)):
        q = bounds.sample_box(x[i], eps, points, seed=i).astype(np.int64)
        out = bounds.outputs(q)
        if k % 5 == 0:
            nhwc = q.astype(np.int8).reshape(-1, *bounds.x_t.shape[1:])
            tflm = run_tflite(tflite, np.moveaxis(nhwc, -1, 1), runtime="tflm")
            assert np.array_equal(tflm.astype(np.int64), out), i
            tflm_checked += len(q)
        margins = out[:, y[i]][:, None] - out
        others = np.arange(out.shape[1]) != y[i]
        below += int(np.any(margins[:, others] < res.margins[i][others]))
        if res.verified[i]:
            wrong += int(not _first_argmax_is(out, np.full(len(out), y[i])).all())
        checked += len(q)
    return {"points": checked, "tflm_points": tflm_checked, "samples": len(range(0, len(x), every)),
            "samples_below_a_claimed_margin": below, "verified_misclassified_or_tied": wrong}


def attack_upper(bounds, module, x, y, eps, todo) -> int:
    """How many samples of ``todo`` PGD (float gradients, int8 outputs) falsifies."""
    import torch

    found = 0
    rng = np.random.default_rng(0)
    for i in todo:
        x0 = torch.tensor(x[i:i + 1], dtype=torch.float64)
        lo, hi = torch.clamp(x0 - eps, 0, 1), torch.clamp(x0 + eps, 0, 1)
        hit = False
        for restart in range(4):
            xa = x0.clone() if restart == 0 else lo + (hi - lo) * torch.tensor(rng.random(x0.shape))
            for step in range(60):
                xa.requires_grad_(True)
                out = module(xa)[0]
                other = out.clone()
                other[y[i]] = -1e9
                grad, = torch.autograd.grad(other.max() - out[y[i]], xa)
                xa = torch.min(torch.max(xa.detach() + eps / 10 * grad.sign(), lo), hi)
                if step % 5 == 4:
                    q = bounds.quantize_box(xa.numpy().astype(np.float32), 0.0)[0]
                    if not _first_argmax_is(bounds.outputs(q), np.array([y[i]]))[0]:
                        hit = True
                        break
            if hit:
                break
        found += hit
    return found


def without_rounding(bounds, x, y, eps, ops) -> float:
    """int8-crown with the rounding terms of ``ops`` (indices) dropped: NOT a bound of
    the int8 network; it measures what those terms cost."""
    crown = Int8Crown(bounds)
    for k, form in crown.forms.items():
        if k in ops:
            form.e = np.zeros_like(form.e)
    return float(crown.verify(x, y, eps).verified.mean())


def main() -> None:
    import torch

    from toolchain.lirpa.bounds import Bounder
    from toolchain.models.modelfile import load_model

    ap = argparse.ArgumentParser()
    ap.add_argument("--build-dir", required=True)
    ap.add_argument("--eps", default="0.1,0.15")
    ap.add_argument("--every", type=int, default=10, help="soundness: every k-th sample")
    ap.add_argument("--points", type=int, default=200, help="soundness: points per box")
    args = ap.parse_args()
    build = Path(args.build_dir)
    tflite = build / "export" / "model_int8.tflite"
    data = load_dataset("mnist5k")
    x, y = data.x_test, data.y_test
    n = len(y)
    bounds = Int8Bounds.from_tflite(tflite)
    module = load_model(build / "compact.vst").torch_module().eval()
    bounder = Bounder(module, data.input_shape)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    rows, results = [], []
    for eps in (float(e) for e in args.eps.split(",")):
        lo, hi = bounds.quantize_box(x, eps)
        steps = int((hi - lo).max()) // 2
        eps_q = steps * float(bounds.x_t.scale)
        t0 = time.perf_counter()
        float_crown = bounder.count_verified(xt, yt, eps, "crown", 250) / n
        float_seconds = time.perf_counter() - t0
        float_crown_q = bounder.count_verified(xt, yt, eps_q, "crown", 250) / n
        t0 = time.perf_counter()
        interval = bounds.verify(x, y, eps)
        interval_seconds = time.perf_counter() - t0
        t0 = time.perf_counter()
        crown = Int8Crown(bounds).verify(x, y, eps)
        crown_seconds = time.perf_counter() - t0
        assert np.array_equal(crown.interval_verified, interval.verified)
        falsified = attack_upper(bounds, module.double(), x, y, eps,
                                 np.nonzero(~crown.verified)[0])
        module.float()
        hidden = set(range(len(bounds.ops))) - {bounds.out}
        free_hidden = without_rounding(bounds, x, y, eps, hidden)
        free_all = without_rounding(bounds, x, y, eps, set(range(len(bounds.ops))))
        sound = soundness(bounds, tflite, x, y, crown, eps, args.every, args.points)
        r = {"eps": eps, "int8_box_steps": steps, "eps_of_int8_box": eps_q,
             "float_crown": float_crown, "float_crown_seconds": float_seconds,
             "float_crown_at_int8_box": float_crown_q,
             "int8_interval": float(interval.verified.mean()),
             "int8_interval_seconds_per_1000": interval_seconds * 1000 / n,
             "int8_crown": float(crown.verified.mean()),
             "int8_crown_seconds_per_1000": crown_seconds * 1000 / n,
             "int8_crown_only": int(crown.verified.sum() - interval.verified.sum()),
             "int8_upper_bound_pgd": 1.0 - falsified / n, "soundness": sound,
             "unsound_diagnostic_no_hidden_rounding": free_hidden,
             "unsound_diagnostic_no_rounding": free_all}
        results.append(r)
        rows.append((f"{eps:g}", f"{float_crown:.1%}", f"{eps_q:.4f}: {float_crown_q:.1%}",
                     f"{r['int8_interval']:.1%}", f"{r['int8_crown']:.1%}",
                     f"{(r['int8_crown'] - float_crown) * 100:+.1f}",
                     f"{r['int8_upper_bound_pgd']:.1%}", f"{free_hidden:.1%} / {free_all:.1%}",
                     f"{r['int8_interval_seconds_per_1000']:.1f} / "
                     f"{r['int8_crown_seconds_per_1000']:.1f}",
                     f"{sound['points']:,} ({sound['tflm_points']:,} TFLM): "
                     f"{sound['samples_below_a_claimed_margin']} below, "
                     f"{sound['verified_misclassified_or_tied']} wrong"))
        print(rows[-1], flush=True)
    table = markdown(("eps", "float CROWN", "float CROWN at the int8 box's eps", "int8 interval",
                      "int8-crown", "int8-crown - float (points)", "int8 upper bound (PGD)",
                      "diagnostic, unsound: no hidden / no rounding terms",
                      "s / 1,000: interval / int8-crown", "soundness points"), rows)
    write("int8_crown", {"machine": machine(), "build_dir": str(build), "n": n,
                         "results": results}, table)


if __name__ == "__main__":
    main()
