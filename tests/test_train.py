"""Certified sparse training on a tiny real slice of MNIST."""

import pytest
import torch

from helpers import tiny_config, tiny_mnist
from toolchain.data import load_dataset
from toolchain.models.modelfile import load_model
from toolchain.train.epochs import train_epoch
from toolchain.train.loop import make_run
from toolchain.train.methods import get_method
from toolchain.train.trainer import train


@pytest.fixture(scope="module")
def data_path(tmp_path_factory):
    return tiny_mnist(tmp_path_factory.mktemp("data") / "tiny.npz")


@pytest.mark.parametrize("mode", ["structured", "unstructured"])
def test_masked_weights_and_adam_moments_stay_zero(data_path, mode):
    cfg = tiny_config(data_path, sparsity={"mode": mode, "method": "verisparse"})   # DST
    run = make_run(cfg, load_dataset(str(data_path)), method=get_method("verisparse"))
    budget = run.sparsifier.kept_weights()
    for epoch in range(2):                     # crosses warm-up, ramp and mask updates
        stats = train_epoch(run, epoch)
        assert run.sparsifier.kept_weights() == budget
        params = dict(run.module.named_parameters())
        for name, mask in run.sparsifier.param_masks().items():
            p = params[name]
            assert torch.count_nonzero(p[mask == 0]) == 0, name
            for key in ("exp_avg", "exp_avg_sq"):
                moment = run.optimizer.state[p][key]
                assert torch.count_nonzero(moment[mask == 0]) == 0, (name, key)
    assert stats["units_moved"] > 0 or epoch == 0


def test_train_writes_model_plot_and_learns(data_path, tmp_path):
    cfg = tiny_config(data_path, train={"epochs": 12, "warmup_epochs": 8, "ramp_epochs": 2,
                                        "batch_size": 32, "lr": 2e-3})
    model = train(cfg, tmp_path, show_progress=False)
    back = load_model(tmp_path / "model.vst")
    assert back.weights_hash() == model.weights_hash()
    assert (tmp_path / "training.png").stat().st_size > 10_000
    rec = back.record
    assert len(rec["epochs"]) == 12 and rec["seed"] == 0 and "torch" in rec["versions"]
    assert rec["density"] == pytest.approx(0.3, abs=0.03)
    # the saved weights respect the masks
    for name, mask in back.masks.items():
        assert torch.count_nonzero(back.state[name][mask == 0]) == 0
    assert rec["epochs"][-1]["val_clean_acc"] > 0.4        # 10 classes: chance is 0.1


def test_resume_gives_the_same_weights(data_path, tmp_path):
    cfg = tiny_config(data_path, train={"epochs": 3})
    full = train(cfg, tmp_path / "full", show_progress=False)
    train(cfg, tmp_path / "part", show_progress=False, stop_after=1)
    resumed = train(cfg, tmp_path / "part", resume=True, show_progress=False)
    assert resumed.weights_hash() == full.weights_hash()
    assert [e["epoch"] for e in resumed.record["epochs"]] == [1, 2, 3]


def test_resume_refuses_other_config(data_path, tmp_path):
    from toolchain.errors import VstError
    train(tiny_config(data_path, train={"epochs": 2}), tmp_path, show_progress=False, stop_after=1)
    with pytest.raises(VstError, match="different config"):
        train(tiny_config(data_path, train={"epochs": 2, "lr": 3e-3}), tmp_path,
              resume=True, show_progress=False)
    with pytest.raises(VstError, match="nothing to resume"):
        train(tiny_config(data_path), tmp_path / "empty", resume=True, show_progress=False)


@pytest.mark.parametrize("mode", ["structured", "unstructured"])
def test_hydra_baseline_reaches_the_same_budget(data_path, tmp_path, mode):
    cfg = tiny_config(data_path, sparsity={"method": "hydra", "mode": mode,
                                           "hydra_score_epochs": 1, "hydra_finetune_epochs": 1},
                      train={"epochs": 2})
    model = train(cfg, tmp_path, show_progress=False)
    ref = make_run(tiny_config(data_path, sparsity={"mode": mode, "method": "verisparse"}),
                   load_dataset(str(data_path)), method=get_method("verisparse"))  # the budget
    assert model.record["method"] == "hydra"
    assert model.record["density"] == pytest.approx(ref.sparsifier.density())
    for name, mask in model.masks.items():
        assert torch.count_nonzero(model.state[name][mask == 0]) == 0


def test_dense_baseline_has_no_masks(data_path, tmp_path):
    model = train(tiny_config(data_path, sparsity={"method": "dense"}, train={"epochs": 1}),
                  tmp_path, show_progress=False)
    assert model.masks == {} and model.record["density"] == 1.0
