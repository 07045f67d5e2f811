"""The build report: ``report.md`` and ``report.html`` (template in
``toolchain/templates/report.html``) with plots in ``BUILD_DIR/plots``.

Every number comes from the build's ``summary`` and certificate; the plots are
verified accuracy vs eps (an IBP sweep plus the certificate's own point), the
histogram of margin lower bounds, parameters per layer before and after
compaction, and instructions per inference on the target.
"""

from __future__ import annotations

import html
import json
import string
import time
from pathlib import Path

from toolchain import __version__
from toolchain.atomic import atomic_path, write_text

TEMPLATE = Path(__file__).with_name("templates") / "report.html"


def _pct(v) -> str:
    return "-" if v is None else f"{v:.1%}"


def _num(v, fmt="{:,}") -> str:
    return "-" if v is None else fmt.format(v)


def _eps_in_units(summary: dict) -> list[tuple[str, str]]:
    """For data given in its own units: eps there, and the test values clipped."""
    info = summary.get("input_scaling")
    if not info:
        return []
    from toolchain.data.scaling import ChannelScaling

    scaling = ChannelScaling(tuple(info["min"]), tuple(info["range"]))
    return [("eps in the data's own units", scaling.describe_eps(summary["eps"])),
            ("test values clipped into [0, 1]", f"{info['clipped_test']:,} of "
                                                f"{info['test_values']:,}")]


def sections(summary: dict) -> dict[str, list[tuple[str, str]]]:
    """The report's tables as (label, value) rows, shared by Markdown and HTML."""
    s, v, c, e, t = (summary[k] for k in ("sparsity", "verify", "compact", "export", "target"))
    return {
        "certificate": [
            ("eps (L-inf)", f"{summary['eps']:g}"), *_eps_in_units(summary),
            ("method", v["method"]),
            ("test samples", str(v["n"])), ("clean accuracy", _pct(v["clean_acc"])),
            ("verified (sparse model)", _pct(v["verified_acc"])),
            ("verified (compacted model, shipped)", _pct(c["verified_acc"])),
            ("verified (int8 network as flashed, integer bounds)",
             _pct(v.get("int8_verified_acc"))),
            ("accuracy under PGD attack", _pct(v["robust_acc_upper"])),
            ("compaction changed a verdict", "no" if c["verdicts_identical"] else "YES")],
        "train": [
            ("method / mode", f"{s['method']} / {s['mode']}"), ("density", f"{s['density']:.3f}"),
            ("epochs", str(summary["train"]["epochs"])),
            ("seconds", f"{summary['train']['seconds']:.0f}"),
            ("validation clean accuracy", _pct(summary["train"]["clean_acc"]))],
        "compact": [
            ("parameters", f"{c['params_before']:,} -> {c['params_after']:,}"),
            ("MACs per inference", f"{c['macs_before']:,} -> {c['macs_after']:,}"),
            ("max abs output difference (test split)", f"{c['max_abs_diff']:.2e}")],
        "export": [
            ("ONNX max abs diff vs PyTorch", _num(e.get("onnx_max_abs_diff"), "{:.2e}")),
            ("TFLite float max abs diff vs PyTorch", _num(e.get("tflite_float_max_abs_diff"), "{:.2e}")),
            ("TFLite int8 top-1 agreement with float", _pct(e.get("tflite_int8_agreement"))),
            ("accuracy float / int8", f"{_pct(e.get('float_acc'))} / {_pct(e.get('int8_acc'))}"),
            *[(f"size of {k}", f"{b:,} B") for k, b in (e.get("sizes") or {}).items()],
            *_c_rows(e.get("c") or {})],
        "target": [
            ("benchmarked", "yes" if t["benched"] else "no (--no-bench)"),
            ("variant measured", str(t.get("variant"))),
            ("flash (text+rodata+data)", f"{_num(t['flash_bytes'])} B of {t['flash_budget']:,}"),
            ("RAM (data+bss+stack)", f"{_num(t['ram_bytes'])} B of {t['ram_budget']:,}"),
            ("instructions per inference (QEMU icount, not cycles)",
             _num(t["instructions_per_inference"])),
            *_cycle_rows(t),
            ("float parity: max abs diff vs host", _num(t["parity_max_abs_diff"], "{:.2e}")),
            ("int8 parity: max diff vs TFLM (steps)", _num(t.get("int8_parity_max_steps"))),
            ("top-1 agreement on golden vectors", _pct(t["top1_agreement"])),
            ("int8 kernels", str(((e.get("c") or {}).get("int8") or {}).get("kernels", "-"))),
            *_layer_rows(t.get("variants") or {}, e.get("c") or {})],
    }


