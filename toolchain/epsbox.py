"""The L-inf eps-box around an input, clipped to the data's range: the set every
bound, attack, property and certificate of vst speaks about.

Every data set is scaled to ``INPUT_RANGE`` (``data/prepare.py``), so the box
of ``x`` is ``[max(x - eps, lo), min(x + eps, hi)]`` elementwise. ``eps_box``
computes it in ``x``'s own dtype, the same float32 operations on a torch
tensor (``clamp``) and on a numpy array (``maximum`` / ``minimum`` with
``eps`` and the range cast to that dtype), so the bounder, the attack, the
VNN-LIB file and the int8 certificate all hold the very same box, bit for bit.

>>> lower, upper = eps_box(np.array([0.05, 0.5, 0.97], np.float32), 0.1)
>>> lower.tolist(), upper.tolist()       # doctest: +ELLIPSIS
([0.0, 0.4..., 0.87...], [0.15..., 0.6..., 1.0])
"""

from __future__ import annotations

import numpy as np

INPUT_RANGE = (0.0, 1.0)     # every data set's values, and the box's limits


def eps_box(x, eps, lo: float = INPUT_RANGE[0], hi: float = INPUT_RANGE[1]):
    """``(lower, upper)`` of the eps-box of ``x`` clipped to ``[lo, hi]``.

    ``x`` is a torch tensor (``eps`` a number or a broadcastable tensor) or a
    numpy array (``eps`` a number); the box has ``x``'s type, dtype and shape.
    """
    if isinstance(x, np.ndarray):
        as_x = x.dtype.type
        return np.maximum(x - as_x(eps), as_x(lo)), np.minimum(x + as_x(eps), as_x(hi))
    return (x - eps).clamp(min=lo), (x + eps).clamp(max=hi)
