"""The HYDRA baseline (Sehwag et al. 2020), certified variant, from the same code.

1. dense certified training (the whole ``train`` schedule);
2. importance scores, one per weight (or per channel when structured),
   start at the weight magnitude; the weights are frozen and the scores are
   trained with the certified loss at the final eps, the mask being the
   top-k scores of each layer (straight-through gradient ``dL/ds = dL/dw' * w``
   for the masked weight ``w' = w * mask(s)``);
3. the mask is fixed and the kept weights are fine-tuned with the certified loss.

The per-layer budget is the one VeriSparse uses, so the two are compared at
the same density. Phases 2 and 3 last ``sparsity.hydra_score_epochs`` and
``sparsity.hydra_finetune_epochs``.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch

from toolchain.sparsity.masks import Sparsifier
from toolchain.train.certified import certified_loss
from toolchain.train.epochs import epoch_metrics, run_epochs
from toolchain.train.methods.base import Method


class Hydra(Method):
    name = "hydra"
    resumable = False         # three phases; the checkpoint knows only the loop's epochs
    multi_rank = False

    def fit(self, run, out_dir, start, last, elapsed, show_progress):
        cfg = run.cfg
        run_epochs(run, out_dir, 0, last, 0.0, show_progress)                 # phase 1
        if last < cfg.train.epochs:
            return                                  # stopped early (tests): still dense
        t0 = time.perf_counter()
        s = cfg.sparsity
        run.sparsifier = Sparsifier(run.network, s.mode, s.density, s.distribution,
                                    torch.Generator().manual_seed(cfg.train.seed + 1))
        _train_scores(run, s.hydra_score_epochs)                              # phase 2
        run.record["epochs"].append(epoch_metrics(
            run, cfg.train.epochs, {"loss": float("nan"), "train_acc": float("nan"),
                                    "eps": cfg.train.eps, "lr": 0.0, "units_moved": 0},
            time.perf_counter() - t0))
        run.record["seconds_total"] += time.perf_counter() - t0
        _finetune(run, out_dir, s.hydra_finetune_epochs, show_progress)       # phase 3


METHOD = Hydra


def _batches(run, epoch):
    t = run.cfg.train
    order = torch.randperm(len(run.x), generator=torch.Generator().manual_seed(
        t.seed * 1_000_003 + 7 * epoch + 1))
    for b in range(0, len(run.x), t.batch_size):
        idx = order[b:b + t.batch_size]
        yield run.x[idx], run.y[idx]


def _topk_masks(run, scores) -> None:
    sp = run.sparsifier
    for layer, mask in sp.unit_masks.items():
        k = int(mask.sum())
        mask.zero_()
        mask[scores[layer].topk(k).indices.cpu()] = True


def _train_scores(run, epochs: int) -> None:
    sp, t = run.sparsifier, run.cfg.train
    params = dict(run.module.named_parameters())
    frozen = {k: v.detach().clone() for k, v in params.items()}
    structured = sp.mode == "structured"

    def rows(layer):          # the layers whose weights a unit of ``layer`` scales
        return sp.groups[layer].rows if structured else (layer,)

    scores = {layer: (sp.row_norm(frozen, layer) if structured
                      else frozen[f"{layer}.weight"].reshape(-1)).abs().clone().requires_grad_(True)
              for layer in sp.unit_masks}
    opt = torch.optim.Adam(scores.values(), lr=t.lr * 2)
    run.module.train()
    for epoch in range(epochs):
        for xb, yb in _batches(run, epoch):
            xb, yb = xb.to(run.device), yb.to(run.device)
            _topk_masks(run, {k: v.detach() for k, v in scores.items()})
            with torch.no_grad():
                for k, v in params.items():
                    v.copy_(frozen[k])
            sp.apply(run.module)
            run.module.zero_grad(set_to_none=True)
            loss, _ = certified_loss(run.module, run.bounder, xb, yb, t.eps, 0.0, t.kappa, False)
            loss.backward()
            opt.zero_grad()
            for layer, s in scores.items():
                grad = 0
                for row in rows(layer):                                     # straight-through
                    g = params[f"{row}.weight"].grad * frozen[f"{row}.weight"]
                    grad = grad + (g.reshape(g.shape[0], -1).sum(1) if structured
                                   else g.reshape(-1))
                s.grad = grad
            opt.step()
    _topk_masks(run, {k: v.detach() for k, v in scores.items()})
    with torch.no_grad():
        for k, v in params.items():
            v.copy_(frozen[k])
    sp.apply(run.module)


def _finetune(run, out_dir: Path, epochs: int, show_progress: bool) -> None:
    """Certified fine-tuning of the kept weights at the final eps, lr decayed late."""
    t = run.cfg.train
    run.optimizer = torch.optim.Adam(run.module.parameters(), lr=t.lr)
    for epoch in range(epochs):
        t0 = time.perf_counter()
        run.module.train()
        lr = t.lr * (t.lr_decay_factor if epoch >= 0.75 * epochs else 1.0)
        for group in run.optimizer.param_groups:
            group["lr"] = lr
        total = correct = 0.0
        for xb, yb in _batches(run, 10_000 + epoch):
            xb, yb = xb.to(run.device), yb.to(run.device)
            run.optimizer.zero_grad(set_to_none=True)
            loss, logits = certified_loss(run.module, run.bounder, xb, yb, t.eps, 0.0,
                                          t.kappa, False)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(run.module.parameters(), t.grad_clip)
            run.optimizer.step()
            run.sparsifier.apply(run.module, run.optimizer)
            total += float(loss.detach()) * len(yb)
            correct += int((logits.argmax(1) == yb).sum())
        seconds = time.perf_counter() - t0
        run.record["seconds_total"] += seconds
        run.record["epochs"].append(epoch_metrics(
            run, t.epochs + 1 + epoch, {"loss": total / len(run.x), "train_acc": correct / len(run.x),
                                        "eps": t.eps, "lr": lr, "units_moved": 0}, seconds))
