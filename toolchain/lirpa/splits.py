"""Bounds of one input box under ReLU split decisions: beta-CROWN through auto_LiRPA 0.3.

Branch and bound (``verify/bab.py``) splits unstable ReLUs: a *domain* is the
input box plus a set of split decisions, each ``(relu, neuron, sign)`` (the
ReLU's index in network order, the neuron's index in its flattened
pre-activation, 1 for ``z >= 0``, 0 for ``z <= 0``). ``SplitBounder.bound``
gives, for a batch of domains, a lower bound on every row of ``c @ f(x)``
valid for all inputs of the box that meet the domain's splits:

1. a CROWN pass over the whole batch whose intermediate bounds are
   intersected (``reference_bounds``) with the root's CROWN bounds tightened
   by the splits (``max(l, 0)`` for an active split, ``min(u, 0)`` for an
   inactive one): split neurons are stable, every later layer is re-bounded
   with them;
2. for the domains that pass does not settle, beta-CROWN: auto_LiRPA's
   ``CROWN-Optimized`` with ``enable_beta_crown`` and the single-neuron split
   constraints in each ReLU's ``sparse_beta`` / ``sparse_beta_loc`` /
   ``sparse_beta_sign`` (a Lagrange multiplier ``beta >= 0`` per split, the
   ``+-beta z`` term added to the ReLU's backward matrix; auto_LiRPA clamps
   beta at 0 after each step, so every iterate is a sound bound), alpha and
   beta optimized together over the intermediate bounds of pass 1, fixed
   (``intermediate_layer_bounds``).

A domain's bound depends only on the box, the specification rows and its own
split set (never on its parent's bounds), so a certificate checker can
recompute any leaf from its split set alone (``verify/bab_tree.py``).

auto_LiRPA 0.3's beta-CROWN works for this as it is on chains (checked on
sampled points by ``tests/test_bab.py``); on graphs it needed mend 11 of
``compat.py`` (the best betas restored by the wrong index), and through max
pooling it fails on batches (``refusal``). It prints "all verified at ..."
on stdout when every domain of a batch is settled, which is swallowed here.
The root's intermediate bounds may be given (``root``): ``complete.decide``
passes the tighter of CROWN's and alpha-CROWN's (and any refined by LP,
``verify/refine.py``); every domain's reference bounds start from them.

The pass also gives what branching needs: per domain and ReLU, a BaBSR-style
score (Bunel et al. 2020) from CROWN's coefficient ``lam`` of the ReLU's
output in the bound on the rows still open and the ReLU's pre-activation
bounds and bias: the triangle relaxation's intercept ``min(lam, 0) * u * (-l)
/ (u - l)`` plus the bias term ``lam * b * u / (u - l)`` against ``lam * b``,
in absolute value; and the input point that minimizes the linear bound of
the worst open row (a start for the attack).
"""

from __future__ import annotations

import contextlib
import io
from dataclasses import dataclass

import numpy as np
import torch

Split = tuple[int, int, int]       # (relu index, neuron index, 1 active / 0 inactive)
EMPTY_TOL = 1e-5                   # lower > upper + this (relative) at some neuron: empty


@dataclass
class DomainBounds:
    lower: np.ndarray              # (B, R) float64: lower bound of each row of c @ f(x)
    empty: np.ndarray              # (B,) bool: the splits contradict the bounds (no input)
    scores: list[np.ndarray]       # per ReLU (B, n_i): branching score, 0 where stable/split
    widths: list[np.ndarray]       # per ReLU (B, n_i): u - l where unstable, else 0
    points: np.ndarray             # (B, *input) float32: minimizer of the worst row's bound
    interm: list                   # per ReLU (lower, upper), each (B, n_i) float64

    def relus(self, i: int) -> list:
        """Domain i's pre-activation bounds per ReLU, flat float64 (the MILP's form)."""
        return [(lo[i], hi[i]) for lo, hi in self.interm]

    def fixed(self, i: int) -> bool:
        """No ReLU of domain i is left to split (all stable or split)."""
        return not any(w[i].any() for w in self.widths)


def refusal(bounder) -> str | None:
    """Why branch and bound cannot bound this network's domains, or None.

    It needs CROWN on a batch of domains; auto_LiRPA 0.3's max pooling fails
    on batches of more than one box under CROWN (a patches broadcast error), so
    a network with max pooling is left to the MILP.
    """
    if "crown" in bounder.refused:
        return f"branch and bound needs CROWN: {bounder.refused['crown']}"
    kinds = {type(n).__name__ for n in bounder._bounded._modules.values()}
    if "BoundMaxPool" in kinds:
        return ("branch and bound does not run through max pooling (auto_LiRPA 0.3 "
                "fails on batches of domains there)")
    return None


