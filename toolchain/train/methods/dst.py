"""VeriSparse with dynamic sparse training (the paper's method).

A random sparse mask at the target density from the first step. Every
``sparsity.update_every`` steps, while the drop fraction (cosine-decayed,
``train/schedule.py``) is positive, each layer drops its weakest active
units (smallest magnitude) and regrows as many: by the robust-loss gradient
(``rigl``, ``train/growth.py``) or at random (``random``, SET). The update
step replaces that step's weight update, as in RigL. The per-layer count never
changes, so the density is exact at every step.
"""

from __future__ import annotations

import torch

from toolchain.sparsity.masks import Sparsifier
from toolchain.train.growth import grow_scores
from toolchain.train.methods.base import Method


class DynamicSparse(Method):
    name = "verisparse"

    def make_sparsifier(self, cfg, network, gen):
        s = cfg.sparsity
        if s.density >= 1.0:
            return None
        return Sparsifier(network, s.mode, s.density, s.distribution, gen)

    def mask_step(self, run, step, xb, yb, eps, share):
        s = run.cfg.sparsity
        if not (run.sparsifier is not None and step > 0 and step % s.update_every == 0
                and run.schedule.drop(step) > 0):
            return 0, False
        gen = torch.Generator().manual_seed(run.cfg.train.seed * 7919 + step)
        with run.world.summed_gradients(run.module, share):     # structured scores
            scores = None
            if s.regrow == "rigl" or run.sparsifier.mode == "structured":
                scores = grow_scores(run, xb, yb, eps, gen)
        moved = run.sparsifier.update(run.module, run.schedule.drop(step), s.regrow, gen, scores)
        run.sparsifier.apply(run.module, run.optimizer)
        run.optimizer.zero_grad(set_to_none=True)
        return moved, True


METHOD = DynamicSparse
