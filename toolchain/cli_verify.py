"""The verification commands of the CLI: ``vst verify`` (float models, ONNX,
int8 .tflite, shards, certificate checks) and ``vst certificate merge``.

Plain click commands that ``cli.py`` adds to its group; like every command they
only parse options and call the stage (``toolchain.verify``), importing heavy
libraries inside the command so ``vst --help`` stays fast.
"""

from __future__ import annotations

import math
from pathlib import Path

import click

from toolchain.errors import GateFailed, VstError


def data_file(data: str | None) -> Path | None:
    """``--data`` as a path when it names a file or folder (else a built-in name)."""
    return Path(data) if data and Path(data).exists() else None


def _eps_list(text: str | None) -> list[float] | None:
    if text is None:
        return None
    from toolchain.eps import check_eps

    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise VstError(f"--eps must be numbers separated by commas, got {text!r}") from None
    if not values:
        raise VstError(f"--eps names no value, got {text!r}")
    return [check_eps(v, "--eps") for v in values]


@click.command()
@click.argument("model", type=click.Path(dir_okay=False, path_type=Path), required=False)
@click.option("--data", help="Data set (built-in name or path); default: the model's own.")
@click.option("--eps", "eps_text", help="eps, or a sweep: 0.05,0.1,0.2 (default: the model's).")
@click.option("--method", type=click.Choice(["ibp", "crown", "alpha-crown", "all", "complete",
                                            "int8", "int8-crown"]),
              help="Default crown (int8-crown for an int8 .tflite). crown: IBP, then CROWN on "
                   "what IBP leaves open; all: IBP, CROWN, alpha-CROWN, then complete "
                   "verification (branch and bound, then MILP) of what is left; complete: that "
                   "alone. An int8 .tflite: int8 (integer intervals, last-layer margin form) or "
                   "int8-crown (also back-substitution through the integer network).")
@click.option("--timeout", type=float,
              help="Seconds per property (--vnnlib: caps the csv's timeouts; default 60; "
                   "with --certificate: the most one claim's re-proof may take, default 300).")
@click.option("--n", type=int, default=0, help="First N test samples (0: all).")
@click.option("--min-verified", type=float, help="Gate: exit 1 below this fraction (first eps).")
@click.option("--json", "json_path", type=click.Path(dir_okay=False, path_type=Path),
              help="Write the certificate (JSON) here.")
@click.option("--junit", "junit_path", type=click.Path(dir_okay=False, path_type=Path),
              help="Write a JUnit XML report here.")
@click.option("--plot", "plot_path", type=click.Path(dir_okay=False, path_type=Path),
              help="Write verified-vs-eps and margin plots (PNG) here.")
@click.option("--certificate", "cert_path", type=click.Path(dir_okay=False, path_type=Path),
              help="Check this certificate against MODEL instead of verifying anew.")
@click.option("--c-source", type=click.Path(dir_okay=False, path_type=Path),
              help="int8 (.tflite) only: the generated int8 C the certificate also names.")
@click.option("--shard", "shard_text", metavar="I/N",
              help="Only shard I of N: test samples with index % N == I (merge the "
                   "certificates with `vst certificate merge`).")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto",
              show_default=True, help="Where bounds run; auto: CUDA when available, else CPU.")
@click.option("--vnnlib", "vnnlib_path", type=click.Path(dir_okay=False, path_type=Path),
              help="Verify VNN-LIB properties instead of a data set: PROP.vnnlib (with "
                   "MODEL) or a VNN-COMP instances.csv (MODEL, if given, replaces its networks).")
@click.option("--results", "results_dir", type=click.Path(file_okay=False, path_type=Path),
              help="--vnnlib: write one VNN-COMP result file per property here.")
