"""Shared helpers for benchmarks: machine description, evaluation, JSON/Markdown output."""

from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def machine() -> dict:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import torch
    return {"cpu": cpu, "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "python": platform.python_version(), "date": time.strftime("%Y-%m-%d")}


def evaluate(model, dataset, eps: float, methods=("ibp", "crown")) -> dict:
    """Clean and verified accuracy on the whole test split, with seconds per method."""
    import torch

    from toolchain.lirpa.bounds import Bounder

    module = model.torch_module().eval()
    x, y = torch.from_numpy(dataset.x_test), torch.from_numpy(dataset.y_test)
    with torch.no_grad():
        out = {"clean_acc": float((module(x).argmax(1) == y).float().mean())}
    bounder = Bounder(module, dataset.input_shape)
    for method in methods:
        t0 = time.perf_counter()
        out[f"{method}_verified_acc"] = bounder.count_verified(x, y, eps, method, 250) / len(x)
        out[f"{method}_seconds"] = time.perf_counter() - t0
    return out


def train_natural(net, data, epochs: int, seed: int = 0):
    """``net`` (a vst Network) trained with plain cross-entropy (Adam 1e-3, batch 64),
    no certified loss: the naturally trained nets of the complete-verification
    benchmarks. Returns the VstModel."""
    import torch

    from toolchain.models.modelfile import VstModel
    from toolchain.models.torch_build import build_torch

    torch.manual_seed(seed)
    module = build_torch(net)
    opt = torch.optim.Adam(module.parameters(), 1e-3)
    x, y = torch.from_numpy(data.x_train), torch.from_numpy(data.y_train)
    for _ in range(epochs):
        perm = torch.randperm(len(x))
        for i in range(0, len(x), 64):
            b = perm[i:i + 64]
            loss = torch.nn.functional.cross_entropy(module(x[b]), y[b])
            opt.zero_grad()
            loss.backward()
            opt.step()
    state = {k: v.detach().clone() for k, v in module.state_dict().items()}
    return VstModel(net, state, record={"config": {"data": {"dataset": data.name}}})


def write(name: str, payload: dict, table: str) -> None:
    from toolchain.atomic import write_text

    RESULTS.mkdir(exist_ok=True)
    write_text(RESULTS / f"{name}.json", json.dumps(payload, indent=1) + "\n")
    write_text(RESULTS / f"{name}.md", table + "\n")
    print(table)


def markdown(headers, rows) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)
