"""The epoch loop every training method shares (the methods: ``train/methods/``).

``make_run`` builds what a run works on (network from the layer list, the
method's masks, optimizer, schedule, bounder); ``run_epochs`` steps through
epochs under the certified loss, asking the method (``Method`` hooks) what to
do with the masks at each step, with per-epoch validation and a checkpoint
after every epoch. The stage's entry, ``train(cfg, out_dir)``, is in
``trainer.py``.

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
from dataclasses import dataclass, field
from pathlib import Path

import torch

from toolchain.config import Config
from toolchain.errors import VstError
from toolchain.models.modelfile import VstModel
from toolchain.models.torch_build import build_torch
from toolchain.models.zoo import network_for
from toolchain.sparsity.masks import Sparsifier
from toolchain.train.certified import certified_loss, evaluate, ibp_init
from toolchain.train.checkpoint import Checkpoint, capture_rng, save_checkpoint
from toolchain.train.distributed import World
from toolchain.train.methods import Method, get_method
from toolchain.train.schedule import Schedule

log = logging.getLogger("vst.train")
MODEL_FILE = "model.vst"


@dataclass
class Run:
    """What one training run works on; built once, then stepped through epochs."""

    cfg: Config
    network: object
    module: torch.nn.Module
    bounder: object
    sparsifier: Sparsifier | None
    optimizer: torch.optim.Optimizer
    schedule: Schedule
    x: torch.Tensor
    y: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor
    record: dict = field(default_factory=dict)
    device: torch.device = torch.device("cpu")
    world: World = field(default_factory=World)
    method: Method = field(default_factory=Method)


def load_data(cfg: Config):
    """The data set a config names, split as the config says (seeded by train.seed)."""
    from toolchain.data import load_dataset

    return load_dataset(cfg.data.dataset, test_fraction=cfg.data.test_fraction,
                        seed=cfg.train.seed, num_classes=cfg.data.num_classes or None)


def split_validation(data, val_size: int, seed: int):
    """Hold ``val_size`` training images out (seeded) for per-epoch metrics."""
    x, y = torch.from_numpy(data.x_train), torch.from_numpy(data.y_train)
    if val_size >= len(x):
        raise VstError(f"train.val_size {val_size} leaves no training data ({len(x)} images)")
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    val, rest = perm[:val_size], perm[val_size:]
    return x[rest], y[rest], x[val], y[val]


def make_run(cfg: Config, data, *, method: Method | None = None,
             device: torch.device = torch.device("cpu"), world: World | None = None) -> Run:
    """Everything a run needs, deterministic in ``cfg.train.seed``."""
    from toolchain.lirpa.bounds import Bounder

    t, s = cfg.train, cfg.sparsity
    torch.manual_seed(t.seed)
    network = network_for(cfg.model, data.input_shape, data.num_classes)
    module = build_torch(network)
    method = method or get_method(s.method)
    sparsifier: Sparsifier | None = method.make_sparsifier(
        cfg, network, torch.Generator().manual_seed(t.seed + 1))
    if t.ibp_init:
        ibp_init(module, sparsifier.live_inputs() if sparsifier else None)
    if sparsifier is not None:
        method.enforce_initial(sparsifier, module)
    x, y, x_val, y_val = split_validation(data, t.val_size, t.seed)
    steps_per_epoch = -(-len(x) // t.batch_size)
    schedule = Schedule(
        total=t.epochs * steps_per_epoch, warmup=t.warmup_epochs * steps_per_epoch,
        ramp=t.ramp_epochs * steps_per_epoch, eps_max=t.eps, kappa_end=t.kappa, lr=t.lr,
        lr_decay_at=tuple(t.lr_decay_at), lr_decay_factor=t.lr_decay_factor,
        drop_fraction=s.drop_fraction, freeze_fraction=s.freeze_fraction)
    module.to(device)                  # initialized on the CPU: the same weights everywhere
    optimizer = torch.optim.Adam(module.parameters(), lr=t.lr)
    bounder = Bounder(module, data.input_shape)
    return Run(cfg, network, module, bounder, sparsifier, optimizer, schedule, x, y, x_val,
               y_val, device=device, world=world or World(), method=method)


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


def to_model(run: Run, data, seconds: float) -> VstModel:
    from toolchain.versions import versions

    masks = run.sparsifier.param_masks() if run.sparsifier is not None else {}
    layer_density = ({str(k): v for k, v in run.sparsifier.layer_density().items()}
                     if run.sparsifier is not None else {})
    record = {**run.record, "config": run.cfg.to_dict(), "seed": run.cfg.train.seed,
              "versions": versions(), "dataset": data.name, "dataset_sha256": data.sha256(),
              "train_seconds": seconds, "layer_density": layer_density,
              "density": run.sparsifier.density() if run.sparsifier is not None else 1.0,
              "mode": run.cfg.sparsity.mode if run.sparsifier is not None else "dense",
              "device": run.device.type, "ranks": run.world.size,
              "method": run.method.name, "threads": torch.get_num_threads(),
              **run.method.record()}
    state = {k: v.detach().to("cpu", copy=True) for k, v in run.module.state_dict().items()}
    return VstModel(run.network, state, masks, record)


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