@click.pass_context
def verify(ctx, model, data, eps_text, method, timeout, n, min_verified, json_path, junit_path,
           plot_path, cert_path, c_source, shard_text, device, vnnlib_path,
           results_dir) -> None:
    """Verify MODEL's robustness on the test split; gate CI on it.

    MODEL is a vst model, an ONNX file, or an int8 .tflite: then the int8
    network that is flashed is bounded in its own integer arithmetic (needs
    --data and --eps; --method int8 or int8-crown, the default).

    \b
    verified:  every margin lower bound > 0 over the eps-box (sound bound), or
               complete verification (branch and bound or MILP) proved it
    falsified: misclassified, or a counterexample in the box (PGD, branch
               and bound or MILP)
    unknown:   neither (complete verification: it ran out of --timeout)

    With --vnnlib the properties of a VNN-LIB file or a VNN-COMP
    instances.csv (onnx,vnnlib,timeout per line) are decided instead:
    unsat (verified), sat (a counterexample) or unknown / timeout; --method
    complete or all decides each within its timeout, ibp / crown /
    alpha-crown bound it (then PGD). --min-verified gates the unsat fraction.
    """
    from toolchain.verify import default_eps, load_any_model, resolve_dataset, run_verify
    from toolchain.verify.certificate import check_certificate, load_certificate
    from toolchain.verify.reports import plot_results, print_table, write_junit

    from toolchain.atomic import check_outputs, check_writable

    if min_verified is not None and not 0.0 <= min_verified <= 1.0:
        raise VstError(f"--min-verified must lie in [0, 1], got {min_verified}")
    if timeout is not None and not (math.isfinite(timeout) and timeout > 0):
        raise VstError(f"--timeout must be a positive number of seconds, got {timeout}")
    int8_model = model is not None and model.suffix.lower() == ".tflite"
    if method in INT8_METHODS and not int8_model:
        raise VstError(f"--method {method} applies to an int8 .tflite (the network as "
                       "flashed), not to a float model")
    if int8_model and method is not None and method not in INT8_METHODS:
        raise VstError(f"--method {method} does not apply to an int8 .tflite (its methods: "
                       f"{', '.join(INT8_METHODS)})")
    method = method or ("int8-crown" if int8_model else "crown")
    if vnnlib_path is not None:
        _verify_vnnlib(model, vnnlib_path, method, timeout, n, min_verified, json_path,
                       cert_path, results_dir, device, not ctx.obj["quiet"],
                       {"--data": data, "--eps": eps_text, "--junit": junit_path,
                        "--plot": plot_path, "--c-source": c_source, "--shard": shard_text})
        return
    if model is None:
        raise VstError("pass MODEL (or --vnnlib instances.csv, which names its networks)")
    if results_dir is not None:
        raise VstError("--results applies with --vnnlib")
    if plot_path is not None and plot_path.suffix.lower() != ".png":
        raise VstError(f"--plot writes a PNG image; give a .png file name, got {plot_path.name}")
    if model.suffix.lower() == ".tflite":
        _refuse_for_int8(ctx)
    eps_list = _eps_list(eps_text)
    from toolchain.device import resolve_device

    run_on = resolve_device(device)                   # "cuda" without CUDA: exit 2
    shard = None
    if shard_text is not None:
        from toolchain.verify.shard import parse_shard

        shard = parse_shard(shard_text)
        if cert_path is not None:
            raise VstError("--shard does not apply with --certificate (a shard certificate "
                           "says which shard it is)")
        if model.suffix.lower() == ".tflite":
            raise VstError("--shard is not supported for an int8 .tflite")
    check_outputs({"MODEL": model, "--data": data_file(data), "--certificate": cert_path,
                   "--c-source": c_source},
                  {"--json": json_path, "--junit": junit_path, "--plot": plot_path})
    for path in (json_path, junit_path, plot_path):
        if path is not None:
            check_writable(path)
    if c_source is not None and model.suffix.lower() != ".tflite":
        raise VstError("--c-source applies to an int8 .tflite (the generated int8 C it "
                       f"was made from), not to {model.name}")
    if model.suffix.lower() == ".tflite":
        _verify_tflite(model, data, eps_list, n, min_verified, json_path, cert_path, c_source,
                       method)
        return
    vst_model = load_any_model(model)
    dataset = resolve_dataset(vst_model, data)
    if cert_path is not None:
        cert = load_certificate(cert_path)
        click.echo(check_certificate(cert, vst_model, dataset, max_timeout=timeout))
        if min_verified is not None:      # the re-checked claims, gated like a fresh run
            _gate_certificate(cert, min_verified)
        return
    eps_list = eps_list or [default_eps(vst_model)]
    results, cert = run_verify(vst_model, dataset, eps_list, method, n, shard=shard,
                               device=run_on, timeout=timeout,
                               show_progress=not ctx.obj["quiet"], out=json_path)
    print_table(results)
    if junit_path:
        write_junit(junit_path, results, min_verified, eps_list[0])
    if plot_path:
        plot_results(plot_path, results, cert["results"][0]["clean_acc"])
    first = results[0]
    if min_verified is not None and first.verified_acc < min_verified:
        where = f", shard {shard[0]}/{shard[1]}" if shard else ""
        raise GateFailed(f"verified {first.verified_acc:.1%} < required {min_verified:.1%} "
                         f"at eps={first.eps:g} ({method}, n={first.n}{where})")


