"""One entry per stage: `vst build` and the stage's own subcommand call the same function.

DESIGN.md section 2: every stage is a function from artifacts to artifacts,
every CLI subcommand runs one stage, `vst build` chains them. So the build and
the CLI must not each carry their own copy of a stage (a second copy drifts:
another certificate field, another diff, another file). Checked three ways:

- statically: ``build.py``, ``cli.py`` and ``cli_verify.py`` import each
  stage's entry and none of the pieces below it (``verify_model``,
  ``build_certificate``, ``max_abs_diff``, ``bench_model``, ...);
- by routing: each entry is replaced in its module by a recorder, then a tiny
  `vst build` and each subcommand run; both must arrive there, with the
  artifacts the stage is to write;
- by outcome: the CLI's certificate and compacted model equal the build's.
"""

from __future__ import annotations

import ast
import dataclasses
import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from helpers import tiny_config, tiny_mnist
from toolchain.errors import VstError

ROOT = Path(__file__).resolve().parent.parent / "toolchain"
CALLERS = ("build.py", "cli.py", "cli_verify.py")

# stage -> (module, entry, the CLI file whose subcommand runs it)
ENTRIES = {
    "train": ("toolchain.train.trainer", "train", "cli.py"),
    "verify": ("toolchain.verify", "run_verify", "cli_verify.py"),
    "compact": ("toolchain.compact", "run_compact", "cli.py"),
    "export": ("toolchain.export.run", "run_exports", "cli.py"),
    "verify-int8": ("toolchain.verify.int8_certificate", "verify_int8", "cli_verify.py"),
    "bench": ("toolchain.bench", "bench_build", "cli.py"),
}
# What only a stage's entry may call: using one of these in a caller re-implements it.
BELOW_ENTRIES = {
    "verify_model", "verify_samples", "build_certificate", "verify_int8_samples",
    "build_int8_certificate", "save_int8_certificate", "remove_channels", "fold_batchnorm",
    "max_abs_diff", "save_model", "bench_model", "build_firmware", "export_onnx",
    "export_tflite", "generate_c", "write_vnnlib", "make_run", "to_model",
}


def _imports(path: Path) -> set[tuple[str, str]]:
    """(module, name) of every ``from module import name`` in the file, anywhere."""
    tree = ast.parse(path.read_text())
    return {(node.module, alias.name) for node in ast.walk(tree)
            if isinstance(node, ast.ImportFrom) for alias in node.names}


def _names(path: Path) -> set[str]:
    """Every name the file uses: imported, called, or read as an attribute."""
    tree = ast.parse(path.read_text())
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Name):
            out.add(node.id)
        elif isinstance(node, ast.Attribute):
            out.add(node.attr)
        elif isinstance(node, ast.alias):
            out.add(node.name.rpartition(".")[2])
    return out


@pytest.mark.parametrize("stage", sorted(ENTRIES))
def test_build_and_cli_import_the_stage_entry(stage):
    module, entry, cli_file = ENTRIES[stage]
    for caller in ("build.py", cli_file):
        assert (module, entry) in _imports(ROOT / caller), f"{caller} does not call {entry}"


@pytest.mark.parametrize("caller", CALLERS)
def test_callers_use_nothing_below_the_entries(caller):
    below = _names(ROOT / caller) & BELOW_ENTRIES
    assert not below, f"{caller} re-implements a stage: it uses {sorted(below)}"
    imports = _imports(ROOT / caller)
    assert ("toolchain.compact", "compact") not in imports, caller


def test_the_check_itself_sees_a_duplicated_stage(tmp_path):
    """The static check fails on the code this file guards against."""
    bad = tmp_path / "bad.py"
    bad.write_text("def _verify(m, d):\n    from toolchain.verify import verify_model\n"
                   "    from toolchain.verify.certificate import build_certificate\n"
                   "    return build_certificate(m, d, verify_model(m, d, [0.1]))\n")
    assert _names(bad) & BELOW_ENTRIES == {"verify_model", "build_certificate"}


# -- routing: build and CLI arrive at the same entry ------------------------------


class Reached(VstError):
    """Raised by a recorder that stands in for an entry: the caller got there."""


class Calls:
    """Replace entries by recorders; each call is kept as (entry, args, kwargs)."""

    def __init__(self, monkeypatch):
        self.mp, self.log = monkeypatch, []

    def record(self, stage: str, then=None) -> None:
        """Record calls of the stage's entry, then run ``then`` (default: the real
        entry) with the same arguments."""
        import importlib

        module, name, _ = ENTRIES[stage]
        mod = importlib.import_module(module)
        real = getattr(mod, name)

        def entry(*args, **kwargs):
            self.log.append((stage, args, kwargs))
            return (then or real)(*args, **kwargs)

        self.mp.setattr(mod, name, entry)

    def stop_at(self, stage: str) -> None:
        def stop(*args, **kwargs):
            raise Reached(f"reached {ENTRIES[stage][1]}")
        self.record(stage, then=stop)

    def of(self, stage: str) -> list:
        return [(args, kwargs) for s, args, kwargs in self.log if s == stage]


