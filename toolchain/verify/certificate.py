"""Certificates are data: JSON that names the exact weights it speaks about.

A certificate holds, per eps, every sample's verdict, the method that decided
it and its margin lower bounds (and, for a sample falsified by the attack, the
counterexample itself), with the SHA-256 of the model's weights and of the
data, and the versions of vst and its libraries.

``load_certificate`` checks the structure (types, ranges, finiteness): a
malformed file is a one-line ``VstError`` (exit 2) naming the file and key.
``check_certificate`` proves a certificate belongs to a model (hash) and
re-checks *every* claim in it: the summaries are recomputed from the samples,
every ``verified`` claim is re-bounded with the method it names, every
``falsified`` claim is re-checked (a clean misclassification, or the stored
counterexample: inside the box and really misclassified), and no
misclassified sample may hide as verified or unknown. The first claim that
does not hold is a ``GateFailed`` (exit 1). The samples must be the first n
test samples, each once; a shard certificate (``shard``, from
``toolchain.verify.shard``) must hold exactly its declared slice instead.
"""

from __future__ import annotations

import json
from pathlib import Path

from toolchain.atomic import write_text
from toolchain.epsbox import INPUT_RANGE, eps_box
from toolchain.errors import GateFailed, VstError
from toolchain.verify.certificate_rules import (check_indices, check_sample_set,
                                                check_summaries, result_failure)
from toolchain.verify.certificate_schema import (BOUND_METHODS, COMPLETE_METHODS,
                                                 COUNTEREXAMPLE_METHODS, VERDICTS, _bad,
                                                 _is_int, _show, validate_certificate,
                                                 validate_int8_certificate)
from toolchain.verify.engine import EpsResult, settled_by
from toolchain.verify.steps import ATTACK, BATCH, plan

FORMAT = "vst-certificate"
VERSION = 1
MAX_CERTIFICATE_BYTES = 1 << 30      # a certificate of 10,000 samples is a few MiB
# alpha-CROWN optimizes per batch (learning-rate schedule, early stop): a
# re-run on another batch may end a little looser, so its margins get room.
ALPHA_TOL = 0.05


class Certificate(dict):
    """A loaded certificate: a plain dict that remembers the file it came from."""

    source: str = "certificate"


def build_certificate(model, dataset, results: list[EpsResult], split: str = "test") -> dict:
    from toolchain.versions import versions

    return {
        "format": FORMAT, "version": VERSION, "versions": versions(),
        "model": {"weights_sha256": model.weights_hash(),
                  "params": model.network.param_count()},
        "dataset": {"name": dataset.name, "sha256": dataset.sha256(), "split": split},
        "input_range": list(INPUT_RANGE), "norm": "Linf",
        "results": [{
            "eps": r.eps, "method": r.method, "n": r.n,
            "counts": {v: r.count(v) for v in VERDICTS},
            "verified_by": r.by_method(), "falsified_by": r.by_method("falsified"),
            "verified_acc": r.verified_acc,
            "robust_acc_upper": r.robust_upper,
            "clean_acc": _clean_acc(sum(s.method == "clean" for s in r.samples), r.n),
            "seconds": r.seconds, "samples_per_second": _rate(r.n, r.seconds),
            "samples": [s.to_dict() for s in r.samples],
        } for r in results],
    }


def _clean_acc(n_clean_wrong: int, n: int) -> float:
    return 1.0 - n_clean_wrong / max(1, n)


def _rate(n: int, seconds: float) -> float:
    return n / max(seconds, 1e-9)


def save_certificate(path: Path, cert: dict) -> None:
    write_text(path, json.dumps(cert, indent=1) + "\n")


def read_json(path: Path):
    """A certificate file's JSON, whatever its format; one-line ``VstError`` if unreadable."""
    from toolchain.inputs import read_input

    raw = read_input(path, "certificate", limit=MAX_CERTIFICATE_BYTES, gunzip=False)
    try:
        return json.loads(raw.decode("utf-8"))
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:   # ValueError: also
        # JSONDecodeError and an integer of more digits than Python converts
        raise VstError(f"{path}: not a certificate ({exc})") from None


