"""Per-epoch checkpoints for ``vst train --resume``.

Everything needed to continue bit-for-bit: weights, masks, Adam state
(moments and step), the epoch and optimizer step reached, the record so far,
the process-wide random states (torch, numpy, python ``random``) and the torch
thread count. Stored with safetensors + JSON (no pickle), written atomically,
so a run killed at any point resumes from the last whole epoch.

The training streams themselves need no state: every shuffle and every random
regrowth draws from a generator seeded by (seed, epoch/step), and the schedules
are pure functions of the step. The global random states are saved anyway, so
that anything that draws from them (none of today's code does) stays exact.
"""

from __future__ import annotations

import json
import math
import random
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from toolchain.atomic import atomic_path
from toolchain.errors import VstError
from toolchain.inputs import check_input

CHECKPOINT = "checkpoint.safetensors"


@dataclass
class Checkpoint:
    epoch: int                 # epochs completed
    state: dict
    masks: dict
    optimizer: dict            # torch optimizer state_dict
    record: dict
    config: dict
    step: int = -1             # optimizer steps taken (-1: not recorded, older checkpoint)
    rng: dict = field(default_factory=dict)   # capture_rng(); {} when not recorded
    # the training method's own state (Method.state()): tensors and JSON-able values
    method_tensors: dict = field(default_factory=dict)
    method_meta: dict = field(default_factory=dict)


def capture_rng() -> dict:
    """The process-wide random states and the thread count, to save with a checkpoint."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    return {"torch": torch.get_rng_state(),
            "numpy": [kind, keys.tolist(), int(pos), int(has_gauss), float(gauss)],
            "python": [version, list(internal), gauss_next],
            "threads": torch.get_num_threads()}


def check_rng(rng: dict, where) -> None:
    """``VstError`` unless ``rng`` (a loaded checkpoint's) is what ``capture_rng``
    writes: each state is tried on a private generator, so nothing global
    changes until ``restore_rng``."""
    if not rng:
        return
    try:
        torch.Generator().set_state(rng["torch"])
        kind, keys, pos, has_gauss, gauss = rng["numpy"]
        if not (len(keys) == 624 and 0 <= pos <= 624 and has_gauss in (0, 1)
                and math.isfinite(gauss)):
            raise ValueError("numpy position or gauss out of range")
        np.random.RandomState().set_state((kind, np.asarray(keys, dtype=np.uint32), pos,
                                           has_gauss, gauss))
        version, internal, gauss_next = rng["python"]
        random.Random().setstate((version, tuple(internal), gauss_next))
        threads = rng["threads"]
        if isinstance(threads, bool) or not isinstance(threads, int) or not 1 <= threads <= 1024:
            raise ValueError(f"threads {threads!r}")
    except (KeyError, ValueError, TypeError, RuntimeError, OverflowError, IndexError) as exc:
        raise VstError(f"{where}: damaged random state ({type(exc).__name__}: "
                       f"{str(exc).splitlines()[0] if str(exc) else ''})") from None


def restore_rng(rng: dict) -> None:
    """Put back what :func:`capture_rng` saved (CPU reductions split per thread,
    so the thread count is part of what makes a step bit-exact)."""
    if not rng:
        return
    torch.set_rng_state(rng["torch"])
    kind, keys, pos, has_gauss, gauss = rng["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, gauss))
    version, internal, gauss_next = rng["python"]
    random.setstate((version, tuple(internal), gauss_next))
    if rng["threads"] != torch.get_num_threads():
        torch.set_num_threads(rng["threads"])


def save_checkpoint(out_dir: Path, ck: Checkpoint) -> None:
    from safetensors.torch import save_file

    # stored from the CPU whatever device trained (load_checkpoint gives CPU tensors)
    tensors = {f"model.{k}": v.detach().cpu().contiguous() for k, v in ck.state.items()}
    tensors.update({f"mask.{k}": v.cpu().contiguous() for k, v in ck.masks.items()})
    opt_meta = {"param_groups": ck.optimizer["param_groups"], "state": {}}
    for idx, st in ck.optimizer["state"].items():
        opt_meta["state"][str(idx)] = sorted(st)
        for key, value in st.items():
            tensors[f"opt.{idx}.{key}"] = torch.as_tensor(value).detach().cpu().contiguous()
    meta = {"epoch": str(ck.epoch), "step": str(ck.step),
            "record": json.dumps(ck.record, default=str),
            "config": json.dumps(ck.config), "optimizer": json.dumps(opt_meta)}
    tensors.update({f"method.{k}": v.detach().cpu().contiguous()
                    for k, v in ck.method_tensors.items()})
    meta["method"] = json.dumps(ck.method_meta)
    if ck.rng:
        tensors["rng.torch"] = ck.rng["torch"].contiguous()
        meta["rng"] = json.dumps({k: v for k, v in ck.rng.items() if k != "torch"})
    with atomic_path(out_dir / CHECKPOINT) as tmp:
        save_file(tensors, str(tmp), metadata=meta)


def load_checkpoint(out_dir: Path) -> Checkpoint:
    from safetensors import SafetensorError, safe_open

    path = out_dir / CHECKPOINT
    if not path.exists():
        raise VstError(f"nothing to resume: no {CHECKPOINT} in {out_dir}")
    check_input(path, "checkpoint")
    try:
        with safe_open(str(path), framework="pt") as fh:
            meta = fh.metadata()
            tensors = {k: fh.get_tensor(k) for k in fh.keys()}
        opt_meta = json.loads(meta["optimizer"])
        for group in opt_meta["param_groups"]:       # JSON made Adam's betas a list
            if isinstance(group.get("betas"), list):
                group["betas"] = tuple(group["betas"])
        rng = {}
        if "rng" in meta:
            rng = {**json.loads(meta["rng"]), "torch": tensors["rng.torch"]}
        optimizer = {"param_groups": opt_meta["param_groups"],
                     "state": {int(i): {k: tensors[f"opt.{i}.{k}"] for k in keys}
                               for i, keys in opt_meta["state"].items()}}
        return Checkpoint(
            epoch=int(meta["epoch"]),
            state={k[6:]: v for k, v in tensors.items() if k.startswith("model.")},
            masks={k[5:]: v for k, v in tensors.items() if k.startswith("mask.")},
            optimizer=optimizer, record=json.loads(meta["record"]),
            config=json.loads(meta["config"]), step=int(meta.get("step", -1)), rng=rng,
            method_tensors={k[7:]: v for k, v in tensors.items() if k.startswith("method.")},
            method_meta=json.loads(meta.get("method", "{}")))
    except (SafetensorError, KeyError, ValueError, OSError) as exc:
        raise VstError(f"{path}: damaged checkpoint ({str(exc).splitlines()[0]})") from None
