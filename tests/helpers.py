"""Tiny data and configs shared by the tests."""

from __future__ import annotations

import numpy as np
import torch

from toolchain.config import config_from_dict
from toolchain.models import layers as L
from toolchain.models.modelfile import VstModel
from toolchain.models.torch_build import build_torch
from toolchain.models.zoo import build_network


def tiny_mnist(path, n_train=320, n_test=80):
    """A small, real slice of mnist5k written as a user .npz (seeded, balanced enough)."""
    from toolchain.data import load_dataset

    d = load_dataset("mnist5k")
    np.savez(path, x=d.x_train[:n_train], y=d.y_train[:n_train],
             x_test=d.x_test[:n_test], y_test=d.y_test[:n_test])
    return path


def natural_model(root, net: L.Network, data, epochs: int, seed: int = 0):
    """``net`` trained with plain cross-entropy (Adam 3e-3, batches of 16, seeded) on
    ``data`` (the arrays of root/tiny.npz), saved as root/model.vst: a net that was
    never certified, for the complete-verification tests. Returns (model, dataset)."""
    from toolchain.data import load_dataset
    from toolchain.models.modelfile import save_model

    torch.manual_seed(seed)
    module = build_torch(net)
    opt = torch.optim.Adam(module.parameters(), 3e-3)
    x, y = torch.from_numpy(data["x"]), torch.from_numpy(data["y"]).long()
    for _ in range(epochs):
        for i in range(0, len(x), 16):
            loss = torch.nn.functional.cross_entropy(module(x[i:i + 16]), y[i:i + 16])
            opt.zero_grad()
            loss.backward()
            opt.step()
    model = VstModel(net, {k: v.detach().clone() for k, v in module.state_dict().items()},
                     record={"config": {"data": {"dataset": str(root / "tiny.npz")}}})
    save_model(root / "model.vst", model)
    return model, load_dataset(str(root / "tiny.npz"))


def tiny_config(data_path, **sections):
    base = {
        "data": {"dataset": str(data_path)},
        "model": {"arch": "cnn_small", "channels": [4, 8], "widths": [16]},
        "sparsity": {"update_every": 5, "density": 0.3},
        "train": {"epochs": 3, "batch_size": 64, "warmup_epochs": 1, "ramp_epochs": 1,
                  "val_size": 64, "eps": 0.1, "threads": 1},
        "verify": {"eps": 0.05},
    }
    for name, values in sections.items():
        base.setdefault(name, {}).update(values)
    return config_from_dict(base)


NETWORKS = {
    "mlp_bn": build_network("mlp", (1, 8, 8), 5, widths=(16,), batchnorm=True),
    "cnn_bn": build_network("cnn_small", (1, 12, 12), 10, channels=(4, 8), widths=(16,),
                            batchnorm=True),
    "conv1d_bn": build_network("conv1d", (2, 32), 4, channels=(4, 8), widths=(16,),
                               batchnorm=True),
    "normalize_cnn": L.Network((3, 8, 8), (L.Normalize((0.1, 0.2, 0.3), (0.5, 0.6, 0.7)),)
                               + build_network("cnn_small", (3, 8, 8), 5, channels=(4, 8),
                                               widths=(16,)).layers),
    "normalize_conv1d": L.Network((2, 16), (L.Normalize((0.5,), (0.25,)), L.Conv1d(2, 3, 3, 1, 1),
                                            L.ReLU(), L.Flatten(), L.Linear(48, 3))),
    "conv_only": L.Network((1, 12, 12), (L.Conv2d(1, 4, 4, 2, 1), L.ReLU(), L.Conv2d(4, 6, 3, 1, 1),
                                         L.ReLU(), L.Flatten())),
    "bn_first_flatten_last": L.Network((2, 3, 3), (L.BatchNorm(2), L.Conv2d(2, 3, 1),
                                                   L.Flatten())),
}


def random_model(net: L.Network, seed: int = 0) -> VstModel:
    """Random weights, with BatchNorm statistics far from the identity so they matter."""
    torch.manual_seed(seed)
    module = build_torch(net)
    for m in module.modules():
        if isinstance(m, (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d)):
            m.running_mean.normal_(0, 0.1)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.normal_(0, 0.1)
    return VstModel(net, {k: v.detach().clone() for k, v in module.state_dict().items()})


# mostly natural epochs and small batches: a tiny model that has learned something
# (about 55% test accuracy on 320 images, ~2 s), so top-1 comparisons are meaningful
TRAIN = {"epochs": 8, "warmup_epochs": 6, "ramp_epochs": 1, "batch_size": 16, "lr": 3e-3}


def train_tiny(root):
    """A tiny sparse certified-trained model on a slice of mnist5k, and that slice."""
    from toolchain.train.trainer import train

    data = dict(np.load(tiny_mnist(root / "tiny.npz")))
    return train(tiny_config(root / "tiny.npz", train=TRAIN,
                             sparsity={"method": "verisparse"}),   # at the target from step 0
                 root / "run", show_progress=False), data


def resum(c):
    """Make every summary of a certificate (float or int8) agree with its (edited)
    samples, as a careful forger would (tests of the certificate checks and of
    shard merging)."""
    for r in c["results"]:
        ss, n = r["samples"], max(1, len(r["samples"]))
        r["n"] = len(ss)
        r["counts"] = {v: sum(s["verdict"] == v for s in ss)
                       for v in ("verified", "falsified", "unknown")}
        by = {}
        for s in ss:
            if s["verdict"] == "verified" and "method" in s:
                by[s["method"]] = by.get(s["method"], 0) + 1
        if "verified_by" in r:
            r["verified_by"] = by
        if "falsified_by" in r:
            fby = {}
            for s in ss:
                if s["verdict"] == "falsified":
                    fby[s["method"]] = fby.get(s["method"], 0) + 1
            r["falsified_by"] = fby
        r["verified_acc"] = r["counts"]["verified"] / n
        if "robust_acc_upper" in r:
            r["robust_acc_upper"] = 1.0 - r["counts"]["falsified"] / n
        # misclassified: "clean" in a float certificate, every falsified one in int8
        # (whose samples name no method, or null: only verified ones have a prover)
        r["clean_acc"] = 1.0 - sum(s["verdict"] == "falsified"
                                   and s.get("method", "clean") in ("clean", None)
                                   for s in ss) / n
        if "samples_per_second" in r:
            r["samples_per_second"] = len(ss) / max(r["seconds"], 1e-9)
    return c


def set_at(keys, value):
    """An edit that sets the value at a key path of a certificate (forgery tests)."""
    def edit(c):
        obj = c
        for k in keys[:-1]:
            obj = obj[k]
        obj[keys[-1]] = value
    return edit


def train_certified_tiny(root):
    """A tiny model certified-trained long enough that verification gives every
    verdict (verified, falsified by attack, misclassified): (data path, model).
    Shared by the verification, certificate-check and shard tests."""
    from toolchain.train.trainer import train

    data_path = tiny_mnist(root / "tiny.npz")
    cfg = tiny_config(data_path, train={"epochs": 8, "warmup_epochs": 2, "ramp_epochs": 4,
                                        "batch_size": 32, "lr": 2e-3, "eps": 0.08})
    return data_path, train(cfg, root / "run", show_progress=False)


def assert_one_line(code, stderr, expected_code, needle):
    """Exit code ``expected_code``, one stderr line containing ``needle``, no traceback."""
    lines = stderr.strip().splitlines()
    assert code == expected_code, stderr
    assert len(lines) == 1, stderr
    assert "Traceback" not in stderr and "unexpected" not in stderr, stderr
    assert needle in lines[0], lines[0]