def load_certificate(path: Path, any_format: bool = False) -> dict:
    """A certificate file (``any_format``: the int8 certificate too); one-line errors.

    Its structure is checked here (``validate_certificate``,
    ``validate_int8_certificate``).
    """
    from toolchain.verify.int8_certificate import FORMAT as INT8_FORMAT

    path = Path(path)
    cert = read_json(path)
    formats = (FORMAT, INT8_FORMAT) if any_format else (FORMAT,)
    if isinstance(cert, dict) and cert.get("format") == "vst-property-certificate":
        raise VstError(f"{path}: a VNN-LIB property certificate; check it with "
                       f"`vst certificate check {path}`")
    if isinstance(cert, dict) and cert.get("format") == INT8_FORMAT and not any_format:
        raise VstError(f"{path}: an int8 certificate; check it against the .tflite it names")
    if not isinstance(cert, dict) or cert.get("format") not in formats:
        raise VstError(f"{path}: not a vst certificate")
    version = cert.get("version")
    if not _is_int(version) or version < 1:
        raise VstError(f"{path}: key 'version': expected an integer >= 1, got {_show(version)}")
    if version > VERSION:
        raise VstError(f"{path}: certificate version {version} is newer than this vst")
    cert = Certificate(cert)
    cert.source = str(path)
    if cert["format"] == FORMAT:
        validate_certificate(cert, str(path))
    else:
        validate_int8_certificate(cert, str(path))
    return cert


def check_certificate(cert: dict, model, dataset, *, tol: float = 1e-4,
                      alpha_tol: float = ALPHA_TOL, max_timeout: float | None = None) -> str:
    """Raise ``GateFailed`` unless ``cert`` belongs to ``model`` and every claim re-checks.

    Structure that depends on the model and data (indices, labels, number of
    margins, counterexample shapes) is a ``VstError``. A verified claim holds
    when a sound bound re-computed with the method it names (the engine's own
    batches first, then the claims in batches of their own; for alpha-CROWN,
    CROWN then alpha-CROWN) proves it, and no claimed margin is higher than
    that bound plus ``tol * (1 + |bound|)`` (``alpha_tol`` for alpha-CROWN,
    whose optimization ends a little differently in other batches); a lower
    claimed margin is still a true lower bound. A complete-verification claim
    is proved again within ``max_timeout`` seconds at most (default
    ``complete.RECHECK_TIMEOUT``; the certificate's recorded time only lowers
    it). Returns a one-line summary.
    """
    import torch

    from toolchain.lirpa.bounds import Bounder

    source = getattr(cert, "source", "certificate")
    if not isinstance(cert, dict) or cert.get("format") != FORMAT:
        raise VstError(f"{source}: not a vst (float) certificate")
    validate_certificate(cert, source)
    if cert["model"]["weights_sha256"] != model.weights_hash():
        raise GateFailed(f"{source}: certificate does not belong to this model (weights hash "
                         f"{cert['model']['weights_sha256'][:12]} != {model.weights_hash()[:12]})")
    if cert["dataset"]["sha256"] != dataset.sha256():
        raise GateFailed(f"{source}: certificate speaks about other data than {dataset.name} "
                         "(hash differs)")
    if cert["model"]["params"] != model.network.param_count():
        raise GateFailed(f"{source}: claims {cert['model']['params']} parameters, the model "
                         f"has {model.network.param_count()}")
    if not cert["results"]:
        raise GateFailed(f"{source}: claims nothing (results is empty)")
    module = model.torch_module().eval()
    bounder = Bounder(module, dataset.input_shape)
    x_all, y_all = torch.from_numpy(dataset.x_test), torch.from_numpy(dataset.y_test)
    checker = _Checker(source, module, bounder, x_all, y_all, tol, alpha_tol,
                       cert.get("shard"), max_timeout)
    for r, res in enumerate(cert["results"]):
        checker.check_result(r, res)
    c = checker.counted
    attacked = (f", {c['reattacked']} of them without one: attacked again"
                if c["reattacked"] else "")
    return (f"certificate matches model {model.weights_hash()[:12]}: all "
            f"{c['verified'] + c['falsified']} claims re-checked ({c['verified']} verified, "
            f"{c['falsified']} falsified, {c['pgd']} by a counterexample{attacked}) over "
            f"{len(cert['results'])} eps in {c['seconds']:.1f} s")


