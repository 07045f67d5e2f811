"""int8-crown: back-substituted margin bounds of the int8 network as flashed.

Soundness against the executors of the int8 network: for every sample, random
and corner points of its eps-box are quantized as the firmware does and run
through the generated C (and TFLite Micro for some samples); every output lies
in the bounds, and a verified sample is never misclassified nor tied, its
margins at least the certified ones. That on the chain model (cnn_small with
BatchNorm) at an eps where back-substitution proves samples the interval form
does not, and on the odd-shaped graph models (depthwise with multiplier 1 and
2, Adds, average and max pooling, the global average, 1-D forms). The combined
bound never loses what the interval form proves; the clamp relaxation holds
at every integer; the certificate records which method proved each sample and
a forged claim of the new method fails its check (exit 1).
"""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from helpers import resum
from test_int8_bounds import _box_points, check_box_soundness, net  # noqa: F401 (a fixture)
from test_int8_graph_bounds import SOUNDNESS_EPS, setups  # noqa: F401 (a fixture)
from toolchain.verify.int8_bounds import Int8Bounds
from toolchain.verify.int8_crown import Int8Crown, relax_clamp

EPS = 0.02          # the chain model: int8-crown proves 20% of 200 samples, intervals 12%


class Crowned:
    """``Int8Bounds`` as the soundness checks use it, verifying with int8-crown."""

    def __init__(self, bounds: Int8Bounds) -> None:
        self.x_t, self.sample_box, self.crown = bounds.x_t, bounds.sample_box, Int8Crown(bounds)

    def verify(self, x, y, eps):
        return self.crown.verify(x, y, eps)


def test_clamp_relaxation_holds_at_every_integer():
    rng = np.random.default_rng(0)
    for a, b in [(-128, 127), (-128, 40), (-20, 127), (-5, 5), (3, 4)]:
        lo = rng.integers(-300, 300, size=400)
        hi = lo + rng.integers(0, 400, size=400)
        al, bl, au, bu = relax_clamp(lo, hi, a, b)
        assert np.all((al >= 0) & (al <= 1) & (au >= 0) & (au <= 1))
        for i in range(len(lo)):
            v = np.arange(lo[i], hi[i] + 1)
            z = np.clip(v, a, b)
            assert np.all(al[i] * v + bl[i] <= z + 1e-9), (a, b, lo[i], hi[i])
            assert np.all(au[i] * v + bu[i] >= z - 1e-9), (a, b, lo[i], hi[i])


def test_sampled_points_through_the_c_stay_in_the_int8_crown_bounds(net):  # noqa: F811
    path, binary, x, y = net
    bounds = Int8Bounds.from_tflite(path)
    res = check_box_soundness(Crowned(bounds), path, binary, x[:80], y[:80], EPS, points=400,
                              tflm_every=20)
    assert res.verified.sum() > res.interval_verified.sum()      # the new method proves more
    assert 0.05 < res.verified.mean() < 0.9


@pytest.mark.parametrize("eps", [0.0, 0.005, EPS, 0.05])
def test_the_combined_bound_never_loses_what_intervals_prove(net, eps):  # noqa: F811
    path, _, x, y = net
    bounds = Int8Bounds.from_tflite(path)
    interval = bounds.verify(x, y, eps)
    combined = Int8Crown(bounds).verify(x, y, eps)
    assert np.array_equal(combined.interval_verified, interval.verified)
    assert np.all(combined.verified[interval.verified])
    assert np.all(combined.margins >= interval.margins)
    assert np.array_equal(combined.out_lo, interval.out_lo)


@pytest.mark.parametrize("name", list(SOUNDNESS_EPS))
def test_graph_models_sampled_points_stay_in_the_int8_crown_bounds(setups, name):  # noqa: F811
    name, bounds, binary, path, x, y, eps = setups(name)
    kinds = {op.kind for op in bounds.ops}
    assert {"dwconv", "add", "avgpool", "maxpool"} <= kinds, kinds
    res = check_box_soundness(Crowned(bounds), path, binary, x, y, eps, 300, tflm_every=4)
    interval = bounds.verify(x, y, eps)
    assert np.all(res.verified[interval.verified]) and np.all(res.margins >= interval.margins)
    assert 0.0 < res.verified.mean() < 1.0, (name, res.verified.mean())
    if name == "odd2d":      # through depthwise, Add and both poolings it tightens margins
        assert np.mean(res.margins - interval.margins) > 1.0


