"""Data sets stage: built-ins, every loader's round trip, and every bad input."""

from __future__ import annotations

import gzip
import io
import os
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest

from toolchain.data import BUILTIN, Dataset, list_builtin, load_dataset
from toolchain.errors import VstError

MNIST5K_SHA256 = "097d2d905713dd4e940ddda0e09b7fe1322e3db1db68fe249f2a897b5f8d5870"
RNG = np.random.default_rng(42)


# ---------------------------------------------------------------- built-ins

@pytest.fixture(scope="module")
def mnist():
    return load_dataset("mnist5k")


def test_mnist5k_shapes_range_and_classes(mnist):
    assert mnist.x_train.shape == (4000, 1, 28, 28)
    assert mnist.x_test.shape == (1000, 1, 28, 28)
    assert mnist.x_train.dtype == np.float32 and mnist.y_train.dtype == np.int64
    assert 0.0 <= mnist.x_train.min() and mnist.x_train.max() == 1.0
    assert mnist.num_classes == 10 and mnist.input_shape == (1, 28, 28)
    assert np.bincount(mnist.y_train).tolist() == [400] * 10
    assert np.bincount(mnist.y_test).tolist() == [100] * 10
    # Real digits, not noise: about a fifth of MNIST pixels are ink.
    assert 0.08 < (mnist.x_train > 0.5).mean() < 0.2


def test_mnist5k_split_and_hash_are_fixed(mnist):
    again = load_dataset("mnist5k", seed=7, test_fraction=0.5)  # built-in split is fixed
    assert np.array_equal(again.y_test, mnist.y_test)
    assert mnist.sha256() == again.sha256() == MNIST5K_SHA256
    train = {a.tobytes() for a in mnist.x_train[:, 0]}
    assert not any(a.tobytes() in train for a in mnist.x_test[:, 0])  # disjoint splits
    assert repr(mnist) == "Dataset('mnist5k', train=4000, test=1000, input_shape=(1, 28, 28), num_classes=10)"


def test_list_builtin_matches_what_loads(mnist):
    rows = {r["name"]: r for r in list_builtin()}
    assert set(rows) == set(BUILTIN) >= {"mnist5k", "synth1d"}
    m = rows["mnist5k"]
    assert (m["n_train"], m["n_test"], m["num_classes"]) == (4000, 1000, 10)
    assert m["input_shape"] == [1, 28, 28]
    npz = Path(__file__).resolve().parents[1] / "toolchain" / "data" / "mnist5k.npz"
    assert m["size_bytes"] == npz.stat().st_size < 3_000_000
    assert "SYNTHETIC" in rows["synth1d"]["description"]


def test_synth1d_is_deterministic_1d_data():
    a, b = load_dataset("synth1d"), load_dataset("synth1d")
    assert a.x_train.shape == (800, 1, 64) and a.x_test.shape == (200, 1, 64)
    assert a.num_classes == 4 and set(np.unique(a.y_test)) == {0, 1, 2, 3}
    assert a.sha256() == b.sha256()
    assert 0.0 <= a.x_train.min() and a.x_train.max() <= 1.0
    assert "not real data" in a.source


def test_sha256_sees_every_array():
    x, y = np.zeros((4, 1, 3), np.float32), np.array([0, 1, 0, 1])
    base = Dataset("a", x, y, x[:2], y[:2], 2, "s")
    assert Dataset("other name", x, y, x[:2], y[:2], 2, "t").sha256() == base.sha256()
    assert Dataset("a", x, y, x[:2], y[:2][::-1], 2, "s").sha256() != base.sha256()
    assert Dataset("a", x, y, x[:2], y[:2], 3, "s").sha256() != base.sha256()


# ---------------------------------------------------------------- npz

