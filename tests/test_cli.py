"""The command line as a user meets it: exit codes, one-line errors, speed of --help."""

import os
import select
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from toolchain.config import Config, load_config


def vst(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "toolchain", *args], capture_output=True,
                          text=True, cwd=cwd, timeout=120)


def assert_one_line_error(res, code=2):
    assert res.returncode == code, (res.returncode, res.stderr)
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1, res.stderr
    assert "Traceback" not in res.stderr
    return lines[0]


def test_help_and_version_do_not_import_heavy_libraries():
    code = ("import sys; from toolchain.cli import cli\n"
            "try:\n    cli(['--help'])\nexcept SystemExit:\n    pass\n"
            "heavy = [m for m in ('torch', 'tensorflow', 'onnxruntime', 'auto_LiRPA') if m in sys.modules]\n"
            "assert not heavy, heavy")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert "vst build" in res.stdout
    res = vst("--version")
    assert res.returncode == 0 and res.stdout.startswith("vst, version ")


def test_init_writes_the_default(tmp_path):
    res = vst("init", "my.toml", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert load_config(tmp_path / "my.toml") == Config()
    again = vst("init", "my.toml", cwd=tmp_path)
    assert "exists" in assert_one_line_error(again)
    assert vst("init", "my.toml", "--force", cwd=tmp_path).returncode == 0


def test_targets_lists_the_five():
    res = vst("targets")
    assert res.returncode == 0, res.stderr
    for name, machine in [("cortex-m4", "mps2-an386"), ("cortex-m3", "mps2-an385"),
                          ("cortex-m7", "mps2-an500"), ("cortex-m33", "mps2-an505"),
                          ("host", "native")]:
        row = next(l for l in res.stdout.splitlines() if l.split()[:1] == [name])
        assert machine in row


def test_datasets_lists_mnist5k():
    res = vst("datasets")
    assert res.returncode == 0, res.stderr
    row = next(l for l in res.stdout.splitlines() if "mnist5k" in l)
    assert "1x28x28" in row and "4000/1000" in row and "10" in row


def test_usage_errors_exit_2():
    res = vst("frobnicate")
    assert res.returncode == 2
    res = vst("init", "--bogus")
    assert res.returncode == 2 and "Traceback" not in res.stderr


@pytest.mark.parametrize("args,needle", [
    (["compact", "missing.vst", "--out", "x.vst"], "model file not found"),
    (["export", "missing.vst", "--out", "x"], "model file not found"),
    (["verify", "missing.vst"], "model file not found"),
    (["bench", "nobuild"], "no generated C"),
    (["train", "--config", "missing.toml", "--out", "x"], "config file not found"),
    (["build", "--config", "missing.toml"], "config file not found"),
])
def test_missing_inputs_are_one_line_errors(tmp_path, args, needle):
    line = assert_one_line_error(vst(*args, cwd=tmp_path))
    assert needle in line
    assert not (tmp_path / "x.vst").exists() and not (tmp_path / "x").exists()


def test_vst_toml_in_the_working_folder_is_picked_up(tmp_path):
    """After `vst init`, `vst train` without --config uses ./vst.toml and says so;
    --config still wins."""
    (tmp_path / "vst.toml").write_text("[train]\nepochs = 0\n")     # invalid on purpose
    res = vst("train", "--out", "run", cwd=tmp_path)
    assert res.returncode == 2 and "train.epochs must be >= 1" in res.stderr
    (tmp_path / "other.toml").write_text("[model]\narch = \"nope\"\n")
    res = vst("train", "--config", "other.toml", "--out", "run", cwd=tmp_path)
    assert res.returncode == 2 and "model.arch" in res.stderr
    res = vst("build", "--out", "b", cwd=tmp_path)
    assert res.returncode == 2 and "train.epochs must be >= 1" in res.stderr
    (tmp_path / "vst.toml").write_text('[data]\ndataset = "missing.npz"\n')
    res = vst("train", "--out", "run", cwd=tmp_path)
    assert res.returncode == 2 and res.stderr.splitlines()[0] == "vst: config vst.toml"


def test_cli_consistency(tmp_path, monkeypatch):
    """-q after the subcommand, Ctrl-C is 130, every option has help, a bad
    target leaves no output folder behind."""
    import click
    from click.testing import CliRunner

    from toolchain import cli as cli_module

    assert cli_module.hoist_global_flags(["verify", "m.vst", "-q", "--", "-v"]) == \
        ["-q", "verify", "m.vst", "--", "-v"]
    res = vst("targets", "-q")
    assert res.returncode == 0 and "cortex-m4" in res.stdout
    missing = [(name, p.opts) for name, cmd in cli_module.cli.commands.items()
               for p in cmd.params if isinstance(p, click.Option) and not p.help]
    assert not missing

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr("toolchain.data.list_builtin", interrupted)
    result = CliRunner().invoke(cli_module.cli, ["datasets"])
    assert result.exit_code == 130 and result.stderr.strip() == "vst: interrupted"
    res = vst("build", "--target", "nosuch", "--out", "out", cwd=tmp_path)
    assert res.returncode == 2 and "unknown target" in res.stderr
    assert not (tmp_path / "out").exists()


def test_progress_reaches_logs_when_not_a_terminal(tmp_path):
    """Under CI or `make build > log` (stderr not a terminal) training prints a
    line per epoch and verification a line per eps, without -v."""
    from helpers import tiny_mnist

    tiny_mnist(tmp_path / "tiny.npz")
    (tmp_path / "vst.toml").write_text(
        '[data]\ndataset = "tiny.npz"\n[model]\narch = "cnn_small"\nchannels = [4, 8]\n'
        'widths = [16]\n[train]\nepochs = 2\nbatch_size = 64\nwarmup_epochs = 1\n'
        'ramp_epochs = 1\nval_size = 64\n[verify]\neps = 0.05\n')
    res = vst("train", "--out", "run", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    epochs = [line for line in res.stderr.splitlines() if line.startswith("vst: train ")]
    assert [line.split()[2] for line in epochs] == ["1/2", "2/2"] and "eps" in epochs[-1]
    res = vst("verify", "run/model.vst", "--n", "40", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert any(line.startswith("vst: verify eps=0.05 40/40") for line in res.stderr.splitlines())


# -- Ctrl-C and closed streams: one line, never a traceback -------------------------

SLOW_IMPORT = textwrap.dedent("""
    import importlib.abc, sys, time
    class SlowClick(importlib.abc.MetaPathFinder):   # start-up: importing the CLI is slow
        def find_spec(self, name, path=None, target=None):
            if name == "click":
                print("MARK", flush=True)
                time.sleep(60)
    sys.meta_path.insert(0, SlowClick())
    sys.argv = ["vst", "datasets"]
    import runpy
    runpy.run_module("toolchain", run_name="__main__")
""")

SLOW_VERIFY = textwrap.dedent("""
    import atexit, sys, time
    import toolchain.verify
    def verify_model(*args, **kwargs):             # verification: the first Ctrl-C lands here
        print("MARK", flush=True)
        time.sleep(60)
    def shutdown():                                # a slow shutdown: the second lands here
        print("MARK", flush=True)
        time.sleep(2)
    toolchain.verify.verify_model = verify_model
    atexit.register(shutdown)
    sys.argv = ["vst", "verify", {model!r}, "--eps", "0.1", "--n", "2"]
    import runpy
    runpy.run_module("toolchain", run_name="__main__")
""")


ROOT = Path(__file__).resolve().parent.parent
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}      # this checkout, whatever the cwd


def _wait_for_mark(proc, seconds: float = 60) -> None:
    """Block until the child prints MARK (its stdout), or fail after ``seconds``."""
    ready, _, _ = select.select([proc.stdout], [], [], seconds)
    assert ready, "the child never reached its mark"
    assert proc.stdout.readline().strip() == "MARK"


def _interrupted(code: str, marks: int, cwd) -> None:
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=cwd, env=ENV)
    try:
        for _ in range(marks):
            _wait_for_mark(proc)
            proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 130 and err.strip() == "vst: interrupted", (proc.returncode, err)


def test_ctrl_c_during_start_up_is_one_line(tmp_path):
    _interrupted(SLOW_IMPORT, 1, tmp_path)


def test_a_second_ctrl_c_while_exiting_is_one_line(tmp_path):
    from helpers import random_model
    from toolchain.models.layers import Flatten, Linear, Network
    from toolchain.models.modelfile import save_model

    model = random_model(Network((1, 28, 28), (Flatten(), Linear(784, 10))))
    model.record = {"config": {"data": {"dataset": "mnist5k"}, "verify": {"eps": 0.1}}}
    save_model(tmp_path / "m.vst", model)
    _interrupted(SLOW_VERIFY.format(model=str(tmp_path / "m.vst")), 2, tmp_path)


def test_a_closed_or_abandoned_stdout_still_writes_and_gates(tmp_path):
    """`vst verify ... | head -0` and `>&-`: no traceback, the certificate is
    written and the gate decides the exit code (here: it fails, exit 1)."""
    from helpers import random_model
    from toolchain.models.layers import Flatten, Linear, Network
    from toolchain.models.modelfile import save_model

    model = random_model(Network((1, 28, 28), (Flatten(), Linear(784, 10))))
    model.record = {"config": {"data": {"dataset": "mnist5k"}, "verify": {"eps": 0.1}}}
    save_model(tmp_path / "m.vst", model)
    args = [sys.executable, "-m", "toolchain", "verify", "m.vst", "--n", "8", "--json",
            "c.json", "--min-verified", "0.99"]
    gone = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            cwd=tmp_path, env=ENV)
    gone.stdout.close()                             # the reader leaves at once
    err = gone.stderr.read()
    gone.wait(timeout=120)
    closed = subprocess.run(["sh", "-c", 'exec "$@" >&-', "sh", *args[:-2], "--json",
                             "d.json"], capture_output=True, text=True, cwd=tmp_path,
                            timeout=120, env=ENV)
    for code, stderr, cert in ((gone.returncode, err, "c.json"),
                               (closed.returncode, closed.stderr, "d.json")):
        assert "Traceback" not in stderr and "unexpected" not in stderr, stderr
        assert (tmp_path / cert).is_file()
    assert gone.returncode == 1 and "gate failed" in err, err
    assert closed.returncode == 0, closed.stderr


