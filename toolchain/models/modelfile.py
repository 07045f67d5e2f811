"""The model file: architecture, weights, masks and training record in one file.

Built on safetensors, which stores raw tensors plus a string->string header
and never executes code on load (unlike pickle). Layout:

- tensors ``"{i}.weight"`` ... : the torch ``state_dict`` of the layer list;
- tensors ``"mask.{i}.weight"`` ... : 0/1 masks of the same shape;
- metadata ``vst_format`` (version), ``architecture`` (layer list JSON),
  ``record`` (training record, config, library versions: JSON).

>>> from toolchain.models.layers import Linear, Network            # doctest: +SKIP
>>> from toolchain.models.torch_build import build_torch           # doctest: +SKIP
>>> net = Network((2,), (Linear(2, 2),))                           # doctest: +SKIP
>>> m = VstModel(net, build_torch(net).state_dict())               # doctest: +SKIP
>>> save_model("m.vst", m)                                         # doctest: +SKIP
>>> load_model("m.vst").weights_hash() == m.weights_hash()         # doctest: +SKIP
True
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from toolchain.atomic import atomic_path
from toolchain.eps import check_eps
from toolchain.errors import VstError
from toolchain.inputs import check_input
from toolchain.models.layers import Network

FORMAT_VERSION = 1
MASK_PREFIX = "mask."


@dataclass
class VstModel:
    """A network plus its numbers. ``state`` and ``masks`` hold torch tensors."""

    network: Network
    state: dict
    masks: dict = field(default_factory=dict)
    record: dict = field(default_factory=dict)

    def __repr__(self) -> str:
        return (f"VstModel({len(self.network.layers)} layers, "
                f"{len(self.masks)} masks, hash={self.weights_hash()[:12]})")

    def weights_hash(self) -> str:
        """SHA-256 over the architecture and every tensor (name, dtype, shape, bytes)."""
        h = hashlib.sha256(self.network.to_json().encode())
        for name in sorted(self.state):
            arr = np.ascontiguousarray(self.state[name].detach().cpu().numpy())
            h.update(f"{name}|{arr.dtype}|{arr.shape}|".encode())
            h.update(arr.tobytes())
        return h.hexdigest()

    def torch_module(self):
        """A torch module with these weights (masks are already applied to them)."""
        from toolchain.models.torch_build import build_torch
        return build_torch(self.network, self.state)


def save_model(path: str | Path, model: VstModel) -> None:
    """Write ``model`` atomically to ``path``."""
    from safetensors.torch import save_file

    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state.items()}
    tensors.update({MASK_PREFIX + k: v.detach().cpu().contiguous() for k, v in model.masks.items()})
    metadata = {
        "vst_format": str(FORMAT_VERSION),
        "architecture": model.network.to_json(),
        "record": json.dumps(model.record, sort_keys=True, default=str),
    }
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)


def load_model(path: str | Path) -> VstModel:
    """Read a model file; any damage gives a one-line ``VstError``."""
    from safetensors import SafetensorError, safe_open

    path = check_input(path, "model file")
    try:
        with safe_open(str(path), framework="pt") as fh:
            meta = fh.metadata() or {}
            tensors = {k: fh.get_tensor(k) for k in fh.keys()}
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise VstError(f"{path}: not a readable vst model file ({first})") from None
    if "vst_format" not in meta:
        raise VstError(f"{path}: not a vst model file (no vst_format header)")
    try:
        version = int(meta["vst_format"])
    except ValueError:
        raise VstError(f"{path}: bad vst_format {meta['vst_format']!r}") from None
    if version > FORMAT_VERSION:
        raise VstError(f"{path}: model format {version} is newer than this vst "
                       f"(reads up to {FORMAT_VERSION}); upgrade vst")
    try:
        network = Network.from_dict(json.loads(meta["architecture"]))
        record = json.loads(meta.get("record", "{}"))
    except (json.JSONDecodeError, KeyError) as exc:
        raise VstError(f"{path}: corrupt model header ({exc})") from None
    except VstError as exc:
        raise VstError(f"{path}: {exc}") from None
    _check_record(path, record)
    masks = {k[len(MASK_PREFIX):]: v for k, v in tensors.items() if k.startswith(MASK_PREFIX)}
    state = {k: v for k, v in tensors.items() if not k.startswith(MASK_PREFIX)}
    check_state(path, network, state)
    return VstModel(network, state, masks, record)


def check_state(path, network: Network, state: dict) -> None:
    """The tensors ``network`` needs, no more, each in its shape and dtype, finite:
    for a model file and an imported ONNX network alike (``path`` names the source)."""
    from toolchain.models.torch_build import build_torch

    expected = build_torch(network).state_dict()
    missing = sorted(set(expected) - set(state))
    extra = sorted(set(state) - set(expected))
    if missing or extra:
        raise VstError(f"{path}: tensors do not match the architecture "
                       f"(missing {missing[:3]}, unexpected {extra[:3]})")
    for name, ref in expected.items():
        if tuple(state[name].shape) != tuple(ref.shape):
            raise VstError(f"{path}: tensor {name} has shape {tuple(state[name].shape)}, "
                           f"architecture needs {tuple(ref.shape)}")
        if state[name].dtype != ref.dtype:
            raise VstError(f"{path}: tensor {name} has dtype {state[name].dtype}, "
                           f"architecture needs {ref.dtype}")
        if state[name].is_floating_point() and not bool(state[name].isfinite().all()):
            raise VstError(f"{path}: tensor {name} contains NaN or infinity")


def _check_record(path: Path, record) -> None:
    """The training record: a JSON object whose config sections are objects and
    whose test eps, when present, meets the eps rule (``toolchain.eps``)."""
    if not isinstance(record, dict):
        raise VstError(f"{path}: record must be a JSON object, got {type(record).__name__}")
    config = record.get("config", {})
    if not isinstance(config, dict) or not all(isinstance(v, dict) for v in config.values()):
        raise VstError(f"{path}: record.config must be an object of sections")
    eps = config.get("verify", {}).get("eps")
    if eps is not None:
        check_eps(eps, f"{path}: record.config.verify.eps")
    data = config.get("data", {}).get("dataset")
    if data is not None and not isinstance(data, str):
        raise VstError(f"{path}: record.config.data.dataset must be a string, got {data!r}")
