"""Turn raw arrays from any loader into a checked ``Dataset``.

Layout rule (N is always the first axis; the rule looks at the rest):

    (N, F)                       -> (N, 1, F)     features or a 1-D signal
    (N, C, L)     with C <= 4    -> kept          1-D signal, channels first
    (N, L, C)     with C <= 4    -> (N, C, L)     1-D signal, channels last
    (N, H, W)     otherwise      -> (N, 1, H, W)  grayscale images
    (N, C, H, W)                 -> kept          images, channels first (NCHW)
    (N, H, W, C)  with C in (1, 3) and axis 1 not in (1, 3)
                                 -> (N, C, H, W)  images, channels last (NHWC)

Then, when ``input_shape`` is given and the sample shape differs, each sample
is reshaped (C order) to it if the sizes agree; e.g. CSV rows of 784 pixels
with ``input_shape=(1, 28, 28)``.

Scaling rule: integer (e.g. uint8) inputs are 8-bit levels and must lie in
0..255; they are divided by 255. Booleans become 0/1. Float inputs must
already lie in [0, 1]: we do not guess a scaling (min-max over a training set
would silently change the meaning of epsilon), we ask the user to scale.
The exception is data that says how to scale it: a ``Raw`` with a
``ChannelScaling`` (per-channel min and range, e.g. an ``.npz`` with
``channel_min``/``channel_range``, or a built-in sensor set) is given in its
own units, channels first, and mapped per channel (``scaling.py``); the
layout rule is then not needed, the channel count is known.
"""

from __future__ import annotations

import math
from dataclasses import replace
from typing import NamedTuple

import numpy as np

from toolchain.data.dataset import Dataset
from toolchain.data.scaling import ChannelScaling
from toolchain.errors import VstError

_FLOAT_SLACK = 1e-6  # float round-off we forgive at the [0, 1] edges


