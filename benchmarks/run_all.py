"""Run every benchmark in turn (each writes results/<name>.json and .md).

    .venv/bin/python benchmarks/run_all.py      # or: make bench

Training comparisons run the part of their grid that fits a few CPU hours on
2 cores (the settings of benchmarks/README.md); the full grid is
``python benchmarks/train_vs_baselines.py`` with no flags.
"""

import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
BENCHMARKS = (
    ("train_vs_baselines.py", "--arch", "cnn_small", "--density", "0.1", "--budgets", "1", "2",
     "--seeds", "0"),
    ("structured_ablation.py",),
    ("train_load.py",),
    ("dst_ablation.py",),
    ("verify_speed.py",),
    ("verify_complete.py",),
    ("bab.py", "--nets", "256x2,256x4"),
    ("mcu.py",),
    ("csr_breakeven.py",),
    ("mlperf_tiny.py",),
    ("sensor_sets.py",),
)

if __name__ == "__main__":
    for script, *args in BENCHMARKS:
        print(f"== {script} {' '.join(args)}", flush=True)
        subprocess.run([sys.executable, str(HERE / script), *args], check=True)
