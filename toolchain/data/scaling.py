"""Per-channel scaling of sensor data into vst's [0, 1] input convention.

A data set in sensor units carries, per channel c, ``min[c]`` and
``range[c]`` in those units; the network is trained, verified and shipped on

    x01 = clip((x - min[c]) / range[c], 0, 1)

so an L-inf radius ``eps`` (in [0, 1] units) is ``eps * range[c]`` sensor
units on channel c. The built-in sensor sets take min and range from their
TRAINING split (per channel: min, max - min): nothing about the test split
leaks into the model. A user's ``.npz`` may carry its own, e.g. the sensor's
full scale, which no recording can exceed.

Training values must map into [0, 1] (min and range must cover the training
data; round-off of 1e-6 is forgiven), else the scaling was not taken from
it. Test values may fall outside: a test recording louder than every
training one maps above 1. They are clipped to [0, 1] (the network is
certified on [0, 1] inputs; a device should clip the same way) and counted:
``clipped_test`` in ``info()``, which the model record, the ONNX metadata
and summary.json carry.

>>> s = ChannelScaling.checked([0.0, -2.0], [10.0, 4.0], "demo")
>>> x01, clipped = s.scale(np.array([[[0.0, 5.0, 12.0], [-2.0, 0.0, 2.0]]]), "demo", train=False)
>>> x01.tolist(), clipped
([[[0.0, 0.5, 1.0], [0.0, 0.5, 1.0]]], 1)
>>> [round(e, 6) for e in s.eps_in_units(0.01)]
[0.1, 0.04]
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from toolchain.errors import VstError

SLACK = 1e-6  # float round-off forgiven at the [0, 1] edges (not counted as clipped)
FORMULA = "x01 = clip((x - min[c]) / range[c], 0, 1) per channel c"


@dataclass(frozen=True)
class ChannelScaling:
    minimum: tuple[float, ...]  # per channel, in the data's own units
    range: tuple[float, ...]    # per channel, > 0: the units that map to [0, 1]
    clipped_test: int = 0       # test values that fell outside [0, 1] and were clipped
    test_values: int = 0        # test values in all

    @classmethod
    def checked(cls, minimum, range_, what: str) -> ChannelScaling:
        """Validated scaling from two arrays of one value per channel."""
        arrays = {"channel_min": np.asarray(minimum), "channel_range": np.asarray(range_)}
        for name, a in arrays.items():
            if a.ndim != 1 or a.size == 0:
                raise VstError(f"{what}: {name} must be a 1-D array of one value per channel, "
                               f"got shape {a.shape}")
            if a.dtype.kind not in "iuf":
                raise VstError(f"{what}: {name} must hold numbers, got dtype {a.dtype}")
            if not np.isfinite(a).all():
                raise VstError(f"{what}: {name} contains NaN or infinite values")
        lo, span = arrays["channel_min"], arrays["channel_range"]
        if lo.size != span.size:
            raise VstError(f"{what}: channel_min has {lo.size} values but channel_range "
                           f"{span.size}; give one of each per channel")
        if (span <= 0).any():
            raise VstError(f"{what}: channel_range must be > 0 on every channel, found "
                           f"{span.min():g} (a constant channel carries no information: drop it)")
        return cls(tuple(float(v) for v in lo), tuple(float(v) for v in span))

    @property
    def channels(self) -> int:
        return len(self.minimum)

    def scale(self, x: np.ndarray, what: str, *, train: bool) -> tuple[np.ndarray, int]:
        """Finite numbers (N, C, L) or (N, C, H, W) in the data's units -> float32
        in [0, 1], and how many values were clipped. (N, L) is one channel."""
        x = np.asarray(x)
        if x.dtype.kind not in "iuf":
            raise VstError(f"{what}: inputs must be numbers, got dtype {x.dtype}")
        if x.ndim == 2 and self.channels == 1:
            x = x[:, None, :]
        if x.ndim not in (3, 4) or x.shape[1] != self.channels:
            c = self.channels
            raise VstError(f"{what}: channel_min/channel_range give {c} channel(s), so the "
                           f"inputs must be (N, {c}, L) or (N, {c}, H, W) (channels first), "
                           f"got shape {x.shape}")
        shape = (1, self.channels) + (1,) * (x.ndim - 2)
        lo = np.asarray(self.minimum).reshape(shape)
        span = np.asarray(self.range).reshape(shape)
        x01 = (x.astype(np.float64) - lo) / span
        outside = (x01 < -SLACK) | (x01 > 1 + SLACK)
        clipped = int(outside.sum())
        if train and clipped:
            channel = int(np.argwhere(outside)[0][1])
            raise VstError(
                f"{what}: {clipped} training value(s) lie outside channel_min .. channel_min + "
                f"channel_range (first on channel {channel}); compute them from the training "
                "split (per channel: min, max - min) or use the sensor's full scale")
        return np.clip(x01, 0.0, 1.0).astype(np.float32), clipped

    def eps_in_units(self, eps: float) -> list[float]:
        """What an L-inf radius ``eps`` on [0, 1] inputs is on each channel, in its units."""
        return [eps * r for r in self.range]

    def info(self) -> dict:
        """The record a model, ONNX file and summary.json carry."""
        return {"formula": FORMULA, "min": list(self.minimum), "range": list(self.range),
                "clipped_test": self.clipped_test, "test_values": self.test_values}

    def describe_eps(self, eps: float, units: str = "units") -> str:
        """``eps`` in the data's units, one line: a value, or min..max over channels."""
        e = self.eps_in_units(eps)
        lo, hi = min(e), max(e)
        if np.isclose(lo, hi, rtol=1e-9, atol=0):
            return f"{lo:.3g} {units}"
        return f"{lo:.3g}..{hi:.3g} {units} (per channel)"
