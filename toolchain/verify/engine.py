"""The verification cascade: a verdict and margin lower bounds for every sample.

For each test sample at each eps, cheapest first (the order is
``steps.plan``, which the certificate checker replays):

1. clean prediction wrong -> ``falsified`` (the input itself is the counterexample);
2. bounds (IBP, then CROWN, ...; the methods asked for) -> ``verified`` when
   every margin lower bound is > 0;
3. PGD attack -> ``falsified`` when it finds an input in the box that changes
   the prediction (re-checked: in the box, really misclassified); the input is
   kept (``SampleResult.counterexample``) so that a certificate can carry it;
4. alpha-CROWN, when asked for, on what is still open;
5. complete verification (``complete.decide``: a MILP with CROWN/alpha-CROWN
   big-M values), when asked for, on what is still open, within ``timeout``
   seconds per sample -> ``verified`` or ``falsified`` (method ``milp``, with a
   re-checked counterexample), rarely by its own bounds or its stronger PGD;
6. otherwise ``unknown`` (for the complete step: it ran out of time).

``--method complete`` runs step 5 alone on every correctly classified sample.
Each sample records the step that decided it and its time in seconds (its
share of every batched step it took part in, plus its own complete run).

So verified <= robust under attack <= clean accuracy, by construction.
"""

from __future__ import annotations

import base64
import time
from dataclasses import dataclass, field

import torch

from toolchain.errors import VstError
from toolchain.verify.attack import AttackConfig, in_box, pgd
from toolchain.verify.steps import ATTACK, BATCH, CASCADES, plan

DEFAULT_TIMEOUT = 60.0      # seconds of complete verification per sample


@dataclass
class SampleResult:
    index: int
    label: int
    verdict: str               # verified | falsified | unknown
    method: str                # which step decided: clean | ibp | crown | alpha-crown | pgd
                               # | milp | bab | none
    margin_lower: list[float]  # from the tightest bound computed (empty if none was)
    counterexample: torch.Tensor | None = None  # pgd / milp: the input that broke it
    seconds: float = 0.0       # time spent on this sample (its share of batched steps)
    tree: dict | None = None   # bab: the proof's split tree (verify/bab_tree.py)

    def to_dict(self) -> dict:
        out = {"index": self.index, "label": self.label, "verdict": self.verdict,
               "method": self.method, "margin_lower": self.margin_lower,
               "seconds": self.seconds}
        if self.counterexample is not None:
            out["counterexample"] = encode_input(self.counterexample)
        if self.tree is not None:
            out["bab"] = self.tree
        return out


def encode_input(x: torch.Tensor) -> str:
    """One input as base64 of its float32 values, little-endian, in C order (exact)."""
    data = x.detach().to("cpu", torch.float32).contiguous().numpy().astype("<f4").tobytes()
    return base64.b64encode(data).decode("ascii")


def decode_input(text: str, shape) -> torch.Tensor:
    """The inverse of ``encode_input``; ``ValueError`` unless it holds exactly ``shape``."""
    import numpy as np

    data = base64.b64decode(text.encode("ascii"), validate=True)
    count = int(np.prod(shape))
    if len(data) != 4 * count:
        raise ValueError(f"{len(data)} bytes, expected {4 * count} (float32 {tuple(shape)})")
    return torch.from_numpy(np.frombuffer(data, "<f4").astype(np.float32).reshape(shape))


@dataclass
class EpsResult:
    eps: float
    method: str
    samples: list[SampleResult] = field(default_factory=list)
    seconds: float = 0.0

    def count(self, verdict: str) -> int:
        return sum(s.verdict == verdict for s in self.samples)

    @property
    def n(self) -> int:
        return len(self.samples)

    @property
    def verified_acc(self) -> float:
        return self.count("verified") / max(1, self.n)

    @property
    def robust_upper(self) -> float:
        """Accuracy under attack: an upper bound on true robust accuracy."""
        return 1.0 - self.count("falsified") / max(1, self.n)

    def by_method(self, verdict: str = "verified") -> dict[str, int]:
        """How many samples each step settled with ``verdict`` (e.g. {"crown": 80})."""
        return settled_by([{"verdict": s.verdict, "method": s.method} for s in self.samples],
                          verdict)


def settled_by(samples: list[dict], verdict: str) -> dict[str, int]:
    """Count per method of the (certificate) samples with ``verdict``."""
    out: dict[str, int] = {}
    for s in samples:
        if s["verdict"] == verdict:
            out[s["method"]] = out.get(s["method"], 0) + 1
    return out


