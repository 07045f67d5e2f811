"""The epoch loop every training method shares (the methods: ``train/methods/``).

``run_epochs`` steps a run (``loop.Run``, built by ``loop.make_run``) through
epochs under the certified loss, asking the method (``Method`` hooks) what to
do with the masks at each step, with per-epoch validation (``epoch_metrics``)
and a checkpoint after every epoch. A method imports this module plainly; it
imports no method, so the registry (``methods/__init__.py``) sits on top and
the stage's entry, ``train(cfg, out_dir)`` in ``trainer.py``, picks the method.

Resume is exact: a run killed at any point and resumed with ``resume=True``
ends with the same weights, bit for bit, as the run never interrupted. Two
things make it so. The checkpoint holds all the state (see ``checkpoint.py``),
and every step computes the same way whatever the process did before:
auto_LiRPA's CROWN code runs TorchScript functions, and TorchScript's profiling
executor runs a function's first calls unoptimized (again when input shapes
change) and later ones optimized, with a different (equally valid) gradient
formula, so a resumed process, new to those calls, rounded differently from
the process that ran from the start. ``_same_every_call`` has TorchScript run its graphs
as written, every call.

Device and ranks (``distributed.py``): the module, each batch and the bounds
live on ``cfg.train.device``; the data set, the masks and everything stored
stay on the CPU. Under torchrun each rank trains on its piece of every global
batch with gradients summed across ranks; rank 0 alone writes files.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import torch

from toolchain.train.certified import certified_loss, evaluate
from toolchain.train.checkpoint import Checkpoint, capture_rng, save_checkpoint
from toolchain.train.loop import Run

log = logging.getLogger("vst.train")


def _same_every_call():
    """TorchScript without its graph optimizer: a step's arithmetic does not
    depend on which calls the process made before (see the module docstring)."""
    return torch.jit.optimized_execution(False)


def steps_per_epoch(run: Run) -> int:
    return -(-len(run.x) // run.cfg.train.batch_size)


@_same_every_call()
def train_epoch(run: Run, epoch: int) -> dict:
    """One pass over the training data; returns the epoch's mean loss and accuracy."""
    t = run.cfg.train
    run.module.train()
    order = torch.randperm(len(run.x), generator=torch.Generator().manual_seed(
        t.seed * 1_000_003 + epoch))
    n_steps = steps_per_epoch(run)
    loss_sum = correct = moved = 0.0
    for b in range(n_steps):
        step = epoch * n_steps + b
        idx = order[b * t.batch_size:(b + 1) * t.batch_size]
        mine = run.world.share(idx)            # all of idx in one process
        share = len(mine) / len(idx)           # this rank's weight in the batch mean
        xb, yb = run.x[mine].to(run.device), run.y[mine].to(run.device)
        eps = run.schedule.eps(step)
        for group in run.optimizer.param_groups:
            group["lr"] = run.schedule.learning_rate(step)
        run.optimizer.zero_grad(set_to_none=True)
        loss, logits = certified_loss(run.module, run.bounder, xb, yb, eps,
                                      run.schedule.beta(step), run.schedule.kappa(step),
                                      t.crown_ibp)
        with run.world.summed_gradients(run.module, share):
            loss.backward()
        run.method.after_backward(run, step)
        loss_sum += float(loss.detach()) * len(mine)
        correct += int((logits.argmax(1) == yb).sum())
        changed, skip = run.method.mask_step(run, step, xb, yb, eps, share)
        moved += changed
        if skip:
            continue
        torch.nn.utils.clip_grad_norm_(run.module.parameters(), t.grad_clip)
        run.optimizer.step()
        run.method.after_step(run, step)
    run.world.average_buffers(run.module)
    loss_sum, correct = run.world.sum([loss_sum, correct], run.device)
    n = len(run.x)
    return {"loss": loss_sum / n, "train_acc": correct / n, "eps": run.schedule.eps(step),
            "lr": run.schedule.learning_rate(step), "units_moved": int(moved)}


@_same_every_call()
def epoch_metrics(run: Run, epoch: int, stats: dict, seconds: float) -> dict:
    clean, verified = evaluate(run.module, run.bounder, run.x_val.to(run.device),
                               run.y_val.to(run.device), run.cfg.verify.eps)
    density = run.sparsifier.density() if run.sparsifier is not None else 1.0
    return {"epoch": epoch + 1, **stats, "val_clean_acc": clean,
            "val_ibp_verified_acc": verified, "density": density, "seconds": seconds}


def run_epochs(run: Run, out_dir: Path, start: int, last: int, elapsed: float,
               show_progress: bool) -> None:
    from toolchain.display import progress

    with progress(transient=False) as bar:
        task = bar.add_task("train", total=run.cfg.train.epochs, completed=start, info="",
                            visible=show_progress)
        for epoch in range(start, last):
            t0 = time.perf_counter()
            stats = train_epoch(run, epoch)
            seconds = time.perf_counter() - t0
            elapsed += seconds
            row = epoch_metrics(run, epoch, stats, seconds)
            run.record["epochs"].append(row)
            run.record["seconds_total"] = elapsed
            if run.world.main:
                save_checkpoint(out_dir, Checkpoint(
                    epoch + 1, run.module.state_dict(),
                    run.sparsifier.param_masks() if run.sparsifier else {},
                    run.optimizer.state_dict(), run.record, run.cfg.to_dict(),
                    step=(epoch + 1) * steps_per_epoch(run), rng=capture_rng(),
                    **dict(zip(("method_tensors", "method_meta"), run.method.state()))))
            bar.update(task, advance=1, info=(
                f"eps {row['eps']:.3f} loss {row['loss']:.2f} clean {row['val_clean_acc']:.0%} "
                f"IBP-ver {row['val_ibp_verified_acc']:.0%} d {row['density']:.2f}"))
            log.info("epoch %d: %s", epoch + 1, row)
