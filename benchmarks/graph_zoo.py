"""The graph zoo through the pipeline (issue 21's aims).

For each graph zoo model (``ds_cnn``, ``resnet8`` on mnist5k at eps 0.1;
``ds_cnn1d``, ``resnet1d`` on the built-in ``japanesevowels`` at the eps of
its worked example, ``examples/japanesevowels.toml``) and each run

- ``sparse``: the default method (``verisparse-gradual``, soft magnitude
  pruning from a 3x start), structured, density 0.3;
- ``dense``: certified training of the whole network, the same schedule,

the public stage entries in the order ``vst build`` runs them:
``config_from_dict`` -> ``train`` -> ``verify_model`` (CROWN, then PGD on
what it leaves open) -> ``compact`` -> ``verify_model`` again, on the whole
test split. Recorded per run: training wall AND process CPU seconds, torch
threads, the load average when it started, the git commit; clean,
CROWN-verified and PGD accuracy; parameters and MACs before and after
compaction; the largest output difference between the masked and the
compacted model; whether every per-sample verdict is the same on both.

The aims (``aims`` in the JSON, a second table in the Markdown): training
<= 600 s and CROWN-verified >= 85% (2-D models on mnist5k, sparse run);
compaction: identical verdicts, max output difference <= 1e-5, MACs after
<= 1.15 x density x dense MACs.

Per-model settings (``MODELS``) were chosen on the validation split that
training reports (``val_*`` in the JSON), never on the test split;
benchmarks/README.md says which and why.

    nice -n 5 .venv/bin/python benchmarks/graph_zoo.py [--models ds_cnn,resnet8]
        [--runs sparse,dense] [--threads 2] [--append] [--name graph_zoo]
    .venv/bin/python benchmarks/graph_zoo.py --merge part_a part_b   # into --name
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import tomllib
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, machine, markdown, write  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
TIME_AIM = 600.0            # seconds of training on 2 cores
VERIFIED_AIM = 0.85         # CROWN-verified, mnist5k test split, eps 0.1
DIFF_AIM = 1e-5
MAC_SLACK = 1.15            # MACs after <= MAC_SLACK x density x dense MACs
DENSITY = 0.3


def _sensor_example() -> dict:
    raw = tomllib.loads((ROOT / "examples" / "japanesevowels.toml").read_text())
    return {"data": raw["data"], "train": raw["train"], "verify": raw["verify"]}


MNIST = {"data": {"dataset": "mnist5k"}, "verify": {"eps": 0.1}}
# model -> config sections (on top of the defaults); see benchmarks/README.md
MODELS = {
    "ds_cnn": {**MNIST, "model": {"arch": "ds_cnn"}, "train": {"crown_ibp": False}},
    "resnet8": {**MNIST, "model": {"arch": "resnet8"}, "train": {"crown_ibp": False}},
    "ds_cnn1d": {**_sensor_example(), "model": {"arch": "ds_cnn1d"}},
    "resnet1d": {**_sensor_example(), "model": {"arch": "resnet1d"}},
}
RUNS = {
    "sparse": {"method": "verisparse-gradual", "mode": "structured", "density": DENSITY},
    "dense": {"method": "dense"},
}


def config(model: str, run: str, threads: int):
    from toolchain.config import config_from_dict

    spec = MODELS[model]
    sections = {k: dict(v) for k, v in spec.items()}
    sections["sparsity"] = dict(RUNS[run])
    sections["train"] = {**spec.get("train", {}), "threads": threads, "device": "cpu"}
    sections["verify"] = {**spec["verify"], "method": "crown", "device": "cpu"}
    return config_from_dict(sections)


def git_commit() -> str:
    def git(*args):
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True).stdout
    head = git("rev-parse", "--short", "HEAD").strip() or "unknown"
    return head + ("+dirty" if git("status", "--porcelain", "--untracked-files=no").strip()
                   else "")


def _timed(fn):
    w0, c0 = time.perf_counter(), time.process_time()
    value = fn()
    return value, time.perf_counter() - w0, time.process_time() - c0


def _verdicts(res) -> dict:
    n = res.n
    return {"clean_acc": 1.0 - sum(s.method == "clean" for s in res.samples) / n,
            "crown_verified_acc": res.verified_acc, "pgd_acc": res.robust_upper,
            "unknown": res.count("unknown"), "n": n}


def run_one(model_name: str, run: str, threads: int, work: Path,
            keep: Path | None = None) -> dict:
    import torch

    from toolchain.compact import compact, max_abs_diff, totals, layer_table
    from toolchain.data import load_data
    from toolchain.train.trainer import train
    from toolchain.verify import verify_model

    cfg = config(model_name, run, threads)
    data = load_data(cfg)
    load = os.getloadavg()
    model, wall, cpu = _timed(lambda: train(cfg, work, show_progress=False))
    eps = cfg.verify.eps
    (res,), v_wall, v_cpu = _timed(lambda: verify_model(model, data, [eps], "crown",
                                                        show_progress=False))
    (small, _), c_wall, _ = _timed(lambda: compact(model))
    x = torch.from_numpy(data.x_test)
    diff = max_abs_diff(model, small, x)
    if keep is not None:
        from toolchain.models.modelfile import save_model
        keep.mkdir(parents=True, exist_ok=True)
        save_model(keep / f"{model_name}-{run}.vst", model)
    (res_small,), _, _ = _timed(lambda: verify_model(small, data, [eps], "crown",
                                                     show_progress=False))
    before = totals(layer_table(model.network, model.state))
    after = totals(layer_table(small.network, small.state))
    same = [a.verdict == b.verdict for a, b in zip(res.samples, res_small.samples)]
    last = model.record["epochs"][-1]
    return {
        "model": model_name, "run": run, "dataset": data.name, "eps": eps,
        "config": {k: cfg.to_dict()[k] for k in ("model", "sparsity", "train")},
        "commit": git_commit(), "threads": model.record["threads"],
        "load_at_start": list(load), "train_wall_s": wall, "train_cpu_s": cpu,
        "verify_wall_s": v_wall, "verify_cpu_s": v_cpu, "compact_wall_s": c_wall,
        "density": model.record["density"],
        "val": {"clean": last["val_clean_acc"], "ibp_verified": last["val_ibp_verified_acc"],
                "curve": [[e["epoch"], round(e["val_clean_acc"], 4),
                           round(e["val_ibp_verified_acc"], 4)] for e in model.record["epochs"]]},
        **_verdicts(res),
        "compacted": _verdicts(res_small),
        "params_before": before["params"], "params_after": after["params"],
        "macs_before": model.network.macs(), "macs_after": small.network.macs(),
        "max_abs_diff": diff, "verdicts_differ": len(same) - sum(same),
        **rounding(model, x),
        "max_abs_diff_unfolded": max_abs_diff(model, compact(model, fold_bn=False)[0], x),
        "channels_after": [layer.weight_shape()[0] for layer in small.network.layers
                           if hasattr(layer, "weight_shape")],
    }


def rounding(model, x) -> dict:
    """The scale of the logits and the masked float32 model's own rounding error
    (against the same model in float64): what an output difference compares with."""
    import torch

    module = model.torch_module().eval()
    with torch.no_grad():
        out = module(x)
        exact = module.double()(x.double())
    return {"max_abs_logit": float(out.abs().max()),
            "float32_error": float((out.double() - exact).abs().max())}


def aims(results: list[dict]) -> list[dict]:
    """Issue 21's aims, per model (the sparse run; the dense run for its MACs)."""
    out = []
    for r in results:
        if r["run"] != "sparse":
            continue
        mnist = r["dataset"] == "mnist5k"
        mac_limit = MAC_SLACK * DENSITY * r["macs_before"]
        out.append({
            "model": r["model"],
            "train_s": r["train_wall_s"], "time_ok": r["train_wall_s"] <= TIME_AIM,
            "verified": r["crown_verified_acc"],
            "verified_ok": r["crown_verified_acc"] >= VERIFIED_AIM if mnist else None,
            "verdicts_ok": r["verdicts_differ"] == 0,
            "diff_ok": r["max_abs_diff"] <= DIFF_AIM,
            "mac_ratio": r["macs_after"] / r["macs_before"],
            "macs_ok": r["macs_after"] <= mac_limit})
    return out


