"""Training methods as peers over one epoch loop (``train/epochs.py``).

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
``_METHODS``, its name in ``config.SparsityConfig.method``'s choices (a test
keeps the two equal).
"""

from __future__ import annotations

from toolchain.train.methods import dense, dst, gradual, hydra
from toolchain.train.methods.base import Method

_METHODS = {"dense": dense.METHOD, "verisparse": dst.METHOD,
            "verisparse-gradual": gradual.METHOD, "hydra": hydra.METHOD}
NAMES = tuple(_METHODS)


def get_method(name: str) -> Method:
    """A fresh instance of the method the config names."""
    return _METHODS[name]()


__all__ = ["Method", "NAMES", "get_method"]
