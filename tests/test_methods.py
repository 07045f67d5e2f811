"""Training methods as peers: the registry, thread choice, and the gradual / soft
mask logic (budget exact at every update, masked weights and their Adam
moments zero where the method says, compaction exact)."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from helpers import tiny_config, tiny_mnist
from toolchain.config import SparsityConfig
from toolchain.models.zoo import build_network
from toolchain.sparsity.masks import Sparsifier
from toolchain.train import trainer
from toolchain.train.methods import NAMES, get_method
from toolchain.train.methods.gradual import Gradual

TRAIN = {"epochs": 3, "warmup_epochs": 1, "ramp_epochs": 1, "batch_size": 32}


def test_registry_and_config_name_the_same_methods():
    choices = next(f for f in dataclasses.fields(SparsityConfig)
                   if f.name == "method").metadata["choices"]
    assert set(choices) == set(NAMES)
    assert {get_method(n).name for n in NAMES} == set(NAMES)


def test_auto_threads_follow_the_cpus_this_process_may_use(monkeypatch):
    monkeypatch.setattr(trainer.os, "sched_getaffinity", lambda pid: {0, 2, 5})
    assert trainer.usable_cpus() == 3
    assert trainer.pick_threads(0, busy=0.0) == 3
    assert trainer.pick_threads(0, ranks=2, busy=0.0) == 1     # shared by the local ranks
    assert trainer.pick_threads(4, busy=3.0) == 4              # the config wins
    assert trainer.pick_threads(0, busy=0.6) == 3              # background noise
    assert trainer.pick_threads(0, busy=1.0) == 2              # a CPU kept busy elsewhere
    assert trainer.pick_threads(0, busy=7.0) == 1              # never fewer than one
    monkeypatch.setattr(trainer.os, "sched_getaffinity", lambda pid: set(range(64)))
    assert trainer.pick_threads(0, busy=0.0) == trainer.AUTO_MAX_THREADS


def test_busy_elsewhere_sees_a_busy_process():
    import subprocess
    import sys
    quiet = trainer.busy_elsewhere(0.3)
    spin = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        import time
        time.sleep(0.2)
        loaded = trainer.busy_elsewhere(0.5)
    finally:
        spin.kill()
        spin.wait()
    assert 0.0 <= quiet and loaded >= 0.6, (quiet, loaded)


def _net():
    return build_network("cnn_small", (1, 12, 12), 10, channels=(6, 8), widths=(12,))


def test_prune_to_keeps_the_most_important_and_revives_only_when_soft():
    sp = Sparsifier(_net(), "structured", 0.5, "erk", torch.Generator().manual_seed(0))
    layer = next(iter(sp.unit_masks))
    mask = sp.unit_masks[layer]
    pruned = int((~mask).nonzero()[0])
    score = {k: torch.arange(len(m), dtype=torch.float32) for k, m in sp.unit_masks.items()}
    score[layer][pruned] = 1e9                             # a pruned unit that matters now
    k = int(mask.sum()) - 1
    counts = {l: int(m.sum()) for l, m in sp.unit_masks.items()} | {layer: k}
    before = mask.clone()
    sp.prune_to(counts, score, revive=False)
    assert int(sp.unit_masks[layer].sum()) == k and not sp.unit_masks[layer][pruned]
    assert not (sp.unit_masks[layer] & ~before).any()     # hard: only active units compete
    sp.prune_to(counts, score, revive=True)
    assert sp.unit_masks[layer][pruned] and int(sp.unit_masks[layer].sum()) == k


def test_soft_pruning_zeroes_what_a_channel_sends_not_what_it_receives():
    from toolchain.models.torch_build import build_torch
    net = _net()
    module = build_torch(net)
    sp = Sparsifier(net, "structured", 0.4, "erk", torch.Generator().manual_seed(1))
    before = {k: v.detach().clone() for k, v in module.named_parameters()}
    sp.zero_pruned_outputs(module)
    params = dict(module.named_parameters())
    consumers = {c for g in sp.groups.values() for c, _ in g.consumers}
    for layer, group in sp.groups.items():
        off = (~sp.unit_masks[layer]).nonzero().flatten().tolist()
        (consumer, per), = group.consumers
        for c in range(group.channels):
            cols = params[f"{consumer}.weight"][:, group.columns(c, per)]
            assert bool((cols == 0).all()) == (c in off)
        incoming = params[f"{layer}.weight"]
        assert all(incoming[c].any() for c in off)             # still there: may come back
        if layer not in consumers:
            assert torch.equal(incoming, before[f"{layer}.weight"])


def test_taylor_channel_score_is_activation_times_its_gradient():
    """|sum over a channel's outgoing weights of w * dL/dw| = |sum_batch a * dL/da|."""
    from toolchain.models.torch_build import build_torch
    net = _net()
    module = build_torch(net)
    sp = Sparsifier(net, "structured", 1.0, "erk", torch.Generator())
    x = torch.rand(5, 1, 12, 12)
    acts = {}

    def keep(layer):
        def hook(mod, inputs, out):
            out.retain_grad()
            acts[layer] = out
        return hook
    for layer in sp.groups:
        module[layer + 1].register_forward_hook(keep(layer))      # the ReLU after it
    module(x).square().sum().backward()
    scores = Gradual._taylor(sp, dict(module.named_parameters()))
    for layer in sp.groups:
        a = acts[layer]
        expect = (a * a.grad).reshape(a.shape[0], a.shape[1], -1).sum(dim=(0, 2)).abs()
        assert torch.allclose(scores[layer], expect, rtol=1e-4, atol=1e-6)