def _ok(flag) -> str:
    return "n/a" if flag is None else ("met" if flag else "**missed**")


def table(results: list[dict]) -> str:
    rows = [(r["model"], f"{r['dataset']} @{r['eps']:g}", r["run"], f"{r['density']:.3f}",
             f"{r['train_wall_s']:.0f} / {r['train_cpu_s']:.0f}", r["threads"],
             f"{r['load_at_start'][0]:.1f}",
             f"{r['clean_acc']:.1%}", f"{r['crown_verified_acc']:.1%}", f"{r['pgd_acc']:.1%}",
             f"{r['params_before']:,} -> {r['params_after']:,}",
             f"{r['macs_before']:,} -> {r['macs_after']:,} "
             f"({r['macs_after'] / r['macs_before']:.2f}x)",
             f"{r['max_abs_diff']:.1e}" + (f" ({r['float32_error']:.1e}; {r['max_abs_logit']:.0f})"
                                            if "float32_error" in r else ""),
             r["verdicts_differ"],
             f"{r['val']['clean']:.1%} / {r['val']['ibp_verified']:.1%}")
            for r in results]
    main = markdown(("model", "data @eps", "run", "density", "train wall / CPU s", "threads",
                     "load", "clean", "CROWN-verified", "PGD", "params before -> after",
                     "MACs before -> after", "max diff (fp32 error; max logit)", "verdicts differ",
                     "val clean / IBP"), rows)
    aim_rows = [(a["model"], f"{a['train_s']:.0f} s: {_ok(a['time_ok'])}",
                 f"{a['verified']:.1%}: {_ok(a['verified_ok'])}", _ok(a["verdicts_ok"]),
                 _ok(a["diff_ok"]), f"{a['mac_ratio']:.3f}x (limit "
                 f"{MAC_SLACK * DENSITY:.3f}x): {_ok(a['macs_ok'])}") for a in aims(results)]
    return main + "\n\n" + markdown(
        ("model (sparse run)", "train <= 600 s", "CROWN-verified >= 85% (mnist5k)",
         "identical verdicts", "diff <= 1e-5", "MACs after"), aim_rows)


