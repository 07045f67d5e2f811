"""The rules every data-set certificate's samples obey, float and int8 alike.

One result (one eps) of a certificate speaks about a set of test samples:
``check_sample_set`` demands they are the first n test samples, each once
(a shard certificate: exactly its declared slice of the first ``total``), with
``n`` the number of samples and at least one; ``check_summaries`` compares
every claimed summary (counts, rates, n) with the one recomputed from the
samples. Both raise ``GateFailed`` (exit 1): a certificate that drops the hard
samples, repeats the good ones or edits a rate is a forgery, not a typo.
``check_indices`` is the structural part (an index the data does not have is
a ``VstError``, exit 2).

Used by ``certificate.check_certificate`` (float) and
``int8_certificate.check_int8_certificate``.
"""

from __future__ import annotations

from toolchain.errors import GateFailed
from toolchain.verify.certificate_schema import _bad, _show

SUMMARY_TOL = 1e-9


def result_failure(source: str, where: str, res: dict):
    """A function that makes this result's ``GateFailed`` from a reason."""
    return lambda what: GateFailed(f"{source}: {where} (eps={res['eps']:g}): {what}")


def check_indices(source: str, where: str, samples: list, n_data: int) -> None:
    """Every sample index lies in the test split; ``VstError`` naming the key if not."""
    for k, s in enumerate(samples):
        if s["index"] >= n_data:
            raise _bad(source, f"{where}.samples[{k}].index",
                       f"an index in [0, {n_data}) (the test split)", s["index"])


def check_sample_set(source: str, where: str, res: dict, shard: dict | None = None) -> None:
    """The samples are the first n test samples once each (a shard: its slice); n matches."""
    samples, n = res["samples"], len(res["samples"])
    fail = result_failure(source, where, res)
    if n == 0:
        raise fail("claims nothing (no samples)")
    if res["n"] != n:
        raise fail(f"claims n={res['n']} but holds {n} samples")
    seen: set[int] = set()
    for s in samples:
        if s["index"] in seen:
            raise fail(f"sample {s['index']} appears twice")
        seen.add(s["index"])
    if shard is not None:
        # A shard (toolchain.verify.shard): exactly its slice of the first `total`.
        i0, count, total = shard["index"], shard["count"], shard["total"]
        want = set(range(i0, total, count))
        if seen != want:
            wrong = sorted(seen ^ want)[0]
            why = "is missing" if wrong in want else "lies outside it"
            raise fail(f"the samples must be shard {i0}/{count} of the first {total} test "
                       f"samples (index % {count} == {i0}); sample {wrong} {why}")
    elif seen != set(range(n)):
        missing = min(set(range(n)) - seen)
        raise fail(f"the samples must be the first n={n} test samples; "
                   f"sample {missing} is missing")


def check_summaries(source: str, where: str, res: dict, expect: dict) -> None:
    """Each ``expect`` key (recomputed from the samples) equals the claimed one.

    Dicts compare exactly (a ``*_by`` count of 0 may be left out), numbers
    within ``SUMMARY_TOL``.
    """
    fail = result_failure(source, where, res)
    for key, value in expect.items():
        claimed = res[key]
        if key.endswith("_by"):
            claimed = {m: k for m, k in claimed.items() if k}
        same = (claimed == value if isinstance(value, dict)
                else abs(claimed - value) <= SUMMARY_TOL)
        if not same:
            raise fail(f"claims {key} {_show(res[key])} but its samples give {_show(value)}")
