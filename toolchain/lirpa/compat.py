"""Make auto_LiRPA 0.3 work on torch 2.13 and numpy 2.

auto_LiRPA 0.3 (the only release on PyPI) was written for torch < 1.13 and
numpy 1. Importing this module changes nothing; :func:`ensure_patched` mends
the library once, the first time bounds are needed (``toolchain.lirpa.bounds``
calls it before it imports auto_LiRPA). Each mend is as narrow as it can be:

1. ``numpy.lib.arraysetops`` is gone in numpy 2; ``operators/base.py`` does
   ``from numpy.lib.arraysetops import isin`` (and never calls it). A stand-in
   module holding ``numpy.isin`` is put in ``sys.modules`` for the import only.
2. ``torch.onnx.symbolic_helper._set_opset_version`` is gone; ``parse_graph.py``
   imports it and calls ``_set_opset_version(12)`` before running torch's ONNX
   passes on the traced graph. A stand-in is present during the import only;
   it sets the opset in torch's ONNX globals, and the opset in force before
   graph parsing is put back after it, so our later ONNX exports are untouched.
3. ``torch._C.Node`` is no longer subscriptable; ``parse_graph.parse_graph``
   reads attributes as ``node[name]``. We add ``Node.__getitem__`` (only when it
   is missing), dispatching on ``node.kindOf(name)`` to the typed accessor
   (``node.i``, ``node.f``, ``node.t``, ``node.is`` ...), which is what old
   torch itself installed.
4. ``nn.Module.named_parameters`` now calls ``_named_members(...,
   remove_duplicate=...)``; ``BoundedModule._named_members`` overrides it
   without that argument. Our version accepts it and keeps auto_LiRPA's
   renaming of parameters to the wrapped model's names.

Further mends found while testing IBP, CROWN-IBP, CROWN and alpha-CROWN on our
layer set:

5. ``BoundParams.forward`` calls ``param.requires_grad_(self.training)``. The
   parameter is the wrapped model's own tensor, so every bound computed in
   eval mode silently froze the user's weights (no more gradients in the next
   training step). We return the parameter untouched.
6. ``BoundMul._multiply_by_const`` (used by Mul and Div by a constant, i.e.
   our ``Normalize`` layer) handles conv "patches" for a per-channel constant
   only when the constant's first axis equals the batch size, so CROWN on
   ``Normalize -> Conv2d`` failed for any batch but 1 (and broadcast wrongly
   for dense patches). We multiply along the patches' input-channel axis,
   which is exact for a constant of shape (1 or N, C, 1, 1).
7. (Operators auto_LiRPA bounds wrongly or not at all, e.g. 1-D convolutions,
   grouped convolutions and average pooling under CROWN, are rewritten
   before tracing, not mended: see ``twin.py``.)
8. ``BoundConv.bound_backward`` reads ``weight.lower``, which only a parameter
   leaf has from the start; a twin's weight (``twin.py``), e.g.
   ``weight.unsqueeze(2)``, is an op node, and CROWN never filled in its
   (constant) bounds. Such a Conv now lists its weight in
   ``requires_input_bounds``, so auto_LiRPA computes them (lower = upper = the
   weight) before the backward pass.

9. ``BoundConv.bound_backward`` ignores ``groups`` when it propagates conv
   "patches" (and when it starts them), so CROWN through a grouped or
   depthwise convolution gave bounds that sampled outputs break (found by our
   tests). A grouped Conv now propagates back as the equal dense convolution
   with the block-diagonal weight; its forward pass and IBP (correct, and
   cheaper) stay grouped.
10. ``BoundMaxPool.bound_backward`` reshapes the incoming CROWN matrix with
   ``view``, which fails when that matrix is not contiguous (a max pooling
   whose output feeds a residual Add and a conv: the sum of the two
   branches' matrices). It now gets a contiguous copy (same values).
11. With ``enable_beta_crown``, ``get_optimized_bounds`` collects the betas of
   the ReLUs (in ``relus`` order) but, when it restores the best ones at the
   end, indexes that list by the position in ``optimizable_activations``: on
   a graph whose activations are not exactly its ReLUs in that order (max
   pooling is optimizable too; residual graphs convert in another order) it
   copied the wrong beta or failed with an IndexError. For the call the
   activations are listed ReLUs first, in ``relus`` order (the order only
   decides that bookkeeping), so the positions agree.

Importing auto_LiRPA also changes process-wide state, which we put back:
``warnings.simplefilter("once")`` and TorchScript's profiling executor/mode.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import types
import warnings

import torch

_patched = False


def ensure_patched() -> None:
    """Apply every mend once and import auto_LiRPA. Safe to call many times."""
    global _patched
    if _patched:
        return
    _add_node_getitem()
    # auto_LiRPA makes ~/.local/share/auto_LiRPA at import (vst never uses it) and
    # logs an error line when HOME is read-only: that line is dropped.
    logging.getLogger("auto_LiRPA.utils").addFilter(_no_data_dir_error)
    # Importing auto_LiRPA also calls warnings.simplefilter("once") for the
    # whole process; catch_warnings puts the filters back. Its torch.jit.script
    # decorators raise a deprecation warning that is noise to vst users; any
    # other warning is passed on.
    with _import_shims(), warnings.catch_warnings(record=True) as caught:
        import auto_LiRPA  # noqa: F401  (imported here, under the shims)
    for w in caught:
        if "torch.jit.script" not in str(w.message):
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    _mend_parse_module()
    _mend_named_members()
    _mend_params_forward()
    _mend_multiply_by_const()
    _mend_computed_conv_weight()
    _mend_grouped_conv_backward()
    _mend_maxpool_contiguous()
    _mend_beta_restore_order()
    _patched = True


def _no_data_dir_error(record: logging.LogRecord) -> bool:
    return not str(record.msg).startswith("Failed to create directory")


# --- 1 and 2: names auto_LiRPA imports at import time -------------------------

@contextlib.contextmanager
def _import_shims():
    """Provide ``numpy.lib.arraysetops`` and ``_set_opset_version`` while
    auto_LiRPA is imported, and remove them again afterwards (auto_LiRPA keeps
    its own references, so nothing else needs to see them)."""
    import numpy
    import torch.onnx.symbolic_helper as helper

    added_module = added_attr = False
    try:
        import numpy.lib.arraysetops  # noqa: F401  (numpy 1: nothing to do)
    except ImportError:
        shim = types.ModuleType("numpy.lib.arraysetops")
        shim.isin = numpy.isin
        sys.modules["numpy.lib.arraysetops"] = shim
        added_module = True
    if not hasattr(helper, "_set_opset_version"):
        helper._set_opset_version = _set_opset_version
        added_attr = True
    # auto_LiRPA switches TorchScript's profiling executor off for the whole
    # process when imported; put the process-wide setting back.
    executor = torch._C._jit_set_profiling_executor(True)  # returns the old value
    torch._C._jit_set_profiling_executor(executor)
    mode = torch._C._jit_set_profiling_mode(True)
    torch._C._jit_set_profiling_mode(mode)
    try:
        yield
    finally:
        torch._C._jit_set_profiling_executor(executor)
        torch._C._jit_set_profiling_mode(mode)
        if added_module:
            del sys.modules["numpy.lib.arraysetops"]
        if added_attr:
            del helper._set_opset_version


def _onnx_globals():
    try:  # torch >= 2.9
        from torch.onnx._internal.torchscript_exporter._globals import GLOBALS
    except ImportError:  # older torch
        from torch.onnx._globals import GLOBALS
    return GLOBALS


def _set_opset_version(opset: int) -> None:
    """What the removed torch helper did: choose the opset the ONNX passes use."""
    _onnx_globals().export_onnx_opset_version = opset


def _mend_parse_module() -> None:
    """Put back the ONNX opset that was in force before auto_LiRPA parsed a model."""
    from auto_LiRPA import bound_general

    original = bound_general.parse_module
    if getattr(original, "_vst_mended", False):
        return

    def parse_module(*args, **kwargs):
        globals_ = _onnx_globals()
        before = globals_.export_onnx_opset_version
        try:
            return original(*args, **kwargs)
        finally:
            globals_.export_onnx_opset_version = before

    parse_module._vst_mended = True
    bound_general.parse_module = parse_module


# --- 3: subscriptable torch._C.Node --------------------------------------------

def _node_getitem(node, name: str):
    """``node[name]``: the attribute through the accessor for its kind."""
    kind = node.kindOf(name)  # "i", "f", "s", "t", "is", "fs", "ss", "ts", "g", ...
    # The getters are named after the kind; ``is`` is a keyword, hence getattr
    # (``Node.is_``, with a trailing underscore, is the setter).
    return getattr(node, kind)(name)


def _add_node_getitem() -> None:
    if not hasattr(torch._C.Node, "__getitem__"):
        torch._C.Node.__getitem__ = _node_getitem


# --- 4: _named_members(remove_duplicate=) --------------------------------------

def _named_members(self, get_members_fn, prefix="", recurse=True, remove_duplicate=True):
    """auto_LiRPA's override, plus torch's ``remove_duplicate`` argument."""
    memo = set()
    modules = (self.named_modules(prefix=prefix, remove_duplicate=remove_duplicate)
               if recurse else [(prefix, self)])
    for module_prefix, module in modules:
        for key, value in get_members_fn(module):
            if value is None or (remove_duplicate and value in memo):
                continue
            if remove_duplicate:
                memo.add(value)
            name = module_prefix + ("." if module_prefix else "") + key
            # auto_LiRPA's renaming: node names back to the wrapped model's names
            yield self.node_name_map.get(name, name), value


def _parallel_named_members(self, get_members_fn, prefix="", recurse=True,
                            remove_duplicate=True):
    """``BoundDataParallel`` delegates to the wrapped module; pass the argument on."""
    return self.module._named_members(get_members_fn, prefix, recurse, remove_duplicate)


def _mend_named_members() -> None:
    from auto_LiRPA import BoundDataParallel, BoundedModule

    BoundedModule._named_members = _named_members
    BoundDataParallel._named_members = _parallel_named_members


# --- 5: no requires_grad_ side effect on the user's parameters ------------------

def _params_forward(self):
    """``BoundParams.forward`` without ``requires_grad_(self.training)``."""
    return self.param_init if self.initializing else self.param


def _mend_params_forward() -> None:
    from auto_LiRPA.operators.leaf import BoundParams

    BoundParams.forward = _params_forward


# --- 6: Mul / Div by a per-channel constant on conv patches --------------------

def _mend_multiply_by_const() -> None:
    from auto_LiRPA.operators.bivariate import BoundMul
    from auto_LiRPA.patches import Patches

    original = BoundMul.__dict__["_multiply_by_const"].__func__
    if getattr(original, "_vst_mended", False):
        return

    def multiply_by_const(x, const):
        if (isinstance(x, Patches) and isinstance(const, torch.Tensor)
                and const.ndim == 4 and const.shape[2:] == (1, 1)
                and x.identity == 0 and const.size(1) in (1, x.patches.size(-3))
                and const.size(0) in (1, x.patches.size(1))):
            # Patches are (spec, batch, [out_h, out_w,] in_c, kh, kw); a
            # per-channel constant scales the in_c axis, for every kernel tap.
            middle = (1,) * (x.patches.ndim - 5)
            scale = const.reshape(1, const.size(0), *middle, const.size(1), 1, 1)
            return x.create_similar(x.patches * scale)
        return original(x, const)

    multiply_by_const._vst_mended = True
    BoundMul._multiply_by_const = staticmethod(multiply_by_const)


# --- 8: Conv2d whose weight is computed (twin.py) --------------------------------

def _mend_computed_conv_weight() -> None:
    from auto_LiRPA.operators.convolution import BoundConv
    from auto_LiRPA.operators.leaf import BoundParams

    original = BoundConv.__init__
    if getattr(original, "_vst_mended", False):
        return

    def __init__(self, attr, inputs, output_index, options):
        original(self, attr, inputs, output_index, options)
        if not isinstance(inputs[1], BoundParams):
            needed = set(getattr(self, "requires_input_bounds", [])) | {1}
            self.requires_input_bounds = sorted(needed)

    __init__._vst_mended = True
    BoundConv.__init__ = __init__


# --- 9: CROWN through grouped convolutions --------------------------------------

def block_diagonal(weight: torch.Tensor, groups: int) -> torch.Tensor:
    """The dense (out, in, kh, kw) weight equal to a grouped convolution's
    (out, in / groups, kh, kw) weight: zero between groups.

    >>> block_diagonal(torch.ones(2, 1, 1, 1), 2)[:, :, 0, 0]
    tensor([[1., 0.],
            [0., 1.]])
    """
    out, per_in = weight.shape[:2]
    per_out = out // groups
    dense = weight.new_zeros((out, per_in * groups) + tuple(weight.shape[2:]))
    for g in range(groups):
        rows = slice(g * per_out, (g + 1) * per_out)
        dense[rows, g * per_in:(g + 1) * per_in] = weight[rows]
    return dense


def _mend_grouped_conv_backward() -> None:
    from auto_LiRPA.operators.convolution import BoundConv

    original = BoundConv.bound_backward
    if getattr(original, "_vst_mended", False):
        return

    def bound_backward(self, last_lA, last_uA, *x):
        if self.groups == 1:
            return original(self, last_lA, last_uA, *x)
        # bound_backward reads the weight as x[1].lower (the bias as x[2].lower)
        dense = block_diagonal(x[1].lower, self.groups)
        weight = types.SimpleNamespace(lower=dense, upper=dense)
        groups, self.groups = self.groups, 1
        try:
            return original(self, last_lA, last_uA, x[0], weight, *x[2:])
        finally:
            self.groups = groups

    bound_backward._vst_mended = True
    BoundConv.bound_backward = bound_backward


# --- 10: CROWN through max pooling with a non-contiguous matrix -------------------

def _mend_maxpool_contiguous() -> None:
    from auto_LiRPA.operators.pooling import BoundMaxPool

    original = BoundMaxPool.bound_backward
    if getattr(original, "_vst_mended", False):
        return

    def bound_backward(self, last_lA, last_uA, *args, **kwargs):
        dense = lambda a: a.contiguous() if isinstance(a, torch.Tensor) else a  # noqa: E731
        return original(self, dense(last_lA), dense(last_uA), *args, **kwargs)

    bound_backward._vst_mended = True
    BoundMaxPool.bound_backward = bound_backward


# --- 11: beta-CROWN's best-beta restore indexes the ReLUs' list by activation ---

def _mend_beta_restore_order() -> None:
    from auto_LiRPA import BoundedModule

    original = BoundedModule.get_optimized_bounds
    if getattr(original, "_vst_mended", False):
        return

    def get_optimized_bounds(self, *args, **kwargs):
        if not self.bound_opts["optimize_bound_args"].get("enable_beta_crown", False):
            return original(self, *args, **kwargs)
        saved = self.optimizable_activations
        relus = [n for n in self.relus if n in saved]
        self.optimizable_activations = relus + [n for n in saved if n not in relus]
        try:
            return original(self, *args, **kwargs)
        finally:
            self.optimizable_activations = saved

    get_optimized_bounds._vst_mended = True
    BoundedModule.get_optimized_bounds = get_optimized_bounds
