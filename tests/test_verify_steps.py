"""The cascade's order is one definition (``verify/steps.py``): the engine runs
it and the certificate checker replays it, the same steps on the same open
samples in the same order."""

from __future__ import annotations

import pytest
import torch

import toolchain.verify.complete_step as complete_step_module
import toolchain.verify.engine as engine
from toolchain.verify.certificate import _Checker
from toolchain.verify.steps import ATTACK, BATCH, CASCADES, plan

EPS = 0.6
# Which step settles which sample (index -> step); the rest stay open throughout.
SETTLES = {0: "ibp", 1: "crown", 2: ATTACK, 3: "alpha-crown", 4: "complete"}
N = 6


class Net(torch.nn.Module):
    """Class 0 unless the input's second value is raised (what the "attack" does)."""

    def forward(self, x):
        return torch.stack([torch.ones(len(x)), 2 * x[:, 1]], 1)


class SpyBounder:
    """Records (step, open indices); verifies exactly the samples ``SETTLES`` gives it."""

    num_classes = 2

    def __init__(self, log):
        self.log = log

    def margin_lower(self, x, y, eps, method):
        idx = [round(float(v) * 10) for v in x[:, 0]]
        self.log.append((method, idx))
        return torch.tensor([[1.0 if SETTLES.get(i) == method else -1.0] for i in idx])

    @staticmethod
    def verified(lb):
        return (lb > 0).all(1)


def inputs():
    x = torch.stack([torch.arange(N) / 10, torch.zeros(N)], 1)      # row i holds i / 10
    return x, torch.zeros(N, dtype=torch.long)


def run_engine(method, monkeypatch):
    log = []

    def attack(module, x, y, eps, cfg, sample_ids):
        log.append((ATTACK, list(sample_ids)))
        adv = x.clone()
        found = torch.tensor([SETTLES.get(i) == ATTACK for i in sample_ids])
        adv[found, 1] = eps                                         # in the box, class 1
        return found, adv

    def complete(module, bounder, x, y, eps, timeout, state, ids, on_batch=None):
        open_idx = state.open_indices().tolist()
        log.append(("complete", open_idx))
        for i in open_idx:
            if SETTLES.get(i) == "complete":
                state.verdict[i], state.decided_by[i] = "verified", "milp"

    monkeypatch.setattr(engine, "pgd", attack)
    monkeypatch.setattr(complete_step_module, "complete_step", complete)
    x, y = inputs()
    result = engine.verify_samples(Net(), SpyBounder(log), x, y, EPS, method)
    return log, result


def replay(method, result):
    log = []
    x, y = inputs()
    checker = _Checker("cert", Net(), SpyBounder(log), x, y, 1e-4, 0.05)
    samples = [s.to_dict() for s in result.samples]
    checker._cascade(samples, {"eps": EPS, "method": method}, torch.ones(N, dtype=torch.bool))
    return log


def test_plan_puts_the_attack_between_the_cheap_and_the_optimized_steps():
    assert plan("all") == ("ibp", "crown", ATTACK, "alpha-crown", "complete")
    assert plan("complete") == ("complete",)
    assert plan("alpha-crown") == (ATTACK, "alpha-crown")
    assert plan("all", ("ibp", "crown", "alpha-crown"))[-1] == "alpha-crown"
    assert all(set(CASCADES[m]) <= set(plan(m)) for m in CASCADES)


@pytest.mark.parametrize("method", list(CASCADES))
def test_checker_replays_the_engines_steps_in_order(method, monkeypatch):
    ran, result = run_engine(method, monkeypatch)
    assert [step for step, _ in ran] == list(plan(method))
    settled = {s.index: s.method for s in result.samples if s.verdict != "unknown"}
    for i, step in SETTLES.items():                  # each step settled its own sample
        if step in plan(method):
            assert settled[i] == ("milp" if step == "complete" else step)
    # The checker re-bounds what the certificate claims, and needs every step
    # up to the last claimed bound: the same bound calls, on the same open
    # samples, with the attack's share taken out at the same point.
    replayed = replay(method, result)
    bounds = [(step, idx) for step, idx in ran if step in BATCH]
    claimed = {s.method for s in result.samples if s.verdict == "verified"}
    while bounds and bounds[-1][0] not in claimed:
        bounds.pop()
    assert replayed == bounds
    if "alpha-crown" in claimed:
        assert 2 not in dict(replayed)["alpha-crown"]    # taken by the attack first