def test_npz_with_test_set_round_trips(tmp_path):
    x = RNG.integers(0, 256, (10, 8, 8), dtype=np.uint8)
    y = np.arange(10) % 3
    np.savez(tmp_path / "d.npz", x=x, y=y, x_test=x[:4], y_test=y[:4])
    ds = load_dataset(tmp_path / "d.npz")
    assert ds.name == "d" and ds.x_train.shape == (10, 1, 8, 8) and ds.num_classes == 3
    assert np.array_equal(ds.x_train[:, 0], x.astype(np.float32) / 255)
    assert np.array_equal(ds.y_test, y[:4])


def test_npz_split_is_seeded_and_complete(tmp_path):
    x = np.linspace(0, 1, 50 * 5, dtype=np.float32).reshape(50, 5)  # (N, F) -> (N, 1, F)
    np.savez(tmp_path / "d.npz", x_train=x, y_train=np.arange(50) % 2)
    a = load_dataset(tmp_path / "d.npz", test_fraction=0.2, seed=1)
    b = load_dataset(tmp_path / "d.npz", test_fraction=0.2, seed=1)
    c = load_dataset(tmp_path / "d.npz", test_fraction=0.2, seed=2)
    assert (a.n_train, a.n_test, a.input_shape) == (40, 10, (1, 5))
    assert a.sha256() == b.sha256() != c.sha256()
    rows = sorted(map(tuple, np.concatenate([a.x_train, a.x_test])[:, 0].tolist()))
    assert rows == sorted(map(tuple, x.tolist()))


def test_npz_nhwc_is_transposed_to_nchw(tmp_path):
    x = RNG.integers(0, 256, (6, 5, 7, 3), dtype=np.uint8)  # N, H, W, C
    np.savez(tmp_path / "rgb.npz", x=x, y=np.arange(6) % 2)
    ds = load_dataset(tmp_path / "rgb.npz", test_fraction=0.5)
    assert ds.input_shape == (3, 5, 7)
    all_x = np.concatenate([ds.x_train, ds.x_test])
    expect = x.transpose(0, 3, 1, 2).astype(np.float32) / 255
    assert sorted(a.tobytes() for a in all_x) == sorted(a.tobytes() for a in expect)


def test_npz_signals_keep_channels_and_input_shape_reshapes(tmp_path):
    x = RNG.random((8, 2, 16)).astype(np.float32)  # (N, C, L) stays
    np.savez(tmp_path / "s.npz", x=x, y=np.arange(8) % 2, x_test=x, y_test=np.arange(8) % 2)
    assert load_dataset(tmp_path / "s.npz").input_shape == (2, 16)
    ds = load_dataset(tmp_path / "s.npz", input_shape=(2, 4, 4))
    assert ds.input_shape == (2, 4, 4) and np.array_equal(ds.x_test.reshape(8, 2, 16), x)


# ---------------------------------------------------------------- IDX

def write_idx(path: Path, arr: np.ndarray, gz: bool = False) -> Path:
    code = {np.dtype(np.uint8): 0x08, np.dtype(np.float32): 0x0D}[arr.dtype]
    data = bytes([0, 0, code, arr.ndim]) + struct.pack(f">{arr.ndim}I", *arr.shape)
    data += arr.astype(arr.dtype.newbyteorder(">")).tobytes()
    path.write_bytes(gzip.compress(data) if gz else data)
    return path


def mnist_like(n: int) -> tuple[np.ndarray, np.ndarray]:
    return RNG.integers(0, 256, (n, 28, 28), dtype=np.uint8), (np.arange(n) % 10).astype(np.uint8)


def test_idx_directory_gz_round_trips(tmp_path):
    (x, y), (xt, yt) = mnist_like(20), mnist_like(10)
    write_idx(tmp_path / "train-images-idx3-ubyte.gz", x, gz=True)
    write_idx(tmp_path / "train-labels-idx1-ubyte.gz", y, gz=True)
    write_idx(tmp_path / "t10k-images-idx3-ubyte.gz", xt, gz=True)
    write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", yt, gz=True)
    ds = load_dataset(tmp_path)
    assert ds.x_train.shape == (20, 1, 28, 28) and ds.x_test.shape == (10, 1, 28, 28)
    assert np.array_equal(ds.x_test[:, 0], xt / np.float32(255)) and np.array_equal(ds.y_train, y)


