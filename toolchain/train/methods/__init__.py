"""Training methods as peers over one epoch loop (``train/loop.py``).

One module per method; each defines a ``Method`` subclass (see ``base.py``)
and the registry below names it. The config's ``sparsity.method`` picks one:

- ``dense``: certified training of the whole network (baseline);
- ``verisparse``: sparse from a random sparse mask, dynamic sparse training
  (drop the weakest units, regrow by the robust-loss gradient; ``dst.py``);
- ``verisparse-gradual``: sparse from a random sparse mask that is denser
  than the target, shrunk to it on a cubic schedule by the end of the eps
  ramp, units ranked by a robust-loss importance (``gradual.py``);
- ``hydra``: dense certified pre-training, score pruning, certified
  fine-tuning (Sehwag et al. 2020; ``hydra.py``).

To add a method: a new module with a ``Method`` subclass, a line in
``_MODULES``, its name in ``config.SparsityConfig.method``'s choices (a test
keeps the two equal).
"""

from __future__ import annotations

import importlib

from toolchain.train.methods.base import Method

_MODULES = {"dense": "dense", "verisparse": "dst", "verisparse-gradual": "gradual",
            "hydra": "hydra"}
NAMES = tuple(_MODULES)


def get_method(name: str) -> Method:
    """A fresh instance of the method the config names."""
    module = importlib.import_module(f"toolchain.train.methods.{_MODULES[name]}")
    return module.METHOD()


__all__ = ["Method", "NAMES", "get_method"]
