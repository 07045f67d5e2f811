"""The verification cascade: a verdict and margin lower bounds for every sample.

For each test sample at each eps, cheapest first:

1. clean prediction wrong -> ``falsified`` (the input itself is the counterexample);
2. bounds (IBP, then CROWN, ...; the methods asked for) -> ``verified`` when
   every margin lower bound is > 0;
3. PGD attack -> ``falsified`` when it finds an input in the box that changes
   the prediction (re-checked: in the box, really misclassified); the input is
   kept (``SampleResult.counterexample``) so that a certificate can carry it;
4. alpha-CROWN, when asked for, on what is still open;
5. otherwise ``unknown``.

So verified <= robust under attack <= clean accuracy, by construction.
"""

from __future__ import annotations

import base64
import time
from dataclasses import dataclass, field

import torch

from toolchain.errors import VstError
from toolchain.verify.attack import AttackConfig, in_box, pgd

CASCADES = {"ibp": ("ibp",), "crown": ("crown",), "alpha-crown": ("alpha-crown",),
            "all": ("ibp", "crown", "alpha-crown")}
BATCH = {"ibp": 500, "crown": 250, "alpha-crown": 50}


@dataclass
class SampleResult:
    index: int
    label: int
    verdict: str               # verified | falsified | unknown
    method: str                # which step decided: clean | ibp | crown | alpha-crown | pgd | none
    margin_lower: list[float]  # from the tightest bound computed (empty if none was)
    counterexample: torch.Tensor | None = None  # method "pgd": the input that broke it

    def to_dict(self) -> dict:
        out = {"index": self.index, "label": self.label, "verdict": self.verdict,
               "method": self.method, "margin_lower": self.margin_lower}
        if self.counterexample is not None:
            out["counterexample"] = encode_input(self.counterexample)
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

    def by_method(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for s in self.samples:
            if s.verdict == "verified":
                out[s.method] = out.get(s.method, 0) + 1
        return out


def verify_samples(module, bounder, x, y, eps: float, method: str, *,
                   attack: AttackConfig | None = None, on_batch=None,
                   ids=None) -> EpsResult:
    """Run the cascade for one eps on (x, y); ``on_batch(n_done)`` reports progress;
    ``ids``: each row's global test index (seeds its attack; default 0..N-1)."""
    if method not in CASCADES:
        raise VstError(f"unknown method {method!r}; choose ibp, crown, alpha-crown or all")
    if eps < 0:
        raise VstError(f"eps must be >= 0, got {eps}")
    t0 = time.perf_counter()
    module.eval()
    with torch.no_grad():
        clean_ok = module(x).argmax(1) == y
    n, k = len(x), bounder.num_classes
    verdict = ["falsified" if not ok else "open" for ok in clean_ok.tolist()]
    decided_by = ["clean" if not ok else "none" for ok in clean_ok.tolist()]
    margins = torch.full((n, k - 1), float("nan"))
    steps = list(CASCADES[method])
    cheap = [m for m in steps if m != "alpha-crown"]
    for m in cheap:
        _bound_step(bounder, x, y, eps, m, verdict, decided_by, margins, on_batch)
    counterexamples: dict[int, torch.Tensor] = {}
    _attack_step(module, x, y, eps, attack or AttackConfig(), verdict, decided_by,
                 counterexamples, list(range(n)) if ids is None else list(ids))
    if "alpha-crown" in steps:
        _bound_step(bounder, x, y, eps, "alpha-crown", verdict, decided_by, margins, on_batch)
    result = EpsResult(eps, method, seconds=0.0)
    for i in range(n):
        v = "unknown" if verdict[i] == "open" else verdict[i]
        mlist = [] if torch.isnan(margins[i]).all() else [float(m) for m in margins[i]]
        result.samples.append(SampleResult(i, int(y[i]), v, decided_by[i], mlist,
                                           counterexamples.get(i)))
    result.seconds = time.perf_counter() - t0
    return result


def _bound_step(bounder, x, y, eps, method, verdict, decided_by, margins, on_batch) -> None:
    open_idx = torch.tensor([i for i, v in enumerate(verdict) if v == "open"], dtype=torch.long)
    size = BATCH[method]
    for start in range(0, len(open_idx), size):
        idx = open_idx[start:start + size]
        with torch.set_grad_enabled(method == "alpha-crown"):
            lb = bounder.margin_lower(x[idx], y[idx], eps, method).detach()
        margins[idx] = lb
        for i, ok in zip(idx.tolist(), bounder.verified(lb).tolist()):
            if ok:
                verdict[i], decided_by[i] = "verified", method
        if on_batch is not None:
            on_batch(method, len(idx))


def _attack_step(module, x, y, eps, attack, verdict, decided_by, counterexamples,
                 ids) -> None:
    open_idx = torch.tensor([i for i, v in enumerate(verdict) if v == "open"], dtype=torch.long)
    if len(open_idx) == 0 or eps == 0:
        return
    found, adv = pgd(module, x[open_idx], y[open_idx], eps, attack,
                     sample_ids=[ids[i] for i in open_idx.tolist()])
    with torch.no_grad():
        really = found & in_box(adv, x[open_idx], eps) & (module(adv).argmax(1) != y[open_idx])
    for k, (i, ok) in enumerate(zip(open_idx.tolist(), really.tolist())):
        if ok:
            verdict[i], decided_by[i] = "falsified", "pgd"
            counterexamples[i] = adv[k].detach().cpu()
