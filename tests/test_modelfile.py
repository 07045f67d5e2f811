import json

import pytest
import torch

from toolchain.errors import VstError
from toolchain.models.modelfile import FORMAT_VERSION, VstModel, load_model, save_model
from toolchain.models.torch_build import build_torch
from toolchain.models.zoo import build_network


def _model():
    net = build_network("cnn_small", (1, 12, 12), 3, channels=[2, 4], widths=[8], batchnorm=True)
    state = build_torch(net).state_dict()
    masks = {"0.weight": (torch.rand_like(state["0.weight"]) > 0.5).float()}
    return VstModel(net, state, masks, {"epochs": [{"loss": 1.5}], "seed": 3})


def test_round_trip(tmp_path):
    m = _model()
    save_model(tmp_path / "m.vst", m)
    back = load_model(tmp_path / "m.vst")
    assert back.network == m.network
    assert back.record == m.record
    assert back.weights_hash() == m.weights_hash()
    assert set(back.masks) == {"0.weight"} and torch.equal(back.masks["0.weight"], m.masks["0.weight"])
    x = torch.rand(4, 1, 12, 12)
    assert torch.equal(back.torch_module().eval()(x), m.torch_module().eval()(x))


def test_hash_sees_one_changed_weight():
    m = _model()
    h = m.weights_hash()
    m.state["0.weight"][0, 0, 0, 0] += 1e-6
    assert m.weights_hash() != h


def test_no_leftover_temp_files(tmp_path):
    save_model(tmp_path / "m.vst", _model())
    assert [p.name for p in tmp_path.iterdir()] == ["m.vst"]


def test_truncated_file(tmp_path):
    save_model(tmp_path / "m.vst", _model())
    data = (tmp_path / "m.vst").read_bytes()
    (tmp_path / "t.vst").write_bytes(data[: len(data) // 2])
    with pytest.raises(VstError, match="not a readable vst model"):
        load_model(tmp_path / "t.vst")


def test_corrupt_and_foreign_files(tmp_path):
    (tmp_path / "junk.vst").write_bytes(b"\x00" * 100)
    with pytest.raises(VstError):
        load_model(tmp_path / "junk.vst")
    from safetensors.torch import save_file
    save_file({"a": torch.zeros(2)}, str(tmp_path / "plain.safetensors"))
    with pytest.raises(VstError, match="not a vst model file"):
        load_model(tmp_path / "plain.safetensors")
    with pytest.raises(VstError, match="not found"):
        load_model(tmp_path / "missing.vst")


def _rewrite_meta(src, dst, **changes):
    from safetensors import safe_open
    from safetensors.torch import save_file
    with safe_open(str(src), framework="pt") as fh:
        meta, tensors = fh.metadata(), {k: fh.get_tensor(k) for k in fh.keys()}
    meta.update(changes)
    save_file(tensors, str(dst), metadata=meta)


def test_future_version_and_bad_header(tmp_path):
    save_model(tmp_path / "m.vst", _model())
    _rewrite_meta(tmp_path / "m.vst", tmp_path / "f.vst", vst_format=str(FORMAT_VERSION + 1))
    with pytest.raises(VstError, match="newer than this vst"):
        load_model(tmp_path / "f.vst")
    _rewrite_meta(tmp_path / "m.vst", tmp_path / "h.vst", architecture="{not json")
    with pytest.raises(VstError, match="corrupt model header"):
        load_model(tmp_path / "h.vst")
    arch = json.loads(_model().network.to_json())
    arch["layers"][0]["out_channels"] = 3
    arch["layers"][1]["channels"] = 3
    arch["layers"][3]["in_channels"] = 3
    _rewrite_meta(tmp_path / "m.vst", tmp_path / "s.vst", architecture=json.dumps(arch))
    with pytest.raises(VstError, match="shape"):
        load_model(tmp_path / "s.vst")


def test_loading_never_unpickles(tmp_path, monkeypatch):
    import pickle
    save_model(tmp_path / "m.vst", _model())

    def boom(*a, **k):
        raise AssertionError("pickle used while loading a model")
    monkeypatch.setattr(pickle, "loads", boom)
    monkeypatch.setattr(pickle, "load", boom)
    monkeypatch.setattr(torch, "load", boom)
    assert load_model(tmp_path / "m.vst").network.num_classes == 3
