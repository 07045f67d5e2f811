"""Bad input, run through the CLI as a careless user or an attacker would.

Every case must end with exit 2 (or 1 where a gate is the right answer), one
line on stderr, no traceback, no "unexpected" internal error, and no file
outside the output folder. The table holds the cases seen in the hardening
issue plus generated ones: every numeric config key with NaN, infinities,
absurd magnitudes, strings and lists.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from click.testing import CliRunner

from helpers import random_model
from toolchain.cli import cli
from toolchain.config import Config
from toolchain.models.layers import Conv2d, Flatten, Linear, Network, ReLU
from toolchain.models.modelfile import save_model

NET = Network((1, 28, 28), (Conv2d(1, 2, 4, 2, 1), ReLU(), Flatten(), Linear(392, 10)))


def run(args, cwd: Path):
    """Invoke the CLI in-process in ``cwd``; (exit code, stderr, exception)."""
    old = os.getcwd()
    os.chdir(cwd)
    try:
        result = CliRunner().invoke(cli, [str(a) for a in args])
    finally:
        os.chdir(old)
    return result.exit_code, result.stderr, result.exception


def files_under(root: Path) -> set[Path]:
    return {p for p in root.rglob("*")}


def assert_clean_failure(tmp_path: Path, args, code: int = 2, allowed: Path | None = None,
                         needle: str | None = None):
    work = tmp_path / "work"
    work.mkdir(exist_ok=True)
    before = files_under(tmp_path)
    exit_code, stderr, exc = run(args, work)
    assert exc is None or isinstance(exc, SystemExit), repr(exc)
    assert exit_code == code, stderr
    # one error line; only the "which config" line of train/build may come first
    lines = [line for line in stderr.splitlines()
             if line.strip() and not line.startswith("vst: config ")]
    assert len(lines) == 1 and lines[0].startswith("vst: "), stderr
    assert needle is None or needle in lines[0], (needle, stderr)
    assert "Traceback" not in stderr and "unexpected" not in stderr, stderr
    new = {p for p in files_under(tmp_path) - before
           if allowed is None or allowed not in (p, *p.parents)}
    new = {p for p in new if p != work}
    assert not new, f"files written outside the output folder: {sorted(new)[:3]}"
    return stderr


# ------------------------------------------------------------------ config

def _numeric_fields():
    """(section, key, kind) for every int and float key of the config."""
    import dataclasses
    from typing import get_type_hints

    out = []
    sections = get_type_hints(Config)
    for section in dataclasses.fields(Config):
        cls = sections[section.name]
        hints = get_type_hints(cls)
        for f in dataclasses.fields(cls):
            if hints[f.name] in (int, float):
                out.append((section.name, f.name, hints[f.name].__name__))
    return out


BAD_NUMBERS = {"float": ["nan", "inf", "-inf", "1e308", '"abc"', "[1.0]", "true"],
               "int": ["100000000000000000000000", "-100000000000000000000000", "1.5", '"7"',
                       "[1]", "true", "nan"]}
GENERATED = [(f"{s}.{k}={v}", f"[{s}]\n{k} = {v}\n") for s, k, kind in _numeric_fields()
             for v in BAD_NUMBERS[kind]]
# Every one of these is invalid for every key: NaN and infinities are not finite,
# 1e308 and the huge ints are out of range, strings, lists and bools the wrong type.

SEEN = [
    ("channels huge", "[model]\nchannels = [100000000, 100000000]\n"),
    ("channels negative", "[model]\nchannels = [-4, 8]\n"),
    ("widths zero", "[model]\nwidths = [0]\n"),
    ("seed 2^70", "[train]\nseed = 1180591620717411303424\n"),
    ("lr_decay_at out of range", "[train]\nlr_decay_at = [5.0, -1.0]\n"),
    ("density nan", "[sparsity]\ndensity = nan\n"),
    ("verify eps nan", "[verify]\neps = nan\n"),
    ("train eps inf", "[train]\neps = inf\n"),
    ("epochs 1e23", "[train]\nepochs = 1e23\n"),
    ("section not a table", "train = 5\n"),
    ("unknown section", "[trian]\nepochs = 3\n"),
    ("unknown key", "[train]\nepoch = 3\n"),
    ("formats empty item", '[export]\nformats = ["onnx", "pdf"]\n'),
    ("arch unknown", '[model]\narch = "resnet"\n'),
    ("params beyond memory", "[model]\nchannels = [4096, 4096]\n"),
    ("eps an integer too large for a float", "[verify]\neps = " + "9" * 400 + "\n"),
    ("lr an integer too large for a float", "[train]\nlr = " + "9" * 400 + "\n"),
]


@pytest.mark.parametrize("text", [c[1] for c in SEEN + GENERATED],
                         ids=[c[0] for c in SEEN + GENERATED])
def test_bad_config_is_one_line_before_any_work(tmp_path, text):
    (tmp_path / "bad.toml").write_text(text)
    out = tmp_path / "out"
    assert_clean_failure(tmp_path, ["train", "--config", tmp_path / "bad.toml", "--out", out],
                         allowed=out)
    assert not (out / "model.vst").exists()


def test_binary_garbage_config(tmp_path):
    (tmp_path / "bad.toml").write_bytes(bytes(range(256)) * 4)
    assert_clean_failure(tmp_path, ["train", "--config", tmp_path / "bad.toml",
                                    "--out", tmp_path / "out"], allowed=tmp_path / "out")


# ------------------------------------------------------------ model files

def _model_file(tmp_path: Path, edit=None, state_edit=None) -> Path:
    model = random_model(NET)
    model.record = {"config": {"data": {"dataset": "mnist5k"}, "verify": {"eps": 0.1}}}
    if state_edit:
        state_edit(model.state)
    path = tmp_path / "m.vst"
    save_model(path, model)
    if edit:
        from safetensors import safe_open
        from safetensors.torch import save_file

        with safe_open(str(path), framework="pt") as fh:
            meta, tensors = dict(fh.metadata()), {k: fh.get_tensor(k) for k in fh.keys()}
        edit(meta, tensors)
        save_file(tensors, str(path), metadata=meta)
    return path


def _set(key, value):
    return lambda meta, tensors: meta.__setitem__(key, value)


def _arch(change):
    def edit(meta, tensors):
        arch = json.loads(meta["architecture"])
        change(arch)
        meta["architecture"] = json.dumps(arch)
    return edit


MODEL_CASES = {
    "record a list": _set("record", "[1, 2]"),
    "record a string": _set("record", '"abc"'),
    "record.config a string": _set("record", '{"config": "abc"}'),
    "verify.eps abc": _set("record", '{"config": {"verify": {"eps": "abc"}}}'),
    "verify.eps nan": _set("record", '{"config": {"verify": {"eps": NaN}}}'),
    "verify.eps beyond the input range": _set(
        "record", '{"config": {"data": {"dataset": "mnist5k"}, "verify": {"eps": 5}}}'),
    "verify.eps an integer too large for a float": _set(
        "record", '{"config": {"verify": {"eps": 1' + "0" * 400 + '}}}'),
    "record not json": _set("record", "{"),
    "layers a string": _arch(lambda a: a.__setitem__("layers", "conv")),
    "layers a dict": _arch(lambda a: a.__setitem__("layers", {"a": 1})),
    "input_shape negative": _arch(lambda a: a.__setitem__("input_shape", [1, -28, 28])),
    "input_shape a string": _arch(lambda a: a.__setitem__("input_shape", "1x28x28")),
    "kernel a float": _arch(lambda a: a["layers"][0].__setitem__("kernel", 4.5)),
    "stride zero": _arch(lambda a: a["layers"][0].__setitem__("stride", 0)),
    "channels huge": _arch(lambda a: (a["layers"][0].__setitem__("out_channels", 10 ** 9))),
    "unknown layer": _arch(lambda a: a["layers"][1].__setitem__("kind", "gelu")),
    "dtype edited to int32": lambda m, t: t.__setitem__("0.weight", t["0.weight"].int()),
    "shape edited": lambda m, t: t.__setitem__("3.bias", t["3.bias"][:5].clone()),
    "future format": _set("vst_format", "99"),
    "format not a number": _set("vst_format", "one"),
}


@pytest.mark.parametrize("case", list(MODEL_CASES))
def test_damaged_model_file_header(tmp_path, case):
    path = _model_file(tmp_path, edit=MODEL_CASES[case])
    assert_clean_failure(tmp_path, ["verify", path, "--eps", "0.1", "--n", "4"])


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_non_finite_weights_are_refused_before_any_export(tmp_path, value):
    path = _model_file(tmp_path, state_edit=lambda s: s["3.weight"].__setitem__((0, 0), value))
    out = tmp_path / "out"
    assert_clean_failure(tmp_path, ["export", path, "--out", out, "--format", "onnx,tflite,c"],
                         allowed=out)
    assert not list(out.rglob("*.onnx")) and not list(out.rglob("*.tflite"))
    assert_clean_failure(tmp_path, ["compact", path, "--out", tmp_path / "c.vst"])


# ------------------------------------------------------------------ export

@pytest.mark.parametrize("args", [
    ["--name", "../../escaped"], ["--name", "x; int evil"], ["--name", "int"], ["--name", ""],
    ["--vnnlib-n", "-1"], ["--vnnlib-n", "0"], ["--format", ","], ["--format", "onnx,pdf"],
    ["--eps", "nan"], ["--eps", "-0.1"], ["--eps", "5"], ["--kernels", "avx"]],
    ids=lambda a: " ".join(a))
def test_bad_export_options_write_nothing(tmp_path, args):
    path = _model_file(tmp_path)
    out = tmp_path / "o" / "out"
    assert_clean_failure(tmp_path, ["export", path, "--out", out, *args], allowed=out)
    assert not list(tmp_path.glob("escaped*")) and not list((tmp_path / "o").glob("escaped*"))
    assert not list(out.rglob("*.tflite")) if out.exists() else True


# ----------------------------------------------------------------- outputs

def _unwritable(tmp_path: Path) -> list[Path]:
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    return [blocker / "sub" / "x.json", Path("/proc/vst-test/x.json"), Path("/sys/vst/x.json")]


@pytest.mark.parametrize("which", [0, 1, 2])
def test_unwritable_outputs_fail_before_work(tmp_path, which):
    path = _model_file(tmp_path)
    target = _unwritable(tmp_path)[which]
    for args in (["verify", path, "--eps", "0.1", "--n", "2", "--json", target],
                 ["verify", path, "--eps", "0.1", "--n", "2", "--junit", target],
                 ["compact", path, "--out", target],
                 ["export", path, "--out", target.parent, "--format", "onnx"],
                 ["train", "--out", target.parent],
                 ["build", "--out", target.parent, "--no-bench"],
                 ["init", target]):
        assert_clean_failure(tmp_path, args)


def _outputs_onto_inputs(t: Path) -> list:
    """(args, what the line names) for outputs that are an input or each other."""
    (t / "o" / "c").mkdir(parents=True)
    inner = _model_file(t / "o" / "c")                         # o/c/m.vst
    for name in ("a.json", "b.json", "d.npz", "d.png", "export.json", "d_float.tflite"):
        (t / name).write_text("{}")          # stand-ins: only their paths matter
    (t / "link.vst").symlink_to(t / "m.vst")
    for cfg in ("o/report.md", "o/model.vst"):                  # configs where outputs go
        (t / cfg).write_text('[data]\ndataset = "nope.npz"\n')
    m = "../m.vst"                                              # run() works in t/work
    return [
        (["verify", m, "--eps", "0.1", "--json", m], "--json ../m.vst would overwrite MODEL"),
        (["verify", m, "--eps", "0.1", "--json", "./../m.vst"], "would overwrite MODEL"),
        (["verify", m, "--eps", "0.1", "--json", t / "link.vst"], "would overwrite MODEL"),
        (["verify", m, "--data", t / "d.png", "--eps", "0.1", "--plot", t / "d.png"],
         "would overwrite --data"),
        (["verify", m, "--eps", "0.1", "--json", "x.json", "--junit", "./x.json"],
         "are the same file"),
        (["verify", m, "--data", t / "d.npz", "--junit", t / "d.npz"], "would overwrite --data"),
        (["verify", m, "--certificate", t / "a.json", "--json", t / "a.json"],
         "would overwrite --certificate"),
        (["compact", m, "--out", t / "m.vst"], "would overwrite MODEL"),
        (["compact", m, "--out", "c.vst", "--json", "c.vst"], "are the same file"),
        (["export", inner, "--out", t / "o", "--format", "c"], "would overwrite MODEL"),
        (["export", m, "--out", t, "--format", "onnx", "--data", t / "export.json"],
         "would overwrite --data"),
        (["export", m, "--out", t, "--name", "d", "--data", t / "d_float.tflite"],
         "would overwrite --data"),
        (["certificate", "merge", t / "a.json", t / "b.json", "--out", t / "b.json"],
         "would overwrite shard 2"),
        (["build", "--config", t / "o" / "report.md", "--out", t / "o", "--no-bench"],
         "would overwrite --config"),
        (["train", "--config", t / "o" / "model.vst", "--out", t / "o"],
         "would overwrite --config"),
    ]


@pytest.mark.parametrize("case", range(15))
def test_an_output_never_overwrites_an_input(tmp_path, case):
    """Refused before any work, whatever the spelling (./x, x, a symlink); the
    input is untouched and nothing is written."""
    _model_file(tmp_path)
    args, needle = _outputs_onto_inputs(tmp_path)[case]
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    stderr = assert_clean_failure(tmp_path, args)
    assert needle in stderr, stderr
    assert {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()} == before


def test_a_full_disk_is_one_line_and_leaves_no_temp_file(tmp_path, monkeypatch):
    """ENOSPC in the middle of an atomic write: one line, exit 2, nothing left."""
    import errno

    def full(fh_path, *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(fh_path))

    monkeypatch.setattr(Path, "write_bytes", full)
    out = tmp_path / "out"
    out.mkdir()
    assert_clean_failure(tmp_path, ["init", out / "vst.toml"], allowed=out)
    assert not list(out.iterdir())


# ----------------------------------------------------------------- targets

@pytest.mark.parametrize("text", [
    None, "cpu = 5\n", 'name = "../../x"\ndescription = "x"\n[cpu]\ncflags = []\n'
    'float_abi = "soft"\n[budget]\nflash_bytes = 1\nram_bytes = 1\n',
    'name = "t"\ndescription = "x"\n[cpu]\ncflags = [1]\nfloat_abi = "soft"\n'
    '[budget]\nflash_bytes = 1\nram_bytes = 1\n',
    'name = "t"\ndescription = "x"\n[cpu]\ncflags = []\nfloat_abi = "soft"\n'
    '[budget]\nflash_bytes = -1\nram_bytes = 1\n',
    'name = "t"\ndescription = "x"\n[cpu]\ncflags = []\nfloat_abi = "soft"\n'
    '[qemu]\nmachine = "mps2-an386; rm -rf"\ncpu_hz = 1\n[budget]\nflash_bytes = 1\n'
    'ram_bytes = 1\n',
    'name = "t"\ndescription = "x"\n[cpu]\ncflags = []\nfloat_abi = "softish"\n'
    '[budget]\nflash_bytes = 1\nram_bytes = 1\n',
    'name = "t"\ndescription = "x"\n[cpu]\ncflags = ["-mfloat-abi=soft"]\nfloat_abi = "hard"\n'
    '[budget]\nflash_bytes = 1\nram_bytes = 1\n'],
    ids=["binary", "cpu a number", "name escapes", "cflags not strings", "negative budget",
         "machine injection", "unknown float ABI", "float ABI against cflags"])
def test_bad_target_files(tmp_path, text):
    target = tmp_path / "t.toml"
    if text is None:
        target.write_bytes(bytes(range(256)))
    else:
        target.write_text(text)
    build = tmp_path / "b"
    (build / "export" / "c").mkdir(parents=True)
    assert_clean_failure(tmp_path, ["bench", build, "--target", target], allowed=build,
                         needle="vst: error: target")
    assert not (tmp_path.parent / "x").exists()


# ------------------------------------------------------------ verify & misc

@pytest.mark.parametrize("args", [
    ["--eps", "inf"], ["--eps", "nan"], ["--eps", "0.1,abc"], ["--eps", ""],
    ["--n", "-5"], ["--min-verified", "1.5"], ["--method", "magic"],
    ["--c-source", "m_int8.c"],       # the int8 C goes with a .tflite, not a .vst
    ["--eps", "5"], ["--eps", "0.1,1.5"], ["--plot", "v.jpg"], ["--plot", "v"]],
    ids=lambda a: " ".join(a))
def test_bad_verify_options(tmp_path, args):
    path = _model_file(tmp_path)
    assert_clean_failure(tmp_path, ["verify", path, *args])


VNNLIB_HEAD = ("".join(f"(declare-const X_{i} Real)(assert (>= X_{i} 0))(assert (<= X_{i} 1))"
                       for i in range(784)) + "".join(f"(declare-const Y_{j} Real)"
                                                       for j in range(10)))
BAD_VNNLIB = {   # name: (files written into tmp_path, --vnnlib argument)
    "garbage property": ({"p.vnnlib": "\x00\x01 (assert"}, "p.vnnlib"),
    "X count": ({"p.vnnlib": "(declare-const X_0 Real)(declare-const Y_0 Real)"
                 "(assert (>= X_0 0))(assert (<= X_0 1))(assert (>= Y_0 1))"}, "p.vnnlib"),
    "Y count": ({"p.vnnlib": VNNLIB_HEAD.replace("(declare-const Y_9 Real)", "")
                 + "(assert (>= Y_1 Y_0))"}, "p.vnnlib"),
    "csv columns": ({"i.csv": "MODEL,p.vnnlib\n", "p.vnnlib": VNNLIB_HEAD
                     + "(assert (>= Y_1 Y_0))"}, "i.csv"),
    "csv timeout": ({"i.csv": "MODEL,p.vnnlib,-1\n"}, "i.csv"),
    "csv empty": ({"i.csv": "\n\n"}, "i.csv"),
    "csv missing network": ({"i.csv": "nope.onnx,p.vnnlib,10\n"}, "i.csv"),
    # numbers: finite in float64 after any arithmetic, plain ASCII decimals only
    "term overflows": ({"p.vnnlib": VNNLIB_HEAD + "(assert (>= Y_0 (* 1e200 1e200)))"},
                       "p.vnnlib"),
    "inf - inf": ({"p.vnnlib": VNNLIB_HEAD + "(assert (>= Y_0 (- (* 1e308 10) (* 1e308 10))))"},
                  "p.vnnlib"),
    "non-ASCII digit": ({"p.vnnlib": VNNLIB_HEAD + "(assert (>= Y_0 \u0661))"}, "p.vnnlib"),
    "digits with underscores": ({"p.vnnlib": VNNLIB_HEAD + "(assert (>= Y_0 1_000))"},
                                "p.vnnlib"),
    "empty or": ({"p.vnnlib": VNNLIB_HEAD + "(assert (or))"}, "p.vnnlib"),
    "terms nested 3000 deep": ({"p.vnnlib": VNNLIB_HEAD + "(assert (>= Y_0 " + "(+ " * 3000
                                + "1" + ")" * 3000 + "))"}, "p.vnnlib"),
    "variable index of 5000 digits": ({"p.vnnlib": "(declare-const X_" + "9" * 5000
                                       + " Real)"}, "p.vnnlib"),
    "csv field of 200k characters": ({"i.csv": "a,b," + "x" * 200_000 + "\n"}, "i.csv"),
    "csv timeout with underscores": ({"i.csv": "MODEL,p.vnnlib,1_0\n", "p.vnnlib": VNNLIB_HEAD
                                      + "(assert (>= Y_1 Y_0))"}, "i.csv"),
}


@pytest.mark.parametrize("case", sorted(BAD_VNNLIB))
def test_bad_vnnlib_inputs_write_no_results(tmp_path, case):
    files, arg = BAD_VNNLIB[case]
    path = _model_file(tmp_path)
    for name, text in files.items():
        (tmp_path / name).write_text(text.replace("MODEL", str(path)), encoding="utf-8")
    assert_clean_failure(tmp_path, ["verify", path, "--vnnlib", tmp_path / arg, "--results",
                                    tmp_path / "res", "--json", tmp_path / "c.json"]
                         if arg.endswith(".vnnlib") else
                         ["verify", "--vnnlib", tmp_path / arg, "--results", tmp_path / "res"])


def test_missing_and_foreign_inputs(tmp_path):
    (tmp_path / "junk.vst").write_bytes(os.urandom(64))
    (tmp_path / "junk.tflite").write_bytes(os.urandom(64))
    (tmp_path / "junk.onnx").write_bytes(os.urandom(300))
    for args in (["verify", tmp_path / "nope.vst"], ["verify", tmp_path / "junk.vst"],
                 ["verify", tmp_path / "junk.onnx", "--data", "mnist5k", "--eps", "0.1"],
                 ["export", tmp_path / "junk.onnx", "--out", tmp_path / "e", "--data", "mnist5k"],
                 ["verify", tmp_path / "junk.tflite", "--data", "mnist5k", "--eps", "0.1"],
                 ["compact", tmp_path / "junk.vst", "--out", tmp_path / "c.vst"],
                 ["train", "--config", tmp_path / "nope.toml", "--out", tmp_path / "o"],
                 ["bench", tmp_path / "nowhere"], ["nosuchcommand"]):
        assert_clean_failure(tmp_path, args)


def test_a_second_build_into_the_same_folder_is_refused(tmp_path):
    from toolchain.build import build_lock
    from toolchain.errors import VstError

    with build_lock(tmp_path / "out"):
        with pytest.raises(VstError, match="another vst build"):
            with build_lock(tmp_path / "out"):
                pass
    with build_lock(tmp_path / "out"):      # released: the next build proceeds
        pass


def test_the_table_is_large():
    assert len(SEEN) + len(GENERATED) + len(MODEL_CASES) >= 100


def test_outputs_honour_the_umask(tmp_path):
    from toolchain.atomic import write_text

    old = os.umask(0o022)
    try:
        write_text(tmp_path / "a.txt", "x")
        os.umask(0o077)
        write_text(tmp_path / "b.txt", "x")
    finally:
        os.umask(old)
    assert (tmp_path / "a.txt").stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "b.txt").stat().st_mode & 0o777 == 0o600