# Options of `vst verify` that an int8 .tflite has no use for: its bounds are
# TFLite's integer arithmetic, on the CPU, and it writes no plot or JUnit.
NOT_FOR_INT8 = (("--plot", "plot_path"), ("--junit", "junit_path"),
                ("--timeout", "timeout"), ("--device", "device"))
INT8_METHODS = ("int8", "int8-crown")


def _refuse_for_int8(ctx) -> None:
    """One line for the first option given that does not apply to an int8 model
    (rather than ignoring it: a user asking for alpha-CROWN must not be told an
    int8 result as if it were one)."""
    from click.core import ParameterSource

    given = [flag for flag, name in NOT_FOR_INT8
             if ctx.get_parameter_source(name) not in (None, ParameterSource.DEFAULT)]
    if given:
        raise VstError(f"{given[0]} does not apply to an int8 .tflite (its bounds are "
                       "TFLite's integer arithmetic, on the CPU; it writes the table and "
                       "--json only)")


def _gate_certificate(cert: dict, min_verified: float) -> None:
    """``--min-verified`` on a (checked or merged) certificate: its first eps."""
    first = cert["results"][0]
    if first["verified_acc"] < min_verified:
        sh = cert.get("shard")
        where = f", shard {sh['index']}/{sh['count']}" if sh else ""
        raise GateFailed(f"verified {first['verified_acc']:.1%} < required "
                         f"{min_verified:.1%} at eps={first['eps']:g} ({first['method']}, "
                         f"n={first['n']}{where})")


