"""The built-in sensor sets with the worked examples' conv1d (issue 23).

For each example in ``examples/`` (one built-in sensor set each):

1. clean test accuracy of a DENSE conv1d trained naturally (no eps, no
   sparsity; the example's model, epochs, batch and lr), seeds 0-2: how close
   a small CNN gets to the published UEA/UCR results;
2. the example's own certified training (verisparse-gradual, structured,
   density 0.3), seeds 0-2, CROWN-verified accuracy at three eps on the whole
   test split (half, once and 1.5x the example's eps);
3. the example's full ``vst build --target cortex-m4`` (seed 0): wall time,
   verified accuracy (float and int8 as flashed), flash, RAM, instructions.

Writes results/sensor_sets.{json,md}. Runs 1 and 2 use one torch thread; the
build picks its own (``train.threads = 0``), recorded with the load average.

    nice -n 10 .venv/bin/python benchmarks/sensor_sets.py [--sets japanesevowels,basicmotions]
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
from common import evaluate, machine, markdown, write  # noqa: E402

from toolchain.config import config_from_dict  # noqa: E402
from toolchain.data import load_dataset  # noqa: E402
from toolchain.train.trainer import train  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SEEDS = (0, 1, 2)
EPS_FACTORS = (0.5, 1.0, 1.5)  # of the example's verify.eps


def example(name: str) -> dict:
    return tomllib.loads((ROOT / "examples" / f"{name}.toml").read_text())


def dense_config(raw: dict, seed: int):
    t = raw["train"]
    return config_from_dict({
        "data": raw["data"], "model": raw["model"], "sparsity": {"method": "dense"},
        "train": {"epochs": t["epochs"], "batch_size": t["batch_size"], "lr": t["lr"],
                  "val_size": t["val_size"], "eps": 0.0, "warmup_epochs": t["epochs"],
                  "ramp_epochs": 0, "seed": seed, "threads": 1},
        "verify": raw["verify"]})


def certified_config(raw: dict, seed: int):
    return config_from_dict({**raw, "train": {**raw["train"], "seed": seed, "threads": 1}})


def trained(cfg, work: Path, eps_list) -> dict:
    t0 = time.perf_counter()
    model = train(cfg, work, show_progress=False)
    seconds = time.perf_counter() - t0
    data = load_dataset(cfg.data.dataset)
    out = {"seconds": seconds, "density": model.record["density"]}
    for eps in eps_list:
        res = evaluate(model, data, eps, methods=("crown",) if eps > 0 else ())
        out["clean_acc"] = res["clean_acc"]
        if eps > 0:
            out[f"crown_{eps:g}"] = res["crown_verified_acc"]
    return out


def build(name: str, work: Path) -> dict:
    load0 = os.getloadavg()[0]
    t0 = time.perf_counter()
    res = subprocess.run([sys.executable, "-m", "toolchain", "-q", "build", "--config",
                          str(ROOT / "examples" / f"{name}.toml"), "--target", "cortex-m4",
                          "--out", str(work)], capture_output=True, text=True, cwd=ROOT)
    wall = time.perf_counter() - t0
    if res.returncode != 0:
        raise SystemExit(f"vst build {name} failed:\n{res.stderr[-2000:]}")
    s = json.loads((work / "summary.json").read_text())
    return {"wall_seconds": wall, "load_before": load0, "load_after": os.getloadavg()[0],
            "train_seconds": s["train"]["seconds"], "threads": s["train"]["threads"],
            "clean_acc": s["verify"]["clean_acc"], "verified_acc": s["verify"]["verified_acc"],
            "compact_verified_acc": s["compact"]["verified_acc"],
            "int8_verified_acc": s["verify"].get("int8_verified_acc"),
            "int8_acc": s["export"].get("int8_acc"), "eps": s["eps"],
            "params_after": s["compact"]["params_after"],
            "flash_bytes": s["target"]["flash_bytes"], "ram_bytes": s["target"]["ram_bytes"],
            "instructions": s["target"]["instructions_per_inference"],
            "clipped_test": s["input_scaling"]["clipped_test"]}


def run_set(name: str, work: Path) -> dict:
    raw = example(name)
    eps_list = [round(f * raw["verify"]["eps"], 6) for f in EPS_FACTORS]
    out = {"eps": eps_list, "dense": [], "certified": []}
    for seed in SEEDS:
        out["dense"].append({"seed": seed, **trained(dense_config(raw, seed),
                                                     work / f"dense{seed}", [0.0])})
        out["certified"].append({"seed": seed, **trained(certified_config(raw, seed),
                                                         work / f"cert{seed}", eps_list)})
        print(name, seed, out["dense"][-1]["clean_acc"], out["certified"][-1], flush=True)
    out["build"] = build(name, work / "build")
    print(name, out["build"], flush=True)
    return out


def mean(rows, key) -> float:
    return sum(r[key] for r in rows) / len(rows)


def table(results: dict) -> str:
    rows = []
    for name, r in results.items():
        c, b = r["certified"], r["build"]
        rows.append((
            name, f"{mean(r['dense'], 'clean_acc'):.1%} ("
            + ", ".join(f"{d['clean_acc']:.1%}" for d in r["dense"]) + ")",
            f"{mean(c, 'clean_acc'):.1%}",
            *(f"{mean(c, f'crown_{e:g}'):.1%} @{e:g}" for e in r["eps"]),
            f"{b['wall_seconds']:.0f}", f"{b['verified_acc']:.1%} / {b['int8_verified_acc']:.1%}",
            f"{b['flash_bytes']:,}", f"{b['ram_bytes']:,}", f"{b['instructions']:,}"))
    return markdown(("set", "dense clean, mean (seeds 0-2)", "d0.3 clean",
                     "CROWN-verified (mean of 3 seeds)", "", "", "build wall s",
                     "build verified float / int8", "flash B", "RAM B", "instructions"), rows)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sets", default="japanesevowels,basicmotions,italypowerdemand")
    args = ap.parse_args()
    results = {}
    with tempfile.TemporaryDirectory(prefix="vst-sensor-") as tmp:
        for name in args.sets.split(","):
            results[name] = run_set(name, Path(tmp) / name)
    write("sensor_sets", {"machine": machine(), "seeds": list(SEEDS), "results": results},
          table(results))


if __name__ == "__main__":
    main()
