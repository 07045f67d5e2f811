"""``vst train --resume``: load the checkpoint, check every part of it against
the run it is to continue, then put it in place.

A checkpoint is a file like any other input: it may be damaged or edited. So
before anything is loaded (and long before a new ``model.vst`` is written)
it must match the run the config builds, part by part, else one ``VstError``
line names what is wrong:

- epoch and step: within the run, the record holds one row per epoch;
- weights: the module's tensor names, shapes and dtypes, every value finite;
- masks: 0/1 only, and exactly what the sparsifier makes of them (a mask of
  0.5s, or a structured mask that is not whole channels, is refused);
- optimizer: the same parameter groups, finite hyper-parameters (lr > 0,
  betas in [0, 1), eps > 0), moments of the parameters' shapes, finite;
- the method's state, finite; the random states (``checkpoint.check_rng``).
"""

from __future__ import annotations

import math
from pathlib import Path

import torch

from toolchain.errors import VstError
from toolchain.train.checkpoint import CHECKPOINT, Checkpoint, check_rng, load_checkpoint, \
    restore_rng
from toolchain.train.epochs import steps_per_epoch

HYPER = ("lr", "betas", "eps", "weight_decay")     # Adam's numbers, checked by range
ADAM_STATE = {"step", "exp_avg", "exp_avg_sq"}


def resume_run(run, out_dir: Path) -> tuple[int, float]:
    """Put the checkpoint in ``out_dir`` into ``run``; (epochs done, seconds so far)."""
    ck = load_checkpoint(out_dir)
    where = out_dir / CHECKPOINT
    if _without_runtime(ck.config) != _without_runtime(run.cfg.to_dict()):
        raise VstError(f"{out_dir}: checkpoint was made with a different config; "
                       "resume with the same config or start a new --out")
    if ck.step not in (-1, ck.epoch * steps_per_epoch(run)):
        raise VstError(f"{out_dir}: checkpoint at epoch {ck.epoch} has {ck.step} steps, "
                       f"expected {ck.epoch * steps_per_epoch(run)}; start a new --out")
    check_checkpoint(ck, run, where)
    run.module.load_state_dict(ck.state)          # copied onto the module's device
    run.optimizer.load_state_dict(ck.optimizer)   # moved to the parameters' device
    try:
        run.method.load_state(ck.method_tensors, ck.method_meta)
    except (KeyError, ValueError, TypeError, IndexError) as exc:
        raise VstError(f"{where}: damaged method state ({type(exc).__name__}: {exc})") from None
    restore_rng(ck.rng)                           # also the thread count of the first run
    run.record = ck.record
    return ck.epoch, float(ck.record["seconds_total"])


def check_checkpoint(ck: Checkpoint, run, where: Path) -> None:
    """Every part of ``ck`` fits ``run`` (see the module docstring); restores the
    sparsifier's masks on the way (the check of a mask is what it restores to)."""
    epochs = run.cfg.train.epochs
    if not 0 <= ck.epoch <= epochs:
        raise VstError(f"{where}: epoch {ck.epoch} is outside this run's 0..{epochs}")
    _check_record(ck.record, ck.epoch, where)
    _check_tensors("weight", ck.state, run.module.state_dict(), where)
    _check_masks(ck.masks, run.sparsifier, where)
    _check_optimizer(ck.optimizer, run.optimizer, where)
    for name, value in ck.method_tensors.items():
        if value.is_floating_point() and not bool(value.isfinite().all()):
            raise VstError(f"{where}: method tensor {name} holds NaN or infinity")
    check_rng(ck.rng, where)


def _check_record(record, epoch: int, where: Path) -> None:
    rows = record.get("epochs") if isinstance(record, dict) else None
    seconds = record.get("seconds_total") if isinstance(record, dict) else None
    if not isinstance(rows, list) or len(rows) != epoch:
        raise VstError(f"{where}: the record does not hold one row per epoch done ({epoch})")
    if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or \
            not math.isfinite(seconds) or seconds < 0:
        raise VstError(f"{where}: record.seconds_total must be a number >= 0, got {seconds!r}")


