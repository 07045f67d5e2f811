"""The two kinds of failure a user sees, and their exit codes.

``VstError``: the user gave bad usage, config or input (exit 2).
``GateFailed``: the run worked but a quality/size gate failed (exit 1).
The CLI turns both into one line on stderr, never a traceback.
"""


class VstError(Exception):
    """Bad usage, bad config or bad input. Exit code 2."""

    exit_code = 2


class GateFailed(Exception):
    """A gate (e.g. ``--min-verified``, flash budget) was not met. Exit code 1."""

    exit_code = 1