def _fake_export(with_int8: bool):
    """An export stage that writes only export.json (and an empty .tflite)."""
    def run_exports(model, data, out_dir, *, formats, skipped=None, **_):
        out_dir.mkdir(parents=True, exist_ok=True)
        res = {"formats": list(formats), "skipped": skipped}
        if with_int8:
            (out_dir / "model_int8.tflite").write_bytes(b"tflite")
            res["tflite_int8"] = f"{out_dir.name}/model_int8.tflite"
        (out_dir / "export.json").write_text(json.dumps(res))
        return res
    return run_exports


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """A tiny build whose train, verify and compact are real (recorded) and whose
    export is a stand-in: first up to the int8 verification, then (another export
    key, the rest reused) up to the bench."""
    from toolchain.build import build

    root = tmp_path_factory.mktemp("stages")
    data = tiny_mnist(root / "tiny.npz")
    cfg = tiny_config(data, train={"epochs": 2}, verify={"n": 20, "device": "cpu"})
    out = root / "out"
    with pytest.MonkeyPatch.context() as mp:
        calls = Calls(mp)
        for stage in ("train", "verify", "compact"):
            calls.record(stage)
        calls.record("export", then=_fake_export(with_int8=True))
        calls.stop_at("verify-int8")
        with pytest.raises(Reached, match="verify_int8"):
            build(cfg, out, bench=True, show_progress=False)
        first = list(calls.log)
        calls.log.clear()
        calls.record("export", then=_fake_export(with_int8=False))
        calls.stop_at("bench")
        cfg.export = dataclasses.replace(cfg.export, vnnlib_n=cfg.export.vnnlib_n + 1)
        # a new export key: every stage before it is reused
        with pytest.raises(Reached, match="bench_build"):
            build(cfg, out, bench=True, show_progress=False)
        second = list(calls.log)
    return root, cfg, out, first, second


def _stages(log) -> list[str]:
    return [stage for stage, _, _ in log]


def test_build_runs_each_stage_through_its_entry(built):
    root, cfg, out, first, _ = built
    assert _stages(first) == ["train", "verify", "compact", "verify", "export", "verify-int8"]
    by = {}
    for stage, args, kwargs in first:
        by.setdefault(stage, []).append((args, kwargs))
    (args, kwargs), = by["train"]
    assert args == (cfg, out / "train")
    sparse, compacted = by["verify"]
    assert [kw["out"] for _, kw in (sparse, compacted)] == [out / "certificate_sparse.json",
                                                              out / "certificate.json"]
    for _, kw in (sparse, compacted):
        assert (kw["eps_list"], kw["method"], kw["n"]) == ([cfg.verify.eps], "crown", 20)
    (args, kwargs), = by["compact"]
    assert args[2] == out / "compact.vst" and (out / "compact.vst").is_file()
    (args, kwargs), = by["export"]
    assert args[2] == out / "export" and kwargs["exclusive"] and kwargs["skipped"] == {}
    (args, kwargs), = by["verify-int8"]
    assert args[0] == out / "export" / "model_int8.tflite"
    assert args[2:] == ([cfg.verify.eps], 20) and kwargs == {
        "c_source": None, "out": out / "certificate_int8.json", "method": "int8-crown"}


def test_build_reuses_then_benches_through_the_entry(built):
    _, _, out, _, second = built
    assert _stages(second) == ["export", "bench"]        # train/verify/compact reused
    (args, kwargs), = [(a, k) for s, a, k in second if s == "bench"]
    assert args[0] == out and args[1].name == "cortex-m4"
    assert not (out / "certificate_int8.json").exists()  # no .tflite, no int8 certificate


def _vst(*args):
    from toolchain.cli import cli

    res = CliRunner().invoke(cli, ["-q", *map(str, args)])
    return res.exit_code, res.stderr


def _routed(monkeypatch, stage, *argv):
    """Run a subcommand with the stage's entry replaced; the one call it made."""
    calls = Calls(monkeypatch)
    calls.stop_at(stage)
    code, err = _vst(*argv)
    assert code == 2 and f"reached {ENTRIES[stage][1]}" in err, err
    (call,) = calls.of(stage)
    return call