def test_idx_plain_images_file_finds_labels_and_splits(tmp_path):
    x, y = mnist_like(20)
    images = write_idx(tmp_path / "train-images-idx3-ubyte", x)
    write_idx(tmp_path / "train-labels-idx1-ubyte", y)
    ds = load_dataset(images, test_fraction=0.25, seed=3)
    assert (ds.n_train, ds.n_test, ds.num_classes) == (15, 5, 10)
    assert np.array_equal(np.sort(np.concatenate([ds.y_train, ds.y_test])), np.sort(y))


# ---------------------------------------------------------------- CIFAR

class Py2Pickler(pickle._Pickler):
    """Writes str/bytes as Python 2 strings, as the official CIFAR batches are."""

    dispatch = pickle._Pickler.dispatch.copy()

    def save_bytes(self, obj):
        n = len(obj)
        head = pickle.SHORT_BINSTRING + bytes([n]) if n < 256 else pickle.BINSTRING + struct.pack("<i", n)
        self.write(head + obj)
        self.memoize(obj)

    def save_str(self, obj):
        self.save_bytes(obj.encode("latin1"))

    dispatch[bytes] = save_bytes
    dispatch[str] = save_str


def cifar_batch(n: int, py2: bool) -> tuple[bytes, np.ndarray, list[int]]:
    data = RNG.integers(0, 256, (n, 3072), dtype=np.uint8)
    labels = [int(v) for v in RNG.integers(0, 10, n)]
    if not py2:
        return pickle.dumps({b"batch_label": b"x", b"data": data, b"labels": labels}), data, labels
    buf = io.BytesIO()
    Py2Pickler(buf, protocol=2).dump({"batch_label": "x", "data": data, "labels": labels})
    return buf.getvalue().replace(b"cnumpy._core.multiarray\n", b"cnumpy.core.multiarray\n"), data, labels


@pytest.mark.parametrize("py2", [False, True])
def test_cifar_batches_round_trip(tmp_path, py2):
    d = tmp_path / "cifar-10-batches-py"
    d.mkdir()
    parts = []
    for name, n in (("data_batch_1", 6), ("data_batch_2", 4), ("test_batch", 5)):
        raw, data, labels = cifar_batch(n, py2)
        (d / name).write_bytes(raw)
        parts.append((data, labels))
    ds = load_dataset(tmp_path)  # the parent directory works too
    assert ds.x_train.shape == (10, 3, 32, 32) and ds.x_test.shape == (5, 3, 32, 32)
    row = parts[1][0][1]  # second image of data_batch_2 -> train index 7
    assert ds.x_train[7, 2, 31, 5] == np.float32(row[2 * 1024 + 31 * 32 + 5]) / 255
    assert ds.y_train.tolist() == parts[0][1] + parts[1][1] and ds.y_test.tolist() == parts[2][1]


class _Evil:
    def __init__(self, func, arg):
        self.func, self.arg = func, arg

    def __reduce__(self):
        return self.func, (self.arg,)


@pytest.mark.parametrize("gadget", ["os.system", "builtins.exec"])
def test_cifar_malicious_pickle_is_refused_without_running(tmp_path, gadget):
    marker = tmp_path / "pwned"
    func, arg = {
        "os.system": (os.system, f"touch {marker}"),
        "builtins.exec": (exec, f"open({str(marker)!r}, 'w').close()"),
    }[gadget]
    d = tmp_path / "cifar-10-batches-py"
    d.mkdir()
    payload = {b"data": _Evil(func, arg), b"labels": [0]}
    (d / "data_batch_1").write_bytes(pickle.dumps(payload))
    with pytest.raises(VstError, match="refusing to unpickle") as exc:
        load_dataset(d)
    assert gadget.split(".")[1] in str(exc.value)
    assert not marker.exists()