class SplitBounder:
    """Domains of one box ``[lower, upper]`` and rows ``c`` (R, K), bounded by a
    ``Bounder`` of the network (which ``refusal`` must pass)."""

    def __init__(self, bounder, lower, upper, c, *, iterations: int = 20,
                 lr_beta: float = 0.05, root=None) -> None:
        self.bounder = bounder
        self.iterations, self.lr_beta = int(iterations), float(lr_beta)
        shape = (1,) + bounder.input_shape
        self.lower = torch.as_tensor(np.asarray(lower, np.float32)).reshape(shape)
        self.upper = torch.as_tensor(np.asarray(upper, np.float32)).reshape(shape)
        self.c = torch.as_tensor(np.asarray(c, np.float32)).reshape(1, -1, bounder.num_classes)
        model = bounder._bounded
        self.relus = list(model.relus)
        self.sizes = []
        self._root_bounds(root)
        self._bias = [self._pre_bias(r, n) for r, n in zip(self.relus, self.sizes)]
        self._first = [r.inputs[0].name for r in self.relus
                       if type(r.inputs[0]).__name__ in ("BoundLinear", "BoundConv")
                       and type(r.inputs[0].inputs[0]).__name__ == "BoundInput"]

    # -- the root ----------------------------------------------------------------

    def _root_bounds(self, given=None) -> None:
        """CROWN over the box: each ReLU's pre-activation bounds, shape (1, n_i),
        intersected with ``given`` (None, or per ReLU sound ``(lo, hi)`` flat float64
        over the box: alpha-CROWN's, refined ones, ``complete.decide``)."""
        self.bounder.sync()
        with torch.no_grad(), _quiet():
            self.root_lower = self.bounder._bounded.compute_bounds(
                x=(self._box(1),), C=self.c, method="backward", bound_upper=False)[0]
        self.root = []
        for r in self.relus:
            pre = r.inputs[0]
            lo, hi = pre.lower.detach().reshape(1, -1), pre.upper.detach().reshape(1, -1)
            if given is not None:
                g_lo, g_hi = (torch.as_tensor(np.asarray(v, np.float32).reshape(1, -1))
                              for v in given[len(self.root)])
                lo, hi = torch.maximum(lo, g_lo), torch.minimum(hi, g_hi)
            self.root.append((lo.clone(), hi.clone()))
            self.sizes.append(lo.shape[1])

    def unstable(self) -> list[np.ndarray]:
        """Per ReLU, the root's unstable neurons (bool (n_i,))."""
        return [((lo < 0) & (hi > 0)).reshape(-1).numpy() for lo, hi in self.root]

    # -- a batch of domains ------------------------------------------------------

    def bound(self, domains: list[tuple[Split, ...]], open_rows=None, *,
              beta: bool = True, settled=None) -> DomainBounds:
        """Bounds of every domain (a tuple of splits). ``open_rows`` (B, R) bool, or
        a function of the CROWN lower bounds giving it: the rows that branching
        scores and points look at (default all). ``settled``: a
        function of a (B, R) float64 lower-bound array giving (B,) bool, the
        domains that need no beta pass (default: none settled)."""
        b = len(domains)
        self._check(domains)
        model = self.bounder._bounded
        self.bounder.sync()
        ref = self._reference(domains)
        c = self.c.expand(b, -1, -1)
        # auto_LiRPA bounds an affine layer fed by the input with IBP and returns
        # before it applies reference_bounds: such a layer's bounds are given.
        given = {name: ref[name] for name in self._first}
        with torch.no_grad(), _quiet():
            # aux_reference_bounds: re-bound only the neurons unstable in ``ref``
            lb = model.compute_bounds(x=(self._box(b),), C=c, method="backward",
                                      bound_upper=False, reference_bounds=ref,
                                      aux_reference_bounds=ref,
                                      intermediate_layer_bounds=given or None)[0]
        # The last backward pass (from the output) leaves each node's coefficient
        # matrix (R, B, ...) in .lA: the ReLU outputs' and the input's.
        lams = [_dense(getattr(r, "lA", None)) for r in self.relus]
        x_a = _dense(getattr(model[model.root_name[0]], "lA", None))
        interm, empty = {}, np.zeros(b, bool)
        for k, r in enumerate(self.relus):
            pre = r.inputs[0]
            lo, hi = pre.lower.detach().clone(), pre.upper.detach().clone()
            flat_lo, flat_hi = lo.reshape(b, -1), hi.reshape(b, -1)
            gap = (flat_lo - flat_hi) > EMPTY_TOL * (1 + flat_lo.abs() + flat_hi.abs())
            empty |= gap.any(1).numpy()
            interm[pre.name] = [lo, hi]
        lower = lb.detach().double().numpy()
        if callable(open_rows):
            open_rows = open_rows(lower)
        points = self._points(x_a, lower, open_rows)
        scores, widths = self._scores(lams, interm, domains, open_rows, lower)
        todo = np.ones(b, bool) if settled is None else ~np.asarray(settled(lower), bool)
        todo &= ~empty
        if beta and todo.any():
            idx = np.flatnonzero(todo)
            better = self._beta([domains[i] for i in idx], idx, interm, settled)
            lower[idx] = np.maximum(lower[idx], better)
        lower[empty] = np.inf
        flat = [tuple(t.reshape(b, -1).double().numpy() for t in interm[r.inputs[0].name])
                for r in self.relus]
        return DomainBounds(lower, empty, scores, widths, points, flat)

    def _beta(self, domains, idx, interm, settled) -> np.ndarray:
        """alpha-beta-CROWN on the domains ``idx`` of the batch, intermediate bounds fixed."""
        model = self.bounder._bounded
        b = len(domains)
        sel = torch.as_tensor(idx, dtype=torch.long)
        fixed = {name: [lo[sel], hi[sel]] for name, (lo, hi) in interm.items()}
        for k, r in enumerate(self.relus):
            mine = [[s for s in d if s[0] == k] for d in domains]
            width = max(1, max(len(m) for m in mine))
            loc = torch.zeros(b, width, dtype=torch.long)
            sign = torch.zeros(b, width)
            for i, m in enumerate(mine):
                for j, (_, n, s) in enumerate(m):
                    loc[i, j], sign[i, j] = n, (1.0 if s else -1.0)
            r.sparse_beta = torch.zeros(b, width, requires_grad=True)
            r.sparse_beta_loc, r.sparse_beta_sign = loc, sign
        opts = model.bound_opts["optimize_bound_args"]
        saved = dict(opts)
        stop = ((lambda lb: torch.as_tensor(settled(lb.detach().double().numpy()))
                 .reshape(-1, 1)) if settled is not None else (lambda lb: False))
        opts.update(enable_beta_crown=True, iteration=self.iterations, lr_beta=self.lr_beta,
                    stop_criterion_func=stop, init_alpha=False)
        c = self.c.expand(b, -1, -1)
        try:
            with self.bounder._frozen_if(True), _quiet():
                box = self._box(b)
                # alpha for the output's bound only: with the intermediate bounds
                # given, init_slope's CROWN pass starts from the output alone
                # (auto_LiRPA's own init would re-bound every layer, splits ignored).
                with torch.no_grad():
                    model.init_slope((box,), c=c, intermediate_layer_bounds=fixed)
                lb = model.compute_bounds(x=(box,), C=c,
                                          method="CROWN-Optimized", bound_upper=False,
                                          intermediate_layer_bounds=fixed)[0]
        finally:
            opts.clear()
            opts.update(saved)
            for r in self.relus:
                r.sparse_beta = r.sparse_beta_loc = r.sparse_beta_sign = None
        return lb.detach().double().numpy()

    # -- helpers -----------------------------------------------------------------

    def _check(self, domains) -> None:
        for d in domains:
            for k, n, s in d:
                if not (0 <= k < len(self.sizes) and 0 <= n < self.sizes[k] and s in (0, 1)):
                    raise ValueError(f"split {(k, n, s)} names no ReLU neuron of this network")

    def _box(self, b: int):
        from auto_LiRPA import BoundedTensor, PerturbationLpNorm

        lo = self.bounder._lift(self.lower).expand((b,) + tuple(self.bounder._lift(
            self.lower).shape[1:]))
        hi = self.bounder._lift(self.upper).expand(lo.shape)
        return BoundedTensor(((lo + hi) / 2).clone(),
                             PerturbationLpNorm(norm=float("inf"), x_L=lo, x_U=hi))

    def _reference(self, domains):
        """The root's bounds per domain, tightened by its splits: ``reference_bounds``."""
        b = len(domains)
        ref = {}
        for k, r in enumerate(self.relus):
            lo = self.root[k][0].expand(b, -1).clone()
            hi = self.root[k][1].expand(b, -1).clone()
            for i, d in enumerate(domains):
                for kk, n, s in d:
                    if kk != k:
                        continue
                    if s:
                        lo[i, n] = torch.clamp(lo[i, n], min=0.0)
                    else:
                        hi[i, n] = torch.clamp(hi[i, n], max=0.0)
            pre = r.inputs[0]
            shape = (b,) + tuple(pre.lower.shape[1:]) if getattr(pre, "lower", None) is not None \
                else (b,) + tuple(pre.output_shape[1:])
            ref[pre.name] = (lo.reshape(shape), hi.reshape(shape))
        return ref

    def _points(self, x_a, lower, open_rows) -> np.ndarray:
        """Per domain, the box corner minimizing the CROWN bound of its worst open row."""
        b = lower.shape[0]
        lo, hi = self.lower.reshape(1, -1), self.upper.reshape(1, -1)
        if x_a is None:
            return ((lo + hi) / 2).expand(b, -1).reshape((b,) + self.bounder.input_shape).numpy()
        a = x_a.reshape(x_a.shape[0], b, -1)                  # (R, B, n)
        score = np.where(open_rows if open_rows is not None else True, lower, np.inf)
        worst = torch.as_tensor(np.argmin(score, axis=1))
        pick = a[worst, torch.arange(b)]                       # (B, n)
        x = torch.where(pick > 0, lo, hi)
        return x.reshape((b,) + self.bounder.input_shape).numpy().astype(np.float32)

    def _scores(self, lams, interm, domains, open_rows, lower):
        b = lower.shape[0]
        rows = (np.ones_like(lower, bool) if open_rows is None else np.asarray(open_rows, bool))
        weight = torch.as_tensor(rows / np.maximum(rows.sum(1, keepdims=True), 1)).float()
        scores, widths = [], []
        for k, r in enumerate(self.relus):
            lo, hi = (t.reshape(b, -1) for t in interm[r.inputs[0].name])
            unstable = (lo < 0) & (hi > 0)
            for i, d in enumerate(domains):
                for kk, n, _ in d:
                    if kk == k:
                        unstable[i, n] = False
            width = torch.where(unstable, hi - lo, torch.zeros_like(lo))
            lam = lams[k]
            if lam is None:
                score = width
            else:
                lam = lam.reshape(lam.shape[0], b, -1)                      # (R, B, n)
                lam = (lam * weight.T.unsqueeze(-1)).sum(0)                 # (B, n)
                slope = hi / (hi - lo).clamp(min=1e-12)
                intercept = lam.clamp(max=0) * slope * (-lo)
                bias = self._bias[k]
                relaxed = lam * bias * slope
                split = torch.minimum(lam * bias, torch.zeros_like(lam))
                score = (relaxed - split + intercept).abs()
                score = torch.where(unstable, score, torch.zeros_like(score))
            scores.append(score.numpy())
            widths.append(width.numpy())
        return scores, widths

    @staticmethod
    def _pre_bias(relu, n: int) -> torch.Tensor:
        """The bias of the affine layer feeding a ReLU, per neuron (zeros if none)."""
        pre = relu.inputs[0]
        kind = type(pre).__name__
        if kind in ("BoundLinear", "BoundConv") and len(pre.inputs) > 2:
            bias = getattr(pre.inputs[2], "param", None)
            if bias is None:
                bias = getattr(pre.inputs[2], "value", None)
            if bias is not None:
                bias = bias.detach().reshape(-1)
                if bias.numel() == n:
                    return bias.reshape(1, -1)
                if n % bias.numel() == 0:                  # conv: one bias per channel
                    return bias.repeat_interleave(n // bias.numel()).reshape(1, -1)
        return torch.zeros(1, n)


def _dense(a):
    """A coefficient matrix as a tensor (R, B, ...); None when there is none or it
    is in conv "patches" form (the output's own pass is dense; branching then
    falls back to interval widths and the attack to the box centre)."""
    return a.detach() if isinstance(a, torch.Tensor) else None


@contextlib.contextmanager
def _quiet():
    """auto_LiRPA prints progress (e.g. "all verified at ...") on stdout."""
    with contextlib.redirect_stdout(io.StringIO()):
        yield
