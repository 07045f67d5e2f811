"""Shared fixtures. Tests are seeded and use tiny models and data."""

from __future__ import annotations

import os
import shutil

import pytest

IN_CI = os.environ.get("CI") == "true"


def require_tools(*tools: str) -> None:
    """Skip when a tool is missing on a developer machine; fail in CI."""
    missing = [t for t in tools if shutil.which(t) is None]
    if missing:
        msg = f"missing tools: {', '.join(missing)} (run `make install`)"
        if IN_CI:
            pytest.fail(msg)
        pytest.skip(msg)


@pytest.fixture(autouse=True)
def _seed():
    import random

    import numpy as np
    random.seed(0)
    np.random.seed(0)
    try:
        import torch
        torch.manual_seed(0)
        # Tiny models: one thread is faster and the same on every machine.
        torch.set_num_threads(1)
    except ImportError:
        pass
