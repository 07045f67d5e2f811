"""Complete verification: what it settles of what the incomplete cascade leaves open.

Models: an mlp 2x256 and cnn_small trained naturally (cross-entropy only, no
certified training) on mnist5k, and the default build's model, masked
(``BUILD/train/model.vst``) and compacted (``BUILD/compact.vst``); without a
build, a stand-in is trained (short certified schedule, structured 0.3) and
the table says so. Per model, on the first ``--n`` test samples at its eps:

1. the incomplete cascade (IBP, CROWN, PGD, alpha-CROWN: ``--method all``
   before issue 14) and its ``unknown`` samples;
2. ``complete.decide`` on each of them (at most ``--max-instances``, in index
   order) with ``--timeout`` seconds: settled fraction, verdicts, seconds per
   instance, instances per minute;
3. zero disagreements: every verified instance is attacked by a strong PGD
   (200 steps, 20 restarts); masked and compacted must not disagree.

Time is this process's CPU time (``decide(clock=time.process_time)``): the
budget is 60 s of one core whatever else the machine runs (wall time is
recorded too). Writes results/verify_complete.{json,md}, after every model.

    .venv/bin/python benchmarks/verify_complete.py [--n 100] [--max-instances 15]
        [--timeout 60] [--build build] [--full]     # --full: n=1000, no cap
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, markdown, train_natural, write  # noqa: E402

import torch  # noqa: E402

from toolchain.data import load_dataset  # noqa: E402
from toolchain.epsbox import eps_box  # noqa: E402
from toolchain.lirpa.bounds import Bounder  # noqa: E402
from toolchain.verify.attack import AttackConfig, pgd  # noqa: E402
from toolchain.verify.complete import classification_spec, decide  # noqa: E402
from toolchain.verify.engine import verify_samples  # noqa: E402

# eps per naturally trained net: where CROWN leaves many samples open but the
# nets are not simply broken by PGD everywhere (picked on the first 100 samples)
NATURAL = {"mlp 2x256 (natural)": ("mlp", 0.03), "cnn_small (natural)": ("cnn_small", 0.05)}
INCOMPLETE = ("ibp", "crown", "alpha-crown")      # the cascade's steps before "complete"


def natural(arch: str, data, epochs: int, seed: int = 0):
    """A zoo network trained with plain cross-entropy (``common.train_natural``)."""
    from toolchain.models.zoo import build_network

    return train_natural(build_network(arch, data.input_shape, 10), data, epochs, seed)


def build_models(build: Path, data):
    """(masked, compacted, eps, note) of the default build, or of a stand-in."""
    from toolchain.compact import compact
    from toolchain.models.modelfile import load_model

    masked, small = build / "train" / "model.vst", build / "compact.vst"
    if masked.is_file() and small.is_file():
        m = load_model(masked)
        eps = float(m.record.get("config", {}).get("verify", {}).get("eps", 0.1))
        return m, load_model(small), eps, f"default build ({build})"
    from toolchain.config import config_from_dict
    from toolchain.train.trainer import train

    with tempfile.TemporaryDirectory() as tmp:
        cfg = config_from_dict({"train": {"epochs": 8, "warmup_epochs": 1, "ramp_epochs": 4}})
        m = train(cfg, Path(tmp) / "standin", show_progress=False)
    return m, compact(m)[0], 0.1, "stand-in: no build found; default config, 8 epochs"


def cascade_unknowns(model, data, eps: float, n: int):
    """The incomplete cascade on the first n test samples: counts and unknown indices."""
    module = model.torch_module().eval()
    bounder = Bounder(module, data.input_shape)
    x, y = torch.from_numpy(data.x_test[:n]), torch.from_numpy(data.y_test[:n])
    t0 = time.perf_counter()
    res = verify_samples(module, bounder, x, y, eps, "all", steps=INCOMPLETE)
    seconds = time.perf_counter() - t0
    crown_open = sum(s.method not in ("clean", "ibp", "crown") for s in res.samples)
    unknown = [s.index for s in res.samples if s.verdict == "unknown"]
    return {"n": n, "clean": n - sum(s.method == "clean" for s in res.samples),
            "verified": res.count("verified"), "falsified": res.count("falsified"),
            "open_after_crown": crown_open, "unknown": len(unknown),
            "cascade_seconds": seconds}, unknown


def run_complete(model, data, eps: float, indices, timeout: float) -> list[dict]:
    """``decide`` on each sample's property; a strong PGD on every verified one."""
    module = model.torch_module().eval()
    bounder = Bounder(module, data.input_shape)
    out = []
    for i in indices:
        x = torch.from_numpy(data.x_test[i])
        y = int(data.y_test[i])
        wall = time.perf_counter()
        lower, upper = eps_box(x, eps)
        d = decide(module, data.input_shape, lower.numpy(), upper.numpy(),
                   classification_spec(y, 10), timeout=timeout, seed=i, bounder=bounder,
                   clock=time.process_time)
        wall = time.perf_counter() - wall
        broken = False
        if d.status == "verified":
            found, _ = pgd(module, x[None], torch.tensor([y]), eps,
                           AttackConfig(steps=200, restarts=20, seed=1))
            broken = bool(found.any())
        out.append({"index": i, "status": d.status, "procedure": d.procedure,
                    "seconds": d.seconds, "wall_seconds": wall, "reason": d.reason,
                    "pgd_breaks_verified": broken})
        print(f"  sample {i}: {d.status} by {d.procedure} in {d.seconds:.1f} CPU s "
              f"({wall:.0f} s wall) {d.reason}", flush=True)
    return out