# ---------------------------------------------------------------- CSV

def test_csv_with_header_8bit_and_input_shape(tmp_path):
    x = RNG.integers(0, 256, (10, 16), dtype=np.uint8)
    y = np.arange(10) % 2
    lines = ["label," + ",".join(f"p{i}" for i in range(16))]
    lines += [",".join(map(str, [yy, *row])) for yy, row in zip(y, x)]
    (tmp_path / "px.csv").write_text("\n".join(lines) + "\n")
    ds = load_dataset(tmp_path / "px.csv", input_shape=(1, 4, 4), test_fraction=0.3)
    assert (ds.n_train, ds.n_test, ds.input_shape) == (7, 3, (1, 4, 4))
    got = np.concatenate([ds.x_train, ds.x_test]).reshape(10, 16)
    assert sorted(r.tobytes() for r in got) == sorted(r.tobytes() for r in x.astype(np.float32) / 255)


def test_csv_gz_without_header_floats(tmp_path):
    x = RNG.random((12, 5))
    text = "\n".join(",".join(map(str, [i % 3, *row.tolist()])) for i, row in enumerate(x))
    (tmp_path / "f.csv.gz").write_bytes(gzip.compress(text.encode()))
    ds = load_dataset(tmp_path / "f.csv.gz")
    assert ds.name == "f" and ds.input_shape == (1, 5) and ds.num_classes == 3
    assert ds.n_train + ds.n_test == 12
    assert np.allclose(np.sort(np.concatenate([ds.x_train, ds.x_test]).ravel()), np.sort(x.ravel()))


# ---------------------------------------------------------------- bad input

def npz(**arrays):
    def make(p: Path) -> Path:
        np.savez(p / "bad.npz", **arrays)
        return p / "bad.npz"
    return make


def text_file(name: str, content: str):
    def make(p: Path) -> Path:
        (p / name).write_text(content)
        return p / name
    return make


def raw_file(name: str, content: bytes):
    def make(p: Path) -> Path:
        (p / name).write_bytes(content)
        return p / name
    return make


def idx_pair(x: np.ndarray, y: np.ndarray | None, truncate: int = 0):
    def make(p: Path) -> Path:
        images = write_idx(p / "train-images-idx3-ubyte", x)
        if truncate:
            images.write_bytes(images.read_bytes()[:-truncate])
        if y is not None:
            write_idx(p / "train-labels-idx1-ubyte", y)
        return images
    return make


def cifar_file(content: bytes):
    def make(p: Path) -> Path:
        d = p / "cifar-10-batches-py"
        d.mkdir()
        (d / "data_batch_1").write_bytes(content)
        return d
    return make


IMG = np.full((4, 6, 6), 0.5, np.float32)
LAB = np.array([0, 1, 0, 1])
NAN_IMG = IMG.copy()
NAN_IMG[1, 2, 3] = np.nan
INF_IMG = IMG.copy()
INF_IMG[0, 0, 0] = np.inf
RAGGED = np.empty(2, dtype=object)
RAGGED[0], RAGGED[1] = np.zeros((3, 3)), np.zeros((4, 4))

