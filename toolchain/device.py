"""Where a stage runs: ``--device`` / ``train.device`` / ``verify.device``.

``resolve_device("auto")`` is CUDA when torch sees a GPU, else the CPU;
``"cuda"`` without one is a one-line ``VstError`` (exit 2). Training, the
verification commands and the build all resolve their device here; torch is
imported only when a device is resolved, so the config can name ``DEVICES``.

>>> resolve_device("cpu")                   # doctest: +SKIP
device(type='cpu')
"""

from __future__ import annotations

from toolchain.errors import VstError

DEVICES = ("auto", "cpu", "cuda")


def resolve_device(name: str, local_rank: int = 0):
    """``auto`` | ``cpu`` | ``cuda`` -> the ``torch.device`` to run on (``cuda:local_rank``)."""
    import torch

    if name not in DEVICES:
        raise VstError(f"--device must be one of {', '.join(DEVICES)}, got {name!r}")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    elif name == "cuda" and not torch.cuda.is_available():
        raise VstError(f"--device cuda: torch {torch.__version__} sees no CUDA device; "
                       "use --device cpu or auto")
    return torch.device("cuda", local_rank) if name == "cuda" else torch.device("cpu")
