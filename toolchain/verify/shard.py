"""Sharded verification: one slice of the test samples per job, merged afterwards.

A shard ``I/N`` (0 <= I < N) certifies the test samples whose global index
``i`` (in the first ``total`` test samples; ``--n``, 0: all) satisfies
``i % N == I``: strided, so that every shard gets a fair share of easy and
hard samples. Its certificate says so in ``shard`` (``index``, ``count``,
``total``) and keeps each sample's global ``index``; the checker
(``certificate.check_certificate``) accepts it only if its samples are
exactly that slice. The verification itself is the stage's own
(``verify.run_verify(..., shard=(I, N))``); this module holds the slice rule
and the merge.

``merge_certificates`` joins the N shard certificates of one run into the
certificate an unsharded run would have written: same weights, data, eps
list, method, versions and shard layout, every shard exactly once and every
sample exactly once; the summaries are recomputed from the merged samples.
Anything else is a one-line ``VstError`` (exit 2).
"""

from __future__ import annotations

import re

from toolchain.errors import VstError

# Timing differs from run to run; everything else must agree between shards.
TIMING = ("seconds", "samples_per_second")


def parse_shard(text: str) -> tuple[int, int]:
    """``"I/N"`` -> ``(I, N)`` with 0 <= I < N; a one-line ``VstError`` otherwise."""
    m = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text or "")
    if not m:
        raise VstError(f"--shard must be I/N (shard I of N, 0 <= I < N, e.g. 0/4), got {text!r}")
    index, count = int(m.group(1)), int(m.group(2))
    if count < 1:
        raise VstError(f"--shard {text}: the shard count N must be >= 1")
    if index >= count:
        raise VstError(f"--shard {text}: the shard index I must lie in [0, {count - 1}]")
    return index, count


def shard_indices(index: int, count: int, total: int) -> list[int]:
    """The global test indices of shard ``index`` of ``count`` among ``total`` samples."""
    return list(range(index, total, count))


def shard_record(index: int, count: int, total: int) -> dict:
    return {"index": index, "count": count, "total": total,
            "rule": f"sample index % {count} == {index}, index < {total}"}


def _settings(cert: dict) -> dict:
    """What must agree between the shards of one run (all but samples and timing)."""
    return {
        "weights": cert["model"],
        "data": cert["dataset"],
        "input_range": cert["input_range"], "norm": cert["norm"],
        "eps list": [r["eps"] for r in cert["results"]],
        "method": [r["method"] for r in cert["results"]],
        "versions": cert.get("versions"),
    }


def merge_certificates(certs: list[dict]) -> dict:
    """One certificate from the shard certificates of one run; ``VstError`` naming the problem."""
    from toolchain.verify.certificate import VERDICTS, _clean_acc, _rate
    from toolchain.verify.engine import settled_by

    if not certs:
        raise VstError("certificate merge: no certificates given")
    names = [getattr(c, "source", f"certificate #{k}") for k, c in enumerate(certs)]
    for name, c in zip(names, certs):
        if not isinstance(c.get("shard"), dict):
            raise VstError(f"{name}: not a shard certificate (no 'shard'; written without "
                           "--shard)")
    first, base = certs[0], _settings(certs[0])
    count, total = first["shard"]["count"], first["shard"]["total"]
    seen_shards: dict[int, str] = {}
    for name, c in zip(names, certs):
        mine = _settings(c)
        for key, value in base.items():
            if mine[key] != value:
                raise VstError(f"{name}: names other {key} than {names[0]} "
                               f"({_brief(mine[key])} != {_brief(value)}); not shards of "
                               "one run")
        sh = c["shard"]
        if sh["count"] != count:
            raise VstError(f"{name}: shard {sh['index']}/{sh['count']}, but {names[0]} is one "
                           f"of {count} shards")
        if sh["total"] != total:
            raise VstError(f"{name}: slices {sh['total']} test samples, {names[0]} slices "
                           f"{total}")
        if sh["index"] in seen_shards:
            raise VstError(f"{name}: shard {sh['index']}/{count} is given twice (also "
                           f"{seen_shards[sh['index']]})")
        seen_shards[sh["index"]] = name
    missing = sorted(set(range(count)) - set(seen_shards))
    if missing:
        shown = ", ".join(f"{i}/{count}" for i in missing[:5])
        raise VstError(f"certificate merge: shard {shown} missing (have {len(certs)} of "
                       f"{count}); samples {missing[0]}, {missing[0] + count}, ... uncovered")
    merged_results = []
    for r, res0 in enumerate(first["results"]):
        owner: dict[int, str] = {}
        samples = []
        seconds = 0.0
        for name, c in zip(names, certs):
            res = c["results"][r]
            want = set(shard_indices(c["shard"]["index"], count, total))
            for s in res["samples"]:
                i = s["index"]
                if i in owner:
                    raise VstError(f"{name}: results[{r}] (eps={res['eps']:g}) sample {i} "
                                   f"overlaps {owner[i]}")
                if i not in want:
                    raise VstError(f"{name}: results[{r}] (eps={res['eps']:g}) sample {i} "
                                   f"lies outside its shard {c['shard']['index']}/{count}")
                owner[i] = name
                samples.append(s)
            seconds += res["seconds"]
        gap = sorted(set(range(total)) - set(owner))
        if gap:
            raise VstError(f"certificate merge: results[{r}] (eps={res0['eps']:g}) sample "
                           f"{gap[0]} is missing ({len(gap)} uncovered of {total})")
        samples.sort(key=lambda s: s["index"])
        n = len(samples)
        counts = {v: sum(s["verdict"] == v for s in samples) for v in VERDICTS}
        merged_results.append({
            "eps": res0["eps"], "method": res0["method"], "n": n, "counts": counts,
            "verified_by": settled_by(samples, "verified"),
            "falsified_by": settled_by(samples, "falsified"),
            "verified_acc": counts["verified"] / max(1, n),
            "robust_acc_upper": 1.0 - counts["falsified"] / max(1, n),
            "clean_acc": _clean_acc(sum(s["method"] == "clean" for s in samples), n),
            "seconds": seconds, "samples_per_second": _rate(n, seconds),
            "samples": samples,
        })
    out = {k: v for k, v in first.items() if k not in ("shard", "results")}
    out["results"] = merged_results
    out["merged"] = {"shards": count, "total": total}
    return out


def _brief(value) -> str:
    import json

    text = json.dumps(value, sort_keys=True)
    return text if len(text) <= 60 else text[:57] + "..."
