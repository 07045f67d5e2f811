"""Exact resume: kill a run anywhere, resume it, get the uninterrupted weights bit for bit.

Kills are simulated in process by a hook that stops the run dead (an exception
nothing catches, raised where the kill lands), and once for real: a child
process sends itself SIGKILL mid-epoch. Every resume runs in a process that
has already trained (the test process), which is the case that used to differ:
TorchScript (inside auto_LiRPA's CROWN) rounded its first calls differently.
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

import toolchain.train.epochs as epochs
import toolchain.train.trainer as trainer
from helpers import tiny_config, tiny_mnist
from toolchain.train.checkpoint import load_checkpoint

# 256 training images in batches of 64: 4 steps an epoch, 16 in all; the eps
# ramp runs over epochs 2-3, masks move every 3 steps until step 12
TRAIN = {"epochs": 4, "warmup_epochs": 1, "ramp_epochs": 2, "batch_size": 64, "val_size": 64}
SPARSITY = {"method": "verisparse", "update_every": 3}   # DST: update steps skip the weight step


class Killed(BaseException):
    """Stands for SIGKILL: nothing in the run catches it."""


@pytest.fixture(scope="module")
def cfg(tmp_path_factory):
    return tiny_config(tiny_mnist(tmp_path_factory.mktemp("data") / "tiny.npz"),
                       train=TRAIN, sparsity=SPARSITY)


@pytest.fixture(scope="module")
def uninterrupted(cfg, tmp_path_factory):
    # CPU sums split per thread, so the thread count is part of the run; a
    # module fixture is set up before conftest's per-test set_num_threads(1)
    torch.set_num_threads(1)
    return trainer.train(cfg, tmp_path_factory.mktemp("full"), show_progress=False)


def kill_at_step(monkeypatch, n: int) -> None:
    """Die as training step ``n`` (0-based, counted in this process) begins."""
    calls = {"n": 0}
    real = epochs.certified_loss

    def loss(*args, **kwargs):
        if calls["n"] == n:
            raise Killed
        calls["n"] += 1
        return real(*args, **kwargs)
    monkeypatch.setattr(epochs, "certified_loss", loss)


def die(*args, **kwargs):
    raise Killed


def assert_same_run(resumed, full) -> None:
    assert resumed.weights_hash() == full.weights_hash()
    assert resumed.masks.keys() == full.masks.keys()
    assert all(torch.equal(resumed.masks[k], full.masks[k]) for k in full.masks)
    drop = ("seconds",)
    assert ([{k: v for k, v in e.items() if k not in drop} for e in resumed.record["epochs"]]
            == [{k: v for k, v in e.items() if k not in drop} for e in full.record["epochs"]])


KILLS = {
    # where the kill lands -> how to land it
    "mid-epoch 2, after 6 steps": lambda mp: kill_at_step(mp, 6),
    "mid-epoch 3, right after a mask update": lambda mp: kill_at_step(mp, 10),
    "while writing the epoch-3 checkpoint": lambda mp: mp.setattr(
        "safetensors.torch.save_file", _nth_call(die, 3)),
    "after the last checkpoint, before model.vst": lambda mp: mp.setattr(
        trainer, "save_model", die),
}


def _nth_call(action, n: int):
    """A stand-in for safetensors' save_file that runs ``action`` on call ``n``."""
    from safetensors.torch import save_file
    calls = {"n": 0}

    def save(*args, **kwargs):
        calls["n"] += 1
        return action(*args, **kwargs) if calls["n"] == n else save_file(*args, **kwargs)
    return save


@pytest.mark.parametrize("where", list(KILLS))
def test_resume_after_a_kill_is_bit_exact(cfg, uninterrupted, tmp_path, monkeypatch, where):
    with monkeypatch.context() as mp:
        KILLS[where](mp)
        with pytest.raises(Killed):
            trainer.train(cfg, tmp_path, show_progress=False)
    assert not (tmp_path / trainer.MODEL_FILE).exists()
    resumed = trainer.train(cfg, tmp_path, resume=True, show_progress=False)
    assert_same_run(resumed, uninterrupted)


def test_resume_at_an_epoch_boundary_is_bit_exact(cfg, uninterrupted, tmp_path):
    trainer.train(cfg, tmp_path, show_progress=False, stop_after=1)
    resumed = trainer.train(cfg, tmp_path, resume=True, show_progress=False)
    assert_same_run(resumed, uninterrupted)


CHILD = textwrap.dedent("""
    import os, signal, sys
    import torch
    sys.path.insert(0, {tests!r})
    torch.set_num_threads(1)                  # as the uninterrupted run
    import toolchain.train.epochs as epochs
    import toolchain.train.trainer as trainer
    from helpers import tiny_config
    calls = {{"n": 0}}
    real = epochs.certified_loss
    def loss(*args, **kwargs):
        if calls["n"] == {kill_step}:
            os.kill(os.getpid(), signal.SIGKILL)
        calls["n"] += 1
        return real(*args, **kwargs)
    epochs.certified_loss = loss
    trainer.train(tiny_config({data!r}, train={train!r}, sparsity={sparsity!r}), {out!r},
               show_progress=False)
""")


def test_resume_after_a_real_sigkill_mid_epoch(cfg, uninterrupted, tmp_path):
    code = CHILD.format(tests=str(Path(__file__).parent), kill_step=9, data=cfg.data.dataset,
                        train=TRAIN, sparsity=SPARSITY, out=str(tmp_path))
    child = subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).parent.parent,
                           env={**os.environ, "PYTHONPATH": str(Path(__file__).parent.parent)},
                           capture_output=True, text=True, timeout=120)
    assert child.returncode == -signal.SIGKILL, child.stderr
    assert load_checkpoint(tmp_path).epoch == 2          # killed in epoch 3, step 9 of 16
    resumed = trainer.train(cfg, tmp_path, resume=True, show_progress=False)
    assert_same_run(resumed, uninterrupted)


