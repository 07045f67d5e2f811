"""The pure parts of the equal-budget grid (``benchmarks/train_vs_baselines.py``,
``benchmarks/grid_report.py``): which runs the flags ask for, mean and sd over
seeds, the half-time aim's verdict, the default's schedule by validation, and
merging pieces."""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))

import grid_report  # noqa: E402
import train_vs_baselines  # noqa: E402


def _run(method, schedule, budget, seed, cpu, acc, val=None, arch="cnn_small", density=0.1):
    return {"arch": arch, "density": density, "method": method, "schedule": schedule,
            "budget": budget, "seed": seed, "cpu_seconds": cpu, "wall_seconds": cpu,
            "deployed_weights": 100, "clean_acc": acc + 0.05, "ibp_verified_acc": acc,
            "crown_verified_acc": acc, "val_crown_verified_acc": acc if val is None else val,
            "val_ibp_verified_acc": 0.0}


def _three(method, schedule, budget, cpu, accs, **kw):
    return [_run(method, schedule, budget, s, cpu, a, **kw) for s, a in enumerate(accs)]


def test_grid_runs_dense_once_per_budget_and_cheap_cells_first():
    args = argparse.Namespace(arch=["cnn_small"], density=[0.1, 0.3], budgets=[0.5, 1],
                              seeds=[0, 1], methods=["dense", "hydra-structured"],
                              schedules=["ibp"])
    keys = train_vs_baselines.grid(args)
    assert len(keys) == len(set(keys))
    dense = [k for k in keys if k[2] == "dense"]
    assert {k[1] for k in dense} == {1.0} and len(dense) == 2 * 2      # budgets x seeds
    assert [k[4] for k in keys] == sorted(k[4] for k in keys)         # 0.5x before 1x
    assert len(keys) == 2 * 2 + 2 * 2 * 2                              # dense + hydra cells


def test_config_follows_hydra_proportions_and_schedule():
    cfg = train_vs_baselines.config("cnn_small", 0.1, "hydra-structured", "ibp", 1, 2)
    assert cfg.sparsity.hydra_score_epochs == cfg.sparsity.hydra_finetune_epochs == 7
    assert cfg.train.epochs == 30 - 14 and cfg.train.crown_ibp is False
    assert cfg.train.threads == 1 and cfg.train.seed == 2
    cfg = train_vs_baselines.config("cnn_4layer", 0.3, "verisparse-gradual-structured",
                                    "crown-ibp", 2, 0)
    assert cfg.train.epochs == 60 and cfg.train.crown_ibp is True
    assert cfg.sparsity.mode == "structured" and cfg.sparsity.soft is True


def test_summary_means_and_sample_sd_over_seeds():
    rows = grid_report.summarize(_three("dense", "ibp", 1, 10.0, [0.80, 0.82, 0.84],
                                        density=1.0))
    (row,) = rows
    assert row["seeds"] == [0, 1, 2]
    assert row["crown_verified_acc"] == pytest.approx(0.82)
    assert row["crown_verified_acc_sd"] == pytest.approx(0.02)
    (one,) = grid_report.summarize([_run("dense", "ibp", 1, 0, 10.0, 0.8, density=1.0)])
    assert math.isnan(one["crown_verified_acc_sd"])


def test_half_time_aim_needs_a_win_larger_than_one_sd():
    hydra = _three("hydra-structured", "crown-ibp", 1, 100.0, [0.80, 0.81, 0.82])
    slow = _three("verisparse-gradual-structured", "crown-ibp", 1, 90.0, [0.90] * 3)
    (row,) = grid_report.aims(grid_report.summarize(hydra + slow))
    assert row[-1] == "no" and row[4] == "none in half the time"

    clear = _three("verisparse-gradual-structured", "ibp", 1, 50.0, [0.84, 0.85, 0.86])
    (row,) = grid_report.aims(grid_report.summarize(hydra + slow + clear))
    assert row[-1] == "yes" and "+4.0" in row[5]

    close = _three("verisparse-gradual-structured", "ibp", 1, 50.0, [0.80, 0.82, 0.84])
    (row,) = grid_report.aims(grid_report.summarize(hydra + close))
    assert row[-1] == "tie within sd"

    lone = [_run("verisparse-gradual-structured", "ibp", 1, 0, 50.0, 0.9)]
    (row,) = grid_report.aims(grid_report.summarize(hydra + lone))
    assert row[-1] == "ahead, one seed (no sd)"

    worse = _three("verisparse-gradual-structured", "ibp", 1, 50.0, [0.70] * 3)
    (row,) = grid_report.aims(grid_report.summarize(hydra + worse))
    assert row[-1] == "no"


def test_default_schedule_is_ranked_by_validation_not_test():
    kw = {"arch": "cnn_4layer", "density": 0.3}
    a = [_run("verisparse-gradual-structured", "crown-ibp", 1, s, 100, 0.95, val=v, **kw)
         for s, v in enumerate([0.80, 0.81, 0.79])]
    b = [_run("verisparse-gradual-structured", "ibp", 2, s, 90, 0.70, val=v, **kw)
         for s, v in enumerate([0.90, 0.91, 0.89])]
    ranked = grid_report.default_choice(grid_report.summarize(a + b))
    assert [r[0] for r in ranked] == ["ibp 2x", "crown-ibp 1x"]
    assert [r[-1] for r in ranked] == ["picked", ""]


def test_default_pick_is_the_best_validation_no_slower_than_the_old_default():
    kw = {"arch": "cnn_4layer", "density": 0.3}
    old = [_run("verisparse-gradual-structured", "crown-ibp", 1, s, 200, 0.9, val=v, **kw)
           for s, v in enumerate([0.88, 0.89, 0.90])]
    slow = [_run("verisparse-gradual-structured", "crown-ibp", 2, s, 400, 0.9, val=0.95, **kw)
            for s in range(3)]                                   # best, but too slow
    fits = [_run("verisparse-gradual-structured", "ibp", 2, s, 110, 0.9, val=v, **kw)
            for s, v in enumerate([0.90, 0.91, 0.92])]
    cheap = [_run("verisparse-gradual-structured", "ibp", 1, s, 50, 0.9, val=0.88, **kw)
             for s in range(3)]
    ranked = grid_report.default_choice(grid_report.summarize(old + slow + fits + cheap))
    assert {r[0]: r[-1] for r in ranked} == {"crown-ibp 2x": "", "ibp 2x": "picked",
                                             "crown-ibp 1x": "", "ibp 1x": ""}


def test_merge_keeps_the_first_run_of_a_grid_point():
    first = [_run("dense", "ibp", 1, 0, 10.0, 0.8, density=1.0)]
    more = [_run("dense", "ibp", 1, 0, 99.0, 0.1, density=1.0),
            _run("dense", "ibp", 1, 1, 11.0, 0.7, density=1.0)]
    merged = grid_report.merge(first, more)
    assert [r["seed"] for r in merged] == [0, 1] and merged[0]["cpu_seconds"] == 10.0


def test_verified_is_the_larger_of_ibp_and_crown_per_run():
    r = _run("dense", "ibp", 1, 0, 10.0, 0.8, density=1.0)
    r |= {"ibp_verified_acc": 0.89, "crown_verified_acc": 0.87,
          "val_ibp_verified_acc": 0.80, "val_crown_verified_acc": 0.85}
    (row,) = grid_report.summarize([r])
    assert row["verified_acc"] == 0.89 and row["val_verified_acc"] == 0.85
