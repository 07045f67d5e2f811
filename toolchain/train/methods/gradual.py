"""VeriSparse-gradual: a random sparse start denser than the target, shrunk to it.

Still no dense pre-training: the run starts from a random sparse mask at
``sparsity.start_factor`` times the target density (capped at dense) and
every ``sparsity.update_every`` steps prunes each layer down to a budget that
shrinks on a cubic schedule (Zhu & Gupta 2017), reaching the target at the end
of the eps ramp; the rest of training fine-tunes the final sparse network
under a fixed mask. Which units go is decided by an importance score:

- ``magnitude``: a weight's |w|; a channel's ``||w_in|| * ||w_out||`` (with
  ReLU only the product of a channel's incoming and outgoing scale matters);
- ``taylor``: the first-order change of the robust loss if the unit were
  removed, ``|sum w * dL/dw|`` over the unit (for a channel: over its
  outgoing weights, which is ``|sum_batch a * dL/da|`` of its activation;
  Molchanov et al. 2019), averaged over the steps since the last update.

``sparsity.soft`` (soft pruning, He et al. 2018's SFP for channels): at an
update every unit competes, pruned ones included, and a pruned unit is only
zeroed, not held at zero: between updates it keeps training and may win its
place back. A pruned channel keeps its incoming weights and loses its outgoing
ones (zeroed incoming weights under ReLU would never get a gradient again).
The network is at its budget right after every update and, once the budget
reaches the target, at every step to the end.
"""

from __future__ import annotations

import math

import torch

from toolchain.errors import VstError
from toolchain.sparsity.masks import Sparsifier
from toolchain.train.methods.base import Method


class Gradual(Method):
    name = "verisparse-gradual"

    def __init__(self) -> None:
        self.final: dict[int, int] = {}
        self.start: dict[int, int] = {}
        self.scores: dict[int, torch.Tensor] = {}
        self.seen = 0
        self.done = False
        self.updates: list[dict] = []

    def make_sparsifier(self, cfg, network, gen):
        s = cfg.sparsity
        if s.density >= 1.0:
            raise VstError("sparsity.method verisparse-gradual needs sparsity.density < 1")
        start = min(1.0, s.start_factor * s.density)
        sp = Sparsifier(network, s.mode, start, s.distribution, gen)
        self.final = sp.budget(s.density)
        self.start = {layer: int(m.sum()) for layer, m in sp.unit_masks.items()}
        self.soft = s.soft
        self.importance = s.importance
        self.done = self.start == self.final and not self.soft
        return sp

    # -- the budget ---------------------------------------------------------
    def shrink_end(self, run) -> int:
        """The step at which the budget reaches the target: the end of the eps ramp,
        or the last step when the ramp ends with training."""
        return max(1, min(run.schedule.warmup + run.schedule.ramp, run.schedule.total - 1))

    def counts(self, step: int, end: int) -> dict[int, int]:
        """Units kept per layer at ``step``: cubic from the start counts to the target."""
        left = (1.0 - min(1.0, step / end)) ** 3
        return {layer: self.final[layer] + math.ceil((self.start[layer] - self.final[layer]) * left
                                                     - 1e-9)
                for layer in self.final}

    # -- importance ---------------------------------------------------------
    @torch.no_grad()
    def after_backward(self, run, step):
        if self.done or self.importance != "taylor":
            return
        params = dict(run.module.named_parameters())
        for layer, value in self._taylor(run.sparsifier, params).items():
            self.scores[layer] = self.scores.get(layer, 0.0) + value.cpu()
        self.seen += 1

    @staticmethod
    def _taylor(sp, params) -> dict[int, torch.Tensor]:
        out = {}
        if sp.mode == "unstructured":
            for layer in sp.unit_masks:
                w = params[f"{layer}.weight"]
                out[layer] = (w * w.grad).abs().reshape(-1) if w.grad is not None else w.new_zeros(w.numel())
            return out
        for layer, group in sp.groups.items():
            total = 0
            for consumer, _ in group.consumers:     # the change of the loss, all outputs
                w = params[f"{consumer}.weight"]
                if w.grad is not None:
                    total = total + (w * w.grad).reshape(w.shape[0], group.channels,
                                                         -1).sum(dim=(0, 2))
            out[layer] = (total.abs() if torch.is_tensor(total)
                          else params[f"{layer}.weight"].new_zeros(group.channels))
        return out

    @torch.no_grad()
    def _magnitude(self, sp, params) -> dict[int, torch.Tensor]:
        out = {}
        for layer in sp.unit_masks:
            w = params[f"{layer}.weight"]
            if sp.mode == "unstructured":
                out[layer] = w.abs().reshape(-1)
                continue
            group = sp.groups[layer]
            w_in = sp.row_norm(params, layer)
            w_out = torch.cat([params[f"{c}.weight"].transpose(0, 1).reshape(group.channels, -1)
                               for c, _ in group.consumers], dim=1).norm(dim=1)
            out[layer] = w_in * w_out
        return out

    def _current_importance(self, run) -> dict[int, torch.Tensor]:
        if self.importance == "taylor" and self.seen > 0:
            return {layer: s / self.seen for layer, s in self.scores.items()}
        return self._magnitude(run.sparsifier, dict(run.module.named_parameters()))

    # -- the masks ------------------------------------------------------------
    def mask_step(self, run, step, xb, yb, eps, share):
        every, end = run.cfg.sparsity.update_every, self.shrink_end(run)
        if self.done or step == 0 or (step % every and step < end):
            return 0, False
        counts = self.counts(step, end)
        changed = run.sparsifier.prune_to(counts, self._current_importance(run),
                                          revive=self.soft)
        self.scores, self.seen = {}, 0
        self.done = step >= end
        self.updates.append({"step": step, "kept": sum(counts.values()), "changed": changed})
        self._enforce(run, hard=self.done or not self.soft)
        return changed, False

    def _enforce(self, run, hard: bool) -> None:
        if hard:
            run.sparsifier.apply(run.module, run.optimizer)
        else:
            run.sparsifier.zero_pruned_outputs(run.module, run.optimizer)

    def after_step(self, run, step):
        if self.done or not self.soft:
            run.sparsifier.apply(run.module, run.optimizer)

    def fit(self, run, out_dir, start, last, elapsed, show_progress):
        super().fit(run, out_dir, start, last, elapsed, show_progress)
        if last == run.cfg.train.epochs and not self.done:
            # too few steps for an update at shrink_end (a run of one step): the
            # model still ends exactly at the target budget
            run.sparsifier.prune_to(self.final, self._current_importance(run),
                                    revive=self.soft)
            run.sparsifier.apply(run.module, run.optimizer)
            self.done = True

    def enforce_initial(self, sparsifier, module) -> None:
        if self.soft:
            sparsifier.zero_pruned_outputs(module)
        else:
            sparsifier.apply(module)

    def state(self) -> tuple[dict, dict]:
        tensors = {f"score.{layer}": v for layer, v in self.scores.items()}
        return tensors, {"seen": self.seen, "done": self.done, "updates": self.updates}

    def load_state(self, tensors: dict, meta: dict) -> None:
        self.scores = {int(k.split(".")[1]): v.clone() for k, v in tensors.items()
                       if k.startswith("score.")}
        self.seen, self.done = int(meta["seen"]), bool(meta["done"])
        self.updates = list(meta["updates"])

    def record(self) -> dict:
        return {"mask_updates": self.updates}


METHOD = Gradual