def save(name: str, results: list[dict], extra: dict | None = None) -> None:
    write(name, {"machine": machine(), "density": DENSITY, "results": results,
                 "aims": aims(results), **(extra or {})}, table(results))


def merge(name: str, parts: list[str]) -> None:
    """One table from runs made apart (e.g. two one-thread workers side by side)."""
    results = [r for p in parts for r in json.loads((RESULTS / f"{p}.json").read_text())["results"]]
    order = {m: i for i, m in enumerate(MODELS)}
    results.sort(key=lambda r: (order.get(r["model"], 99), list(RUNS).index(r["run"])))
    save(name, results, {"merged_from": parts})


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--runs", default=",".join(RUNS))
    ap.add_argument("--threads", type=int, default=2, help="torch threads (train.threads)")
    ap.add_argument("--name", default="graph_zoo")
    ap.add_argument("--append", action="store_true",
                    help="add to the results already in results/<name>.json")
    ap.add_argument("--merge", nargs="*", help="only merge these result names into --name")
    ap.add_argument("--keep", type=Path, help="also save each trained (masked) model here")
    args = ap.parse_args()
    if args.merge:
        return merge(args.name, args.merge)
    models, runs = args.models.split(","), args.runs.split(",")
    for name in models:
        if name not in MODELS:
            raise SystemExit(f"unknown model {name!r}; choose from {', '.join(MODELS)}")
    for run in runs:
        if run not in RUNS:
            raise SystemExit(f"unknown run {run!r}; choose from {', '.join(RUNS)}")
    import torch
    torch.set_num_threads(args.threads)
    path = RESULTS / f"{args.name}.json"
    results = (json.loads(path.read_text())["results"] if args.append and path.exists() else [])
    done = {(r["model"], r["run"]) for r in results}
    with tempfile.TemporaryDirectory(prefix="vst-graph-zoo-") as tmp:
        for name in models:
            for run in runs:
                if (name, run) in done:
                    continue
                r = run_one(name, run, args.threads, Path(tmp) / f"{name}-{run}",
                            args.keep)
                results.append(r)
                print({k: r[k] for k in ("model", "run", "train_wall_s", "train_cpu_s",
                                         "clean_acc", "crown_verified_acc", "pgd_acc",
                                         "max_abs_diff", "verdicts_differ")}, flush=True)
                save(args.name, results)        # after every run: a cut-off loses nothing


if __name__ == "__main__":
    main()