class Raw(NamedTuple):
    """What a loader returns: unchecked arrays, test split optional."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray | None
    y_test: np.ndarray | None
    source: str
    scaling: ChannelScaling | None = None  # inputs in their own units, scaled per channel


def to_channels_first(x: np.ndarray, what: str) -> np.ndarray:
    """Apply the layout rule in the module docstring."""
    if x.ndim == 2:
        return x[:, None, :]
    if x.ndim == 3:
        a, b = x.shape[1:]
        if a <= 4:
            return x
        if b <= 4:
            return x.transpose(0, 2, 1)
        return x[:, None, :, :]
    if x.ndim == 4:
        if x.shape[3] in (1, 3) and x.shape[1] not in (1, 3):
            return x.transpose(0, 3, 1, 2)
        return x
    raise VstError(
        f"{what}: expected (N, features), (N, C, L), (N, H, W) or (N, C, H, W) data, "
        f"got shape {x.shape}"
    )


def to_unit_float(x: np.ndarray, what: str) -> np.ndarray:
    """Apply the scaling rule in the module docstring; reject NaN/inf."""
    kind = x.dtype.kind
    if kind == "b":
        return x.astype(np.float32)
    if kind in "iu":
        lo, hi = int(x.min()), int(x.max())
        if lo < 0 or hi > 255:
            raise VstError(
                f"{what}: integer inputs are read as 8-bit levels 0..255, found values "
                f"{lo}..{hi}; store float32 scaled to [0, 1] instead"
            )
        return x.astype(np.float32) / np.float32(255.0)
    if kind != "f":
        raise VstError(f"{what}: inputs must be numbers, got dtype {x.dtype}")
    check_finite(x, what)
    lo, hi = float(x.min()), float(x.max())
    if lo < -_FLOAT_SLACK or hi > 1 + _FLOAT_SLACK:
        raise VstError(
            f"{what}: float inputs must lie in [0, 1], found {lo:g}..{hi:g}; "
            "scale them yourself (e.g. divide 8-bit pixels by 255) so epsilon "
            "means what you intend"
        )
    return np.clip(x, 0, 1).astype(np.float32)


def check_finite(x: np.ndarray, what: str) -> np.ndarray:
    if x.dtype.kind == "f" and not np.isfinite(x).all():
        bad = int(np.size(x) - np.isfinite(x).sum())
        raise VstError(f"{what}: inputs contain {bad} NaN or infinite value(s)")
    return x


def reshape_samples(x: np.ndarray, input_shape: tuple[int, ...], what: str) -> np.ndarray:
    if x.shape[1:] == input_shape:
        return x
    if math.prod(x.shape[1:]) != math.prod(input_shape):
        raise VstError(
            f"{what}: samples of shape {tuple(x.shape[1:])} ({math.prod(x.shape[1:])} values) "
            f"cannot be reshaped to input shape {input_shape} ({math.prod(input_shape)} values)"
        )
    return np.ascontiguousarray(x).reshape((x.shape[0], *input_shape))


def check_input_shape(input_shape) -> tuple[int, ...] | None:
    if input_shape is None:
        return None
    try:
        shape = tuple(int(d) for d in input_shape)
    except (TypeError, ValueError):
        raise VstError(f"input shape must be a list of integers, got {input_shape!r}") from None
    if len(shape) not in (2, 3) or min(shape) < 1:
        raise VstError(
            f"input shape must be (C, L) or (C, H, W) with positive sizes, got {shape}"
        )
    return shape


def to_labels(y, what: str) -> np.ndarray:
    """1-D int64 class indices; floats are accepted only when integral."""
    y = np.asarray(y)
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim != 1:
        hint = " (one-hot? store y.argmax(1))" if y.ndim == 2 else ""
        raise VstError(f"{what}: labels must be a 1-D array of class indices, got shape {y.shape}{hint}")
    kind = y.dtype.kind
    if kind in "iub":
        return y.astype(np.int64)
    if kind == "f":
        finite = np.isfinite(y)
        if not finite.all():
            raise VstError(f"{what}: labels contain NaN or infinite values")
        frac = y != np.round(y)
        if frac.any():
            raise VstError(f"{what}: labels must be integers, found {y[frac][0]:g}")
        return y.astype(np.int64)
    raise VstError(f"{what}: labels must be integers, got dtype {y.dtype}")


def check_num_classes(y_all: np.ndarray, num_classes: int | None, what: str) -> int:
    """The number of classes; labels in range, and at least two of them present:
    data of one class (all labels 0, an all-zero CSV, say) trains nothing and
    certifies nothing, whatever ``num_classes`` says."""
    lo, hi = int(y_all.min()), int(y_all.max())
    if lo == hi and lo >= 0 and (num_classes is None or hi < num_classes):
        raise VstError(f"{what}: every sample has label {lo}; a classifier's data needs "
                       "at least 2 classes (is the label the first column?)")
    if num_classes is not None:
        if lo < 0 or hi >= num_classes:
            bad = lo if lo < 0 else hi
            raise VstError(
                f"{what}: label {bad} is out of range [0, {num_classes}) for {num_classes} classes"
            )
        return num_classes
    if lo < 0:
        raise VstError(f"{what}: label {lo} is negative; labels must be in [0, num_classes)")
    return hi + 1


def split(n: int, test_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeded random split of ``range(n)`` into (train, test) index arrays."""
    n_test = int(round(n * test_fraction))
    n_test = min(max(n_test, 1), n - 1)
    perm = np.random.default_rng(seed).permutation(n)
    return np.sort(perm[n_test:]), np.sort(perm[:n_test])


