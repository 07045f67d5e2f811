"""The training stage's entry: ``train(cfg, out_dir)``.

It reads the data set, picks the method the config names
(``train/methods/``), the device and the number of CPU threads, builds the
run (``loop.make_run``), resumes it when asked, lets the method fit it, and
writes ``model.vst`` plus ``training.png`` into ``out_dir``.

Resume is exact: a run killed at any point and resumed with ``resume=True``
ends with the same weights, bit for bit, as the run never interrupted (see
``epochs.py`` and ``checkpoint.py``).

Threads: the certified step is small-batch work, so torch's intra-op threads
barely help past a few cores and hurt badly when other processes share the
CPUs. ``train.threads = 0`` (auto) takes the CPUs this process may run on
(``os.sched_getaffinity``, which honours ``taskset`` and container CPU sets)
less those that other processes kept busy over a quarter second at the start,
at most ``AUTO_MAX_THREADS``. The number used is recorded with the model:
results depend on it in the last bits, so a run that must be bit-reproducible
whatever the machine's load sets ``train.threads``.
"""

from __future__ import annotations

import logging
import math
import os
import time
from pathlib import Path

import torch

from toolchain.config import Config
from toolchain.errors import VstError
from toolchain.data import load_data
from toolchain.device import resolve_device
from toolchain.models.modelfile import VstModel, save_model
from toolchain.train.distributed import World
from toolchain.train.epochs import steps_per_epoch
from toolchain.train.loop import MODEL_FILE, Run, make_run, to_model
from toolchain.train.methods import get_method
from toolchain.train.resume import resume_run

log = logging.getLogger("vst.train")
AUTO_MAX_THREADS = 8


def usable_cpus() -> int:
    """CPUs this process may run on (affinity mask), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):        # not Linux
        return max(1, os.cpu_count() or 1)


def busy_elsewhere(window: float = 0.25) -> float:
    """CPUs' worth of work other processes did over ``window`` seconds (Linux
    ``/proc/stat``; 0 where it cannot be read). Niced work is left out: it
    yields to us. This process sleeps meanwhile, so what is busy is others'."""
    def sample():
        with open("/proc/stat") as fh:
            fields = [int(v) for v in fh.readline().split()[1:]]
        user, nice, system, idle, iowait, irq, softirq, steal = (fields + [0] * 8)[:8]
        return user + system + irq + softirq + steal, sum(fields[:8])
    try:
        busy0, total0 = sample()
        time.sleep(window)
        busy1, total1 = sample()
    except (OSError, ValueError):
        return 0.0
    if total1 <= total0:
        return 0.0
    return (busy1 - busy0) / (total1 - total0) * (os.cpu_count() or 1)


def pick_threads(asked: int, ranks: int = 1, busy: float | None = None) -> int:
    """``asked`` threads, or (0) the usable CPUs that other work leaves free,
    shared among the local ranks.

    A CPU that another process keeps busy is not counted: a fork-join step
    whose threads outnumber the free CPUs waits at every barrier for a thread
    the scheduler has parked, and trains several times slower than with fewer
    threads (``benchmarks/train_load.py``).
    """
    if asked > 0:
        return asked
    busy = busy_elsewhere() if busy is None else busy
    free = usable_cpus() - math.floor(busy + 0.25)
    return max(1, min(AUTO_MAX_THREADS, free // max(1, ranks)))


def train(cfg: Config, out_dir: Path, *, resume: bool = False, show_progress: bool = True,
          stop_after: int | None = None) -> VstModel:
    """Train per ``cfg``; write ``out_dir/model.vst``. ``stop_after`` ends early (tests).

    Under torchrun (``WORLD_SIZE`` > 1) every rank calls this; rank 0 writes.
    """
    world = World.from_env()
    method = get_method(cfg.sparsity.method)
    if world.size > 1 and not method.multi_rank:
        raise VstError(f"the {method.name} method trains in one process; run it without torchrun")
    if resume and not method.resumable:
        raise VstError(f"the {method.name} method cannot resume a run; start a new --out")
    device = resolve_device(cfg.train.device, world.local_rank)
    torch.set_num_threads(pick_threads(cfg.train.threads, _local_ranks(world)))
    out_dir = Path(out_dir)
    data = load_data(cfg)
    world.join(device)
    try:
        run = make_run(cfg, data, method=method, device=device, world=world)
        _check_batches(run)
        start, elapsed = _maybe_resume(run, out_dir, resume)
        last = cfg.train.epochs if stop_after is None else min(cfg.train.epochs, stop_after)
        method.fit(run, out_dir, start, last, elapsed, show_progress and world.main)
        model = to_model(run, data, run.record["seconds_total"])
        model.record["cpus"] = usable_cpus()
        if world.main:
            save_model(out_dir / MODEL_FILE, model)
            if last == cfg.train.epochs:
                from toolchain.train.plots import plot_training
                plot_training(model.record, out_dir / "training.png")
        world.barrier()                    # no rank returns before model.vst exists
    finally:
        world.leave()
    return model


def _local_ranks(world: World) -> int:
    return int(os.environ.get("LOCAL_WORLD_SIZE", world.size if world.size > 1 else 1))


def _check_batches(run: Run) -> None:
    """Every rank needs at least one sample of every global batch, the last included."""
    size, b = run.world.size, run.cfg.train.batch_size
    smallest = min(b, len(run.x) - (steps_per_epoch(run) - 1) * b)
    if smallest < size:
        raise VstError(f"{size} ranks need global batches of at least {size} images; "
                       f"train.batch_size {b} leaves a last batch of {smallest}")


def _maybe_resume(run: Run, out_dir: Path, resume: bool) -> tuple[int, float]:
    run.record = {"epochs": [], "seconds_total": 0.0}
    if not resume:
        return 0, 0.0
    return resume_run(run, out_dir)
