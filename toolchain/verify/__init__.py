"""Verification stage: bounds, attacks, verdicts, certificates and the CI gate.

``run_verify(model, dataset, eps_list, method, out=PATH)`` is the stage's one
entry, for ``vst verify`` and ``vst build`` alike: ``verify_model`` runs the
cascade of ``engine`` on the test split (or one shard of it) for each eps, one
``EpsResult`` each; ``certificate`` turns them into the JSON that names the
exact weights, written to ``out``.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

from toolchain.errors import VstError


def load_any_model(path: str | Path):
    """A vst model file, or an ONNX graph imported into the network IR."""
    path = Path(path)
    if path.suffix.lower() == ".onnx":
        from toolchain.models.onnx_import import import_onnx
        return import_onnx(path)
    from toolchain.models.modelfile import load_model
    return load_model(path)


def resolve_dataset(model, spec: str | None):
    """``spec`` or the data set the model was trained on; checked against the model.

    Data whose samples hold as many values as the model's input is reshaped
    to it in C order (an ONNX model with input (1, 784, 1) takes MNIST's
    (1, 28, 28) images); other sizes are a one-line ``VstError``.
    """
    from toolchain.data import load_dataset

    cfg = model.record.get("config", {}).get("data", {})
    spec = spec or cfg.get("dataset")
    if not spec:
        raise VstError("this model does not say which data it was trained on; pass --data")
    data = load_dataset(spec, test_fraction=cfg.get("test_fraction", 0.2),
                        seed=model.record.get("seed", 0),
                        num_classes=model.network.num_classes)
    shape = tuple(model.network.input_shape)
    if data.input_shape != shape:
        if math.prod(data.input_shape) != math.prod(shape):
            raise VstError(f"data {spec} has inputs {data.input_shape} "
                           f"({math.prod(data.input_shape)} values), the model expects "
                           f"{shape} ({math.prod(shape)} values)")
        data = dataclasses.replace(data, x_train=data.x_train.reshape((-1,) + shape),
                                   x_test=data.x_test.reshape((-1,) + shape))
    return data


def default_eps(model) -> float:
    """The test eps the model carries (its record, or vst's ONNX metadata), checked
    by the one eps rule (``toolchain.eps``)."""
    from toolchain.eps import check_eps

    eps = model.record.get("config", {}).get("verify", {}).get("eps")
    if eps is None:
        raise VstError("this model carries no test eps; pass --eps")
    where = ("the eps in the model's ONNX metadata" if "imported_from" in model.record
             else "the model's test eps")
    try:
        return check_eps(eps, where)
    except VstError as exc:
        raise VstError(f"{exc}; pass --eps") from None


def run_verify(model, dataset, eps_list, method: str = "crown", n: int = 0, *,
               shard: tuple[int, int] | None = None, device="cpu",
               timeout: float | None = None, show_progress: bool = True, out=None):
    """The verification stage (``vst verify`` and ``vst build``): the cascade on the
    first ``n`` test samples (0: all; with ``shard`` ``(I, N)`` only its slice) at
    each eps, and the certificate naming the exact weights and data, written
    atomically to ``out`` when given. Returns ``(results, certificate)``.

    ``device``: ``auto`` | ``cpu`` | ``cuda`` or a ``torch.device``; the
    certificate records its type.
    """
    from toolchain.device import resolve_device
    from toolchain.verify.certificate import build_certificate, save_certificate
    from toolchain.verify.shard import shard_record

    device = resolve_device(device) if isinstance(device, str) else device
    results = verify_model(model, dataset, eps_list, method, n, shard=shard,
                           show_progress=show_progress, device=device, timeout=timeout)
    cert = build_certificate(model, dataset, results)
    cert["versions"]["device"] = device.type
    if shard is not None:
        cert["shard"] = shard_record(*shard, _total(dataset, n))
    if out is not None:
        save_certificate(out, cert)
    return results, cert


def _total(dataset, n: int) -> int:
    """How many test samples "the first ``n``" are (0: all)."""
    return min(n, len(dataset.x_test)) if n else len(dataset.x_test)


def verify_model(model, dataset, eps_list, method: str = "crown", n: int = 0, *,
                 shard: tuple[int, int] | None = None, show_progress: bool = True,
                 attack=None, device=None, timeout: float | None = None):
    """Cascade verdicts for the first ``n`` test samples (0: all) at each eps.

    ``shard`` ``(I, N)``: only the samples whose index ``i`` has ``i % N == I``
    (``verify.shard``); each sample keeps its global test index, which also
    seeds its attack, so its verdict is the one an unsharded run gives.
    ``device`` (a ``torch.device``; default the CPU) is where the network and
    its bounds run; the samples, verdicts and margins stay on the CPU.
    ``timeout``: seconds of complete verification per sample (methods
    ``complete`` and ``all``; default ``engine.DEFAULT_TIMEOUT``); the complete
    step (a MILP) always runs on the CPU.
    """
    import torch

    from toolchain.display import progress
    from toolchain.lirpa.bounds import Bounder
    from toolchain.verify.attack import AttackConfig
    from toolchain.verify.engine import DEFAULT_TIMEOUT, verify_samples
    from toolchain.verify.shard import shard_indices

    if n < 0:
        raise VstError(f"--n must be >= 0, got {n}")
    total = _total(dataset, n)
    ids, label = list(range(total)), ""
    if shard is not None:
        index, count = shard
        ids, label = shard_indices(index, count, total), f" shard {index}/{count}"
        if not ids:
            raise VstError(f"--shard {index}/{count}: the slice is empty (only {total} test "
                           "samples); use fewer shards")
    device = torch.device("cpu") if device is None else device
    module = model.torch_module().eval().to(device)
    bounder = Bounder(module, dataset.input_shape)
    cpu_module = None
    if device.type != "cpu":
        module, bounder = _on_device(module, bounder, device)
        cpu_module = model.torch_module().eval()
    sel = torch.tensor(ids, dtype=torch.long)
    x = torch.from_numpy(dataset.x_test[:total])[sel]
    y = torch.from_numpy(dataset.y_test[:total])[sel]
    results = []
    with progress() as bar:
        for eps in eps_list:
            task = bar.add_task(f"verify eps={eps:g}{label}", total=None, info=method,
                                visible=show_progress)
            res = verify_samples(
                module, bounder, x, y, eps, method, attack=attack or AttackConfig(),
                on_batch=lambda m, k, task=task: bar.update(task, advance=k, info=m), ids=ids,
                timeout=DEFAULT_TIMEOUT if timeout is None else timeout,
                complete_module=cpu_module)
            for s in res.samples:
                s.index = ids[s.index]
            results.append(res)
            bar.update(task, total=len(x), completed=len(x))
    return results


def _on_device(module, bounder, device):
    """The network and bounder on ``device``, seen by the verification engine as
    if on the CPU: inputs go to the device, logits and margins come back."""
    import torch

    class OnDevice(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, x):
            return self.inner(x.to(device)).cpu()    # differentiable both ways (PGD)

    class BounderOnDevice:
        verified = staticmethod(bounder.verified)
        num_classes = bounder.num_classes
        refused = bounder.refused

        def margin_lower(self, x, y, eps, method="ibp"):
            return bounder.margin_lower(x.to(device), y.to(device), eps, method).cpu()

    return OnDevice(module), BounderOnDevice()
