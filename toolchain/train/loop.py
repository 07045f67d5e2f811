"""A training run: what it works on (``make_run``) and what it yields (``to_model``).

``make_run`` builds the network from the layer list, the method's masks, the
optimizer, schedule and bounder, deterministic in ``cfg.train.seed``; the
epoch loop that steps a ``Run`` is ``epochs.py``; the stage's entry,
``train(cfg, out_dir)``, is in ``trainer.py`` and picks the method. This
module imports no method, so every method can import the loop.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from toolchain.config import Config
from toolchain.errors import VstError
from toolchain.models.modelfile import VstModel
from toolchain.models.torch_build import build_torch
from toolchain.models.zoo import network_for
from toolchain.sparsity.masks import Sparsifier
from toolchain.train.certified import ibp_init
from toolchain.train.distributed import World
from toolchain.train.schedule import Schedule

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
    method: object                     # a methods.base.Method, picked by trainer.py
    record: dict = field(default_factory=dict)
    device: torch.device = torch.device("cpu")
    world: World = field(default_factory=World)


def split_validation(data, val_size: int, seed: int):
    """Hold ``val_size`` training images out (seeded) for per-epoch metrics."""
    x, y = torch.from_numpy(data.x_train), torch.from_numpy(data.y_train)
    if val_size >= len(x):
        raise VstError(f"train.val_size {val_size} leaves no training data ({len(x)} images)")
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    val, rest = perm[:val_size], perm[val_size:]
    return x[rest], y[rest], x[val], y[val]


def make_run(cfg: Config, data, *, method,
             device: torch.device = torch.device("cpu"), world: World | None = None) -> Run:
    """Everything a run needs, deterministic in ``cfg.train.seed``."""
    from toolchain.lirpa.bounds import Bounder

    t, s = cfg.train, cfg.sparsity
    torch.manual_seed(t.seed)
    network = network_for(cfg.model, data.input_shape, data.num_classes)
    module = build_torch(network)
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
               y_val, method, device=device, world=world or World())


def to_model(run: Run, data, seconds: float) -> VstModel:
    from toolchain.versions import versions

    masks = run.sparsifier.param_masks() if run.sparsifier is not None else {}
    layer_density = ({str(k): v for k, v in run.sparsifier.layer_density().items()}
                     if run.sparsifier is not None else {})
    record = {**run.record, "config": run.cfg.to_dict(), "seed": run.cfg.train.seed,
              "versions": versions(), "dataset": data.name, "dataset_sha256": data.sha256(),
              "input_scaling": data.scaling_info(),
              "train_seconds": seconds, "layer_density": layer_density,
              "density": run.sparsifier.density() if run.sparsifier is not None else 1.0,
              "mode": run.cfg.sparsity.mode if run.sparsifier is not None else "dense",
              "device": run.device.type, "ranks": run.world.size,
              "method": run.method.name, "threads": torch.get_num_threads(),
              **run.method.record()}
    state = {k: v.detach().to("cpu", copy=True) for k, v in run.module.state_dict().items()}
    return VstModel(run.network, state, masks, record)