def _verify_vnnlib(model, vnnlib, method, timeout, n, min_verified, json_path, cert_path,
                   results_dir, device, show_progress: bool, not_here: dict) -> None:
    """`vst verify [MODEL] --vnnlib PROP.vnnlib|instances.csv` (toolchain.verify.vnncomp).

    Every file is read and checked before anything runs; result files and the
    certificate are written atomically.
    """
    from toolchain.atomic import check_outputs, check_writable
    from toolchain.display import progress
    from toolchain.verify import vnncomp, vnncomp_results
    from toolchain.verify.property_certificate import (build_property_certificate,
                                                       certificate_instances,
                                                       check_property_certificate,
                                                       load_property_certificate)

    given = [flag for flag, value in not_here.items() if value is not None]
    if given:
        raise VstError(f"{given[0]} does not apply with --vnnlib (the properties hold the "
                       "boxes)")
    if device == "cuda":
        raise VstError("--vnnlib runs on the CPU; drop --device cuda")
    if model is not None and model.suffix.lower() == ".tflite":
        raise VstError("--vnnlib takes a float model (.onnx or .vst), not an int8 .tflite")
    if n < 0:
        raise VstError(f"--n must be >= 0, got {n}")
    instances = vnncomp.plan_instances(vnnlib, model, timeout)[: n or None]
    names = vnncomp_results.result_names(instances)
    inputs = {"MODEL": model, "--vnnlib": vnnlib, "--certificate": cert_path}
    for k, inst in enumerate(instances):
        inputs |= {f"the network of instance {k + 1}": inst.model,
                   f"the property of instance {k + 1}": inst.vnnlib}
    outputs = [("--json", json_path)]
    if results_dir is not None:
        outputs += [("--results", results_dir / name)
                    for name in names + [vnncomp_results.SUMMARY]]
    check_outputs(inputs, outputs)
    if cert_path is not None:
        cert = load_property_certificate(cert_path)
        same = lambda i: (i.model.resolve(), i.vnnlib.resolve())  # noqa: E731
        if [same(i) for i in certificate_instances(cert, cert_path)] != list(map(same, instances)):
            raise VstError(f"{cert_path} speaks about other instances than {vnnlib}")
        click.echo(check_property_certificate(cert, cert_path, timeout))
        _gate_properties(cert["verified_acc"], cert["n"], cert["method"], min_verified)
        return
    if json_path is not None:
        check_writable(json_path)
    if results_dir is not None:
        check_writable(results_dir, directory=True)
    loaded = vnncomp.load_instances(instances)
    done: list = []
    with progress() as bar:
        task = bar.add_task("verify properties", total=len(loaded), info=method,
                            visible=show_progress)

        def write(outcome) -> None:      # each result file as soon as it is known
            if results_dir is not None:
                vnncomp_results.write_result(results_dir, names[len(done)], outcome)
            done.append(outcome)
            bar.update(task, advance=1, info=f"{outcome.instance.vnnlib.name}: "
                                             f"{outcome.result}")

        try:
            outcomes = vnncomp.run_instances(loaded, method, on_done=write)
        except KeyboardInterrupt:       # results.csv for the instances done, then exit 130
            if results_dir is not None:
                vnncomp_results.write_summary(results_dir, done, names)
            raise
    vnncomp_results.print_outcomes(outcomes, method)
    if results_dir is not None:
        vnncomp_results.write_summary(results_dir, outcomes, names)
    cert = build_property_certificate(loaded, outcomes, method,
                                      json_path or Path("certificate.json"))
    if json_path is not None:
        from toolchain.verify.certificate import save_certificate

        save_certificate(json_path, cert)
    _gate_properties(cert["verified_acc"], cert["n"], method, min_verified)


def _gate_properties(verified_acc: float, n: int, method: str, min_verified) -> None:
    """``--min-verified`` on a property run: the fraction of instances proved (unsat)."""
    if min_verified is not None and verified_acc < min_verified:
        raise GateFailed(f"verified (unsat) {verified_acc:.1%} < required {min_verified:.1%} "
                         f"({n} properties, {method})")


@click.group()
def certificate() -> None:
    """Work with certificate files (merge the shards of a sharded run, re-check a
    VNN-LIB property certificate)."""


@certificate.command("merge")
@click.argument("shards", nargs=-1, required=True,
                type=click.Path(dir_okay=False, path_type=Path))
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help="Write the merged certificate here.")
@click.option("--min-verified", type=float, help="Gate: exit 1 below this fraction (first eps).")
def certificate_merge(shards, out, min_verified) -> None:
    """Merge the shard certificates of one `vst verify --shard I/N` run.

    All shards must name the same weights, data, eps list, method and
    versions, and together cover every sample exactly once; the summaries
    are recomputed from the samples. Check the result against the model with
    `vst verify MODEL --certificate OUT`.
    """
    from toolchain.atomic import check_outputs, check_writable
    from toolchain.verify.certificate import load_certificate, save_certificate
    from toolchain.verify.shard import merge_certificates

    if min_verified is not None and not 0.0 <= min_verified <= 1.0:
        raise VstError(f"--min-verified must lie in [0, 1], got {min_verified}")
    check_outputs({f"shard {k + 1}": p for k, p in enumerate(shards)}, {"--out": out})
    check_writable(out)
    merged = merge_certificates([load_certificate(p) for p in shards])
    save_certificate(out, merged)
    first = merged["results"][0]
    click.echo(f"merged {len(shards)} shards: n={first['n']}, verified "
               f"{first['verified_acc']:.1%} at eps={first['eps']:g} -> {out}")
    if min_verified is not None:
        _gate_certificate(merged, min_verified)


