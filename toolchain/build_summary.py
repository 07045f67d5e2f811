"""What ``vst build`` reports: ``summary.json``'s numbers, the IBP sweep and the gates.

``make_summary`` gathers the numbers each stage read back from its artifacts
(``build.py``); what a stage did not produce (an export format left out, a
bench not run) is ``None``. ``gates`` lists the gates of ``[gates]`` that
fail.
"""

from __future__ import annotations


def make_summary(cfg, data, target, tr, ve, co, rv, ex, be, seconds, stages) -> dict:
    from dataclasses import asdict

    from toolchain.versions import versions

    variant = (be or {}).get("int8") or (be or {}).get("float") or {}
    same = ve["verdicts"] == rv["verdicts"]
    return {
        "dataset": data.name, "model": cfg.model.arch, "eps": cfg.verify.eps,
        "input_scaling": data.scaling_info(),
        "sparsity": {"method": cfg.sparsity.method, "mode": tr["mode"], "density": tr["density"],
                     "params_total": co["params_before"], "params_nonzero": co["nonzero_after"]},
        "train": {"seconds": tr["seconds"], "epochs": tr["epochs"], "clean_acc": tr["clean_acc"],
                  "device": tr.get("device", "cpu"), "threads": tr.get("threads"),
                  "cpus": tr.get("cpus")},
        "verify": {k: ve[k] for k in ("method", "eps", "n", "clean_acc", "verified_acc",
                                      "robust_acc_upper")} | {"device": ve.get("device", "cpu")},
        "compact": {"params_before": co["params_before"], "params_after": co["params_after"],
                    "macs_before": co["macs_before"], "macs_after": co["macs_after"],
                    "max_abs_diff": co["max_abs_diff"], "verified_acc": rv["verified_acc"],
                    "verdicts_identical": same},
        "export": {k: ex.get(k) for k in ("onnx", "tflite_float", "tflite_int8", "c_dir",
                                          "vnnlib_dir", "onnx_max_abs_diff",
                                          "tflite_float_max_abs_diff", "tflite_int8_agreement",
                                          "int8_acc", "float_acc", "sizes", "c",
                                          "litert_vs_tflm_int8", "skipped")},
        # Sizes and counts of the deployable variant (int8 when built); parity of
        # each variant against the host running the same arithmetic.
        "target": {"name": target.name, "variant": variant.get("variant"),
                   "flash_bytes": variant.get("flash_bytes"), "ram_bytes": variant.get("ram_bytes"),
                   "instructions_per_inference": variant.get("instructions_per_inference"),
                   # the cycle model (toolchain/cycles) on the same ELF, at target.clock
                   **{k: variant.get(k) for k in ("cycles_per_inference", "cycles_per_mac",
                                                  "ms_per_inference", "uj_per_inference",
                                                  "instructions_per_inference_model")},
                   "clock": asdict(target.clock) if target.clock else None,
                   "parity_max_abs_diff": ((be or {}).get("float") or {}).get("parity_max_abs_diff"),
                   "int8_parity_max_steps": ((be or {}).get("int8") or {}).get("int8_max_abs_diff_q"),
                   "top1_agreement": min((v["top1_agreement"] for v in (be or {}).values()
                                          if isinstance(v, dict)), default=None),
                   "fits": variant.get("fits"),
                   "flash_budget": target.flash_budget, "ram_budget": target.ram_budget,
                   "benched": be is not None, "variants": be},
        "artifacts": {"model": "train/model.vst", "compact_model": "compact.vst",
                      "certificate": "certificate.json", "report": "report.html",
                      "summary_md": "report.md", "export": "export"},
        "stages": {"ran": stages.ran, "skipped": stages.skipped},
        "compact_layers": {"before": co["layers_before"], "after": co["layers_after"]},
        "seconds": seconds, "config": cfg.to_dict(), "versions": versions(),
    }


def ibp_sweep(model, data, eps: float) -> list[dict]:
    """IBP-verified accuracy at a few eps around the test eps (cheap: one pass each)."""
    import torch

    from toolchain.lirpa.bounds import Bounder

    module = model.torch_module().eval()
    bounder = Bounder(module, data.input_shape)
    x, y = torch.from_numpy(data.x_test), torch.from_numpy(data.y_test)
    return [{"eps": f * eps, "verified_acc": bounder.count_verified(x, y, f * eps) / len(x)}
            for f in (0.0, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0)]


def gates(cfg, summary: dict) -> list[str]:
    g, failed = cfg.gates, []
    if not summary["compact"]["verdicts_identical"]:
        failed.append("compaction changed a verification verdict")
    v = summary["compact"]["verified_acc"]
    if v < g.min_verified:
        failed.append(f"verified {v:.1%} < required {g.min_verified:.1%} at eps={summary['eps']:g}")
    v8 = summary["verify"].get("int8_verified_acc")
    if v8 is not None and v8 < g.min_int8_verified:
        failed.append(f"int8 verified {v8:.1%} < required {g.min_int8_verified:.1%} "
                      f"at eps={summary['eps']:g}")
    agree = summary["export"].get("tflite_int8_agreement")
    if agree is not None and agree < g.min_int8_agreement:
        failed.append(f"int8 agreement {agree:.1%} < required {g.min_int8_agreement:.1%}")
    t = summary["target"]
    if g.fit_target and t["benched"] and t["fits"] is False:
        failed.append(f"model needs flash {t['flash_bytes']} B / RAM {t['ram_bytes']} B, "
                      f"{t['name']} has {t['flash_budget']} B / {t['ram_budget']} B")
    return failed
