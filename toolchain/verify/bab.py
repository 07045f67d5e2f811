"""Branch and bound over ReLU splits: the complete step of ``complete.decide``.

A *domain* is the property's input box plus a tuple of split decisions
``(relu, neuron, sign)`` (``lirpa/splits.py``). Starting from the root (no
split), the driver repeatedly takes a batch of the open domains with the
lowest bound (the likeliest to hold a counterexample), splits each on one
unstable ReLU, and bounds both children at once (CROWN with split-fixed
intermediate bounds, then beta-CROWN with alpha and beta optimized, through
auto_LiRPA 0.3: see ``SplitBounder``). A child is a *leaf* when its bounds
refute every disjunct of the property (some row of each has a lower bound
above its ``c``) or its splits are contradictory (an empty domain); when no
domain is left open the property is ``verified`` and the leaves (their split
sets) are the proof a checker replays (``bab_tree.py``).

Falsification: each bound pass gives, per domain, the box corner minimizing
the CROWN bound of its worst open row; those points are checked on the float
model, and every ``PGD_EVERY`` rounds the points of the worst domains seed a
PGD on the whole box (``spec_attack.spec_pgd``). A counterexample is
re-checked on the float32 model (``unsafe_at``) before it counts.

Branching: BaBSR-style scores (``SplitBounder._scores``; Bunel et al. 2020)
against the widest unstable interval, both alone for 60 CPU s on the
natural 784-256x2 MLP's instances that reach branch and bound
(``benchmarks/README.md``, "Branch and bound"): BaBSR proved one in 4.8 s
(211 domains) that the widest interval left open after 13,347 domains, and
another with 21 domains against 123; so BaBSR is the default
(``HEURISTICS[0]``).

A domain whose ReLUs are all fixed (split or stable) and which is still open
cannot be split further, and beta-CROWN's few optimization steps need not
reach its exact bound; the network is affine there, so ``exact`` decides it
(``complete.decide`` passes its MILP step, which with every ReLU fixed has
no binary: one LP per disjunct). Such a leaf is re-checked the same way.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass, field

import numpy as np

HEURISTICS = ("babsr", "widest")
BATCH = 64                 # domains split per round (2 x BATCH children bounded at once)
PGD_EVERY = 5              # rounds between PGD runs from the worst domains' points
PGD_POINTS = 8             # how many domains' points seed one PGD run
TOL = 1e-6                 # a row refutes its disjunct when lb > c + TOL * (1 + |c|)


@dataclass
class BabResult:
    status: str                            # verified | falsified | unknown
    leaves: list = field(default_factory=list)   # verified: the split sets that cover the box
    domains: int = 0                       # domains bounded in all (root included)
    counterexample: np.ndarray | None = None
    reason: str = ""


class Property:
    """The rows of a disjunction of conjunctions and when a bound refutes it."""

    def __init__(self, disjuncts) -> None:
        self.rows = np.concatenate([a for a, _ in disjuncts])
        self.offsets = np.concatenate([c for _, c in disjuncts])
        self.owner = np.concatenate([np.full(len(c), d) for d, (_, c) in enumerate(disjuncts)])
        self.n = len(disjuncts)
        self._tol = TOL * (1.0 + np.abs(self.offsets))

    def refuted(self, lower: np.ndarray) -> np.ndarray:
        """(B, n) bool: disjunct d refuted in domain b (a row's bound clears its c)."""
        rows = np.asarray(lower) > self.offsets + self._tol           # (B, R)
        out = np.zeros((rows.shape[0], self.n), bool)
        np.logical_or.at(out.T, self.owner, rows.T)
        return out

    def settled(self, lower: np.ndarray) -> np.ndarray:
        """(B,) bool: every disjunct refuted."""
        return self.refuted(lower).all(1)

    def open_rows(self, lower: np.ndarray) -> np.ndarray:
        """(B, R) bool: the rows of the disjuncts not yet refuted."""
        return ~self.refuted(lower)[:, self.owner]

    def slack(self, lower: np.ndarray) -> np.ndarray:
        """(B,): per domain the worst open disjunct's best row margin (lb - c); < 0 open."""
        margin = np.asarray(lower) - self.offsets
        best = np.full((margin.shape[0], self.n), -np.inf)
        np.maximum.at(best.T, self.owner, margin.T)
        return best.min(1)


def branch_and_bound(module, bounder, input_shape, lower, upper, disjuncts, *,
                     time_left, seed: int = 0, heuristic: str | None = None,
                     batch: int = BATCH, exact=None, root=None) -> BabResult:
    """Decide the property by branch and bound within ``time_left()`` seconds.

    ``bounder``: a ``Bounder`` of ``module`` that allows CROWN. ``disjuncts``:
    the (A, c) still open. ``exact(relus, lower)``: decides a domain with no
    unstable ReLU from its pre-activation bounds (``DomainBounds.relus``),
    returning a ``complete.Decision``. ``root``: per ReLU sound pre-activation
    bounds over the box to start from (``SplitBounder``'s ``root``), or None.
    Checks the clock between rounds, so it
    may overrun by one round's bounding.
    """
    from toolchain.lirpa.splits import SplitBounder
    from toolchain.verify.spec_attack import spec_pgd, unsafe_at

    heuristic = heuristic or HEURISTICS[0]        # read now: benchmarks swap the default
    if heuristic not in HEURISTICS:
        raise ValueError(f"unknown branching heuristic {heuristic!r}")
    prop = Property(disjuncts)
    shape = tuple(input_shape)
    sb = SplitBounder(bounder, lower, upper, prop.rows, root=root)
    root = sb.bound([()], prop.open_rows, settled=prop.settled)
    count, leaves, heap, tick = 1, [], [], 0

    def falsify(points) -> np.ndarray | None:
        for p in points:
            if unsafe_at(module, p, shape, lower, upper, disjuncts):
                return np.asarray(p, np.float32).reshape(shape)
        return None

    found = []

    def push(splits, res, i) -> str | None:
        """File child i of ``res``: a leaf, or open with its next split; None if fine."""
        nonlocal tick
        if res.empty[i] or prop.settled(res.lower[i:i + 1])[0]:
            leaves.append(splits)
            return None
        choice = _choose(res, i, heuristic)
        if choice is None:
            if exact is None:
                return "a domain with every ReLU fixed is still open"
            d = exact(res.relus(i), res.lower[i])
            if d.status == "verified":
                leaves.append(splits)
                return None
            if d.status == "falsified":
                found.append(d.counterexample)
                return None
            return f"a domain with every ReLU fixed is still open ({d.reason})"
        tick += 1
        heapq.heappush(heap, (float(prop.slack(res.lower[i:i + 1])[0]), tick, splits, choice))
        return None

    trouble = push((), root, 0)
    x = found[0] if found else falsify(root.points)
    rounds = 0
    while heap and trouble is None and x is None:
        if time_left() <= 0:
            return BabResult("unknown", domains=count, reason=(
                f"{len(heap)} of {count} domains still open"))
        take = [heapq.heappop(heap) for _ in range(min(batch, len(heap)))]
        children = []
        for _, _, splits, (k, n) in take:
            children += [splits + ((k, n, 1),), splits + ((k, n, 0),)]
        res = sb.bound(children, prop.open_rows, settled=prop.settled)
        count += len(children)
        for i, splits in enumerate(children):
            trouble = trouble or push(splits, res, i)
        open_ = [i for i in range(len(children)) if not (res.empty[i] or
                                                           prop.settled(res.lower[i:i + 1])[0])]
        x = found[0] if found else falsify(res.points[open_])
        rounds += 1
        if x is None and heap and rounds % PGD_EVERY == 0:
            worst = np.argsort(prop.slack(res.lower[open_]))[:PGD_POINTS] if open_ else []
            pts = res.points[[open_[j] for j in worst]] if len(worst) else None
            if pts is not None:
                adv = spec_pgd(module, shape, lower, upper, disjuncts, seed=seed + rounds,
                               steps=50, starts=pts)
                x = None if adv is None else adv.reshape(shape)
    if x is not None:
        return BabResult("falsified", domains=count, counterexample=x)
    if trouble is not None:
        return BabResult("unknown", domains=count, reason=trouble)
    return BabResult("verified", leaves=leaves, domains=count)


def _choose(res, i: int, heuristic: str):
    """The (relu, neuron) to split domain ``i`` on, or None when none is unstable."""
    best, where = 0.0, None
    key = res.scores if heuristic == "babsr" else res.widths
    for k, s in enumerate(key):
        n = int(np.argmax(s[i]))
        if s[i][n] > best:
            best, where = float(s[i][n]), (k, n)
    if where is None and heuristic == "babsr":      # every score 0: fall back to width
        return _choose(res, i, "widest")
    return where