# -- a read-only HOME and TMPDIR: commands that need neither still work ------------

def test_unwritable_home_and_tmpdir_are_not_needed_to_plot(tmp_path):
    """matplotlib's config and cache go to a private scratch folder: no warning,
    no failure, nothing left in the working folder."""
    from helpers import random_model
    from toolchain.models.layers import Flatten, Linear, Network
    from toolchain.models.modelfile import save_model

    model = random_model(Network((1, 28, 28), (Flatten(), Linear(784, 10))))
    model.record = {"config": {"data": {"dataset": "mnist5k"}, "verify": {"eps": 0.1}}}
    save_model(tmp_path / "m.vst", model)
    (tmp_path / "a_file").write_text("x")          # nothing can be made under a file
    env = {k: v for k, v in ENV.items() if k not in ("MPLCONFIGDIR", "XDG_CONFIG_HOME",
                                                       "XDG_CACHE_HOME")}
    env.update(HOME=str(tmp_path / "a_file" / "home"), TMPDIR=str(tmp_path / "a_file" / "tmp"))
    work = tmp_path / "work"
    work.mkdir()
    res = subprocess.run([sys.executable, "-m", "toolchain", "verify", "../m.vst", "--n", "4",
                          "--plot", "../p.png"], capture_output=True, text=True, cwd=work,
                         env=env, timeout=120)
    assert res.returncode == 0, res.stderr
    assert (tmp_path / "p.png").read_bytes()[:4] == b"\x89PNG"
    noise = [line for line in res.stderr.splitlines() if not line.startswith("vst: verify ")]
    assert not noise, res.stderr
    assert not list(work.iterdir())


def test_no_writable_temporary_folder_falls_back_beside_the_output(tmp_path, monkeypatch):
    import tempfile

    from toolchain import scratch

    (tmp_path / "a_file").write_text("x")
    monkeypatch.setattr(scratch, "_temp_folders", lambda: [str(tmp_path / "a_file" / "t")])
    monkeypatch.setattr(tempfile, "tempdir", None)
    (tmp_path / "out_parent").mkdir()
    scratch.ensure_tempdir(tmp_path / "out_parent")
    assert Path(tempfile.gettempdir()).parent == tmp_path / "out_parent"
    assert scratch.scratch_file().write(b"abc") == 3
