"""Device choice and data-parallel training (toolchain/train/distributed.py).

The data-parallel tests launch two real processes with torchrun (gloo, over
127.0.0.1 only) running a worker script that records a hash of the masks after
every mask update on each rank, and compare the result with one process
training on the same global batches.
"""

import json
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from helpers import tiny_config, tiny_mnist
from toolchain.cli import cli
from toolchain.device import resolve_device
from toolchain.errors import VstError
from toolchain.models.modelfile import load_model
from toolchain.train.checkpoint import load_checkpoint
from toolchain.train.distributed import World
from toolchain.train.trainer import train

# update_every 2: several structured RigL updates (the regrowth scores take a
# backward pass of their own, which must be summed across ranks too)
SPARSE = {"method": "verisparse", "update_every": 2, "density": 0.5}
TORCHRUN = Path(sys.executable).with_name("torchrun")

WORKER = textwrap.dedent("""
    import hashlib, os, sys
    import torch
    sys.path.insert(0, {tests!r})
    from helpers import tiny_config
    from toolchain.train import trainer
    from toolchain.train.methods import dst

    rank = int(os.environ["RANK"])
    run_name = os.path.basename(sys.argv[1])
    log = open(os.path.join({root!r}, f"{{run_name}}.masks{{rank}}.txt"), "a")
    original = dst.DynamicSparse.mask_step

    def recorded(self, run, step, *args):
        moved, updated = original(self, run, step, *args)
        if updated:
            masks = run.sparsifier.param_masks()
            h = hashlib.sha256(b"".join(masks[k].numpy().tobytes() for k in sorted(masks)))
            log.write(f"{{step}} {{h.hexdigest()}}\\n")
            log.flush()
        return moved, updated

    dst.DynamicSparse.mask_step = recorded
    cfg = tiny_config({data!r}, sparsity={sparse!r})
    extra = sys.argv[2] if len(sys.argv) > 2 else ""
    trainer.train(cfg, sys.argv[1], resume=extra == "resume", show_progress=False,
               stop_after=int(extra) if extra.isdigit() else None)
""")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _torchrun(root: Path, *args: str) -> None:
    """Two ranks on 127.0.0.1 running the worker script (or ``-m toolchain ...``)."""
    env = {**os.environ, "GLOO_SOCKET_IFNAME": "lo", "OMP_NUM_THREADS": "1"}
    script = [] if args[0] == "-m" else [str(root / "worker.py")]
    cmd = [str(TORCHRUN), "--nnodes", "1", "--nproc-per-node", "2", "--master-addr",
           "127.0.0.1", "--master-port", str(_free_port()), *script, *args]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]


@pytest.fixture(scope="module")
def worker(tmp_path_factory):
    """The worker script, and one whole two-rank run of it in ROOT/dp (shared)."""
    root = tmp_path_factory.mktemp("dp")
    data = tiny_mnist(root / "tiny.npz")
    (root / "worker.py").write_text(WORKER.format(
        tests=str(Path(__file__).parent), root=str(root), data=str(data), sparse=SPARSE))
    _torchrun(root, str(root / "dp"))
    return root, data


def _hashes(root: Path, rank: int) -> list[str]:
    return (root / f"dp.masks{rank}.txt").read_text().split("\n")[:-1]


def _single_process(root: Path, data: Path):
    torch.set_num_threads(1)
    try:
        return train(tiny_config(data, sparsity=SPARSE), root / "single", show_progress=False)
    finally:
        torch.set_num_threads(os.cpu_count() or 1)


# Tolerance: the only arithmetic difference from one process on the whole batch
# is where the per-sample gradients are summed (two half-batch means added by
# the all-reduce instead of one batch mean), about 1e-7 relative per step;
# over a dozen Adam steps (whose update divides by sqrt(v), amplifying tiny
# gradients) that grows to ~1e-6. 1e-4 absolute leaves margin and still fails
# on any real difference (a different mask, batch or step is >= 1e-3).
ATOL = 1e-4


def test_two_ranks_match_one_process(worker):
    root, data = worker
    r0, r1 = _hashes(root, 0), _hashes(root, 1)
    assert len(r0) >= 3 and r0 == r1          # identical masks after every update
    dp = load_model(root / "dp" / "model.vst")
    assert dp.record["ranks"] == 2 and dp.record["device"] == "cpu"
    single = _single_process(root, data)
    worst = max(float((dp.state[k] - v).abs().max()) for k, v in single.state.items())
    print(f"largest |two ranks - one process| = {worst:.2e}; {len(r0)} mask updates")
    assert worst <= ATOL
    assert {k: v.tolist() for k, v in dp.masks.items()} == \
        {k: v.tolist() for k, v in single.masks.items()}
    for a, b in zip(dp.record["epochs"], single.record["epochs"]):
        assert a["loss"] == pytest.approx(b["loss"], abs=1e-4)
        assert a["train_acc"] == b["train_acc"]


