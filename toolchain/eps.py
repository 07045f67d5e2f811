"""The one rule for eps, the L-inf radius a certificate speaks about.

Every data set vst reads is scaled to inputs in [0, 1] (``data/prepare.py``),
so an eps-box is clipped to [0, 1]: an eps beyond the input range (1) says
nothing more than eps = 1 and is almost certainly a unit mistake (8-bit
levels, say 5 for 5/255). The rule, used by the config, the command line
(``--eps``), the model file's record and ONNX metadata alike: eps is a finite
number, >= 0 and at most ``MAX_EPS``.

>>> check_eps(0.1, "--eps")
0.1
>>> check_eps(5, "--eps")
Traceback (most recent call last):
...
toolchain.errors.VstError: --eps must be >= 0, finite and at most 1 (inputs lie in [0, 1]), got 5
"""

from __future__ import annotations

import math

from toolchain.errors import VstError

INPUT_RANGE = (0.0, 1.0)               # what every Dataset holds (data/prepare.py)
MAX_EPS = INPUT_RANGE[1] - INPUT_RANGE[0]


def check_eps(value, where: str) -> float:
    """``value`` as a float if it is a valid eps, else one ``VstError`` line naming ``where``."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    try:
        eps = float(value) if ok else math.nan
    except OverflowError:                  # an integer too large for a float
        eps = math.nan
    if not (math.isfinite(eps) and 0.0 <= eps <= MAX_EPS):
        shown = repr(value) if len(repr(value)) <= 40 else repr(value)[:37] + "..."
        raise VstError(f"{where} must be >= 0, finite and at most {MAX_EPS:g} (inputs lie in "
                       f"[{INPUT_RANGE[0]:g}, {INPUT_RANGE[1]:g}]), got {shown}")
    return eps
