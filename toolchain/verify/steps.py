"""The verification cascade's steps, in the one order that the engine runs them
(``engine.verify_samples``) and the certificate checker replays them
(``certificate.check_certificate``).

``--method`` names the bounds asked for (``CASCADES``); ``plan`` puts them in
cascade order around the attack, each step working on the samples that the
steps before it left open:

1. the cheap bounds (IBP, then CROWN), in batches of ``BATCH[step]``;
2. ``pgd``, the attack (every method but ``complete``);
3. ``alpha-crown`` (optimized, so after the attack has taken its share);
4. ``complete`` (a MILP per sample).

>>> plan("all")
('ibp', 'crown', 'pgd', 'alpha-crown', 'complete')
>>> plan("crown")
('ibp', 'crown', 'pgd')
>>> plan("all", ("ibp", "crown", "alpha-crown"))      # the benchmarks stop early
('ibp', 'crown', 'pgd', 'alpha-crown')

A certificate's checker re-bounds the same batches as the engine (auto_LiRPA's
CROWN bound of a sample depends a little on its batch), so it walks the same
plan; the complete step it re-decides per claim instead.
"""

from __future__ import annotations

BOUND_METHODS = ("ibp", "crown", "alpha-crown")
# "crown" runs IBP first: it is sound, cheaper than CROWN, and leaves CROWN only
# the samples it does not prove (the default build's verify stage: 9.4 s -> 1.9 s);
# on networks trained with IBP alone it is often the tighter of the two (the
# graph zoo's resnet8, IBP-trained, eps 0.1: IBP 84.2% verified, CROWN 79.7%).
CASCADES = {"ibp": ("ibp",), "crown": ("ibp", "crown"), "alpha-crown": ("alpha-crown",),
            "complete": ("complete",), "all": ("ibp", "crown", "alpha-crown", "complete")}
BATCH = {"ibp": 500, "crown": 250, "alpha-crown": 50}
ATTACK = "pgd"
LATE = ("alpha-crown", "complete")        # run after the attack, in this order


def plan(method: str, steps: tuple[str, ...] | None = None, refused=()) -> tuple[str, ...]:
    """The ordered steps for ``method`` (``steps``: these of ``CASCADES`` instead).

    A cascade of several steps skips the bound methods the network refuses
    (``Bounder.refused``: e.g. alpha-CROWN through max pooling); a method asked
    for alone is kept, so that the Bounder's one-line refusal reaches the user.
    """
    asked = CASCADES[method] if steps is None else tuple(steps)
    if len(asked) > 1:
        asked = tuple(m for m in asked if m not in refused)
    early = tuple(m for m in asked if m not in LATE)
    attack = (ATTACK,) if method != "complete" else ()
    return early + attack + tuple(m for m in LATE if m in asked)
