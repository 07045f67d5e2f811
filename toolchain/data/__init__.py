"""Data sets stage: built-ins and user files -> a checked ``Dataset``.

>>> from toolchain.data import load_dataset, list_builtin   # doctest: +SKIP
>>> load_dataset("mnist5k")                                  # doctest: +SKIP
Dataset('mnist5k', train=4000, test=1000, input_shape=(1, 28, 28), num_classes=10)

Every dataset is float32 in [0, 1], channels first, labels int64; see
``prepare`` for the layout and scaling rules every loader follows.
"""

from toolchain.data.builtin import BUILTIN, list_builtin
from toolchain.data.dataset import Dataset
from toolchain.data.load import load_data, load_dataset

__all__ = ["BUILTIN", "Dataset", "list_builtin", "load_data", "load_dataset"]