def _cycle_rows(t: dict) -> list[tuple[str, str]]:
    """The cycle model's figures (absent from summaries written before it)."""
    if t.get("cycles_per_inference") is None:
        return []
    clock = t.get("clock") or {}
    per_mac = t.get("cycles_per_mac")
    rows = [("cycles per inference (cycle model)", _num(t["cycles_per_inference"])
             + (f", {per_mac:.2f} per MAC" if per_mac else ""))]
    if t.get("ms_per_inference") is not None:
        rows.append((f"time and energy on {clock.get('part')} at {clock.get('mhz'):g} MHz",
                     f"{t['ms_per_inference']:.3f} ms, {t['uj_per_inference']:.2f} uJ"))
    return rows


def _layer_rows(variants: dict, c: dict) -> list[tuple[str, str]]:
    """Per operator of each measured variant: instructions, per MAC, weight bytes."""
    rows = []
    for variant in ("float", "int8"):
        measured = variants.get(variant) if isinstance(variants.get(variant), dict) else {}
        weights = {layer["layer"]: layer for layer in (c.get(variant) or {}).get("layers", [])}
        for op in measured.get("layers") or []:
            stored = weights.get(op.get("name"), {})
            size = stored.get("sparse_bytes" if stored.get("storage") == "sparse"
                              else "dense_bytes")
            per_mac = (f", {op['instructions_per_mac']:.2f} per MAC"
                       if op.get("instructions_per_mac") else "")
            cycles = (f", {op['cycles']:,} cycles" if op.get("cycles") is not None else "") + \
                (f" ({op['cycles_per_mac']:.2f} per MAC)" if op.get("cycles_per_mac") else "")
            rows.append((f"{variant} {op.get('name', op['op'])} ({op.get('storage') or '-'})",
                         f"{op['instructions']:,} instructions{per_mac}{cycles}"
                         + (f", {op['macs']:,} MACs" if op.get("macs") else "")
                         + (f", weights {size:,} B" if size else "")))
    return rows


def _c_rows(c: dict) -> list[tuple[str, str]]:
    """C weights: what dense storage would take vs what was written (dense or CSR per layer)."""
    rows = []
    for variant in ("float", "int8"):
        info = c.get(variant)
        if not info:
            continue
        dense = sum(layer["dense_bytes"] for layer in info["layers"])
        chosen = sum(layer["sparse_bytes"] if layer["storage"] == "sparse" else layer["dense_bytes"]
                     for layer in info["layers"])
        rows.append((f"C {variant} weights: all dense / as stored",
                     f"{dense:,} B / {chosen:,} B ({info['arena_bytes']:,} B activations)"))
        tflm = info.get("tflm_arena")
        if tflm:
            rows.append(("C int8 arena / TFLite Micro's arena",
                         f"{info['arena_bytes']:,} B / {tflm['total']:,} B "
                         f"(TFLM: {tflm['head']:,} B tensors, {tflm['tail']:,} B persistent)"))
    return rows


def _wall(summary: dict) -> str:
    """"161 s wall" or, for a re-run that reused stages, the build's cost and this run's."""
    reused = (summary.get("stages") or {}).get("reused")
    if not reused:
        return f"{summary['seconds']:.0f} s wall"
    return (f"{summary['seconds']:.0f} s in all, this run {summary.get('run_seconds', 0):.0f} s "
            f"({reused})")