def verify_samples(module, bounder, x, y, eps: float, method: str, *,
                   attack: AttackConfig | None = None, on_batch=None,
                   ids=None, timeout: float = DEFAULT_TIMEOUT,
                   complete_module=None, steps: tuple[str, ...] | None = None) -> EpsResult:
    """Run the cascade for one eps on (x, y); ``on_batch(n_done)`` reports progress;
    ``ids``: each row's global test index (seeds its attack; default 0..N-1);
    ``timeout``: seconds of complete verification per sample; ``complete_module``:
    a CPU twin of ``module`` for the complete step (default ``module`` itself);
    ``steps``: run these steps of ``CASCADES`` instead of the method's own (the
    benchmarks use it to stop before the complete step)."""
    if method not in CASCADES:
        raise VstError(f"unknown method {method!r}; choose " + ", ".join(CASCADES))
    if eps < 0:
        raise VstError(f"eps must be >= 0, got {eps}")
    if not timeout > 0:
        raise VstError(f"timeout must be > 0 seconds, got {timeout}")
    t0 = time.perf_counter()
    module.eval()
    with torch.no_grad():
        clean_ok = module(x).argmax(1) == y
    n, k = len(x), bounder.num_classes
    state = _State(["falsified" if not ok else "open" for ok in clean_ok.tolist()],
                   ["clean" if not ok else "none" for ok in clean_ok.tolist()],
                   torch.full((n, k - 1), float("nan")), {},
                   [(time.perf_counter() - t0) / max(1, n)] * n)
    ids = list(range(n)) if ids is None else list(ids)
    for step in plan(method, steps, getattr(bounder, "refused", {})):
        if step in BATCH:
            _bound_step(bounder, x, y, eps, step, state, on_batch)
        elif step == ATTACK:
            _attack_step(module, x, y, eps, attack or AttackConfig(), state, ids)
        else:
            from toolchain.verify.complete_step import complete_step

            complete_step(complete_module or module, bounder, x, y, eps, timeout, state, ids,
                          on_batch)
    result = EpsResult(eps, method, seconds=0.0)
    for i in range(n):
        v = "unknown" if state.verdict[i] == "open" else state.verdict[i]
        row = state.margins[i]
        mlist = [] if torch.isnan(row).all() else [float(m) for m in row]
        result.samples.append(SampleResult(i, int(y[i]), v, state.decided_by[i], mlist,
                                           state.counterexamples.get(i), state.seconds[i],
                                           state.trees.get(i)))
    result.seconds = time.perf_counter() - t0
    return result


@dataclass
class _State:
    """The cascade's per-sample state (verdict "open" until a step decides)."""

    verdict: list[str]
    decided_by: list[str]
    margins: torch.Tensor                      # (N, K-1), NaN where never bounded
    counterexamples: dict[int, torch.Tensor]
    seconds: list[float]
    trees: dict[int, dict] = field(default_factory=dict)    # bab proofs, by position

    def open_indices(self) -> torch.Tensor:
        return torch.tensor([i for i, v in enumerate(self.verdict) if v == "open"],
                            dtype=torch.long)

    def charge(self, idx, seconds: float) -> None:
        """Share ``seconds`` of a batched step among the samples ``idx``."""
        idx = list(idx)
        for i in idx:
            self.seconds[i] += seconds / max(1, len(idx))


def _bound_step(bounder, x, y, eps, method, state, on_batch) -> None:
    open_idx = state.open_indices()
    size = BATCH[method]
    for start in range(0, len(open_idx), size):
        idx = open_idx[start:start + size]
        t0 = time.perf_counter()
        with torch.set_grad_enabled(method == "alpha-crown"):
            lb = bounder.margin_lower(x[idx], y[idx], eps, method).detach()
        state.margins[idx] = lb
        for i, ok in zip(idx.tolist(), bounder.verified(lb).tolist()):
            if ok:
                state.verdict[i], state.decided_by[i] = "verified", method
        state.charge(idx.tolist(), time.perf_counter() - t0)
        if on_batch is not None:
            on_batch(method, len(idx))


def _attack_step(module, x, y, eps, attack, state, ids) -> None:
    open_idx = state.open_indices()
    if len(open_idx) == 0 or eps == 0:
        return
    t0 = time.perf_counter()
    found, adv = pgd(module, x[open_idx], y[open_idx], eps, attack,
                     sample_ids=[ids[i] for i in open_idx.tolist()])
    with torch.no_grad():
        really = found & in_box(adv, x[open_idx], eps) & (module(adv).argmax(1) != y[open_idx])
    for k, (i, ok) in enumerate(zip(open_idx.tolist(), really.tolist())):
        if ok:
            state.verdict[i], state.decided_by[i] = "falsified", "pgd"
            state.counterexamples[i] = adv[k].detach().cpu()
    state.charge(open_idx.tolist(), time.perf_counter() - t0)
