"""Certified (sparse) training: the VeriSparse loop and the dense baseline.

``train(cfg, out_dir)`` is the stage's entry: it reads the data set, builds the
network from the layer list, trains it under the certified loss (sparse from a
random sparse mask with dynamic sparse training, or dense), checkpoints every
epoch, and writes ``model.vst`` plus ``training.png`` into ``out_dir``.

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
from toolchain.models.modelfile import VstModel, save_model
from toolchain.models.torch_build import build_torch
from toolchain.models.zoo import build_network
from toolchain.sparsity.masks import Sparsifier
from toolchain.train.certified import certified_loss, evaluate, ibp_init
from toolchain.train.checkpoint import (Checkpoint, capture_rng, load_checkpoint,
                                        restore_rng, save_checkpoint)
from toolchain.train.distributed import World, resolve_device
from toolchain.train.growth import grow_scores
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


def make_run(cfg: Config, data, *, method: str | None = None,
             device: torch.device = torch.device("cpu"), world: World | None = None) -> Run:
    """Everything a run needs, deterministic in ``cfg.train.seed``."""
    from toolchain.lirpa.bounds import Bounder

    t, s = cfg.train, cfg.sparsity
    torch.manual_seed(t.seed)
    network = build_network(cfg.model.arch, data.input_shape, data.num_classes,
                            channels=cfg.model.channels or None,
                            widths=cfg.model.widths or None, batchnorm=cfg.model.batchnorm)
    module = build_torch(network)
    method = method or s.method
    sparsifier = None
    if method == "verisparse" and s.density < 1.0:
        gen = torch.Generator().manual_seed(t.seed + 1)
        sparsifier = Sparsifier(network, s.mode, s.density, s.distribution, gen)
    if t.ibp_init:
        ibp_init(module, sparsifier.live_inputs() if sparsifier else None)
    if sparsifier is not None:
        sparsifier.apply(module)
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
               y_val, device=device, world=world or World())


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
        loss_sum += float(loss.detach()) * len(mine)
        correct += int((logits.argmax(1) == yb).sum())
        if _mask_update_due(run, step):
            with run.world.summed_gradients(run.module, share):   # structured scores
                moved += _update_masks(run, xb, yb, eps, step)
            continue                       # RigL: an update step replaces the weight step
        torch.nn.utils.clip_grad_norm_(run.module.parameters(), t.grad_clip)
        run.optimizer.step()
        if run.sparsifier is not None:
            run.sparsifier.apply(run.module, run.optimizer)
    run.world.average_buffers(run.module)
    loss_sum, correct = run.world.sum([loss_sum, correct], run.device)
    n = len(run.x)
    return {"loss": loss_sum / n, "train_acc": correct / n, "eps": run.schedule.eps(step),
            "lr": run.schedule.learning_rate(step), "units_moved": int(moved)}


def _mask_update_due(run: Run, step: int) -> bool:
    every = run.cfg.sparsity.update_every
    return (run.sparsifier is not None and step > 0 and step % every == 0
            and run.schedule.drop(step) > 0)


def _update_masks(run: Run, xb, yb, eps: float, step: int) -> int:
    s, seed = run.cfg.sparsity, run.cfg.train.seed
    gen = torch.Generator().manual_seed(seed * 7919 + step)
    scores = None
    if s.regrow == "rigl" or run.sparsifier.mode == "structured":
        scores = grow_scores(run, xb, yb, eps, gen)
    moved = run.sparsifier.update(run.module, run.schedule.drop(step), s.regrow, gen, scores)
    run.sparsifier.apply(run.module, run.optimizer)
    run.optimizer.zero_grad(set_to_none=True)
    return moved


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
              "device": run.device.type, "ranks": run.world.size}
    state = {k: v.detach().to("cpu", copy=True) for k, v in run.module.state_dict().items()}
    return VstModel(run.network, state, masks, record)


def train(cfg: Config, out_dir: Path, *, resume: bool = False, show_progress: bool = True,
          stop_after: int | None = None) -> VstModel:
    """Train per ``cfg``; write ``out_dir/model.vst``. ``stop_after`` ends early (tests).

    Under torchrun (``WORLD_SIZE`` > 1) every rank calls this; rank 0 writes.
    """
    world = World.from_env()
    device = _training_device(cfg, world)
    if cfg.sparsity.method == "hydra":
        if world.size > 1:
            raise VstError("the hydra baseline trains in one process; run it without torchrun")
        from toolchain.train.hydra import train_hydra
        return train_hydra(cfg, out_dir, show_progress=show_progress)
    out_dir = Path(out_dir)
    data = load_data(cfg)
    world.join(device)
    try:
        run = make_run(cfg, data, device=device, world=world)
        _check_batches(run)
        start, elapsed = _maybe_resume(run, out_dir, resume)
        last = cfg.train.epochs if stop_after is None else min(cfg.train.epochs, stop_after)
        run_epochs(run, out_dir, start, last, elapsed, show_progress and world.main)
        model = to_model(run, data, run.record["seconds_total"])
        if world.main:
            save_model(out_dir / MODEL_FILE, model)
            if last == cfg.train.epochs:
                from toolchain.train.plots import plot_training
                plot_training(model.record, out_dir / "training.png")
        world.barrier()                    # no rank returns before model.vst exists
    finally:
        world.leave()
    return model


def _training_device(cfg: Config, world: World) -> torch.device:
    """``cfg.train.device`` resolved. The sparse mask bookkeeping and the hydra
    baseline run on the CPU only (``sparsity/masks.py``): "auto" then stays on
    the CPU, an explicit "cuda" is refused."""
    device = resolve_device(cfg.train.device, world.local_rank)
    cpu_only = cfg.sparsity.method == "hydra" or (cfg.sparsity.method == "verisparse"
                                                  and cfg.sparsity.density < 1.0)
    if device.type == "cuda" and cpu_only:
        if cfg.train.device == "cuda":
            raise VstError(f"--device cuda: {cfg.sparsity.method} sparse training keeps its "
                           "masks on the CPU and cannot run on CUDA yet; use --device cpu")
        log.warning("train: sparse training runs on the CPU (its masks are CPU-only)")
        device = torch.device("cpu")
    return device


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
    ck = load_checkpoint(out_dir)
    if _without_device(ck.config) != _without_device(run.cfg.to_dict()):
        raise VstError(f"{out_dir}: checkpoint was made with a different config; "
                       "resume with the same config or start a new --out")
    if ck.step not in (-1, ck.epoch * steps_per_epoch(run)):
        raise VstError(f"{out_dir}: checkpoint at epoch {ck.epoch} has {ck.step} steps, "
                       f"expected {ck.epoch * steps_per_epoch(run)}; start a new --out")
    run.module.load_state_dict(ck.state)          # copied onto the module's device
    run.optimizer.load_state_dict(ck.optimizer)   # moved to the parameters' device
    if run.sparsifier is not None:
        run.sparsifier.load_param_masks(ck.masks)
    restore_rng(ck.rng)
    run.record = ck.record
    return ck.epoch, float(ck.record.get("seconds_total", 0.0))


def _without_device(config: dict) -> dict:
    """A checkpoint may be resumed on another device (or written before devices)."""
    return {name: {k: v for k, v in section.items() if k != "device"}
            if isinstance(section, dict) else section for name, section in config.items()}


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
                    step=(epoch + 1) * steps_per_epoch(run), rng=capture_rng()))
            bar.update(task, advance=1, info=(
                f"eps {row['eps']:.3f} loss {row['loss']:.2f} clean {row['val_clean_acc']:.0%} "
                f"IBP-ver {row['val_ibp_verified_acc']:.0%} d {row['density']:.2f}"))
            log.info("epoch %d: %s", epoch + 1, row)
