"""Per-epoch checkpoints for ``vst train --resume``.

Everything needed to continue bit-for-bit: weights, masks, Adam state, the
epoch reached and the record so far. Stored with safetensors + JSON (no
pickle), written atomically. Random streams need no saving: every shuffle and
every random regrowth draws from a generator seeded by (seed, epoch/step).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from toolchain.atomic import atomic_path
from toolchain.errors import VstError

CHECKPOINT = "checkpoint.safetensors"


@dataclass
class Checkpoint:
    epoch: int                 # epochs completed
    state: dict
    masks: dict
    optimizer: dict            # torch optimizer state_dict
    record: dict
    config: dict


def save_checkpoint(out_dir: Path, ck: Checkpoint) -> None:
    from safetensors.torch import save_file

    tensors = {f"model.{k}": v.detach().contiguous() for k, v in ck.state.items()}
    tensors.update({f"mask.{k}": v.contiguous() for k, v in ck.masks.items()})
    opt_meta = {"param_groups": ck.optimizer["param_groups"], "state": {}}
    for idx, st in ck.optimizer["state"].items():
        opt_meta["state"][str(idx)] = sorted(st)
        for key, value in st.items():
            tensors[f"opt.{idx}.{key}"] = torch.as_tensor(value).detach().contiguous()
    meta = {"epoch": str(ck.epoch), "record": json.dumps(ck.record, default=str),
            "config": json.dumps(ck.config), "optimizer": json.dumps(opt_meta)}
    with atomic_path(out_dir / CHECKPOINT) as tmp:
        save_file(tensors, str(tmp), metadata=meta)


def load_checkpoint(out_dir: Path) -> Checkpoint:
    from safetensors import SafetensorError, safe_open

    path = out_dir / CHECKPOINT
    if not path.is_file():
        raise VstError(f"nothing to resume: no {CHECKPOINT} in {out_dir}")
    try:
        with safe_open(str(path), framework="pt") as fh:
            meta = fh.metadata()
            tensors = {k: fh.get_tensor(k) for k in fh.keys()}
        opt_meta = json.loads(meta["optimizer"])
        optimizer = {"param_groups": opt_meta["param_groups"],
                     "state": {int(i): {k: tensors[f"opt.{i}.{k}"] for k in keys}
                               for i, keys in opt_meta["state"].items()}}
        return Checkpoint(
            epoch=int(meta["epoch"]),
            state={k[6:]: v for k, v in tensors.items() if k.startswith("model.")},
            masks={k[5:]: v for k, v in tensors.items() if k.startswith("mask.")},
            optimizer=optimizer, record=json.loads(meta["record"]),
            config=json.loads(meta["config"]))
    except (SafetensorError, KeyError, ValueError, OSError) as exc:
        raise VstError(f"{path}: damaged checkpoint ({str(exc).splitlines()[0]})") from None