def test_cli_train_runs_the_train_entry(built, monkeypatch, tmp_path):
    root, _, _, _, _ = built
    config = tmp_path / "vst.toml"
    config.write_text(f'[data]\ndataset = "{root / "tiny.npz"}"\n')
    args, kwargs = _routed(monkeypatch, "train", "train", "--config", config,
                           "--out", tmp_path / "run")
    assert args[1] == tmp_path / "run" and args[0].data.dataset == str(root / "tiny.npz")


@pytest.mark.parametrize("shard", [None, (1, 3)])
def test_cli_verify_runs_the_verify_entry(built, monkeypatch, tmp_path, shard):
    _, _, out, _, _ = built
    extra = [] if shard is None else ["--shard", "%d/%d" % shard]
    args, kwargs = _routed(monkeypatch, "verify", "verify", out / "train" / "model.vst",
                           "--eps", "0.05,0.1", "--n", "7", "--json", tmp_path / "c.json",
                           "--device", "cpu", *extra)
    assert args[2:] == ([0.05, 0.1], "crown", 7)
    assert kwargs["shard"] == shard and kwargs["out"] == tmp_path / "c.json"
    assert kwargs["device"].type == "cpu"


def test_cli_compact_runs_the_compact_entry(built, monkeypatch, tmp_path):
    _, _, out, _, _ = built
    args, kwargs = _routed(monkeypatch, "compact", "compact", out / "train" / "model.vst",
                           "--out", tmp_path / "small.vst", "--no-fold-bn")
    assert args[2] == tmp_path / "small.vst" and kwargs == {"fold_bn": False}


def test_cli_export_runs_the_export_entry(built, monkeypatch, tmp_path):
    _, _, out, _, _ = built
    args, kwargs = _routed(monkeypatch, "export", "export", out / "compact.vst",
                           "--format", "onnx", "--out", tmp_path / "e")
    assert args[2] == tmp_path / "e" and kwargs["formats"] == ["onnx"]


def test_cli_verify_tflite_runs_the_int8_entry(built, monkeypatch, tmp_path):
    root, _, _, _, _ = built
    from toolchain.verify.int8_bounds import Int8Bounds

    class Shape:                              # the CLI's size check reads the .tflite
        class x_t:
            size = 784
    monkeypatch.setattr(Int8Bounds, "from_tflite", classmethod(lambda cls, path: Shape))
    tflite = tmp_path / "m.tflite"
    tflite.write_bytes(b"tflite")
    args, kwargs = _routed(monkeypatch, "verify-int8", "verify", tflite, "--data",
                           root / "tiny.npz", "--eps", "0.02", "--n", "5",
                           "--json", tmp_path / "c8.json")
    assert args[0] == tflite and args[2:] == ([0.02], 5)
    assert kwargs == {"c_source": None, "out": tmp_path / "c8.json", "method": "int8-crown"}


def test_cli_bench_runs_the_bench_entry(built, monkeypatch):
    _, _, out, _, _ = built
    args, kwargs = _routed(monkeypatch, "bench", "bench", out, "--target", "cortex-m3")
    assert args[0] == out and args[1].name == "cortex-m3" and args[2] == "model"


# -- outcome: the same stage gives the same artifact ----------------------------


def test_cli_and_build_write_the_same_certificate(built, tmp_path):
    _, cfg, out, _, _ = built
    code, err = _vst("verify", out / "train" / "model.vst", "--eps", cfg.verify.eps,
                     "--n", 20, "--device", "cpu", "--json", tmp_path / "cli.json")
    assert code == 0, err
    mine, build = (json.loads(p.read_text()) for p in (tmp_path / "cli.json",
                                                       out / "certificate_sparse.json"))
    assert set(mine) == set(build) and mine["model"] == build["model"]
    assert mine["versions"]["device"] == build["versions"]["device"] == "cpu"
    (r1,), (r2,) = mine["results"], build["results"]
    assert set(r1) == set(r2)
    assert [(s["index"], s["verdict"], s["method"]) for s in r1["samples"]] == \
        [(s["index"], s["verdict"], s["method"]) for s in r2["samples"]]
    for a, b in zip(r1["samples"], r2["samples"]):
        assert a["margin_lower"] == pytest.approx(b["margin_lower"], abs=1e-6)


def test_cli_and_build_write_the_same_compacted_model(built, tmp_path):
    from toolchain.models.modelfile import load_model

    _, _, out, _, _ = built
    code, err = _vst("compact", out / "train" / "model.vst", "--out", tmp_path / "small.vst")
    assert code == 0, err
    mine, build = load_model(tmp_path / "small.vst"), load_model(out / "compact.vst")
    assert mine.weights_hash() == build.weights_hash()
    assert mine.record["compaction"] == build.record["compaction"]
