"""Run every benchmark in turn (each writes results/<name>.json and .md).

    .venv/bin/python benchmarks/run_all.py      # or: make bench
"""

import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
BENCHMARKS = ("train_vs_baselines.py", "dst_ablation.py", "verify_speed.py", "mcu.py")

if __name__ == "__main__":
    for script in BENCHMARKS:
        print(f"== {script}", flush=True)
        subprocess.run([sys.executable, str(HERE / script)], check=True)
