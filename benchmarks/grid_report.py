"""Tables, Pareto plots and the aims of the equal-budget grid (issue 27).

Reads what ``train_vs_baselines.py`` wrote (results/grid.json) and writes
results/grid.md and one plot per (architecture, density):
results/pareto_grid_<arch>_<density>.png, verified accuracy (the larger of IBP- and
CROWN-verified; mean, sd over seeds) against training time. Time is CPU seconds of the one-thread run
(its wall time on an idle core; the wall seconds are in the JSON too).

    .venv/bin/python benchmarks/grid_report.py [--name grid] [--merge a b ...]

``--merge`` adds the runs of other result files (pieces run on other
machines or under other names) to ``--name``; a run already there is kept.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, markdown, write  # noqa: E402

KEYS = ("cpu_seconds", "wall_seconds", "deployed_weights", "clean_acc", "ibp_verified_acc",
        "crown_verified_acc", "verified_acc", "val_verified_acc")
OURS, THEIRS = "verisparse-gradual-structured", "hydra-structured"


def certified(r: dict, prefix: str = "") -> float:
    """What ``vst verify --method crown`` certifies (IBP, then CROWN on what IBP
    leaves) is at least the larger of the two counts; a run records both counts,
    not the per-sample union, so this lower bound is the grid's "verified". It
    matters on IBP-trained nets, where CROWN alone is looser than IBP."""
    return max(r[f"{prefix}ibp_verified_acc"], r[f"{prefix}crown_verified_acc"])


def summarize(results: list[dict]) -> list[dict]:
    """Mean and sd over seeds per (arch, density, method, schedule, budget)."""
    groups: dict[tuple, list[dict]] = {}
    results = [{**r, "verified_acc": certified(r), "val_verified_acc": certified(r, "val_")}
               for r in results]
    for r in results:
        groups.setdefault((r["arch"], r["density"], r["method"], r["schedule"], r["budget"]),
                          []).append(r)
    out = []
    for (arch, density, method, schedule, budget), rs in sorted(groups.items()):
        row = {"arch": arch, "density": density, "method": method, "schedule": schedule,
               "budget": budget, "seeds": sorted(r["seed"] for r in rs)}
        for key in KEYS:
            values = [r[key] for r in rs]
            row[key] = statistics.fmean(values)
            row[key + "_sd"] = statistics.stdev(values) if len(values) > 1 else float("nan")
        out.append(row)
    return out


def panels(summary: list[dict]) -> list[tuple[str, float]]:
    """(arch, density) of every sparse cell; dense (density 1) is drawn in each."""
    return sorted({(s["arch"], s["density"]) for s in summary if s["method"] != "dense"})


def in_panel(summary, arch, density):
    return [s for s in summary if s["arch"] == arch and s["density"] in (density, 1.0)]


def aims(summary: list[dict]) -> list[tuple]:
    """Per HYDRA-structured point: the most accurate structured VeriSparse point in at
    most half its CPU time, and whether it wins by more than one sd (the larger one)."""
    rows = []
    for arch, density in panels(summary):
        cell = in_panel(summary, arch, density)
        ours = [s for s in cell if s["method"] == OURS]
        for h in (s for s in cell if s["method"] == THEIRS):
            fast = [s for s in ours if s["cpu_seconds"] <= h["cpu_seconds"] / 2]
            best = max(fast, key=lambda s: s["verified_acc"], default=None)
            if best is None:
                rows.append((arch, density, _name(h), _point(h), "none in half the time", "-",
                             "no"))
                continue
            diff = best["verified_acc"] - h["verified_acc"]
            sd = max(best["verified_acc_sd"], h["verified_acc_sd"])
            if diff < 0:
                verdict = "no"
            elif sd != sd:                      # one seed on a side: no spread to beat
                verdict = "ahead, one seed (no sd)"
            else:
                verdict = "yes" if diff > sd else "tie within sd"
            rows.append((arch, density, _name(h), _point(h), f"{_name(best)}: {_point(best)}",
                         f"{100 * diff:+.1f} (sd {100 * sd:.1f})", verdict))
    return rows


def default_choice(summary: list[dict], arch="cnn_4layer", density=0.3) -> list[tuple]:
    """The default method's schedules on the default build's cell, ranked by mean
    validation accuracy (never the test split's). The pick: the best validation
    mean among the schedules that train no slower than the 2026-12 default
    (CROWN-IBP, 1x), which is known to keep the build within its 180 s."""
    cands = [s for s in summary if (s["arch"], s["density"], s["method"])
             == (arch, density, OURS) and len(s["seeds"]) > 1]
    old = [s for s in cands if (s["schedule"], s["budget"]) == ("crown-ibp", 1)]
    if not old:
        return []
    cands.sort(key=lambda s: -s["val_verified_acc"])
    pick = next(s for s in cands if s["cpu_seconds"] <= old[0]["cpu_seconds"])
    return [(_name(s), len(s["seeds"]), f"{s['cpu_seconds']:.0f}",
             _pct(s, "val_verified_acc"), _pct(s, "verified_acc"),
             "picked" if s is pick else "") for s in cands]


def report(results: list[dict], plots: bool = True) -> str:
    summary = summarize(results)
    rows = [(s["arch"], s["density"], s["method"], s["schedule"], f"{s['budget']:g}x",
             len(s["seeds"]), f"{s['cpu_seconds']:.0f} ± {_sd(s['cpu_seconds_sd'])}",
             f"{s['wall_seconds']:.0f}", f"{s['deployed_weights']:.0f}", _pct(s, "clean_acc"),
             _pct(s, "ibp_verified_acc"), _pct(s, "crown_verified_acc"),
             _pct(s, "verified_acc"), _pct(s, "val_verified_acc")) for s in summary]
    text = markdown(("model", "density", "method", "schedule", "budget", "seeds",
                     "CPU s (1 thread)", "wall s", "deployed weights", "clean",
                     "IBP-verified", "CROWN-verified", "verified (max)",
                     "val verified (max)"), rows)
    text += "\n\nStructured VeriSparse against HYDRA-structured in at most half its time:\n\n"
    text += markdown(("model", "density", "HYDRA-structured", "its point",
                      "best VeriSparse-structured in <= half the time", "difference (points)",
                      "met"), aims(summary))
    choice = default_choice(summary)
    if choice:
        text += "\n\nThe default method's schedules on cnn_4layer 0.3, by validation:\n\n"
        text += markdown(("schedule", "seeds", "CPU s", "val verified (max)",
                          "test verified (max)", "default"), choice)
    if plots:
        text += "\n\nPlots: " + ", ".join(plot(summary)) + "\n"
    return text


def plot(summary: list[dict]) -> list[str]:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    files = []
    for arch, density in panels(summary):
        cell = in_panel(summary, arch, density)
        fig, ax = plt.subplots(figsize=(8.5, 4.5))
        methods = sorted({s["method"] for s in cell})
        colors = {m: plt.cm.tab10(i) for i, m in enumerate(methods)}   # a colour per method
        for method, schedule in sorted({(s["method"], s["schedule"]) for s in cell}):
            pts = sorted((s for s in cell if (s["method"], s["schedule"]) == (method, schedule)),
                         key=lambda s: s["cpu_seconds"])
            ax.errorbar([p["cpu_seconds"] for p in pts],
                        [100 * p["verified_acc"] for p in pts],
                        xerr=[_z(p["cpu_seconds_sd"]) for p in pts],
                        yerr=[100 * _z(p["verified_acc_sd"]) for p in pts],
                        marker="o" if schedule == "crown-ibp" else "s",
                        linestyle="-" if schedule == "crown-ibp" else "--", capsize=3,
                        color=colors[method], label=f"{method} ({schedule})")
        ax.set_xscale("log")
        ax.set_xlabel("training time (CPU s, one thread)")
        ax.set_ylabel("verified accuracy (%), eps 0.1\n(max of IBP and CROWN)")
        ax.set_title(f"{arch}, density {density} (mean ± sd over seeds)")
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
        name = f"pareto_grid_{arch}_{density}.png"
        fig.tight_layout()
        fig.savefig(RESULTS / name, dpi=110)
        plt.close(fig)
        files.append(name)
    return files


def _name(s) -> str:
    return f"{s['schedule']} {s['budget']:g}x"


def _point(s) -> str:
    return f"{_pct(s, 'verified_acc')} in {s['cpu_seconds']:.0f} s"


def _pct(s, key) -> str:
    sd = s[key + "_sd"]
    return f"{100 * s[key]:.1f}%" + ("" if sd != sd else f" ± {100 * sd:.1f}")


def _sd(v) -> str:
    return "-" if v != v else f"{v:.0f}"


def _z(v) -> float:
    return 0.0 if v != v else v


def merge(results: list[dict], more: list[dict]) -> list[dict]:
    """``results`` plus the runs of ``more`` whose grid point is not there yet."""
    seen = {key(r) for r in results}
    out = list(results)
    for r in more:
        if key(r) not in seen:
            seen.add(key(r))
            out.append(r)
    return sorted(out, key=key)


def key(r: dict) -> tuple:
    """A run's grid point."""
    return (r["arch"], r["density"], r["method"], r["schedule"], r["budget"], r["seed"])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--name", default="grid")
    ap.add_argument("--merge", nargs="*", default=[], help="result names to add to --name")
    args = ap.parse_args()
    path = RESULTS / f"{args.name}.json"
    payload = json.loads(path.read_text())
    for name in args.merge:
        more = json.loads((RESULTS / f"{name}.json").read_text())["results"]
        payload["results"] = merge(payload["results"], more)
    write(args.name, payload, report(payload["results"]))


if __name__ == "__main__":
    main()
