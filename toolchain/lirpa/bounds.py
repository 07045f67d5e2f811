"""Certified bounds on a network's logits and margins: vst's one bounds API.

Training, verification and compaction ask for bounds here and nowhere else;
auto_LiRPA is an implementation detail behind :class:`Bounder`.

The input set is the L-inf box around ``x`` cut to the data range,
``[max(x - eps, x_min), min(x + eps, x_max)]`` (``epsbox.eps_box``). A margin is
``logit[y] - logit[j]`` for every class ``j != y``; a sample is verified when
every margin's lower bound is > 0.

>>> net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
>>> bounder = Bounder(net, (4,))
>>> x, y = torch.rand(5, 4), torch.zeros(5, dtype=torch.long)
>>> bounder.margin_lower(x, y, eps=0.01, method="crown").shape
torch.Size([5, 2])

Parameter sharing. The bounded model holds the wrapped module's own
``nn.Parameter`` objects, so in-place changes (optimizer steps, masks applied
with ``weight.mul_(mask)``) are seen by the next bound, and gradients of a
bound reach ``Bounder.module.parameters()``, the parameters to optimize.
auto_LiRPA copies *buffers* (BatchNorm running statistics, Normalize
constants) when it wraps the module; :meth:`Bounder.sync` copies them back in,
re-links a parameter that was replaced by a new object, and sets train/eval
mode from the module. Every bound method calls it first, so callers never need
to. In train mode BatchNorm normalizes with the statistics of the clean
batch ``x``: the bound holds for the network with those statistics fixed, and
gradients also flow through them (as in auto_LiRPA's CROWN-IBP training).
Verify in eval mode.
"""

from __future__ import annotations

import contextlib

import torch
from torch import nn

from toolchain.epsbox import INPUT_RANGE, eps_box
from toolchain.errors import VstError
from toolchain.lirpa import compat, twin

METHODS = ("ibp", "crown-ibp", "crown", "alpha-crown")
# auto_LiRPA 0.3 computes CROWN's intermediate bounds for the union of the
# neurons unstable in ANY sample of the batch (get_unstable_locations: "merge
# unstable locations for all elements in this batch"), so one call on B samples
# costs about B x |union|, growing with B until every neuron is in the union.
# On the CPU, CROWN margin and logit bounds (eval mode) are therefore computed
# this many samples per call; measured CPU s per sample at 1 / 2 / 20 / 250 per
# call: cnn_4layer 0.009 / 0.008 / - / 0.038, resnet8 0.22 / 0.24 / 2.7 / -,
# ds_cnn 0.50 / 0.76 / - / - (4.3 at 10). A sample's bound does not depend on
# the others in its call beyond rounding (stable neurons are relaxed exactly
# whichever bounds they get), and a caller's batch is split the same way every
# time, so the certificate checker, which re-bounds the engine's batches, still
# meets the same numbers. Train mode is never split (BatchNorm takes the
# batch's statistics), nor CUDA (not measured there).
CROWN_CHUNK = 1
_LIRPA_METHOD = {"ibp": "IBP", "crown-ibp": "CROWN-IBP", "crown": "CROWN",
                 "alpha-crown": "alpha-CROWN"}


def margin_matrix(y: torch.Tensor, num_classes: int) -> torch.Tensor:
    """The (N, K-1, K) matrix C with ``(C @ logits)[n, i] = logit[y] - logit[j_i]``.

    Row ``i`` compares the true class with the ``i``-th other class, in
    increasing class order.

    >>> margin_matrix(torch.tensor([1]), 3)      # rows: logit1 - logit0, logit1 - logit2
    tensor([[[-1.,  1.,  0.],
             [ 0.,  1., -1.]]])
    """
    y = torch.as_tensor(y, dtype=torch.long).reshape(-1)
    if num_classes < 2:
        raise VstError(f"margins need at least 2 classes, got {num_classes}")
    if y.numel() and (int(y.min()) < 0 or int(y.max()) >= num_classes):
        raise VstError(f"labels must lie in [0, {num_classes}), got {y.min()}..{y.max()}")
    eye = torch.eye(num_classes, device=y.device)
    c = eye[y].unsqueeze(1) - eye.unsqueeze(0)               # (N, K, K): row j = e_y - e_j
    others = ~eye.bool()[y]                                  # (N, K): j != y
    return c[others].view(len(y), num_classes - 1, num_classes)