@certificate.command("check")
@click.argument("cert_path", metavar="CERTIFICATE",
                type=click.Path(dir_okay=False, path_type=Path))
@click.option("--min-verified", type=float, help="Gate: exit 1 below this fraction (unsat).")
@click.option("--timeout", type=float,
              help="The most seconds one claim's proof may take again (default 300); the "
                   "certificate's own timeout can only lower it.")
def certificate_check(cert_path, min_verified, timeout) -> None:
    """Re-check a property certificate (`vst verify --vnnlib ... --json F`).

    Reads the networks and properties it names (paths relative to the
    certificate), checks their hashes, proves every verified claim again and
    re-checks every counterexample; a claim that fails, or is not proved again
    within the time limit, is exit 1. A data-set certificate is checked with
    `vst verify MODEL --certificate F`.
    """
    from toolchain.verify.property_certificate import (check_property_certificate,
                                                       load_property_certificate)

    if min_verified is not None and not 0.0 <= min_verified <= 1.0:
        raise VstError(f"--min-verified must lie in [0, 1], got {min_verified}")
    if timeout is not None and not (math.isfinite(timeout) and timeout > 0):
        raise VstError(f"--timeout must be a positive number of seconds, got {timeout}")
    cert = load_property_certificate(cert_path)
    click.echo(check_property_certificate(cert, cert_path, timeout))
    _gate_properties(cert["verified_acc"], cert["n"], cert["method"], min_verified)


def _verify_tflite(tflite, data, eps_list, n, min_verified, json_path, cert_path,
                   c_source, method) -> None:
    """`vst verify MODEL.tflite`: the int8 certificate (toolchain.verify.int8_certificate)."""
    from toolchain.data import load_dataset
    from toolchain.display import table
    from toolchain.inputs import check_input
    from toolchain.verify.certificate import load_certificate
    from toolchain.verify.int8_bounds import Int8Bounds
    from toolchain.verify.int8_certificate import check_int8_certificate, verify_int8

    check_input(tflite, "model")
    if not data:
        raise VstError("an int8 .tflite does not say which data it was trained on; pass --data")
    if n < 0:
        raise VstError(f"--n must be >= 0, got {n}")
    if c_source is not None:
        check_input(c_source, "--c-source file")
    dataset = load_dataset(data)
    inputs = Int8Bounds.from_tflite(tflite).x_t.size
    if inputs != math.prod(dataset.input_shape):
        raise VstError(f"data {data} has inputs {dataset.input_shape}, {tflite.name} takes "
                       f"{inputs} values")
    if cert_path is not None:      # the re-checked claims, gated like a fresh run
        cert = load_certificate(cert_path, any_format=True)
        click.echo(check_int8_certificate(cert, tflite, dataset, c_source))
        if min_verified is not None:
            _gate_certificate(cert, min_verified)
        return
    if not eps_list:
        raise VstError("pass --eps for an int8 .tflite")
    results = verify_int8(tflite, dataset, eps_list, n, c_source=c_source,
                          out=json_path, method=method)["results"]
    table(("eps", "n", "int8 verified", "falsified", "unknown", "int8 clean"),
          [(f"{r['eps']:g}", str(r["n"]), f"{r['verified_acc']:.1%}",
            str(r["counts"]["falsified"]), str(r["counts"]["unknown"]), f"{r['clean_acc']:.1%}")
           for r in results],
          title=f"{tflite.name}: int8 bounds in TFLite's integer arithmetic ({method})")
    first = results[0]
    if min_verified is not None and first["verified_acc"] < min_verified:
        raise GateFailed(f"int8 verified {first['verified_acc']:.1%} < required "
                         f"{min_verified:.1%} at eps={first['eps']:g} ({method}, "
                         f"n={first['n']})")