BAD = {
    "missing file": (lambda p: p / "nope.npz", {}, "no such file"),
    "unknown built-in": (lambda p: "mnist5", {}, "did you mean 'mnist5k'"),
    "unknown format": (text_file("d.txt", "1,2\n"), {}, "unknown data format"),
    "empty dir": (lambda p: p, {}, "no CIFAR-10 batches or MNIST IDX"),
    "nan in x": (npz(x=NAN_IMG, y=LAB), {}, "1 NaN or infinite"),
    "inf in x": (npz(x=INF_IMG, y=LAB), {}, "NaN or infinite"),
    "float x out of range": (npz(x=IMG * 255, y=LAB), {}, "must lie in [0, 1]"),
    "int x out of range": (npz(x=(IMG * 1000).astype(np.int32), y=LAB), {}, "0..255"),
    "fractional labels": (npz(x=IMG, y=LAB + 0.5), {}, "labels must be integers, found 0.5"),
    "string labels": (npz(x=IMG, y=np.array(["a", "b", "a", "b"])), {}, "labels must be integers"),
    "one-hot labels": (npz(x=IMG, y=np.eye(4)), {}, "one-hot"),
    "label out of range": (npz(x=IMG, y=LAB * 5), {"num_classes": 3}, "label 5 is out of range [0, 3)"),
    "negative label": (npz(x=IMG, y=LAB - 1), {}, "label -1 is negative"),
    "one class": (npz(x=IMG, y=LAB * 0), {}, "at least 2 classes"),
    "length mismatch": (npz(x=IMG, y=LAB[:3]), {}, "4 inputs but 3 labels"),
    "train/test shapes": (npz(x=IMG, y=LAB, x_test=IMG[:, :5], y_test=LAB), {}, "inconsistent sample shapes"),
    "test without labels": (npz(x=IMG, y=LAB, x_test=IMG), {}, "needs both inputs and labels"),
    "ragged images": (npz(x=RAGGED, y=LAB[:2]), {}, "object array"),
    "empty x": (npz(x=IMG[:0], y=LAB[:0]), {}, "empty"),
    "5-D x": (npz(x=np.zeros((4, 1, 1, 2, 2), np.float32), y=LAB), {}, "got shape (4, 1, 1, 2, 2)"),
    "no y in npz": (npz(x=IMG), {}, "no array 'y'"),
    "corrupt npz": (raw_file("c.npz", b"PK\x03\x04garbage"), {}, "cannot read"),
    "bad input_shape": (npz(x=IMG, y=LAB), {"input_shape": (1, 5, 5)}, "cannot be reshaped"),
    "bad test fraction": (npz(x=IMG, y=LAB), {"test_fraction": 1.5}, "test fraction"),
    "bad num_classes": (npz(x=IMG, y=LAB), {"num_classes": 1}, "at least 2"),
    "idx truncated": (idx_pair(*mnist_like(3), truncate=5), {}, "truncated"),
    "idx bad magic": (raw_file("x-images-idx3-ubyte", b"\x01\x02\x03\x04abcd"), {}, "bad magic"),
    "idx no labels": (idx_pair(mnist_like(3)[0], None), {}, "no labels file"),
    "idx count mismatch": (idx_pair(mnist_like(3)[0], mnist_like(2)[1]), {}, "3 images but"),
    "csv non-numeric": (text_file("d.csv", "1,0.5\n0,abc\n"), {}, "cannot parse CSV"),
    "csv ragged rows": (text_file("d.csv", "1,0.5,0.2\n0,0.1\n"), {}, "cannot parse CSV"),
    "csv empty": (text_file("d.csv", "\n"), {}, "empty"),
    "csv labels only": (text_file("d.csv", "1\n0\n"), {}, "label column"),
    "csv 16-bit values": (text_file("d.csv", "1,300\n0,2\n"), {}, "0..255"),
    "cifar truncated": (cifar_file(pickle.dumps({b"data": 1})[:-3]), {}, "not a readable CIFAR batch"),
    "cifar not a dict": (cifar_file(pickle.dumps([1, 2])), {}, "pickled dict"),
    "cifar wrong data": (cifar_file(pickle.dumps({b"data": np.zeros((2, 10), np.uint8), b"labels": [0, 1]})),
                         {}, "uint8 array (N, 3072)"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_gives_one_line_vsterror(tmp_path, case):
    make, kwargs, message = BAD[case]
    with pytest.raises(VstError) as exc:
        load_dataset(make(tmp_path), **kwargs)
    text = str(exc.value)
    assert message in text
    assert "\n" not in text