class _Checker:
    def __init__(self, source, module, bounder, x_all, y_all, tol, alpha_tol, shard=None,
                 max_timeout=None):
        from toolchain.verify.complete import RECHECK_TIMEOUT

        self.source, self.module, self.bounder = source, module, bounder
        self.max_timeout = RECHECK_TIMEOUT if max_timeout is None else max_timeout
        self.shard = shard      # a shard certificate: its samples are exactly its slice
        self.x_all, self.y_all, self.tol, self.alpha_tol = x_all, y_all, tol, alpha_tol
        self.k = bounder.num_classes
        self.counted = {"verified": 0, "falsified": 0, "pgd": 0, "reattacked": 0,
                        "seconds": 0.0}

    # -- one eps -----------------------------------------------------------------

    def check_result(self, r: int, res: dict) -> None:
        import time

        t0 = time.perf_counter()
        where = f"results[{r}]"
        samples = res["samples"]
        self._structure(where, samples)
        self._summaries(where, res)
        label = f"{where} (eps={res['eps']:g})"
        failures: dict[int, str] = {}      # sample position -> why its claim fails
        clean_ok = self._labels_and_clean(samples, failures)
        self._verified(samples, res, clean_ok, failures)
        self._counterexamples(where, samples, res["eps"], failures)
        if failures:
            first = min(failures)
            more = f" (and {len(failures) - 1} more claims fail)" if len(failures) > 1 else ""
            raise GateFailed(f"{self.source}: {label} sample {samples[first]['index']}: "
                             f"claim does not re-check: {failures[first]}{more}")
        self.counted["verified"] += sum(s["verdict"] == "verified" for s in samples)
        self.counted["falsified"] += sum(s["verdict"] == "falsified" for s in samples)
        self.counted["pgd"] += sum(s["verdict"] == "falsified"
                                   and s["method"] in COUNTEREXAMPLE_METHODS for s in samples)
        self.counted["reattacked"] += sum(s["method"] == "pgd" and "counterexample" not in s
                                          for s in samples)
        self.counted["seconds"] += time.perf_counter() - t0

    def _structure(self, where, samples) -> None:
        check_indices(self.source, where, samples, len(self.x_all))
        for k, s in enumerate(samples):
            if s["label"] >= self.k:
                raise _bad(self.source, f"{where}.samples[{k}].label",
                           f"a class in [0, {self.k})", s["label"])
            m = s["margin_lower"]
            need_margins = s["verdict"] == "verified"
            if (need_margins or m) and len(m) != self.k - 1:
                raise _bad(self.source, f"{where}.samples[{k}].margin_lower",
                           f"{self.k - 1} margins (one per other class)"
                           + ("" if need_margins else " or none"), m)

    def _summaries(self, where, res) -> None:
        """n, counts and every rate, recomputed from the samples; the first sample set."""
        check_sample_set(self.source, where, res, self.shard)
        samples, n = res["samples"], len(res["samples"])
        count = {v: sum(s["verdict"] == v for s in samples) for v in VERDICTS}
        clean_wrong = sum(s["method"] == "clean" for s in samples)
        expect = {
            "counts": count, "verified_by": settled_by(samples, "verified"),
            "verified_acc": count["verified"] / n,
            "robust_acc_upper": 1.0 - count["falsified"] / n,
            "clean_acc": _clean_acc(clean_wrong, n),
        }
        if "falsified_by" in res:
            expect["falsified_by"] = settled_by(samples, "falsified")
        check_summaries(self.source, where, res, expect)
        rate = _rate(n, res["seconds"])
        if abs(res["samples_per_second"] - rate) > 1e-6 * max(1.0, rate):
            raise result_failure(self.source, where, res)(
                f"claims samples_per_second {res['samples_per_second']:g} but n/seconds "
                f"is {rate:g}")

    def _labels_and_clean(self, samples, failures):
        """Labels match the data; misclassified exactly where the certificate says "clean".

        Returns the clean-correct flags in index order (the cascade's open set).
        """
        import torch

        n = max(s["index"] for s in samples) + 1     # len(samples), unless a shard
        y = self.y_all[:n]
        with torch.no_grad():
            pred = torch.cat([self.module(self.x_all[i:min(i + 1000, n)]).argmax(1)
                              for i in range(0, n, 1000)])
        for k, s in enumerate(samples):
            i = s["index"]
            if s["label"] != int(y[i]):
                failures.setdefault(k, f"label {s['label']} != the data's {int(y[i])}")
            elif int(pred[i]) != int(y[i]):
                if s["method"] != "clean":
                    failures.setdefault(k, f"the model misclassifies it (predicts {int(pred[i])}),"
                                        f" but the certificate says {s['verdict']} by "
                                        f"{s['method']}")
            elif s["method"] == "clean":
                failures.setdefault(k, "claimed falsified (misclassified) but the model "
                                       "classifies it correctly")
        return pred == y

    def _bound(self, method, idx, eps):
        import torch

        out = []
        size = BATCH[method]
        for i in range(0, len(idx), size):
            part = idx[i:i + size]
            with torch.set_grad_enabled(method == "alpha-crown"):
                lb = self.bounder.margin_lower(self.x_all[part], self.y_all[part], eps, method)
            out.append(lb.detach().double())
        return torch.cat(out)

    def _cascade(self, samples, res, clean_ok):
        """The engine's bound steps, in the engine's order (``steps.plan``) and
        batches: margins per method and index.

        auto_LiRPA's CROWN bound of a sample depends a little on the other
        samples of its batch (all sound); bounding the same batches as the
        engine reproduces the certificate's margins. The attack's share is
        what the certificate says it falsified; the complete step is re-decided
        per claim (``_complete_claims``).
        """
        import torch

        eps = res["eps"]
        steps = [m for m in plan(res["method"], refused=getattr(self.bounder, "refused", {}))
                 if m in BATCH or m == ATTACK]
        claimed = {s["method"] for s in samples if s["verdict"] == "verified"}
        while steps and steps[-1] not in claimed:      # nothing to reproduce: skip it
            steps.pop()
        by_index = {s["index"]: s for s in samples}
        is_open = torch.zeros_like(clean_ok)        # the certificate's samples only (a shard)
        mine = torch.tensor(sorted(by_index), dtype=torch.long)
        is_open[mine] = clean_ok[mine]
        found: dict[str, dict[int, torch.Tensor]] = {m: {} for m in BOUND_METHODS}

        def step(method):
            idx = is_open.nonzero().flatten()
            if not len(idx):
                return
            lb = self._bound(method, idx, eps)
            for i, row in zip(idx.tolist(), lb):
                found[method][i] = row
                if bool((row > 0).all()):
                    is_open[i] = False

        for method in steps:
            if method != ATTACK:
                step(method)
                continue
            for i in is_open.nonzero().flatten().tolist():   # the attack's share
                if by_index[i]["method"] == ATTACK and eps > 0:
                    is_open[i] = False
        return found

    def _verified(self, samples, res, clean_ok, failures) -> None:
        import torch

        eps = res["eps"]
        repro = self._cascade(samples, res, clean_ok)
        claims = [k for k, s in enumerate(samples)
                  if s["verdict"] == "verified" and k not in failures]
        for k in claims:
            if (samples[k]["method"] not in COMPLETE_METHODS
                    and min(samples[k]["margin_lower"]) <= 0):
                failures[k] = "claimed verified, but its own margins are not all > 0"
        self._complete_claims(samples, eps, [k for k in claims if k not in failures
                                             and samples[k]["method"] in COMPLETE_METHODS],
                              failures)
        for method in BOUND_METHODS:
            pos = [k for k in claims if samples[k]["method"] == method and k not in failures]
            if not pos:
                continue
            if method in self.bounder.refused:
                for k in pos:
                    failures.setdefault(k, f"claimed verified by {method}, which cannot bound "
                                           f"this network ({self.bounder.refused[method]})")
                continue
            claimed = torch.tensor([samples[k]["margin_lower"] for k in pos], dtype=torch.float64)
            tol = self.alpha_tol if method == "alpha-crown" else self.tol
            # Sound bounds for each claim: the engine's own batches where the
            # cascade bounded it with this method (CROWN first for alpha-CROWN) ...
            lb = torch.full(claimed.shape, float("-inf"), dtype=torch.float64)
            for first in (("crown", "alpha-crown") if method == "alpha-crown" else (method,)):
                for j, k in enumerate(pos):
                    row = repro[first].get(samples[k]["index"])
                    if row is not None:
                        lb[j] = torch.maximum(lb[j], row)
            ok = self._holds(lb, claimed, tol)
            # ... then, for claims that this does not prove, in batches of their own
            # (CROWN, then alpha-CROWN for alpha-CROWN claims). Any sound bound will do.
            for fallback in (("crown", "alpha-crown") if method == "alpha-crown" else (method,)):
                rest = (~ok).nonzero().flatten()
                if not len(rest):
                    break
                idx = torch.tensor([samples[pos[j]]["index"] for j in rest.tolist()])
                lb[rest] = torch.maximum(lb[rest], self._bound(fallback, idx, eps))
                ok = self._holds(lb, claimed, tol)
            for j in (~ok).nonzero().flatten().tolist():
                k = pos[j]
                low = float(lb[j].min())
                if low <= 0:
                    why = (f"claimed verified by {method}, but its margin lower bound "
                           f"re-computes to {low:.4g} <= 0")
                else:
                    d = int((claimed[j] - lb[j]).argmax())
                    why = (f"claimed margin {float(claimed[j][d]):.6g} (other class #{d}) is "
                           f"higher than the re-computed {method} bound {float(lb[j][d]):.6g}")
                failures.setdefault(k, why)

    def _complete_claims(self, samples, eps, claims, failures) -> None:
        """A claim of complete verification holds when it is proved again: a "bab"
        claim by replaying its split tree (``bab_tree.check_proof``: the tree covers
        the box, every leaf's bound re-computed), a "milp" claim by running the MILP
        again. Either within 3x its recorded time, at least the default timeout, at
        most the checker's ``max_timeout``."""
        from toolchain.verify.affine_program import ProgramReader
        from toolchain.verify.bab_tree import check_proof
        from toolchain.verify.complete import classification_spec, decide
        from toolchain.verify.engine import DEFAULT_TIMEOUT

        shape = tuple(self.x_all.shape[1:])
        program = ProgramReader(self.module, shape)
        for k in claims:
            s = samples[k]
            x = self.x_all[s["index"]]
            timeout = min(max(DEFAULT_TIMEOUT, 3.0 * float(s.get("seconds", 0.0))),
                          self.max_timeout)
            lower, upper = (b.numpy() for b in eps_box(x, eps))
            spec = classification_spec(s["label"], self.k)
            if s["method"] == "bab":
                why = ("it carries no split tree ('bab')" if "bab" not in s else
                       check_proof(self.module, self.bounder, shape, lower, upper, spec,
                                   s["bab"], time_limit=timeout))
                if why is not None:
                    failures.setdefault(k, f"claimed verified by bab, but its proof does not "
                                           f"re-check: {why}")
                continue
            d = decide(self.module, shape, lower, upper, spec, timeout=timeout, cheap=False,
                       bounder=self.bounder, program=program, procedure=s["method"])
            if d.status != "verified":
                why = d.reason or f"it is {d.status} by {d.procedure}"
                failures.setdefault(k, f"claimed verified by {s['method']}, but complete "
                                       f"verification run again does not prove it ({why})")

    @staticmethod
    def _holds(lb, claimed, tol):
        """Proven (every bound > 0) and no claimed margin above the bound (within tol).

        A lower claimed margin is still a true lower bound: only higher is a lie.
        """
        return (lb > 0).all(1) & (claimed <= lb + tol * (1.0 + lb.abs())).all(1)

    def _counterexamples(self, where, samples, eps, failures) -> None:
        import torch

        from toolchain.verify.attack import AttackConfig, in_box, pgd
        from toolchain.verify.engine import decode_input

        shape = tuple(self.x_all.shape[1:])
        stored, missing = [], []
        for k, s in enumerate(samples):
            if (s["verdict"] != "falsified" or s["method"] not in COUNTEREXAMPLE_METHODS
                    or k in failures):
                continue
            if "counterexample" not in s:
                if s["method"] != "pgd":
                    failures.setdefault(k, f"claimed falsified by {s['method']} without "
                                           "a counterexample")
                    continue
                missing.append(k)
                continue
            try:
                adv = decode_input(s["counterexample"], shape)
            except ValueError as exc:
                raise _bad(self.source, f"{where}.samples[{k}].counterexample",
                           f"base64 float32 of one input {shape}", f"{exc}") from None
            if not bool(torch.isfinite(adv).all()):
                raise _bad(self.source, f"{where}.samples[{k}].counterexample",
                           "finite values", "NaN or inf")
            stored.append((k, adv))
        if stored:
            pos = [k for k, _ in stored]
            idx = torch.tensor([samples[k]["index"] for k in pos], dtype=torch.long)
            adv = torch.stack([a for _, a in stored])
            x, y = self.x_all[idx], self.y_all[idx]
            inside = in_box(adv, x, eps)
            with torch.no_grad():
                pred = self.module(adv).argmax(1)
            for j, k in enumerate(pos):
                if not bool(inside[j]):
                    worst = float((adv[j] - x[j]).abs().max())
                    failures.setdefault(k, f"its counterexample lies outside the eps-box "
                                           f"(|delta| up to {worst:.4g}) or [0, 1]")
                elif int(pred[j]) == int(y[j]):
                    failures.setdefault(k, "its counterexample is classified correctly: "
                                           "not a counterexample")
        if missing:
            # Written before certificates carried counterexamples: attack again, harder.
            idx = torch.tensor([samples[k]["index"] for k in missing], dtype=torch.long)
            x, y = self.x_all[idx], self.y_all[idx]
            found, adv = pgd(self.module, x, y, eps, AttackConfig(steps=100, restarts=10))
            with torch.no_grad():
                really = found & in_box(adv, x, eps) & (self.module(adv).argmax(1) != y)
            for j, k in enumerate(missing):
                if not bool(really[j]):
                    failures.setdefault(k, "claimed falsified by pgd; no counterexample is "
                                           "stored and a stronger PGD finds none")
