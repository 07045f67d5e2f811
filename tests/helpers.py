"""Tiny data and configs shared by the tests."""

from __future__ import annotations

import numpy as np

from toolchain.config import config_from_dict


def tiny_mnist(path, n_train=320, n_test=80):
    """A small, real slice of mnist5k written as a user .npz (seeded, balanced enough)."""
    from toolchain.data import load_dataset

    d = load_dataset("mnist5k")
    np.savez(path, x=d.x_train[:n_train], y=d.y_train[:n_train],
             x_test=d.x_test[:n_test], y_test=d.y_test[:n_test])
    return path


def tiny_config(data_path, **sections):
    base = {
        "data": {"dataset": str(data_path)},
        "model": {"arch": "cnn_small", "channels": [4, 8], "widths": [16]},
        "sparsity": {"update_every": 5, "density": 0.3},
        "train": {"epochs": 3, "batch_size": 64, "warmup_epochs": 1, "ramp_epochs": 1,
                  "val_size": 64, "eps": 0.1},
        "verify": {"eps": 0.05},
    }
    for name, values in sections.items():
        base.setdefault(name, {}).update(values)
    return config_from_dict(base)
