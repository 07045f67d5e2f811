"""How verification results are shown: a table, JUnit XML for CI, and plots."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

from toolchain.atomic import atomic_path, write_bytes
from toolchain.verify.engine import EpsResult


def print_table(results: list[EpsResult]) -> None:
    from toolchain.display import table

    rows = []
    for r in results:
        by = " ".join(f"{m}:{c}" for m, c in r.by_method().items()) or "-"
        fby = " ".join(f"{m}:{c}" for m, c in r.by_method("falsified").items()) or "-"
        rows.append((f"{r.eps:g}", str(r.n), f"{r.verified_acc:.1%}", f"{r.robust_upper:.1%}",
                     str(r.count("unknown")), by, fby, f"{r.n / max(r.seconds, 1e-9):.2g}"))
    table(("eps", "n", "verified", "not falsified", "unknown",
           f"verified by ({results[0].method})", "falsified by", "samples/s"), rows)


def write_junit(path: Path, results: list[EpsResult], min_verified: float | None,
                gate_eps: float | None) -> None:
    """One test case per eps; the gated eps fails when below ``min_verified``."""
    suite = ET.Element("testsuite", name="vst verify", tests=str(len(results)))
    failures = 0
    for r in results:
        case = ET.SubElement(suite, "testcase", classname="vst.verify",
                             name=f"verified accuracy at eps={r.eps:g} ({r.method})",
                             time=f"{r.seconds:.3f}")
        ET.SubElement(case, "system-out").text = (
            f"verified {r.verified_acc:.4f}, under attack {r.robust_upper:.4f}, n={r.n}")
        if min_verified is not None and r.eps == gate_eps and r.verified_acc < min_verified:
            failures += 1
            ET.SubElement(case, "failure", message=(
                f"verified {r.verified_acc:.1%} < required {min_verified:.1%}"))
    suite.set("failures", str(failures))
    write_bytes(path, ET.tostring(suite, encoding="utf-8", xml_declaration=True))


def plot_results(path: Path, results: list[EpsResult], clean_acc: float) -> None:
    """Verified accuracy vs eps, and the histogram of worst margin lower bounds."""
    from toolchain.scratch import pyplot

    plt = pyplot(Path(path).parent)

    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.6))
    eps = [r.eps for r in results]
    a.plot(eps, [r.verified_acc for r in results], "o-", label="verified")
    a.plot(eps, [r.robust_upper for r in results], "s--", label="under PGD attack")
    a.axhline(clean_acc, color="gray", ls=":", label="clean")
    a.set_xlabel("eps (L-inf)"), a.set_ylabel("accuracy"), a.set_ylim(0, 1.02)
    a.set_title("verified accuracy vs eps"), a.legend(loc="lower left")
    drawn = False
    for r in results:
        worst = [min(s.margin_lower) for s in r.samples if s.margin_lower]
        if worst:
            b.hist(worst, bins=40, alpha=0.5, label=f"eps={r.eps:g}")
            drawn = True
    b.axvline(0, color="k", lw=0.8)
    b.set_xlabel("worst margin lower bound (> 0: verified)"), b.set_title("margins")
    if drawn:                # no margins (all misclassified): no legend, and no warning
        b.legend()
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