def _inputs(x, what: str, input_shape, scaling: ChannelScaling | None = None,
            train: bool = True) -> tuple[np.ndarray, int]:
    """Checked float32 inputs in [0, 1] and how many values scaling clipped."""
    x = np.asarray(x)
    if x.ndim == 0 or x.shape[0] == 0:
        raise VstError(f"{what}: no samples (empty data)")
    if x.size == 0:
        raise VstError(f"{what}: samples have no values, shape {x.shape}")
    clipped = 0
    if scaling is None:
        x = to_unit_float(to_channels_first(x, what), what)
    else:
        x, clipped = scaling.scale(check_finite(x, what), what, train=train)
    if input_shape is not None:
        x = reshape_samples(x, input_shape, what)
    return x, clipped


def assemble(
    name: str,
    raw: Raw,
    *,
    num_classes: int | None = None,
    input_shape: tuple[int, ...] | None = None,
    test_fraction: float = 0.2,
    seed: int = 0,
) -> Dataset:
    """Check, lay out, scale and (if no test set was given) split ``raw``."""
    input_shape = check_input_shape(input_shape)
    if (raw.x_test is None) != (raw.y_test is None):
        raise VstError(f"{name}: a test set needs both inputs and labels")
    x_train, _ = _inputs(raw.x_train, name, input_shape, raw.scaling)
    y_train = to_labels(raw.y_train, name)
    if len(x_train) != len(y_train):
        raise VstError(f"{name}: {len(x_train)} inputs but {len(y_train)} labels")
    if raw.x_test is None:
        if len(x_train) < 2:
            raise VstError(f"{name}: need at least 2 samples to split off a test set")
        tr, te = split(len(x_train), test_fraction, seed)
        clipped = 0  # split off the training data: inside [0, 1] by construction
        x_test, y_test = x_train[te], y_train[te]
        x_train, y_train = x_train[tr], y_train[tr]
    else:
        x_test, clipped = _inputs(raw.x_test, f"{name} (test set)", input_shape, raw.scaling,
                                  train=False)
        y_test = to_labels(raw.y_test, f"{name} (test set)")
        if len(x_test) != len(y_test):
            raise VstError(f"{name} (test set): {len(x_test)} inputs but {len(y_test)} labels")
        if x_test.shape[1:] != x_train.shape[1:]:
            raise VstError(
                f"{name}: inconsistent sample shapes: train {tuple(x_train.shape[1:])}, "
                f"test {tuple(x_test.shape[1:])}"
            )
    k = check_num_classes(np.concatenate([y_train, y_test]), num_classes, name)
    _check_not_constant(x_train, x_test, name)
    scaling = raw.scaling
    if scaling is not None:
        scaling = replace(scaling, clipped_test=clipped, test_values=int(x_test.size))
    return Dataset(name, x_train, y_train, x_test, y_test, k, raw.source, scaling)


def _check_not_constant(x_train: np.ndarray, x_test: np.ndarray, what: str) -> None:
    """Inputs that are all the same (an all-zero CSV, say) cannot tell classes apart."""
    first = x_train[0]
    if all(bool((x.min(axis=0) == first).all() and (x.max(axis=0) == first).all())
           for x in (x_train, x_test)):
        n = len(x_train) + len(x_test)
        zero = " (all zero)" if not first.any() else ""
        raise VstError(f"{what}: all {n} inputs are identical{zero}; there is nothing to "
                       "tell the classes by")


def check_options(test_fraction, seed, num_classes) -> None:
    """Validate ``load_dataset``'s options before any file is read."""
    if isinstance(test_fraction, bool) or not isinstance(test_fraction, (int, float)):
        raise VstError(f"test fraction must be a number in (0, 1), got {test_fraction!r}")
    if not 0 < test_fraction < 1:
        raise VstError(f"test fraction must be in (0, 1), got {test_fraction}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise VstError(f"seed must be a non-negative integer, got {seed!r}")
    if num_classes is not None:
        if isinstance(num_classes, bool) or not isinstance(num_classes, (int, np.integer)):
            raise VstError(f"number of classes must be an integer, got {num_classes!r}")
        if num_classes < 2:
            raise VstError(f"number of classes must be at least 2, got {num_classes}")