def summarize(runs: list[dict], timeout: float) -> dict:
    settled = [r for r in runs if r["status"] != "unknown" and r["seconds"] <= timeout + 1]
    secs = [r["seconds"] for r in runs]
    return {
        "instances": len(runs), "settled": len(settled),
        "settled_fraction": len(settled) / max(1, len(runs)),
        "verified": sum(r["status"] == "verified" for r in runs),
        "falsified": sum(r["status"] == "falsified" for r in runs),
        "by": {p: sum(r["procedure"] == p for r in runs) for p in
               sorted({r["procedure"] for r in runs})},
        "median_seconds": statistics.median(secs) if secs else 0.0,
        "mean_seconds": statistics.mean(secs) if secs else 0.0,
        "max_seconds": max(secs, default=0.0),
        "instances_per_minute": 60.0 * len(runs) / max(1e-9, sum(secs)),
        "disagreements": sum(r["pgd_breaks_verified"] for r in runs),
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=100, help="first N test samples")
    ap.add_argument("--n-build", type=int, default=300,
                    help="first N test samples for the build's (certified) model, which "
                         "leaves about 1 in 100 open")
    ap.add_argument("--max-instances", type=int, default=15,
                    help="cap on cascade-unknown instances per model (0: all)")
    ap.add_argument("--timeout", type=float, default=60.0)
    ap.add_argument("--epochs", type=int, default=5, help="natural training epochs")
    ap.add_argument("--build", type=Path, default=Path("build"))
    ap.add_argument("--build-eps", type=float, default=0.15,
                    help="a second eps for the build's model (its own is the first)")
    ap.add_argument("--full", action="store_true", help="n=1000 and no cap")
    args = ap.parse_args()
    if args.full:
        args.n, args.n_build, args.max_instances = 1000, 1000, 0
    torch.set_num_threads(1)
    data = load_dataset("mnist5k")
    masked, small, eps, note = build_models(args.build, data)
    models = {}
    for e in (eps, args.build_eps):     # its own eps, and one where CROWN leaves more open
        models[f"default build, masked, eps {e:g}"] = (masked, e, None)
        models[f"default build, compacted, eps {e:g}"] = (small, e,
                                                          f"default build, masked, eps {e:g}")
    for label, (arch, eps) in NATURAL.items():
        models[label] = (natural(arch, data, args.epochs), eps, None)
    results, rows = {}, []
    for label, (model, eps, same_as) in models.items():
        print(f"{label}: eps={eps:g}", flush=True)
        if same_as is None:
            n = args.n_build if label.startswith("default build") else args.n
            counts, unknown = cascade_unknowns(model, data, eps, n)
            instances = unknown[: args.max_instances or None]
        else:   # the same instances as the masked twin (the same function)
            counts, instances = results[same_as]["cascade"], results[same_as]["instances"]
        runs = run_complete(model, data, eps, instances, args.timeout)
        summary = summarize(runs, args.timeout)
        results[label] = {"eps": eps, "params": model.network.param_count(),
                          "cascade": counts, "instances": instances, "runs": runs,
                          "summary": summary}
        s = summary
        rows.append((label, model.network.param_count(), f"{eps:g}", counts["n"],
                     counts["open_after_crown"], counts["unknown"], s["instances"],
                     f"{s['settled']} ({s['settled_fraction']:.0%})",
                     f"{s['verified']} / {s['falsified']}",
                     f"{s['median_seconds']:.1f} / {s['max_seconds']:.1f}",
                     f"{s['instances_per_minute']:.1f}", s["disagreements"]))
        print(rows[-1], flush=True)
        _write(args, note, results, rows)


def _write(args, note, results, rows) -> None:
    """The table and JSON of the models done so far (a long run leaves partial results)."""
    masked = [k for k in results if k.startswith("default build, masked")]
    pairs = [(k, k.replace("masked", "compacted")) for k in masked
             if k.replace("masked", "compacted") in results]
    runs = lambda k: results[k]["runs"]  # noqa: E731
    means = [[sum(r["seconds"] for r in runs(k)), sum(r["seconds"] for r in runs(c)),
              len(runs(k))] for k, c in pairs]
    conflict = sum({a["status"], b["status"]} == {"verified", "falsified"}
                   for k, c in pairs for a, b in zip(runs(k), runs(c)))
    extra = "".join(f" {k.split(', ')[-1]}: {n} instances, CPU seconds in all masked "
                    f"{m:.1f} vs compacted {c:.1f}." for (k, _), (m, c, n) in zip(pairs, means))
    if pairs:
        extra += f" Masked/compacted verdict conflicts: {conflict}."
    table = markdown(("model", "params", "eps", "n", "open after CROWN", "cascade unknown",
                      "instances run", f"settled <= {args.timeout:g} CPU s",
                      "verified / falsified", "median / max CPU s", "instances/min (CPU)",
                      "PGD breaks verified"), rows)
    table += f"\n\nDefault build: {note}.{extra}"
    write("verify_complete", {"machine": machine(),
                              "args": vars(args) | {"build": str(args.build)},
                              "build_note": note, "results": results,
                              "masked_vs_compacted_cpu_seconds": means,
                              "masked_compacted_conflicts": conflict}, table)

if __name__ == "__main__":
    main()
