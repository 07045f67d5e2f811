"""Verification stage: bounds, attacks, verdicts, certificates and the CI gate.

``verify_model(model, dataset, eps_list, method)`` runs the cascade of
``engine`` on the test split for each eps and returns one ``EpsResult`` each;
``certificate`` turns them into the JSON that names the exact weights.
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
    eps = model.record.get("config", {}).get("verify", {}).get("eps")
    if eps is None:
        raise VstError("this model carries no test eps; pass --eps")
    return float(eps)


def verify_model(model, dataset, eps_list, method: str = "crown", n: int = 0, *,
                 show_progress: bool = True, attack=None, device=None,
                 timeout: float | None = None):
    """Cascade verdicts for the first ``n`` test samples (0: all) at each eps.

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

    if n < 0:
        raise VstError(f"--n must be >= 0, got {n}")
    device = torch.device("cpu") if device is None else device
    module = model.torch_module().eval().to(device)
    bounder = Bounder(module, dataset.input_shape)
    cpu_module = None
    if device.type != "cpu":
        module, bounder = _on_device(module, bounder, device)
        cpu_module = model.torch_module().eval()
    x = torch.from_numpy(dataset.x_test[: n or None])
    y = torch.from_numpy(dataset.y_test[: n or None])
    results = []
    with progress() as bar:
        for eps in eps_list:
            task = bar.add_task(f"verify eps={eps:g}", total=None, info=method,
                                visible=show_progress)
            results.append(verify_samples(
                module, bounder, x, y, eps, method, attack=attack or AttackConfig(),
                on_batch=lambda m, k, task=task: bar.update(task, advance=k, info=m),
                timeout=DEFAULT_TIMEOUT if timeout is None else timeout,
                complete_module=cpu_module))
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