def _one_op_at_points(bounds: Int8Bounds, seed: int) -> int:
    """Each op's step on its own, at int8 points: random coefficients on its output
    become a lower bound in its inputs that the exact outputs (``propagate``:
    the C's arithmetic) meet, within the op's rounding terms (0 for PAD,
    TRANSPOSE and MAX_POOL_2D: exact). Returns the number of ops checked."""
    from toolchain.export.c.memory import INPUT
    from toolchain.verify.int8_crown import _multiplier, _rounding

    crown, rng = Int8Crown(bounds), np.random.default_rng(seed)
    q = rng.integers(-128, 128, size=(4, bounds.x_t.size))
    pre: list = []
    out = bounds.propagate(q, q, pre=pre)
    for k, op in enumerate(bounds.ops):
        lam = rng.normal(size=(len(q), 3, op.n_out))
        const, mag = np.zeros((len(q), 3)), np.zeros((len(q), 3))
        g = lam if pre[k] is None else crown._relax(lam, pre[k], op.act, const, mag)
        terms = crown._step(k, g, const, mag, q, q, out)      # adds to const
        low = const + sum((coef * (q if key == INPUT else out[bounds.writer[key]][0])
                           [:, None, :]).sum(-1) for key, coef in terms)
        exact = (lam * out[k][0][:, None, :]).sum(-1)
        if k in crown.forms:
            e = crown.forms[k].e.max()
        elif op.kind == "add":
            p = op.params
            e = float(_rounding(p[7]) + _multiplier(p[6], p[7]) * (_rounding(p[2])
                                                                     + _rounding(p[5])))
        else:
            e = 0.0
        slack = 2 * np.abs(lam).sum(-1) * e + 1e-6 * (1 + np.abs(exact))   # v within +-e
        assert np.all(exact >= low - 1e-6 * (1 + np.abs(exact))), (op.kind, k)
        assert np.all(exact - low <= slack), (op.kind, k, (exact - low - slack).max())
    return len(bounds.ops)


def test_margins_bound_the_clamped_outputs_not_the_values_before_the_clamp():
    """A last layer whose label output always saturates at 127: the last-layer
    form bounds R_y - R_j by 440, but q_y - q_j is 67 at the worst point; every
    claimed margin (interval form, int8-crown) is at most the true minimum."""
    from types import SimpleNamespace

    from toolchain.export.c.int8_ops import QOp
    from toolchain.export.c.memory import INPUT

    op = QOp("fc", 0, "FULLY_CONNECTED", 0, 1, 2, weight=np.array([[100, 0], [0, 1]], np.int8),
             bias=np.zeros(2, np.int64), mult=np.full(2, 1 << 30), shift=np.zeros(2, np.int64),
             reads=[INPUT], writes=1, dst="output")                     # M = 0.5
    bounds = Int8Bounds([op], SimpleNamespace(size=2), None)
    lo, hi = np.array([[10, 100]]), np.array([[127, 120]])
    grid = np.stack(np.meshgrid(np.arange(10, 128), np.arange(100, 121)), -1).reshape(-1, 2)
    out = bounds.outputs(grid)
    worst = (out[:, 0] - out[:, 1]).min()
    assert worst == 67
    pre: list = []
    steps = bounds.propagate(lo, hi, pre=pre)
    form, _ = bounds._margin_form(op, lo, hi, np.array([0]))
    crown = Int8Crown(bounds).margins(lo, hi, np.array([0]), steps, pre)
    assert 1 <= form[0, 1] <= worst and 1 <= crown[0, 1] <= worst


def test_pad_and_transpose_move_coefficients_as_they_move_values():
    """<g, move(x)> = <moved g, x> + the padded constants (the adjoint of ``_move``)."""
    from toolchain.export.c.int8_ops import QOp
    from toolchain.verify.int8_bounds import _move

    rng = np.random.default_rng(3)
    shape = (1, 3, 4, 5)                                 # NHWC
    strides = [60, 20, 5, 1]
    perm = (0, 2, 3, 1)                                  # out (1, 4, 5, 3)
    ops = [QOp("transpose", 0, "TRANSPOSE", 0, 1, 60,
               params=(1, 4, 5, 3) + tuple(strides[d] for d in perm)),
           QOp("pad", 0, "PAD", 0, 1, 1 * 5 * 7 * 5,
               params=shape + (0, 1, 2, 0) + (1, 5, 7, 5), pad_value=-7)]
    for op in ops:
        x = rng.integers(-128, 128, size=(2, 60))
        g = rng.normal(size=(2, 3, op.n_out))
        const, mag = np.zeros((2, 3)), np.zeros((2, 3))
        moved = Int8Crown._through_move(op, g, const, mag)
        lhs = (g * _move(op, x)[:, None, :]).sum(-1)
        assert np.allclose(lhs, (moved * x[:, None, :]).sum(-1) + const, atol=1e-9), op.kind


def test_each_op_alone_is_its_exact_arithmetic_within_its_rounding(net, setups):  # noqa: F811
    path = net[0]
    kinds = set()
    for bounds in [Int8Bounds.from_tflite(path)] + [setups(n)[1] for n in SOUNDNESS_EPS]:
        for seed in range(3):
            assert _one_op_at_points(bounds, seed) == len(bounds.ops)
        kinds |= {op.kind for op in bounds.ops}
    assert {"conv", "dwconv", "fc", "add", "avgpool", "maxpool", "pad"} <= kinds


