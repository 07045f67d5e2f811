"""Convert UEA/UCR time-series sets shipped in the aeon wheel into vst built-ins.

Usage (from the repository root)::

    pip download --no-deps aeon==1.6.0 -d /tmp/aeon
    cd /tmp/aeon && unzip -o aeon-1.6.0-py3-none-any.whl 'aeon/datasets/data/*' && cd -
    python scripts/convert_sensor_sets.py /tmp/aeon/aeon/datasets/data [toolchain/data]

aeon is needed only to obtain the ``.ts`` files; it is neither imported here
nor a dependency of vst. The ``.ts`` format (sktime/aeon) is read by the small
parser below: ``#`` comment lines, ``@`` header tags up to ``@data``, then one
instance per line: the channels separated by ``:``, the values of a channel
by ``,``, the class label last.

For each set in ``SETS`` this writes ``<name>.npz`` holding

- ``x_train`` (N, C, L), ``x_test`` float32 in the ORIGINAL units of the
  archive (the text values; every one round-trips through float32, checked);
- ``y_train``, ``y_test`` uint8 class indices in the order of the file's
  ``@classLabel`` tag, whose names are in ``class_names``;
- ``channel_min``, ``channel_range`` float64 (C,): per-channel minimum and
  max - min over the TRAINING split only (the real samples; padding repeats
  real values, so it changes neither). vst maps inputs into [0, 1] with
  ``(x - channel_min) / channel_range`` at load time (``data/scaling.py``);
- ``length_train``, ``length_test`` uint16: each series' original length.

The archive's own train/test split is kept, in file order. Variable-length
series are padded at the end to the longest length in either split by
repeating their last value (per channel): pads are real sensor values, so
the scaling is unchanged and the network sees a held final frame, not a
made-up level. The zip is written with fixed timestamps, so the same input
gives byte-identical files (PROVENANCE.md lists their sha256).
"""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from toolchain.atomic import write_bytes  # noqa: E402
from toolchain.data.npzfile import npz_bytes  # noqa: E402

# archive name -> vst built-in name; each is small (<= 1 MB as npz).
SETS = {"JapaneseVowels": "japanesevowels", "BasicMotions": "basicmotions",
        "ItalyPowerDemand": "italypowerdemand"}
DEFAULT_OUT = ROOT / "toolchain" / "data"


def read_ts(path: Path) -> tuple[list[np.ndarray], list[str], dict[str, str]]:
    """The series (each (C, L_i) float64), their labels and the header tags."""
    tags: dict[str, str] = {}
    series, labels = [], []
    in_data = False
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if not in_data:
            if not line.startswith("@"):
                raise SystemExit(f"{path}:{number}: expected a @tag before @data")
            key, _, value = line[1:].partition(" ")
            tags[key.lower()] = value.strip()
            in_data = key.lower() == "data"
            continue
        *channels, label = line.split(":")
        rows = [np.array(ch.split(","), dtype=np.float64) for ch in channels]
        if len({len(r) for r in rows}) != 1:
            raise SystemExit(f"{path}:{number}: channels of unequal length")
        if "?" in line or not all(np.isfinite(r).all() for r in rows):
            raise SystemExit(f"{path}:{number}: missing or non-finite values")
        series.append(np.stack(rows))
        labels.append(label.strip())
    return series, labels, tags


def class_names(tags: dict[str, str]) -> list[str]:
    parts = tags["classlabel"].split()
    if parts[0] != "true":
        raise SystemExit("not a classification problem (@classLabel false)")
    return parts[1:]


def pad_repeat_last(series: list[np.ndarray], length: int) -> np.ndarray:
    """(N, C, length) float64: each series padded at the end with its last frame."""
    out = np.empty((len(series), series[0].shape[0], length))
    for i, s in enumerate(series):
        out[i, :, : s.shape[1]] = s
        out[i, :, s.shape[1]:] = s[:, -1:]
    return out


def to_float32(x: np.ndarray, what: str) -> np.ndarray:
    """float32 copy, checked to give back every text value (7 significant digits)."""
    x32 = x.astype(np.float32)
    back = x32.astype(np.float64)
    worst = float(np.max(np.abs(back - x) / np.maximum(np.abs(x), 1e-30)))
    if worst > 6e-8:  # float32 keeps ~7.2 digits; the archive has at most 7
        raise SystemExit(f"{what}: float32 loses precision (relative error {worst:.2g})")
    return x32


def convert(src: Path, archive: str) -> tuple[dict[str, np.ndarray], dict]:
    tr, ytr, tags = read_ts(src / archive / f"{archive}_TRAIN.ts")
    te, yte, tags_te = read_ts(src / archive / f"{archive}_TEST.ts")
    names = class_names(tags)
    if class_names(tags_te) != names:
        raise SystemExit(f"{archive}: train and test list different classes")
    index = {n: i for i, n in enumerate(names)}
    length = max(s.shape[1] for s in tr + te)
    x_train = to_float32(pad_repeat_last(tr, length), f"{archive} train")
    x_test = to_float32(pad_repeat_last(te, length), f"{archive} test")
    lo = x_train.min(axis=(0, 2)).astype(np.float64)
    hi = x_train.max(axis=(0, 2)).astype(np.float64)
    arrays = {
        "x_train": x_train, "y_train": np.array([index[v] for v in ytr], np.uint8),
        "x_test": x_test, "y_test": np.array([index[v] for v in yte], np.uint8),
        "channel_min": lo, "channel_range": hi - lo,
        "length_train": np.array([s.shape[1] for s in tr], np.uint16),
        "length_test": np.array([s.shape[1] for s in te], np.uint16),
        "class_names": np.array(names),
    }
    scaled = (x_test.astype(np.float64) - lo[None, :, None]) / (hi - lo)[None, :, None]
    stats = {"shape": x_train.shape[1:], "train": len(tr), "test": len(te),
             "classes": names, "lengths": (min(s.shape[1] for s in tr + te), length),
             "test_values_outside_01": int(((scaled < 0) | (scaled > 1)).sum()),
             "test_values": scaled.size,
             "train_counts": np.bincount(arrays["y_train"], minlength=len(names)).tolist(),
             "test_counts": np.bincount(arrays["y_test"], minlength=len(names)).tolist()}
    return arrays, stats


def main(argv: list[str]) -> int:
    if len(argv) not in (1, 2):
        print(__doc__, file=sys.stderr)
        return 2
    src = Path(argv[0])
    out_dir = Path(argv[1]) if len(argv) == 2 else DEFAULT_OUT
    for archive, name in SETS.items():
        arrays, stats = convert(src, archive)
        data = npz_bytes(arrays)
        out = out_dir / f"{name}.npz"
        write_bytes(out, data)
        out.chmod(0o644)  # package data: readable by all (the temp file was 0600)
        print(f"{archive}: {stats}")
        for split in ("TRAIN", "TEST"):
            f = src / archive / f"{archive}_{split}.ts"
            print(f"  source sha256 {hashlib.sha256(f.read_bytes()).hexdigest()}  "
                  f"{f.name} ({f.stat().st_size} bytes)")
        print(f"  npz    sha256 {hashlib.sha256(data).hexdigest()}  {out} ({len(data)} bytes)")
        print(f"  channel_min   {np.array2string(arrays['channel_min'], precision=6)}")
        print(f"  channel_range {np.array2string(arrays['channel_range'], precision=6)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