def _check_tensors(what: str, got: dict, expected: dict, where: Path) -> None:
    missing, extra = sorted(set(expected) - set(got)), sorted(set(got) - set(expected))
    if missing or extra:
        raise VstError(f"{where}: {what} tensors do not match the model (missing "
                       f"{missing[:3]}, unexpected {extra[:3]})")
    for name, ref in expected.items():
        value = got[name]
        if tuple(value.shape) != tuple(ref.shape) or value.dtype != ref.dtype:
            raise VstError(f"{where}: {what} {name} is {value.dtype} {tuple(value.shape)}, the "
                           f"model needs {ref.dtype} {tuple(ref.shape)}")
        if value.is_floating_point() and not bool(value.isfinite().all()):
            raise VstError(f"{where}: {what} {name} holds NaN or infinity")


def _check_masks(masks: dict, sparsifier, where: Path) -> None:
    if sparsifier is None:
        if masks:
            raise VstError(f"{where}: holds masks, but this run trains dense")
        return
    _check_tensors("mask", masks, sparsifier.param_masks(), where)
    for name, mask in masks.items():
        if not bool(((mask == 0) | (mask == 1)).all()):
            raise VstError(f"{where}: mask {name} holds values other than 0 and 1")
    sparsifier.load_param_masks(masks)
    rebuilt = sparsifier.param_masks()
    wrong = next((n for n in rebuilt if not torch.equal(rebuilt[n], masks[n].float())), None)
    if wrong is not None:
        raise VstError(f"{where}: mask {wrong} does not agree with the others (a "
                       f"{sparsifier.mode} mask keeps or drops whole units)")


def _check_optimizer(saved: dict, optimizer, where: Path) -> None:
    fresh = optimizer.state_dict()
    groups = saved.get("param_groups")
    if not isinstance(groups, list) or len(groups) != len(fresh["param_groups"]):
        raise VstError(f"{where}: optimizer groups do not match the model")
    for group, ref in zip(groups, fresh["param_groups"]):
        settings = {k: v for k, v in ref.items() if k not in HYPER}
        if not isinstance(group, dict) or set(group) != set(ref) or \
                any(group[k] != v for k, v in settings.items()):
            raise VstError(f"{where}: optimizer groups do not match the model")
        _check_hyper(group, where)
    indices = [i for ref in fresh["param_groups"] for i in ref["params"]]
    shapes = dict(zip(indices, (tuple(p.shape) for p in _params(optimizer))))
    for index, state in saved.get("state", {}).items():
        if index not in shapes or set(state) != ADAM_STATE:
            raise VstError(f"{where}: optimizer state of parameter {index} does not match "
                           "the model")
        for key, value in state.items():
            if not torch.is_tensor(value) or not value.is_floating_point():
                raise VstError(f"{where}: optimizer {key} of parameter {index} is not a "
                               "float tensor")
            if not bool(value.isfinite().all()) or (key != "exp_avg" and bool((value < 0).any())):
                raise VstError(f"{where}: optimizer {key} of parameter {index} holds NaN, "
                               "infinity or a negative value")
            if key != "step" and tuple(value.shape) != shapes[index]:
                raise VstError(f"{where}: optimizer {key} of parameter {index} has shape "
                               f"{tuple(value.shape)}, the parameter {shapes[index]}")


def _params(optimizer):
    return [p for group in optimizer.param_groups for p in group["params"]]


def _check_hyper(group: dict, where: Path) -> None:
    """Adam's numbers: lr > 0, betas in [0, 1), eps > 0, weight decay >= 0, all finite."""
    def number(v):
        return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)

    betas = group.get("betas")
    ok = (number(group.get("lr")) and group["lr"] > 0
          and isinstance(betas, (tuple, list)) and len(betas) == 2
          and all(number(b) and 0 <= b < 1 for b in betas)
          and number(group.get("eps")) and group["eps"] > 0
          and number(group.get("weight_decay")) and group["weight_decay"] >= 0)
    if not ok:
        shown = {k: group.get(k) for k in ("lr", "betas", "eps", "weight_decay")}
        raise VstError(f"{where}: optimizer settings out of range: {shown}")


def _without_runtime(config: dict) -> dict:
    """A checkpoint may be resumed on another device or thread setting (or
    written before those keys existed); the threads it ran with are restored."""
    return {name: {k: v for k, v in section.items() if k not in ("device", "threads")}
            if isinstance(section, dict) else section for name, section in config.items()}