def test_checkpoint_carries_random_states_and_step(cfg, uninterrupted, tmp_path):
    trainer.train(cfg, tmp_path, show_progress=False, stop_after=2)
    ck = load_checkpoint(tmp_path)
    assert ck.step == 2 * 4
    assert ck.rng["threads"] == torch.get_num_threads()
    assert ck.rng["torch"].dtype == torch.uint8 and len(ck.rng["numpy"][1]) == 624
    assert isinstance(ck.optimizer["param_groups"][0]["betas"], tuple)
    assert all(int(s["step"]) == 2 * 4 - n_updates(ck) for s in ck.optimizer["state"].values())


def n_updates(ck) -> int:
    """Mask-update steps replace the weight step (RigL): Adam counts the others."""
    return sum(1 for step in range(1, ck.step) if step % SPARSITY["update_every"] == 0)


# -- a damaged or edited checkpoint is refused before anything is written ----------

@pytest.fixture(scope="module")
def one_epoch(cfg, uninterrupted, tmp_path_factory):
    """A run stopped after its first epoch: the checkpoint the cases below edit."""
    out = tmp_path_factory.mktemp("one_epoch")
    trainer.train(cfg, out, show_progress=False, stop_after=1)
    return out


def _meta_json(key, change):
    def edit(meta, tensors):
        value = json.loads(meta[key])
        change(value)
        meta[key] = json.dumps(value)
    return edit


def _tensor(name, change):
    def edit(meta, tensors):
        tensors[name] = change(tensors[name].clone())
    return edit


def _set_first(value):
    def change(t):
        t.view(-1)[0] = value
        return t
    return change


def _drop_one_kept_weight(meta, tensors):
    """A structured mask that keeps a channel but drops one weight of it."""
    name = next(k for k in sorted(tensors) if k.startswith("mask.") and k.endswith(".weight")
                and tensors[k].dim() > 1 and bool(tensors[k].any()))
    mask = tensors[name].clone()
    mask.view(-1)[int(mask.view(-1).nonzero()[0])] = 0.0
    tensors[name] = mask


BAD_CHECKPOINTS = {
    "NaN weight": (_tensor("model.0.weight", _set_first(float("nan"))), "NaN"),
    "infinite bias": (_tensor("model.0.bias", _set_first(float("inf"))), "NaN or infinity"),
    "weight of the wrong shape": (_tensor("model.0.weight", lambda t: t[:1].clone()), "needs"),
    "mask of halves": (_tensor("mask.0.weight", lambda t: t * 0.5), "other than 0 and 1"),
    "mask of twos": (_tensor("mask.0.bias", lambda t: t * 2), "other than 0 and 1"),
    "mask not whole channels": (_drop_one_kept_weight, "does not agree"),
    "NaN learning rate": (_meta_json("optimizer", lambda o: o["param_groups"][0].__setitem__(
        "lr", float("nan"))), "optimizer settings"),
    "beta of 1": (_meta_json("optimizer", lambda o: o["param_groups"][0].__setitem__(
        "betas", [0.9, 1.0])), "optimizer settings"),
    "amsgrad switched on": (_meta_json("optimizer", lambda o: o["param_groups"][0].__setitem__(
        "amsgrad", True)), "optimizer groups"),
    "NaN second moment": (_tensor("opt.0.exp_avg_sq", _set_first(float("nan"))), "opt"),
    "moment of the wrong shape": (_tensor("opt.0.exp_avg", lambda t: t.reshape(-1)[:3].clone()),
                                  "shape"),
    "torch random state cut": (_tensor("rng.torch", lambda t: t[:100].clone()), "random state"),
    "numpy random state short": (_meta_json("rng", lambda r: r["numpy"].__setitem__(
        1, r["numpy"][1][:10])), "random state"),
    "numpy position out of range": (_meta_json("rng", lambda r: r["numpy"].__setitem__(
        2, 10 ** 6)), "random state"),
    "python random state garbage": (_meta_json("rng", lambda r: r.__setitem__(
        "python", [3, [1, 2], None])), "random state"),
    "zero threads": (_meta_json("rng", lambda r: r.__setitem__("threads", 0)), "random state"),
    "record rows missing": (_meta_json("record", lambda r: r.__setitem__("epochs", [])),
                            "one row per epoch"),
}


@pytest.mark.parametrize("case", list(BAD_CHECKPOINTS))
def test_a_damaged_checkpoint_is_refused_before_model_vst(cfg, one_epoch, tmp_path, case):
    from safetensors import safe_open
    from safetensors.torch import save_file

    from toolchain.errors import VstError
    from toolchain.train.checkpoint import CHECKPOINT

    edit, needle = BAD_CHECKPOINTS[case]
    shutil.copy(one_epoch / CHECKPOINT, tmp_path / CHECKPOINT)
    with safe_open(str(tmp_path / CHECKPOINT), framework="pt") as fh:
        meta, tensors = dict(fh.metadata()), {k: fh.get_tensor(k) for k in fh.keys()}
    edit(meta, tensors)
    save_file(tensors, str(tmp_path / CHECKPOINT), metadata=meta)
    with pytest.raises(VstError, match=needle) as exc:
        trainer.train(cfg, tmp_path, resume=True, show_progress=False)
    assert "\n" not in str(exc.value)
    assert not (tmp_path / trainer.MODEL_FILE).exists()