def test_cubic_budget_reaches_the_target_exactly_and_only_shrinks():
    g = Gradual()
    g.start, g.final = {1: 30, 4: 60}, {1: 10, 4: 20}
    counts = [g.counts(s, 100) for s in range(0, 101, 10)]
    assert counts[0] == g.start and counts[-1] == g.final
    for a, b in zip(counts, counts[1:]):
        assert all(b[k] <= a[k] for k in a)


@pytest.fixture(scope="module")
def data_path(tmp_path_factory):
    return tiny_mnist(tmp_path_factory.mktemp("methods") / "tiny.npz")


def _checked_updates(monkeypatch, log):
    """Wrap Gradual.mask_step: after every update check the budget and the zeros."""
    real = Gradual.mask_step

    def step(self, run, step, *args):
        changed, skip = real(self, run, step, *args)
        if not self.updates or self.updates[-1]["step"] != step:
            return changed, skip
        sp, params = run.sparsifier, dict(run.module.named_parameters())
        counts = self.counts(step, self.shrink_end(run))
        assert {l: int(m.sum()) for l, m in sp.unit_masks.items()} == counts
        hard = self.done or not self.soft
        masks = sp.param_masks()
        for name, mask in masks.items():
            p = params[name]
            if hard:
                assert not (p[mask == 0] != 0).any(), name
                for v in run.optimizer.state.get(p, {}).values():
                    if torch.is_tensor(v) and v.shape == p.shape:
                        assert not (v[mask == 0] != 0).any(), name
        if not hard:
            for layer, group in sp.groups.items():
                for consumer, per in group.consumers:
                    for c in (~sp.unit_masks[layer]).nonzero().flatten().tolist():
                        assert not params[f"{consumer}.weight"][:, group.columns(c, per)].any()
        log.append((step, sum(counts.values()), hard))
        return changed, skip

    monkeypatch.setattr(Gradual, "mask_step", step)


@pytest.mark.parametrize("soft,importance,mode", [
    (False, "taylor", "structured"), (True, "taylor", "structured"),
    (False, "magnitude", "structured"), (True, "magnitude", "unstructured")])
def test_gradual_training_keeps_the_budget_and_compacts_exactly(data_path, tmp_path,
                                                                monkeypatch, soft, importance,
                                                                mode):
    from toolchain.compact import compact
    log: list = []
    _checked_updates(monkeypatch, log)
    cfg = tiny_config(data_path, train=TRAIN, sparsity={
        "method": "verisparse-gradual", "mode": mode, "density": 0.3, "start_factor": 2.5,
        "soft": soft, "importance": importance, "update_every": 3})
    model = trainer.train(cfg, tmp_path, show_progress=False)
    assert len(log) >= 3 and log[-1][2]                       # hard at the end
    assert [k for _, k, _ in log] == sorted((k for _, k, _ in log), reverse=True)
    target = Sparsifier(model.network, mode, 0.3, "erk", torch.Generator()).budget(0.3)
    assert model.record["density"] == pytest.approx(
        Sparsifier(model.network, mode, 0.3, "erk", torch.Generator()).density())
    for name, mask in model.masks.items():                    # weights zero where masked
        assert not (model.state[name][mask == 0] != 0).any(), name
    kept = {layer: int(model.masks[f"{layer}.bias" if mode == "structured"
                                   else f"{layer}.weight"].sum()) for layer in target}
    assert kept == target                                     # exactly the target budget
    assert model.record["method"] == "verisparse-gradual"
    if mode == "structured":
        small, _ = compact(model)
        x = torch.rand(8, 1, 28, 28)
        with torch.no_grad():
            assert torch.allclose(model.torch_module().eval()(x), small.torch_module().eval()(x),
                                  atol=1e-5)


def test_training_records_threads_and_cpus(data_path, tmp_path):
    cfg = tiny_config(data_path, train={**TRAIN, "epochs": 1, "threads": 1})
    model = trainer.train(cfg, tmp_path, show_progress=False)
    assert model.record["threads"] == 1
    assert model.record["cpus"] == trainer.usable_cpus()
    assert model.record["method"] == cfg.sparsity.method


@pytest.mark.parametrize("epochs", [1, 2])
def test_gradual_ends_at_the_target_even_when_the_ramp_ends_with_training(data_path, tmp_path,
                                                                          epochs):
    cfg = tiny_config(data_path, train={"epochs": epochs, "warmup_epochs": 1, "ramp_epochs": 1},
                      sparsity={"method": "verisparse-gradual", "mode": "unstructured"})
    model = trainer.train(cfg, tmp_path, show_progress=False)
    target = Sparsifier(model.network, "unstructured", 0.3, "erk", torch.Generator())
    assert model.record["density"] == pytest.approx(target.density())
    for name, mask in model.masks.items():
        assert not (model.state[name][mask == 0] != 0).any(), name


@pytest.mark.parametrize("soft", [False, True])
def test_gradual_resumes_bit_exact(data_path, tmp_path, soft):
    """The importance averages and the update log travel in the checkpoint."""
    cfg = tiny_config(data_path, train={**TRAIN, "epochs": 4, "ramp_epochs": 2}, sparsity={
        "method": "verisparse-gradual", "update_every": 7, "soft": soft})
    full = trainer.train(cfg, tmp_path / "full", show_progress=False)
    trainer.train(cfg, tmp_path / "cut", show_progress=False, stop_after=2)
    resumed = trainer.train(cfg, tmp_path / "cut", resume=True, show_progress=False)
    assert resumed.weights_hash() == full.weights_hash()
    assert resumed.record["mask_updates"] == full.record["mask_updates"]


def test_hydra_refuses_to_resume(data_path, tmp_path):
    from toolchain.errors import VstError
    cfg = tiny_config(data_path, train=TRAIN, sparsity={"method": "hydra"})
    with pytest.raises(VstError, match="cannot resume"):
        trainer.train(cfg, tmp_path, resume=True, show_progress=False)