class Bounder:
    """A torch module wrapped once for bound propagation.

    ``input_shape`` is one sample's shape, e.g. ``(1, 28, 28)`` or ``(3, 128)``.
    ``alpha_iterations`` and ``alpha_lr`` set alpha-CROWN's optimization.
    """

    def __init__(self, module: nn.Module, input_shape, *, alpha_iterations: int = 20,
                 alpha_lr: float = 0.5) -> None:
        compat.ensure_patched()
        self.module = module
        self.input_shape = tuple(int(s) for s in input_shape)
        # What auto_LiRPA traces: the module, or its exact twin (twin.py), on
        # (N, C, 1, L) for signal networks.
        self._as_2d = twin.needs_lift(self.input_shape)
        self._traced = twin.bounding_twin(module, self.input_shape)
        self.refused = twin.refusals(self._traced)     # method -> why, e.g. max pooling
        first = next(module.parameters())
        device = first.device
        example = self._lift(torch.zeros((1,) + self.input_shape, device=device,
                                         dtype=first.dtype))
        opts = {
            # alpha-CROWN on masked (sparse) nets fails with sparse alpha.
            "sparse_features_alpha": False,
            # Sparse-spec alphas are created for the unstable neurons of the first
            # call's batch; a later call where the spec is dense then trips
            # auto_LiRPA's assertion (alpha_lookup_idx must be None). Dense alphas.
            "sparse_spec_alpha": False,
            "optimize_bound_args": {"iteration": int(alpha_iterations),
                                    "lr_alpha": float(alpha_lr)},
        }
        self._example, self._opts, self._device = example, opts, device
        self._bounded = self._build()
        self.num_classes = int(self._bounded.final_shape[-1])

    def _build(self):
        """Trace the module into a BoundedModule.

        Trace in eval mode (a train-mode BatchNorm1d cannot run the batch of
        one example); sync() sets the mode of every bound call.
        """
        from auto_LiRPA import BoundedModule

        training = self.module.training
        try:
            self.module.eval()
            self._traced.eval()
            with torch.no_grad():
                return BoundedModule(self._traced, self._example, bound_opts=self._opts,
                                     device=self._device)
        finally:
            self.module.train(training)
            self._traced.train(training)

    def __repr__(self) -> str:
        return (f"Bounder({type(self.module).__name__}, input={self.input_shape}, "
                f"classes={self.num_classes})")

    # -- public API ------------------------------------------------------------

    def logit_bounds(self, x, eps: float, method: str = "ibp", x_min: float = INPUT_RANGE[0],
                     x_max: float = INPUT_RANGE[1]) -> tuple[torch.Tensor, torch.Tensor]:
        """Lower and upper bounds, each (N, K), on the logits over the input box."""
        method = self._check(method)
        x = self._here(x)
        if self._split(method, x, eps):
            parts = [self.logit_bounds(x[i:i + CROWN_CHUNK], eps, method, x_min, x_max)
                     for i in range(0, len(x), CROWN_CHUNK)]
            return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])
        with self._frozen_if(method == "alpha-crown"):
            lb, ub = self._bounded.compute_bounds(
                x=(self._box(x, eps, x_min, x_max),), method=_LIRPA_METHOD[method])
        return (lb.detach(), ub.detach()) if method == "alpha-crown" else (lb, ub)

    def margin_lower(self, x, y, eps: float, method: str = "ibp", x_min: float = INPUT_RANGE[0],
                     x_max: float = INPUT_RANGE[1]) -> torch.Tensor:
        """Lower bounds (N, K-1) on ``logit[y] - logit[j]``, j != y, over the box."""
        method = self._check(method)
        x, y = self._here(x), self._here(y)
        if self._split(method, x, eps):
            return torch.cat([self.margin_lower(x[i:i + CROWN_CHUNK], y[i:i + CROWN_CHUNK], eps,
                                                method, x_min, x_max)
                              for i in range(0, len(x), CROWN_CHUNK)])
        c = margin_matrix(y, self.num_classes).to(device=x.device, dtype=x.dtype)
        box = self._box(x, eps, x_min, x_max)
        if method == "ibp":
            # IBP computes both sides anyway; with C the last layer is merged
            # into C before the interval step ("elision"), which is tighter.
            lb, _ = self._bounded.compute_bounds(x=(box,), C=c, method="IBP")
            return lb
        with self._frozen_if(method == "alpha-crown"):
            lb, _ = self._bounded.compute_bounds(x=(box,), C=c, method=_LIRPA_METHOD[method],
                                                 bound_upper=False)
        return lb.detach() if method == "alpha-crown" else lb

    def mixed_margin_lower(self, x, y, eps: float, beta: float, x_min: float = INPUT_RANGE[0],
                           x_max: float = INPUT_RANGE[1]) -> torch.Tensor:
        """``beta * CROWN-IBP + (1 - beta) * IBP`` margin lower bounds (N, K-1).

        The IBP pass is shared; the CROWN backward pass runs only when beta > 0.
        """
        if not 0.0 <= beta <= 1.0:
            raise VstError(f"beta must lie in [0, 1], got {beta}")
        if beta > 0.0:
            self._check("crown-ibp")
        x, y = self._here(x), self._here(y)
        ibp = self.margin_lower(x, y, eps, "ibp", x_min, x_max)
        if beta == 0.0:
            return ibp
        c = margin_matrix(y, self.num_classes).to(device=x.device, dtype=x.dtype)
        # No new input: the intermediate IBP bounds of the pass above are reused.
        crown, _ = self._bounded.compute_bounds(C=c, method="backward", IBP=False,
                                                bound_upper=False)
        return beta * crown + (1.0 - beta) * ibp

    def box_bounds(self, lower, upper, c, method: str = "crown"):
        """Lower bounds (R,) on ``c @ f(x)`` over the box ``lower <= x <= upper`` (one
        sample, any range), and each ReLU's pre-activation bounds from that pass.

        ``c`` is (R, K). Returns ``(lb, relus)``, ``relus`` a list (network order)
        of ``(lb, ub)`` float64 numpy arrays flattened per ReLU: the intermediate
        bounds of that pass (with alpha-CROWN, from its optimized slopes; any
        slopes give sound bounds), valid for every x in the box; the complete
        verifier uses them as big-M values. ``relus`` is None when the method
        leaves a ReLU without them (IBP).
        """
        from auto_LiRPA import BoundedTensor, PerturbationLpNorm

        method = self._check(method)
        lower = self._here(lower).reshape((1,) + self.input_shape).float()
        upper = self._here(upper).reshape((1,) + self.input_shape).float()
        if bool((lower > upper).any()):
            raise VstError("box: a lower bound is above its upper bound")
        c = self._here(c).to(lower.dtype).reshape(1, -1, self.num_classes)
        self.sync()
        x = self._lift((lower + upper) / 2)
        ptb = PerturbationLpNorm(norm=float("inf"), x_L=self._lift(lower),
                                 x_U=self._lift(upper))
        grad = contextlib.nullcontext() if method == "alpha-crown" else torch.no_grad()
        with self._frozen_if(method == "alpha-crown"), grad:
            lb, _ = self._bounded.compute_bounds(x=(BoundedTensor(x, ptb),), C=c,
                                                 method=_LIRPA_METHOD[method], bound_upper=False)
        relus = []
        for node in self._bounded.relus:
            pre = node.inputs[0]
            if getattr(pre, "lower", None) is None or getattr(pre, "upper", None) is None:
                return lb.detach().reshape(-1), None
            relus.append((pre.lower.detach().double().cpu().numpy().reshape(-1),
                          pre.upper.detach().double().cpu().numpy().reshape(-1)))
        return lb.detach().reshape(-1), relus

    @staticmethod
    def verified(margin_lower: torch.Tensor) -> torch.Tensor:
        """Per-sample verdict (N,) bool: every margin lower bound is > 0."""
        return (margin_lower > 0).all(dim=1)

    def count_verified(self, x, y, eps: float, method: str = "ibp", batch: int = 500) -> int:
        """How many samples of (x, y) are verified at ``eps``, bounded ``batch`` at a time."""
        total = 0
        for i in range(0, len(x), batch):
            with torch.no_grad():      # alpha-CROWN enables its own gradients inside
                lb = self.margin_lower(x[i:i + batch], y[i:i + batch], eps, method)
            total += int(self.verified(lb.detach()).sum())
        return total

    def sync(self) -> None:
        """Make the bounded model see the module as it is now (see module doc)."""
        from auto_LiRPA.operators.leaf import BoundBuffers, BoundParams

        self._bounded.train(self.module.training)
        params = dict(self._traced.named_parameters())
        buffers = dict(self._traced.named_buffers())
        for node in self._bounded._modules.values():
            if isinstance(node, BoundParams) and node.ori_name in params:
                if node.param is not params[node.ori_name]:
                    node.param = params[node.ori_name]
            elif isinstance(node, BoundBuffers) and node.ori_name in buffers:
                with torch.no_grad():
                    node.buffer.copy_(buffers[node.ori_name])

    # -- helpers ---------------------------------------------------------------

    def _check(self, method: str) -> str:
        """The method's key; VstError for an unknown one or one this network refuses."""
        key = _check_method(method)
        if key in self.refused:
            raise VstError(self.refused[key])
        return key

    def _split(self, method: str, x, eps) -> bool:
        """Whether a CROWN call on ``x`` runs ``CROWN_CHUNK`` samples at a time (see there)."""
        return (method == "crown" and len(x) > CROWN_CHUNK and not self.module.training
                and self._device.type == "cpu" and not (torch.is_tensor(eps) and eps.numel() > 1))

    def _here(self, t):
        """Inputs and labels onto the module's device (bounds come back there)."""
        return torch.as_tensor(t).to(self._device)

    def _lift(self, x: torch.Tensor) -> torch.Tensor:
        return x.unsqueeze(2) if self._as_2d else x

    def _box(self, x, eps, x_min, x_max):
        from auto_LiRPA import BoundedTensor, PerturbationLpNorm

        if not torch.is_tensor(eps) and eps < 0:
            raise VstError(f"eps must be >= 0, got {eps}")
        if tuple(x.shape[1:]) != self.input_shape:
            raise VstError(f"inputs of shape {tuple(x.shape[1:])}, model expects "
                           f"{self.input_shape}")
        lower, upper = eps_box(x, eps, x_min, x_max)
        if bool((lower > upper).any()):
            raise VstError(f"inputs lie outside the data range [{x_min}, {x_max}]")
        self.sync()
        if self.module.training:
            # Train-mode BatchNorm takes its statistics from the last forward
            # pass, which IBP never runs: run it on the clean batch first.
            self._bounded(self._lift(x))
        ptb = PerturbationLpNorm(norm=float("inf"), eps=eps,
                                 x_L=self._lift(lower), x_U=self._lift(upper))
        return BoundedTensor(self._lift(x), ptb)

    @contextlib.contextmanager
    def _frozen_if(self, freeze: bool):
        """alpha-CROWN back-propagates its own loss over alpha: it needs autograd
        on (even inside the caller's ``torch.no_grad()``), and the weights must
        not require grad, so that nothing is written to their ``.grad``."""
        if not freeze:
            yield
            return
        params = list(self.module.parameters())
        flags = [p.requires_grad for p in params]
        try:
            for p in params:
                p.requires_grad_(False)
            with torch.enable_grad():
                yield
        finally:
            for p, flag in zip(params, flags):
                p.requires_grad_(flag)


def _check_method(method: str) -> str:
    key = method.lower()
    if key not in METHODS:
        raise VstError(f"unknown bound method {method!r}; choose one of {', '.join(METHODS)}")
    return key