# the most a back-substituted margin may lie below the true one at a point (eps 0:
# every clamp is stable there, so only the rounding terms are paid), measured
# 7 (odd2d), 15 (odd1d), with room
AT_A_POINT = {"odd2d": 10, "odd1d": 20}


@pytest.mark.parametrize("name", list(SOUNDNESS_EPS))
def test_back_substitution_alone_is_sound_and_tight_at_points(setups, name):  # noqa: F811
    """The chain down to the input box on its own (no best-over-depths, no interval
    max, which could hide a wrong coefficient): below the margins of sampled
    points of the box (golden integer reference, bit-exact with the C and TFLM),
    and at a point at most the rounding terms below the true margin."""
    name, bounds, _, _, x, y, eps = setups(name)
    crown = Int8Crown(bounds, early=False)
    for e in (0.0, eps / 3):
        lo, hi = bounds.quantize_box(x, e)
        pre: list = []
        out = bounds.propagate(lo, hi, pre=pre)
        margins = crown.margins(lo, hi, y, out, pre)
        for i in range(len(x)):
            q = _box_points(bounds, x[i], 1 if e == 0 else 200, seed=i, eps=e)
            o = bounds.outputs(q)
            seen = (o[:, y[i]][:, None] - o).min(axis=0)
            assert np.all(seen >= margins[i]), (name, e, i)
            if e == 0:
                assert np.all(seen - margins[i] <= AT_A_POINT[name]), (name, i)


def _vst(*args):
    return subprocess.run([sys.executable, "-m", "toolchain", "-q", *map(str, args)],
                          capture_output=True, text=True, timeout=300)


def test_certificate_names_each_prover_and_forged_claims_fail(net, tmp_path):  # noqa: F811
    from toolchain.data import load_dataset
    from toolchain.errors import GateFailed
    from toolchain.verify.int8_certificate import check_int8_certificate

    path, _, _, _ = net
    cert = tmp_path / "c8.json"
    common = ("--data", "mnist5k", "--eps", str(EPS), "--n", "60")
    assert _vst("verify", path, *common, "--json", cert).returncode == 0
    data = json.loads(cert.read_text())
    result = data["results"][0]
    assert result["method"] == "int8-crown"
    by = [s["method"] for s in result["samples"]]
    verified = [s["verdict"] == "verified" for s in result["samples"]]
    assert by.count("int8-crown") > 0 and by.count("int8") > 0
    assert all((m is not None) == v for m, v in zip(by, verified))
    assert _vst("verify", path, "--data", "mnist5k", "--certificate", cert).returncode == 0
    old = tmp_path / "c8_int8.json"
    assert _vst("verify", path, *common, "--method", "int8", "--json", old).returncode == 0
    old_data = json.loads(old.read_text())
    assert old_data["results"][0]["method"] == "int8"
    assert old_data["results"][0]["counts"]["verified"] == by.count("int8")
    mnist = load_dataset("mnist5k")
    assert "recomputed" in check_int8_certificate(old_data, path, mnist)

    def crown_as_interval(samples):      # the interval form does not prove it
        next(s for s in samples if s["method"] == "int8-crown")["method"] = "int8"

    def unproved(samples):
        s = next(s for s in samples if s["verdict"] == "unknown")
        s["verdict"], s["method"] = "verified", "int8-crown"
        s["margin_lower"] = [0.0 if k == s["label"] else 1.0 for k in range(10)]

    def higher_margin(samples):
        s = next(s for s in samples if s["method"] == "int8-crown")
        s["margin_lower"][1 if s["label"] == 0 else 0] += 1.0

    for change in (crown_as_interval, unproved, higher_margin):
        forged = json.loads(json.dumps(data))
        change(forged["results"][0]["samples"])
        with pytest.raises(GateFailed):
            check_int8_certificate(resum(forged), path, mnist)
    (tmp_path / "forged.json").write_text(json.dumps(forged))     # and through the CLI
    res = _vst("verify", path, "--data", "mnist5k", "--certificate", tmp_path / "forged.json")
    assert res.returncode == 1 and len(res.stderr.strip().splitlines()) == 1, res.stderr


def test_int8_methods_only_for_their_models(net, tmp_path):  # noqa: F811
    path, _, _, _ = net
    res = _vst("verify", path, "--data", "mnist5k", "--eps", "0.01", "--method", "crown")
    assert res.returncode == 2 and "does not apply to an int8" in res.stderr
    res = _vst("verify", tmp_path / "m.vst", "--method", "int8-crown")
    assert res.returncode == 2 and "applies to an int8 .tflite" in res.stderr