def test_two_ranks_resume_and_the_cli(worker):
    """A two-rank run cut after epoch 1 and resumed by `torchrun -m toolchain train
    --resume` (every rank loads the checkpoint) ends with the uninterrupted weights."""
    root, data = worker
    (root / "vst.toml").write_text(
        f'[data]\ndataset = "{data}"\n[model]\narch = "cnn_small"\nchannels = [4, 8]\n'
        'widths = [16]\n[sparsity]\nmethod = "verisparse"\nupdate_every = 2\ndensity = 0.5\n'
        '[train]\nepochs = 3\n'
        'batch_size = 64\nwarmup_epochs = 1\nramp_epochs = 1\nval_size = 64\neps = 0.1\n'
        '[verify]\neps = 0.05\n')
    train_cli = ["-m", "toolchain", "-q", "train", "--config", str(root / "vst.toml")]
    _torchrun(root, str(root / "cut"), "1")                 # the worker, stopped after epoch 1
    assert load_checkpoint(root / "cut").epoch == 1
    _torchrun(root, *train_cli, "--out", str(root / "cut"), "--resume", "--device", "cpu")
    full, cut = load_model(root / "dp" / "model.vst"), load_model(root / "cut" / "model.vst")
    for k, v in full.state.items():
        assert torch.equal(cut.state[k], v), k


def test_world_shares_every_batch_once():
    idx = torch.arange(7)
    parts = [World(rank=r, size=3).share(idx) for r in range(3)]
    assert torch.cat(parts).tolist() == idx.tolist()
    assert World().share(idx) is idx


def test_device_auto_and_cpu_resolve_here():
    expect = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device("auto").type == expect
    assert resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(VstError):
        resolve_device("tpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-CUDA message")
@pytest.mark.parametrize("command", ["train", "verify", "build"])
def test_cuda_without_cuda_is_one_line_exit_2(tmp_path, command):
    args = {"train": ["train", "--out", str(tmp_path / "o"), "--device", "cuda"],
            "verify": ["verify", str(tmp_path / "m.vst"), "--device", "cuda"],
            "build": ["build", "--out", str(tmp_path / "b"), "--device", "cuda"]}[command]
    result = CliRunner().invoke(cli, ["-q", *args])
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "cuda" in lines[0] and "Traceback" not in result.stderr


def test_train_and_verify_on_cpu_record_the_device(tmp_path):
    data = tiny_mnist(tmp_path / "tiny.npz")
    (tmp_path / "vst.toml").write_text(
        f'[data]\ndataset = "{data}"\n[model]\narch = "cnn_small"\nchannels = [4, 8]\n'
        'widths = [16]\n[train]\nepochs = 1\nwarmup_epochs = 0\nramp_epochs = 1\n'
        'val_size = 64\nbatch_size = 64\n')
    runner = CliRunner()
    res = runner.invoke(cli, ["-q", "train", "--config", str(tmp_path / "vst.toml"),
                              "--out", str(tmp_path / "run"), "--device", "cpu"])
    assert res.exit_code == 0, res.output
    model = load_model(tmp_path / "run" / "model.vst")
    assert model.record["device"] == "cpu" and model.record["config"]["train"]["device"] == "cpu"
    res = runner.invoke(cli, ["-q", "verify", str(tmp_path / "run" / "model.vst"), "--n", "8",
                              "--method", "ibp", "--device", "auto",
                              "--json", str(tmp_path / "c.json")])
    assert res.exit_code == 0, res.output
    cert = json.loads((tmp_path / "c.json").read_text())
    assert cert["versions"]["device"] == ("cuda" if torch.cuda.is_available() else "cpu")


def test_device_wrapper_gives_the_same_verdicts(tmp_path):
    """The CPU-facing wrapper used on CUDA (exercised here on the CPU)."""
    from toolchain.lirpa.bounds import Bounder
    from toolchain.verify import _on_device
    from toolchain.verify.engine import verify_samples

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 8), torch.nn.ReLU(),
                              torch.nn.Linear(8, 3))
    bounder = Bounder(net, (1, 4, 4))
    x, y = torch.rand(6, 1, 4, 4), torch.tensor([0, 1, 2, 0, 1, 2])
    plain = verify_samples(net, bounder, x, y, 0.02, "crown")
    wrapped = verify_samples(*_on_device(net, bounder, torch.device("cpu")), x, y, 0.02, "crown")
    def verdicts(result):                      # all but the time each sample took
        return [{k: v for k, v in s.to_dict().items() if k != "seconds"} for s in result.samples]
    assert verdicts(plain) == verdicts(wrapped)
