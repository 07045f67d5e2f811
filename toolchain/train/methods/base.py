"""What a training method can change in the shared epoch loop.

The loop (``train/epochs.py``) owns data order, the certified loss, the
optimizer step, metrics, checkpoints and ranks; a method decides which
weights exist and how that changes:

- ``make_sparsifier``: the masks at the start (``None``: dense);
- ``after_backward``: look at the gradient of a step (importance scores);
- ``mask_step``: change the masks at a step; may replace the weight step;
- ``after_step``: enforce the masks after the optimizer step;
- ``fit``: the whole run (default: the loop's epochs; HYDRA has phases);
- ``state`` / ``load_state``: what a checkpoint keeps for an exact resume.
"""

from __future__ import annotations

from toolchain.train.epochs import run_epochs


class Method:
    name = "dense"
    resumable = True          # can continue a checkpointed run
    multi_rank = True         # can run under torchrun

    def make_sparsifier(self, cfg, network, gen):
        return None

    def enforce_initial(self, sparsifier, module) -> None:
        """The masks on the freshly initialized network."""
        sparsifier.apply(module)

    def after_backward(self, run, step: int) -> None:
        pass

    def mask_step(self, run, step: int, xb, yb, eps: float, share: float) -> tuple[int, bool]:
        """(units that changed state, whether this step's weight update is skipped)."""
        return 0, False

    def after_step(self, run, step: int) -> None:
        if run.sparsifier is not None:
            run.sparsifier.apply(run.module, run.optimizer)

    def state(self) -> tuple[dict, dict]:
        """What a checkpoint must keep for an exact resume: (tensors, JSON-able values)."""
        return {}, {}

    def load_state(self, tensors: dict, meta: dict) -> None:
        pass

    def record(self) -> dict:
        """What the method adds to the training record."""
        return {}

    def fit(self, run, out_dir, start: int, last: int, elapsed: float, show_progress: bool):
        run_epochs(run, out_dir, start, last, elapsed, show_progress)
