"""Complete verification of one property: verified, falsified, or unknown on timeout.

A property is an input box ``[lower, upper]`` and an unsafe output region,
a disjunction of conjunctions: disjunct ``(A, c)`` holds at ``y = f(x)`` when
every row of ``A @ y <= c`` does. ``decide`` answers whether some box input
reaches the unsafe region, cheapest step first:

1. CROWN bounds on every row: a disjunct with a row whose lower bound is
   above its ``c`` is unreachable; none left -> ``verified`` ("crown");
2. PGD on the remaining disjuncts (``spec_attack``) -> ``falsified`` ("pgd");
3. alpha-CROWN, the same way -> ``verified`` ("alpha-crown");
4. the complete procedure (``procedure``): by default branch and bound over
   ReLU splits with beta-CROWN bounds (``bab.py``) for ``BAB_SHARE`` of the
   time left (from the tighter of CROWN's and alpha-CROWN's ReLU bounds: on
   784-256x6 these leave 939 unstable ReLUs where CROWN's leave 1,049, and
   branch and bound proves instances it did not), then a MILP per disjunct it
   left open (``milp``), with the
   tightest ReLU bounds of steps 1 and 3 as big-M values -> ``verified`` or
   ``falsified`` ("bab" or "milp"), or ``unknown`` when ``timeout`` runs out.
   ``procedure="milp"``: the MILP alone (the cascade before issue 25).

A network the ``Bounder`` refuses a method for (max pooling: see
``lirpa/twin.py``) skips that step: IBP stands in for CROWN in step 1
("ibp"), and the MILP takes its big-M values from interval arithmetic over
its own affine expressions (``milp.py``), which is sound for every node.
Branch and bound needs CROWN on batches of domains, which auto_LiRPA 0.3
does not give through max pooling (``splits.refusal``): such a network goes
to the MILP directly.

Why branch and bound first, and then the MILP (issue 25, measured on
naturally trained 784-256xN MLPs, ``benchmarks/README.md``, "Branch and
bound"): where branch and bound settles an instance it does so in a few
seconds, several times faster than the MILP (784-256x2: 3.6 s against 25 s,
1.0 s against 11 s); but when it stalls (thousands of domains, half of them
still open) the MILP, exact once every unstable ReLU is a binary, can still
prove the instance in the rest of the budget (784-256x2 at eps 0.05: one
instance the MILP proves in 30 s that branch and bound alone leaves open
after 60 s; the cascade proves it by the MILP in 59 s). So branch and bound
gets the first half of the time and the MILP the rest: on the measured
instances this settles what the MILP alone settles, faster, and with the
root's bounds from alpha-CROWN three instances more (784-256x4 and 256x6; 77
of 90 instances against the MILP's 74). Neither settles most hard instances
of the 4- and 6-layer nets at 60 s on one CPU core.
Before issue 25 the MILP alone was the complete step; branch and bound then
needed auto_LiRPA 0.3's beta-CROWN internals (``sparse_beta`` per split),
which ``lirpa/splits.py`` now sets up itself (auto_LiRPA's own driver is not
in 0.3).

Every ``falsified`` carries an input that was re-checked on the float32
torch model (inside the box, outputs in the disjunct); a ``verified`` comes
only from a sound bound, a split tree whose every leaf a sound bound refutes
(its leaves are kept in ``Decision.tree`` for the certificate checker,
``bab_tree.py``), or a MILP whose proven bound clears 0 by a margin.

Classification robustness of ``(x, label)`` at eps is ``classification_spec``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch

from toolchain.errors import VstError
from toolchain.verify.spec_attack import spec_pgd, unsafe_at

STATUSES = ("verified", "falsified", "unknown")
PROCEDURES = ("ibp", "crown", "alpha-crown", "pgd", "bab", "milp", "none")
COMPLETE = ("bab", "milp")        # the procedures that decide what bounds cannot
DEFAULT_TIMEOUT = 60.0            # seconds per property (VNN-COMP's usual budget)
# The share of the time left after alpha-CROWN that branch and bound gets before the
# MILP takes over what it left open (see the module docstring; benchmarks/README.md).
BAB_SHARE = 0.5
# The most a certificate check spends re-proving one claim. The checker sets it
# (--timeout), never the certificate: a certificate's own timeout can only lower it.
RECHECK_TIMEOUT = 300.0
# ReLU layers refined by LP before branch and bound (refine.py; 0: none). Measured on
# the mnistfc-shaped MLPs (benchmarks/README.md, "Branch and bound"): the LP bounds
# of layer 2 equal alpha-CROWN's to 1e-5 (alpha-CROWN optimizes every intermediate
# neuron's slopes, which reaches the same triangle relaxation), so the LP costs time
# (4 CPU s for layer 2 of 256x4, 90 s with layer 3) and stabilizes no neuron; on
# the 19 instances that reach this step, layer 2's LPs took 4.9% of the time,
# stabilized nothing and settled one instance fewer: off.
REFINE_LAYERS = 0


@dataclass
class Decision:
    status: str            # "verified" | "falsified" | "unknown"
    procedure: str         # which step decided: crown | alpha-crown | pgd | bab | milp | none
    seconds: float
    counterexample: np.ndarray | None = None   # float32, input shape, inside the box, re-checked
    reason: str = ""       # for "unknown": why (e.g. "timeout after 60 s")
    bounds: np.ndarray | None = None   # lower bound of every row (A @ y) over the box, stacked
    tree: dict | None = None   # "bab" verified: {"domains", "heuristic", "leaves"} (bab_tree)


def classification_spec(label: int, num_classes: int):
    """Unsafe region of a robust classification: some class j != label scores at
    least the label's, one disjunct ``(e_label - e_j) @ y <= 0`` per j (in class order,
    the order of ``lirpa.bounds.margin_matrix``)."""
    out = []
    for j in range(num_classes):
        if j != label:
            a = np.zeros((1, num_classes))
            a[0, label], a[0, j] = 1.0, -1.0
            out.append((a, np.zeros(1)))
    return out


def decide(module, input_shape, lower, upper, disjuncts, *, timeout: float, network=None,
           seed: int = 0, bounder=None, cheap: bool = True, program=None,
           clock=time.perf_counter, procedure: str = "bab") -> Decision:
    """Unsafe iff some x in [lower, upper] (numpy, input shape or flat) and some
    disjunct (A, c) has all rows of A @ f(x) <= c. "verified" = no such x exists
    (proved soundly). ``bounder``: a ``Bounder`` of ``module`` to reuse (built if
    None); ``network`` is accepted for callers that hold the layer list (the MILP
    reads the same maps off ``module``). ``cheap=False`` skips the verdicts of
    steps 1-3 (their bounds are still computed for the MILP): the complete
    procedure alone, for tests and for comparing procedures. ``program``: an
    ``affine_program.ProgramReader`` of ``module`` to reuse (the MILP's reading
    of the network, made once for many properties). ``clock``: what
    ``timeout`` and ``Decision.seconds`` count (wall time; benchmarks on a shared
    machine pass ``time.process_time`` to count this process's CPU time)."""
    from toolchain.lirpa.bounds import Bounder

    t0 = clock()
    shape = tuple(int(s) for s in input_shape)
    lower, upper = _box(lower, upper, shape)
    if not (timeout > 0 and np.isfinite(timeout)):
        raise VstError(f"timeout must be a positive number of seconds, got {timeout}")
    module.eval()
    bounder = bounder or Bounder(module, shape)
    disjuncts = _disjuncts(disjuncts, bounder.num_classes)
    rows = np.concatenate([a for a, _ in disjuncts])
    offsets = np.concatenate([c for _, c in disjuncts])
    owner = np.concatenate([np.full(len(c), d) for d, (_, c) in enumerate(disjuncts)])
    elapsed = lambda: clock() - t0                                   # noqa: E731
    done = lambda status, proc, **kw: Decision(status, proc, elapsed(), **kw)  # noqa: E731

    first = "crown" if "crown" not in bounder.refused else "ibp"
    lb, relus = bounder.box_bounds(lower, upper, torch.from_numpy(rows), first)
    best = lb.double().cpu().numpy()
    open_ = _open(best, offsets, owner, len(disjuncts))
    if not open_ and cheap:
        return done("verified", first, bounds=best)
    adv = spec_pgd(module, shape, lower, upper, [disjuncts[d] for d in open_],
                   seed=seed) if cheap and open_ else None
    if adv is not None:
        return done("falsified", "pgd", counterexample=adv.reshape(shape), bounds=best)
    root = None
    if "alpha-crown" not in bounder.refused:
        best, relus = _with_alpha(bounder, lower, upper, rows, best, relus)
        root = "alpha-crown"
    open_ = _open(best, offsets, owner, len(disjuncts)) if cheap else list(range(len(disjuncts)))
    if not open_:
        return done("verified", "alpha-crown", bounds=best)
    if procedure not in COMPLETE:
        raise VstError(f"unknown complete procedure {procedure!r}; choose one of "
                       f"{', '.join(COMPLETE)}")
    from toolchain.lirpa.splits import refusal

    bab_why = ""
    if procedure == "bab" and refusal(bounder) is None:
        budget = BAB_SHARE * (timeout - elapsed())
        start = elapsed()
        record = []
        if REFINE_LAYERS and root is not None:
            from toolchain.verify.affine_program import ProgramReader
            from toolchain.verify.refine import SHARE, refine

            program = program or ProgramReader(module, shape)
            until = start + SHARE * budget
            ref = refine(program(), lower, upper, relus, layers=REFINE_LAYERS,
                         time_left=lambda: until - elapsed())
            relus, record = ref.bounds, ref.record
        d = _bab(module, bounder, shape, lower, upper, disjuncts, open_, best,
                 start + budget, elapsed, seed, program,
                 root and {"root": root, "bounds": relus, "refined": record})
        if d.status != "unknown" or BAB_SHARE >= 1:
            return d
        bab_why = f"branch and bound: {d.reason}; then "
    d = _milp(module, shape, lower, upper, disjuncts, open_, relus, best, offsets,
              owner, timeout, elapsed, clock is time.perf_counter, program)
    if d.status == "unknown" and bab_why:
        d.reason = bab_why + d.reason
    return d


def _milp(module, shape, lower, upper, disjuncts, open_, relus, best, offsets, owner,
          timeout, elapsed, wall: bool, read) -> Decision:
    """Step 4: a MILP per open disjunct."""
    from toolchain.verify.affine_program import ProgramReader, TooLarge
    from toolchain.verify.milp import MilpEncoding

    try:
        program = (read or ProgramReader(module, shape))()
    except TooLarge as exc:
        return Decision("unknown", "none", elapsed(), bounds=best,
                        reason=str(exc))
    enc = MilpEncoding(program, lower, upper, relus)
    # What the float64 MILP must clear 0 by: float32 rounding of the network's
    # outputs (about 1e-6 relative) and LP tolerances, with room to spare,
    # scaled by the size of the outputs. A closer call stays "unknown".
    margin = 1e-4 * (1.0 + float(np.max(np.abs(best))))
    probes = (lower, upper, (lower + upper) / 2)
    if enc.trouble or not all(enc.consistent(p) for p in probes):
        return Decision("unknown", "none", elapsed(), bounds=best,
                        reason=enc.trouble or "the ReLU bounds do not hold at a corner of "
                                              "the box (numerical trouble); no MILP run")
    # One MILP per open disjunct, the likeliest to be reachable first. (Tried: one
    # MILP over all open disjuncts with a selector binary each; on the natural
    # 2x256 MLP it settled no instance that this does not, so it was dropped.)
    slack = {d: float(np.max(best[owner == d] - offsets[owner == d])) for d in open_}
    for k, d in enumerate(sorted(open_, key=slack.get)):
        a, c = disjuncts[d]
        res = enc.solve([(a, c)], time_limit=timeout - elapsed(), margin=margin,
                        elapsed=None if wall else elapsed)
        if res.status == "unreachable" and min(enc.objective_at(p, a, c)
                                               for p in probes) <= margin:
            res.status, res.reason = "unknown", ("the MILP's cutoff contradicts a box "
                                                 "point within the margin (numerics)")
        if res.status == "reachable":
            x = res.x.astype(np.float32)
            if unsafe_at(module, x, shape, lower, upper, disjuncts):
                return Decision("falsified", "milp", elapsed(),
                                counterexample=x.reshape(shape), bounds=best)
            res.reason = (f"the MILP optimum {res.objective:.3g} lies within numerical "
                          "tolerance of the boundary and does not re-check on the float "
                          "model")
        if res.status != "unreachable":
            spent = elapsed()
            why = "timeout" if spent >= timeout - 0.5 or "time limit" in res.reason else "limit"
            return Decision("unknown", "none", spent, bounds=best, reason=(
                f"{why} after {spent:.0f} s: disjunct {k + 1} of {len(open_)} open "
                f"({res.reason}; {enc.describe()})"))
    return Decision("verified", "milp", elapsed(), bounds=best)


def _bab(module, bounder, shape, lower, upper, disjuncts, open_, best, timeout, elapsed,
         seed, program, root) -> Decision:
    """Step 4 by branch and bound over ReLU splits (``bab.py``) on the open disjuncts;
    a proof keeps its split tree (``bab_tree.py``). ``root``: None (the root's ReLU
    bounds are CROWN's), or {"root": "alpha-crown", "bounds": the ReLU bounds
    to start from, "refined": the LP-refined ones among them (``refine.py``)},
    recorded in the tree for the checker."""
    from toolchain.verify.bab import HEURISTICS, branch_and_bound

    sub = [disjuncts[d] for d in open_]
    res = branch_and_bound(module, bounder, shape, lower, upper, sub,
                           time_left=lambda: timeout - elapsed(), seed=seed,
                           exact=fixed_domain(module, shape, lower, upper, sub,
                                              lambda: timeout - elapsed(), program),
                           root=root and root["bounds"])
    if res.status == "verified":
        tree = {"domains": res.domains, "heuristic": HEURISTICS[0], "open": list(open_),
                "leaves": [[list(s) for s in leaf] for leaf in res.leaves]}
        if root:
            tree["root"] = root["root"]
            if root["refined"]:
                tree["refined"] = root["refined"]
        return Decision("verified", "bab", elapsed(), bounds=best, tree=tree)
    if res.status == "falsified":
        return Decision("falsified", "bab", elapsed(), counterexample=res.counterexample,
                        bounds=best)
    spent = elapsed()
    why = "timeout" if spent >= timeout - 0.5 else "limit"
    return Decision("unknown", "none", spent, bounds=best,
                    reason=f"{why} after {spent:.0f} s: {res.reason}")


def fixed_domain(module, shape, lower, upper, disjuncts, time_left, program=None):
    """``exact`` for branch and bound: a domain with no unstable ReLU, given its
    pre-activation bounds, is one LP per disjunct (the MILP encoding, with no
    binary left) within ``time_left()`` seconds. Its inputs are all of the box
    whose pre-activations lie in those bounds, a superset of the domain on which
    the network equals the encoding, so "unreachable" is sound; a solution is
    re-checked on the float model."""
    from toolchain.verify.affine_program import ProgramReader, TooLarge
    from toolchain.verify.milp import MilpEncoding

    read = program or ProgramReader(module, shape)

    def exact(relus, lb) -> Decision:
        try:
            enc = MilpEncoding(read(), lower, upper, relus)
        except TooLarge as exc:
            return Decision("unknown", "none", 0.0, reason=str(exc))
        if enc.trouble:
            return Decision("unknown", "none", 0.0, reason=enc.trouble)
        finite = np.asarray(lb, np.float64)[np.isfinite(lb)]
        margin = 1e-4 * (1.0 + float(np.max(np.abs(finite), initial=0.0)))
        for a, c in disjuncts:
            res = enc.solve([(a, c)], time_limit=max(time_left(), 1.0), margin=margin)
            if res.status == "unreachable":
                continue
            if res.status == "reachable":
                x = res.x.astype(np.float32)
                if unsafe_at(module, x, shape, lower, upper, disjuncts):
                    return Decision("falsified", "bab", 0.0, counterexample=x.reshape(shape))
            return Decision("unknown", "none", 0.0, reason=res.reason or (
                "the LP optimum does not re-check on the float model"))
        return Decision("verified", "bab", 0.0)

    return exact


def root_relus(bounder, lower, upper, disjuncts):
    """Per ReLU the tighter of CROWN's and alpha-CROWN's pre-activation bounds over
    the box for the rows of all ``disjuncts``: what ``decide`` gives branch and
    bound as the root's (a proof's ``"root": "alpha-crown"``), for the checker."""
    rows = np.concatenate([np.atleast_2d(a) for a, _ in disjuncts])
    lb, relus = bounder.box_bounds(lower, upper, torch.from_numpy(rows), "crown")
    return _with_alpha(bounder, lower, upper, rows, lb.double().cpu().numpy(), relus)[1]


def _with_alpha(bounder, lower, upper, rows, best, relus):
    """alpha-CROWN over the box: the rows' lower bounds and the ReLU bounds, each
    the tighter of it and ``best`` / ``relus``."""
    lb2, relus2 = bounder.box_bounds(lower, upper, torch.from_numpy(rows), "alpha-crown")
    return np.maximum(best, lb2.double().cpu().numpy()), _tighter(relus, relus2)


def _tighter(a, b):
    """Per ReLU the intersection of two sound bounds (either may be None: none known)."""
    if a is None or b is None:
        return b if a is None else a
    return [(np.maximum(l1, l2), np.minimum(u1, u2)) for (l1, u1), (l2, u2) in zip(a, b)]


def _open(lb, offsets, owner, n) -> list[int]:
    """Disjuncts not refuted: none of their rows has a lower bound above its c.

    The bound must clear c by a little (float32 bounds): a tie stays open.
    """
    refuted = lb > offsets + 1e-6 * (1.0 + np.abs(offsets))
    return [d for d in range(n) if not refuted[owner == d].any()]


def _box(lower, upper, shape):
    size = int(np.prod(shape))
    lo = np.asarray(lower, np.float32).reshape(-1)
    hi = np.asarray(upper, np.float32).reshape(-1)
    if lo.size != size or hi.size != size:
        raise VstError(f"the input box has {lo.size}/{hi.size} bounds, the model takes "
                       f"{size} inputs {shape}")
    if not (np.all(np.isfinite(lo)) and np.all(np.isfinite(hi))):
        raise VstError("the input box must be finite")
    if np.any(lo > hi):
        raise VstError(f"the input box is empty at input {int(np.argmax(lo > hi))}")
    return lo, hi


def _disjuncts(disjuncts, k: int):
    out = []
    for i, (a, c) in enumerate(disjuncts):
        a = np.atleast_2d(np.asarray(a, np.float64))
        c = np.asarray(c, np.float64).reshape(-1)
        if a.ndim != 2 or a.shape[1] != k or len(a) != len(c) or len(a) == 0:
            raise VstError(f"disjunct {i}: expected A of shape (R, {k}) and c of R values, "
                           f"got {a.shape} and {c.shape}")
        if not (np.all(np.isfinite(a)) and np.all(np.isfinite(c))):
            raise VstError(f"disjunct {i}: A and c must be finite")
        out.append((a, c))
    if not out:
        raise VstError("the property has no disjunct (nothing is unsafe)")
    return out