def _md_table(rows) -> str:
    return "\n".join(["| | |", "|---|---|"] + [f"| {a} | {b} |" for a, b in rows])


def _html_table(rows) -> str:
    body = "".join(f"<tr><td>{html.escape(a)}</td><td>{html.escape(b)}</td></tr>" for a, b in rows)
    return f"<table>{body}</table>"


def write_reports(out: Path, summary: dict, gate_text: str = "see summary.json") -> None:
    out = Path(out)
    _plots(out, summary)
    tabs = sections(summary)
    title = f"{summary['model']} on {summary['dataset']}, {summary['target']['name']}"
    gates = summary.get("gates", {})
    md = [f"# vst build: {title}", "", f"vst {__version__}, {_wall(summary)}. "
          f"Gates: {gates.get('text', gate_text)}.", ""]
    for name, rows in tabs.items():
        md += [f"## {name.capitalize()}", "", _md_table(rows), ""]
    write_text(out / "report.md", "\n".join(md))
    page = string.Template(TEMPLATE.read_text(encoding="utf-8")).substitute(
        version=__version__, title=html.escape(title), date=time.strftime("%Y-%m-%d %H:%M"),
        seconds=html.escape(_wall(summary)),
        gate_class="ok" if gates.get("passed", True) else "fail",
        gate_text=html.escape(gates.get("text", gate_text)),
        target_name=html.escape(summary["target"]["name"]),
        target_plot=('<img src="plots/instructions.png" alt="instructions per inference">'
                     if summary["target"]["benched"] else ""),
        **{f"{k}_table": _html_table(v) for k, v in tabs.items()})
    write_text(out / "report.html", page)


def _plots(out: Path, summary: dict) -> None:
    from toolchain.scratch import pyplot

    plt = pyplot(out)

    (out / "plots").mkdir(exist_ok=True)
    cert = json.loads((out / "certificate.json").read_text())
    res = cert["results"][0]
    sweep = summary.get("ibp_sweep", [])
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.6))
    if sweep:
        a.plot([p["eps"] for p in sweep], [p["verified_acc"] for p in sweep], "o-", label="IBP")
    a.plot([res["eps"]], [res["verified_acc"]], "r*", ms=12, label=f"{res['method']} (certificate)")
    a.set_xlabel("eps"), a.set_ylabel("verified accuracy"), a.set_ylim(0, 1.02), a.legend()
    a.set_title("verified accuracy vs eps")
    worst = [min(s["margin_lower"]) for s in res["samples"] if s["margin_lower"]]
    b.hist(worst, bins=40), b.axvline(0, color="k", lw=0.8)
    b.set_title("worst margin lower bound per sample"), b.set_xlabel("> 0: verified")
    _save(fig, out / "plots" / "verify.png", plt)
    layers_b = summary.get("compact_layers", {}).get("before", [])
    layers_a = summary.get("compact_layers", {}).get("after", [])
    fig, ax = plt.subplots(figsize=(7, 3.4))
    ax.bar([f"L{r['layer']}" for r in layers_b], [r["params"] for r in layers_b], label="before")
    ax.bar([f"L{r['layer']}'" for r in layers_a], [r["params"] for r in layers_a], label="after")
    ax.set_yscale("log"), ax.set_title("parameters per layer"), ax.legend()
    _save(fig, out / "plots" / "sizes.png", plt)
    variants = summary["target"].get("variants") or {}
    counts = {k: v["instructions_per_inference"] for k, v in variants.items()
              if isinstance(v, dict) and v.get("instructions_per_inference")}
    if counts:
        fig, ax = plt.subplots(figsize=(5, 3.2))
        ax.bar(list(counts), list(counts.values()))
        ax.set_title(f"instructions per inference on {summary['target']['name']} (QEMU)")
        _save(fig, out / "plots" / "instructions.png", plt)


def _save(fig, path: Path, plt) -> None:
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
