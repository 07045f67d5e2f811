"""``load_dataset``: one entry point for built-ins and user files
(``load_data(cfg)``: the one a config names, as training and the build read it).

Dispatch on the spec:

- a built-in name (``mnist5k``, ``japanesevowels``, ..., ``synth1d``; see
  ``builtin.py``) -> that data set (its own fixed split; ``test_fraction``
  and ``seed`` do not apply). A file with the same name is reachable as
  ``./mnist5k``.
- ``*.npz``                     -> npzfile.load_npz
- ``*.csv`` / ``*.csv.gz``      -> csvfile.load_csv
- ``*-ubyte`` / ``*-ubyte.gz``  -> idx.load_idx (images file)
- a directory with CIFAR-10 ``data_batch_*`` (itself or ``cifar-10-batches-py/``
  inside it) -> cifar.load_cifar; with IDX ``train-images-...`` -> idx.load_idx

>>> ds = load_dataset("mnist5k")               # doctest: +SKIP
>>> ds.input_shape, ds.num_classes             # doctest: +SKIP
((1, 28, 28), 10)
"""

from __future__ import annotations

import difflib
import os
from pathlib import Path

from toolchain.data.builtin import BUILTIN
from toolchain.data.cifar import batch_dir, load_cifar
from toolchain.data.csvfile import load_csv
from toolchain.data.dataset import Dataset
from toolchain.data.idx import has_idx_files, is_idx_name, load_idx
from toolchain.data.npzfile import load_npz
from toolchain.data.prepare import Raw, assemble, check_options
from toolchain.errors import VstError
from toolchain.inputs import check_input

FORMATS = ("a built-in name (" + ", ".join(BUILTIN) + "), .npz, .csv[.gz], "
           "MNIST IDX *-ubyte[.gz] or a directory of them, a CIFAR-10 batches directory")


def load_dataset(
    spec: str | os.PathLike,
    *,
    test_fraction: float = 0.2,
    seed: int = 0,
    num_classes: int | None = None,
    input_shape: tuple[int, ...] | None = None,
) -> Dataset:
    """Load, check and scale a data set; split off a test set if it has none.

    ``test_fraction`` and ``seed`` define the split when the data has no test
    set of its own. ``num_classes`` (default: largest label + 1) bounds the
    labels. ``input_shape`` (C, H, W) or (C, L) reshapes flat samples, e.g. CSV
    rows. Any bad input raises ``VstError`` with one line naming the problem.
    """
    check_options(test_fraction, seed, num_classes)
    if not isinstance(spec, (str, os.PathLike)) or not str(spec).strip():
        raise VstError(f"data set must be a built-in name or a path, got {spec!r}")
    name, raw = _read(str(spec))
    return assemble(name, raw, num_classes=num_classes, input_shape=input_shape,
                    test_fraction=test_fraction, seed=seed)


def load_data(cfg) -> Dataset:
    """The data set a ``config.Config`` names, split as it says (seeded by ``train.seed``)."""
    return load_dataset(cfg.data.dataset, test_fraction=cfg.data.test_fraction,
                        seed=cfg.train.seed, num_classes=cfg.data.num_classes or None)


def _read(spec: str) -> tuple[str, Raw]:
    if spec in BUILTIN:
        return spec, BUILTIN[spec].load()
    path = Path(spec).expanduser()
    if not path.exists():
        raise VstError(_missing(spec, path))
    name = path.name.removesuffix(".gz")
    if path.is_dir():
        if batch_dir(path) is not None:
            return name, load_cifar(path)
        if has_idx_files(path):
            return name, load_idx(path)
        raise VstError(f"{path}: directory holds no CIFAR-10 batches or MNIST IDX files; "
                       f"expected {FORMATS}")
    check_input(path, "data file")              # a FIFO or a device: refused here, at once
    lower = path.name.lower()
    if lower.endswith(".npz"):
        return path.stem, load_npz(path)
    if lower.endswith((".csv", ".csv.gz")):
        return name.removesuffix(".csv"), load_csv(path)
    if is_idx_name(lower):
        return name, load_idx(path)
    raise VstError(f"{path}: unknown data format; expected {FORMATS}")


def _missing(spec: str, path: Path) -> str:
    looks_like_name = os.sep not in spec and "/" not in spec and "." not in spec
    if looks_like_name:
        close = difflib.get_close_matches(spec, list(BUILTIN), n=1, cutoff=0.5)
        hint = f"did you mean '{close[0]}'? " if close else ""
        return f"unknown data set '{spec}': {hint}built-ins are {', '.join(BUILTIN)}; or give a path"
    try:
        siblings = [p.name for p in path.parent.iterdir()]
    except OSError:
        siblings = []
    close = difflib.get_close_matches(path.name, siblings, n=1)
    hint = f" (did you mean '{path.with_name(close[0])}'?)" if close else ""
    return f"no such file or directory: {spec}{hint}"
