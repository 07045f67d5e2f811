"""The static memory plan: activations placed in one arena by liveness.

Checked by running each plan symbolically: the arena holds, per byte, the
tensor last written there; every op must find each tensor it reads intact
and must not write over a tensor it reads. Plans come from random op lists,
from random DAG networks through the float plan, and from the int8 plans of
the graph models, which are also compared with TFLite Micro's arena.
"""

from __future__ import annotations

import random

import numpy as np
import pytest

from graph_export import GRAPH_NETWORKS, graph_model
from test_export_c import random_state
from toolchain.export.c.memory import INPUT, Buffer, conflicts, lower_bound, place, plan_arena
from toolchain.export.c.plan import float_plan
from toolchain.models import layers as L


class _Op:
    def __init__(self, reads, writes):
        self.reads, self.writes = reads, writes


def _offset(expr: str) -> int | None:
    return int(expr.split("+")[1]) if expr.startswith("vst_arena") else None


def run_symbolically(ops, sizes: dict, arena: int) -> None:
    """Execute the placed plan on a model of the arena (owner tensor per unit)."""
    owner = np.full(max(arena, 1), -1, dtype=object)
    where = {}
    for k, op in enumerate(ops):
        for key, expr in zip(op.reads, op.srcs):
            if key == INPUT:
                assert expr == "input"
                continue
            off = _offset(expr)
            if off is None:
                assert expr == "output"
                continue
            assert where[key] == off, (k, key)
            assert all(o == key for o in owner[off:off + sizes[key]]), f"op {k}: {key} clobbered"
        off = _offset(op.dst)
        if off is None:
            continue
        assert off + sizes[op.writes] <= arena
        for key, expr in zip(op.reads, op.srcs):
            src = _offset(expr)
            if src is not None:        # no op writes over what it reads
                assert off + sizes[op.writes] <= src or src + sizes[key] <= off, (k, key)
        owner[off:off + sizes[op.writes]] = op.writes
        where[op.writes] = off


def _random_plan(rng: random.Random, n: int):
    """n ops; op k reads 1-2 earlier tensors (or the input), writes tensor k."""
    ops, sizes = [], {}
    for k in range(n):
        pool = [INPUT] + list(range(k))
        reads = rng.sample(pool, min(len(pool), rng.choice((1, 1, 2))))
        ops.append(_Op(reads, k))
        sizes[k] = rng.choice((1, 3, 16, 17, 64, 100, 250))
    return ops, sizes


@pytest.mark.parametrize("seed", range(40))
def test_random_plans_never_overlap_live_tensors(seed):
    rng = random.Random(seed)
    ops, sizes = _random_plan(rng, rng.randint(2, 30))
    output = len(ops) - 1
    arena = plan_arena(ops, sizes, output=output, align=rng.choice((1, 4)))
    run_symbolically(ops, sizes, arena)
    assert ops[-1].dst == "output"
    live = [Buffer(str(k), sizes[k], k, max([j for j, o in enumerate(ops) if k in o.reads],
                                            default=k)) for k in range(len(ops) - 1)]
    assert arena >= lower_bound(live)


def test_place_reports_no_conflicts_and_reaches_the_bound_on_a_residual_block():
    # x (op 0) is read by op 1 and by the Add (op 3): three tensors live at op 3
    bufs = [Buffer("x", 64, 0, 3), Buffer("h1", 64, 1, 2), Buffer("h2", 64, 2, 3),
            Buffer("y", 64, 3, 4), Buffer("z", 100, 4, 5)]
    assert place(bufs, align=4) == lower_bound(bufs) == 192
    assert not conflicts(bufs)
    bufs[1].offset = bufs[0].offset                 # a forged overlap is seen
    assert conflicts(bufs) == [("x", "h1")]


def _random_network(rng: random.Random) -> L.Network:
    """A random DAG of shape-keeping layers on (4, 6, 6): convolutions (some with a
    BatchNorm that folds), depthwise convolutions, ReLU and Adds of any two
    earlier tensors; dead ends are summed into the output."""
    layers, inputs, folded = [], [], set()
    for _ in range(rng.randint(3, 12)):
        i = len(layers)
        earlier = [j for j in range(-1, i) if j not in folded]   # only its BatchNorm reads it
        kind = rng.choice(("conv", "conv_bn", "dw", "relu", "add", "add"))
        if kind == "add" and i >= 1:
            layers.append(L.Add())
            inputs.append(tuple(rng.sample(earlier, 2)))
            continue
        conv = L.Conv2d(4, 4, 3, 1, 1, groups=4 if kind == "dw" else 1)
        layers.append(L.ReLU() if kind in ("relu", "add") else conv)
        inputs.append((rng.choice(earlier[-3:]),))
        if kind == "conv_bn":
            layers.append(L.BatchNorm(4))
            inputs.append((i,))
            folded.add(i)
    used = {j for row in inputs for j in row}
    for j in [j for j in range(len(layers) - 1) if j not in used]:
        layers.append(L.Add())
        inputs.append((len(layers) - 2, j))
    layers += [L.GlobalAvgPool(), L.Linear(4, 3)]
    inputs += [(len(layers) - 3,), (len(layers) - 2,)]
    return L.Network((4, 6, 6), tuple(layers), tuple(inputs))


@pytest.mark.parametrize("seed", range(25))
def test_float_plans_of_random_dag_networks_never_overlap_live_tensors(seed):
    rng = random.Random(100 + seed)
    network = _random_network(rng)
    ops, arena = float_plan(network, random_state(network, 1.0, seed=seed))
    assert len(ops) >= 3
    run_symbolically(ops, {op.writes: op.n_out for op in ops}, arena)


def test_int8_plans_of_graph_models_and_tflite_micro_arena(tmp_path):
    """Every graph model's int8 plan runs clean; the arena (activations plus the
    int16 scratch) with the caller's input and output is below TFLite Micro's
    arena_used_bytes, and the planned activations below TFLM's planned head."""
    from toolchain.export.c import generate_c
    from toolchain.export.c.int8_plan import int8_plan
    from toolchain.export.c.tflite_graph import read_tflite
    from toolchain.export.tflite import tflm_arena

    for name in GRAPH_NETWORKS:
        network, state, _, path = graph_model(name)
        ops, activations, x_t, y_t = int8_plan(read_tflite(path))
        run_symbolically(ops, {op.writes: op.n_out for op in ops}, activations)
        arena = generate_c(network, state, tmp_path / name, tflite_int8=path)["int8"]
        assert arena["activation_bytes"] == activations < arena["arena_bytes"]
        tflm = tflm_arena(path)
        assert tflm["total"] == tflm["head"] + tflm["tail"] > 0
        assert activations <= tflm["head"], (name, activations, tflm)
        assert arena["arena_bytes"] + x_t.size + y_t.size <= tflm["total"], (name, tflm)
