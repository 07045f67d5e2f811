"""The cascade's last step: complete verification of every sample still open.

Each open sample becomes the property "some input of its clipped eps-box is
not classified as its label" (``complete.classification_spec``) and goes to
``complete.decide`` with the per-sample ``timeout``. What it decides is kept
with the procedure that decided it; a falsified sample keeps the re-checked
counterexample (re-checked once more here as the attack's are: in the box and
really misclassified). Margins: a sample verified by decide's own CROWN /
alpha-CROWN keeps those bounds (the certificate re-bounds them); otherwise the
cascade's margins stay, or decide's bounds where the cascade computed none.
"""

from __future__ import annotations

import time

import numpy as np
import torch

from toolchain.epsbox import eps_box
from toolchain.verify.attack import in_box


def complete_step(module, bounder, x, y, eps, timeout, state, ids, on_batch=None) -> None:
    from toolchain.verify.affine_program import ProgramReader
    from toolchain.verify.complete import classification_spec, decide

    open_idx = state.open_indices().tolist()
    if not open_idx:
        return
    own = bounder if hasattr(bounder, "box_bounds") else None     # a device wrapper: build one
    shape = tuple(x.shape[1:])
    k = bounder.num_classes
    program = ProgramReader(module, shape)          # read once, when a MILP first needs it
    for i in open_idx:
        t0 = time.perf_counter()
        lower, upper = (b.numpy() for b in eps_box(x[i], eps))
        d = decide(module, shape, lower, upper, classification_spec(int(y[i]), k),
                   timeout=timeout, seed=int(ids[i]), bounder=own, program=program)
        if d.status == "falsified":
            adv = torch.from_numpy(np.asarray(d.counterexample, np.float32).reshape(shape))
            with torch.no_grad():
                wrong = int(module(adv[None]).argmax(1)) != int(y[i])
            if bool(in_box(adv[None], x[i:i + 1], eps)) and wrong:
                state.verdict[i], state.decided_by[i] = "falsified", d.procedure
                state.counterexamples[i] = adv
        elif d.status == "verified":
            state.verdict[i], state.decided_by[i] = "verified", d.procedure
            if d.tree is not None:
                state.trees[i] = d.tree
        if d.bounds is not None:
            bounds = torch.from_numpy(np.asarray(d.bounds, np.float32))
            if d.status == "verified" and d.procedure in ("ibp", "crown", "alpha-crown"):
                state.margins[i] = bounds
            elif bool(torch.isnan(state.margins[i]).all()):
                state.margins[i] = bounds
        state.seconds[i] += time.perf_counter() - t0
        if on_batch is not None:
            on_batch("complete", 1)
