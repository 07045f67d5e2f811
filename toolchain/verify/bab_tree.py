"""A branch-and-bound proof as data, and its replay by a certificate checker.

``complete.decide`` records a BaB proof (``Decision.tree``) as::

    {"domains": 913, "heuristic": "babsr", "open": [2, 5],
     "leaves": [[[0, 17, 1], [2, 140, 0]], [[0, 17, 1], [2, 140, 1]], [[0, 17, 0]]]}

(plus ``"root": "alpha-crown"`` when the root's ReLU bounds were the tighter of
CROWN's and alpha-CROWN's, and ``"refined": [[relu, neuron, lower, upper], ...]``
when some were refined by LP, ``verify/refine.py``; without "root": CROWN's).
``open``: the disjuncts (indices into the property's disjunction) left to branch
and bound after CROWN / alpha-CROWN refuted the others over the whole box;
``leaves``: the split sets of the tree's leaves, each in the order the splits
were made, a split ``[relu, neuron, sign]`` (``lirpa/splits.py``).

``check_proof`` re-proves such a claim: (1) the disjuncts not in ``open`` are
refuted again by CROWN or alpha-CROWN over the box; (2) the leaves are exactly
the leaves of a binary tree of splits rooted at the box (``tree_gap``): at
every node both signs of one neuron, no neuron split twice on a path, no leaf
twice, so together they cover the box; a removed or altered leaf leaves a
hole; (3) the root's ReLU bounds are re-derived as the search had them
(``"root": "alpha-crown"``: the tighter of CROWN's and alpha-CROWN's; each
``"refined"`` bound ``[relu, neuron, lower, upper]`` re-solved by its LP,
``refine.check``, a forged one rejected); (4) every leaf's bound, recomputed
from its split set and those root bounds alone, refutes
every open disjunct (or shows the leaf empty); a leaf with no unstable ReLU
left that the bound does not settle is decided by the same LP as in the
search (``complete.fixed_domain``). It stops with a reason as
soon as the time it may spend runs out.
"""

from __future__ import annotations

import time

import numpy as np

from toolchain.errors import VstError


def tree_gap(leaves) -> str | None:
    """None when the split sets are exactly the leaves of a binary split tree from
    the root (so they cover the box), else where the tree has a hole or a clash."""
    paths = [tuple(tuple(s) for s in leaf) for leaf in leaves]
    for p in paths:
        seen = [(k, n) for k, n, _ in p]
        if len(set(seen)) != len(seen):
            return f"leaf {list(map(list, p))} splits one neuron twice"
    stack = [((), paths)]
    while stack:
        prefix, group = stack.pop()
        depth = len(prefix)
        if any(len(p) == depth for p in group):
            if len(group) > 1:
                return (f"the domain {list(map(list, prefix))} is a leaf and also split "
                        "further (or listed twice)")
            continue
        neurons = {p[depth][:2] for p in group}
        if len(neurons) != 1:
            return (f"the domain {list(map(list, prefix))} is split on several neurons "
                    f"{sorted(neurons)}")
        (k, n), = neurons
        for sign in (1, 0):
            child = [p for p in group if p[depth][2] == sign]
            if not child:
                return (f"no leaf covers the domain {list(map(list, prefix))} with relu {k} "
                        f"neuron {n} {'active' if sign else 'inactive'} (a missing leaf)")
            stack.append((prefix + ((k, n, sign),), child))
    return None


def check_proof(module, bounder, input_shape, lower, upper, disjuncts, tree, *,
                time_limit: float, batch: int = 128) -> str | None:
    """None when ``tree`` proves the property again within ``time_limit`` seconds,
    else why not (see the module docstring)."""
    from toolchain.lirpa.splits import SplitBounder, refusal
    from toolchain.verify.bab import Property
    from toolchain.verify.complete import fixed_domain

    t0 = time.perf_counter()
    opened = tree["open"]
    if max(opened) >= len(disjuncts):
        return f"its proof names disjunct {max(opened)}; the property has {len(disjuncts)}"
    gap = tree_gap(tree["leaves"])
    if gap is not None:
        return f"its split tree does not cover the box: {gap}"
    closed = [d for d in range(len(disjuncts)) if d not in opened]
    if closed and not _refuted_at_root(bounder, lower, upper, [disjuncts[d] for d in closed]):
        return "CROWN and alpha-CROWN do not refute the disjuncts its proof leaves out"
    if refusal(bounder) is not None:
        return refusal(bounder)
    sub = [disjuncts[d] for d in opened]
    prop = Property(sub)
    left = lambda: time_limit - (time.perf_counter() - t0)        # noqa: E731
    exact = fixed_domain(module, input_shape, lower, upper, sub, left)
    root, why = _root(module, bounder, input_shape, lower, upper, disjuncts, tree, left)
    if why:
        return why
    try:
        sb = SplitBounder(bounder, lower, upper, prop.rows, root=root)
        leaves = [tuple(tuple(s) for s in leaf) for leaf in tree["leaves"]]
        for i in range(0, len(leaves), batch):
            if time.perf_counter() - t0 > time_limit:
                return (f"replaying its {len(leaves)} leaves takes longer than {time_limit:g} s "
                        f"({i} done)")
            part = leaves[i:i + batch]
            res = sb.bound(part, prop.open_rows, settled=prop.settled)
            bad = [j for j in np.flatnonzero(~(res.empty | prop.settled(res.lower)))
                   if not (res.fixed(j) and exact(res.relus(j), res.lower[j]).status
                           == "verified")]
            if bad:
                j = int(bad[0])
                worst = float(prop.slack(res.lower[j:j + 1])[0])
                return (f"leaf {i + j} ({[list(s) for s in part[j]]}) is not refuted when "
                        f"re-bounded (worst open margin {worst:.4g})")
    except ValueError as exc:            # a split naming no neuron of this network
        return str(exc)
    return None


def _root(module, bounder, shape, lower, upper, disjuncts, tree, time_left):
    """The root's ReLU bounds the proof's leaves were bounded from, re-derived:
    None (CROWN's) for a proof without "root"; with "root": "alpha-crown" the
    tighter of CROWN's and alpha-CROWN's over the property's rows
    (``complete.root_relus``), then every "refined" bound re-solved
    (``refine.check``). Returns (bounds, "") or (None, why not)."""
    if "root" not in tree:
        return None, ""
    from toolchain.verify.complete import root_relus

    relus = root_relus(bounder, lower, upper, disjuncts)
    if relus is None:
        return None, "the network gives no CROWN bounds for its ReLUs"
    if not tree.get("refined"):
        return relus, ""
    from toolchain.verify.affine_program import read_program
    from toolchain.verify.refine import check

    relus, why = check(read_program(module, shape), lower, upper, relus, tree["refined"],
                       time_left=time_left)
    return relus, why and f"a refined intermediate bound does not re-check: {why}"


def _refuted_at_root(bounder, lower, upper, disjuncts) -> bool:
    import torch

    from toolchain.verify.bab import Property

    prop = Property(disjuncts)
    best = None
    for method in ("crown", "alpha-crown"):
        if method in bounder.refused:
            continue
        try:
            lb, _ = bounder.box_bounds(lower, upper, torch.from_numpy(prop.rows), method)
        except VstError:
            continue
        lb = lb.double().cpu().numpy()[None]
        best = lb if best is None else np.maximum(best, lb)
        if prop.settled(best)[0]:
            return True
    return False
