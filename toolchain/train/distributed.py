"""Data-parallel training ranks (torchrun); the device is ``toolchain/device.py``.

``torchrun --nproc-per-node N -m toolchain train ...`` starts N
processes with ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK`` set; ``World.from_env``
reads them and joins the process group (gloo on the CPU, nccl on CUDA). Every
rank holds the whole model and walks the same shuffled order; each global batch
of ``train.batch_size`` indices is cut into N consecutive pieces, one per rank
(``World.share``). A rank's loss is the mean over its piece, so the gradient of
the global-batch mean is ``sum_r (n_r / B) * grad_r``: ``World.summed_gradients``
weights each rank's gradient by ``n_r / B`` and all-reduces it as autograd
produces it, for every backward pass made inside it (the training step and the
structured regrowth scores alike). All ranks then hold the same gradient, bit
for bit, so the same optimizer step and the same mask decisions follow
everywhere. Compared with one process on the whole batch only the summation
order differs (float rounding).

>>> World().share(torch.arange(5))          # one process: the whole batch
tensor([0, 1, 2, 3, 4])
>>> World(rank=1, size=2).share(torch.arange(5))
tensor([3, 4])
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass

import torch

from toolchain.errors import VstError


@dataclass
class World:
    """This process's place among the data-parallel ranks (size 1: no torchrun)."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0
    owns_group: bool = False     # this process started the group, so it ends it

    @property
    def main(self) -> bool:
        """Rank 0 writes the files (checkpoint, model.vst, plot) and shows progress."""
        return self.rank == 0

    @classmethod
    def from_env(cls) -> World:
        """The ranks torchrun describes in RANK / WORLD_SIZE / LOCAL_RANK (none: one)."""
        try:
            size = int(os.environ.get("WORLD_SIZE", "1"))
            rank = int(os.environ.get("RANK", "0"))
            local = int(os.environ.get("LOCAL_RANK", str(rank)))
        except ValueError:
            raise VstError("RANK, WORLD_SIZE and LOCAL_RANK must be integers") from None
        if size < 1 or not 0 <= rank < size:
            raise VstError(f"bad torchrun environment: RANK={rank}, WORLD_SIZE={size}")
        return cls(rank, size, local)

    def join(self, device: torch.device) -> World:
        """Join the process group (env:// as torchrun sets it up) unless already in it."""
        import torch.distributed as dist

        if self.size == 1 or dist.is_initialized():
            return self
        backend = "nccl" if device.type == "cuda" else "gloo"
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group(backend, rank=self.rank, world_size=self.size)
        self.owns_group = True
        return self

    def leave(self) -> None:
        import torch.distributed as dist

        if self.owns_group and dist.is_initialized():
            dist.destroy_process_group()
            self.owns_group = False

    def share(self, idx: torch.Tensor) -> torch.Tensor:
        """This rank's consecutive piece of a global batch's indices."""
        return idx.tensor_split(self.size)[self.rank] if self.size > 1 else idx

    @contextlib.contextmanager
    def summed_gradients(self, module: torch.nn.Module, weight: float):
        """Backward passes inside leave ``sum_r weight_r * grad_r`` in every rank's ``.grad``.

        A hook on each parameter all-reduces its gradient once autograd has
        summed it over all its uses; autograd visits an identical graph in the
        same order on every rank, so the collectives pair up.
        """
        if self.size == 1:
            yield
            return
        import torch.distributed as dist

        def reduce(grad):
            grad = grad * weight
            dist.all_reduce(grad)
            return grad

        handles = [p.register_hook(reduce) for p in module.parameters() if p.requires_grad]
        try:
            yield
        finally:
            for h in handles:
                h.remove()

    def sum(self, values: list[float], device: torch.device) -> list[float]:
        """Element-wise sum over the ranks of a few numbers (epoch statistics)."""
        if self.size == 1:
            return list(values)
        import torch.distributed as dist

        t = torch.tensor(values, dtype=torch.float64, device=device)
        dist.all_reduce(t)
        return t.tolist()

    def average_buffers(self, module: torch.nn.Module) -> None:
        """BatchNorm running statistics: each rank saw its own pieces; use the mean."""
        if self.size == 1:
            return
        import torch.distributed as dist

        for buf in module.buffers():
            if buf.is_floating_point():
                dist.all_reduce(buf)
                buf.div_(self.size)

    def barrier(self) -> None:
        if self.size > 1:
            import torch.distributed as dist
            dist.barrier()
