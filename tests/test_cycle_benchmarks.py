"""The pure parts of the cycle benchmarks (``benchmarks/csr_breakeven.py``,
``benchmarks/cycles.py``, ``benchmarks/mlperf_tiny.py``): the break-even
interpolation, the aims' verdicts and the MLPerf KWS MAC count."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))

import csr_breakeven  # noqa: E402
import cycles as cycles_bench  # noqa: E402
import mlperf_tiny  # noqa: E402


def _rows(ratios):
    return [{"density": d, "int8_conv": {"ratio": r}} for d, r in ratios]


def test_break_even_is_the_linear_crossing_of_one():
    assert csr_breakeven.break_even(_rows([(0.1, 0.4), (0.2, 0.8), (0.3, 1.2)]),
                                    "int8_conv") == pytest.approx(0.25)
    assert csr_breakeven.break_even(_rows([(0.1, 0.4), (0.2, 1.0)]),
                                    "int8_conv") == pytest.approx(0.2)
    assert csr_breakeven.break_even(_rows([(0.1, 0.4), (0.2, 0.9)]), "int8_conv") is None
    assert csr_breakeven.break_even(_rows([(0.1, 1.1), (0.2, 1.3)]), "int8_conv") is None


def _side(vst_layers, cm_layers, seconds=2.0):
    vst = {"cycles_per_inference": sum(vst_layers), "cycles_per_mac": sum(vst_layers) / 100,
           "layers": [{"name": f"l{k}", "cycles": c} for k, c in enumerate(vst_layers)],
           "cycle_model": {"seconds": seconds}}
    cm = {"cycles_per_inference": sum(cm_layers),
          "layers": [{"name": f"l{k}", "cycles": c} for k, c in enumerate(cm_layers)]}
    return {"vst": vst, "cmsis_nn": {"cycles": cm}}


def test_aims_say_met_or_missed_from_the_numbers():
    met = {a[0]: a[3] for a in cycles_bench.aims(_side([90, 60], [200, 200]))}
    assert met == {"int8 cycles per MAC": True, "CMSIS-NN cycles / vst cycles": True,
                   "layers slower than CMSIS-NN in cycles": True,
                   "modelling one firmware (s)": True}
    rows = cycles_bench.aims(_side([150, 90], [100, 300], seconds=40))
    verdict = {a[0]: (a[2], a[3]) for a in rows}
    assert verdict["int8 cycles per MAC"] == ("2.40", False)
    assert verdict["CMSIS-NN cycles / vst cycles"] == ("1.67", False)
    assert verdict["layers slower than CMSIS-NN in cycles"] == ("l0", False)
    assert verdict["modelling one firmware (s)"] == ("40.0", False)


def test_kws_macs_are_the_mlperf_shape():
    # conv 10x4 on 1 channel to 25x5x64, four blocks of depthwise 3x3 and
    # pointwise 64 -> 64 on 25x5, dense 64 -> 12
    assert mlperf_tiny.macs() == 25 * 5 * 64 * 40 + 4 * (25 * 5 * 64 * 9 + 25 * 5 * 64 * 64) \
        + 64 * 12 == 2_656_768
