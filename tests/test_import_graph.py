"""No import circles anywhere in ``toolchain``, hidden ones included.

Every module under ``toolchain/`` is parsed with ``ast``; every ``import`` and
``from ... import`` counts wherever it stands (top level, inside a function,
under ``if TYPE_CHECKING``), and so does ``importlib.import_module`` with a
string (an f-string counts as an import of every module its constant prefix
names). ``from toolchain.x import y`` is an edge to ``toolchain.x.y`` when
``y`` is a submodule, else to ``toolchain.x``; a package is its ``__init__``.
Importing ``toolchain.p.x`` from outside ``p`` first runs ``p/__init__.py``, so
that is an edge to ``toolchain.p`` too; from inside ``p`` it is not (the
package is already being imported), else a package that imports its own
submodules would be a circle by construction.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = "toolchain"


def module_files() -> dict[str, Path]:
    """Dotted module name -> source file, for every module in the package."""
    out = {}
    for path in sorted((ROOT / PACKAGE).rglob("*.py")):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def _is_package(name: str, files: dict[str, Path]) -> bool:
    return files[name].name == "__init__.py"


def _absolute(module: str | None, level: int, here: str, files: dict[str, Path]) -> str:
    """The absolute name a (possibly relative) ``from`` import refers to."""
    if level == 0:
        return module or ""
    base = here.split(".")
    if not _is_package(here, files):
        base = base[:-1]
    base = base[:len(base) - (level - 1)]
    return ".".join(base + ([module] if module else []))


def _known(name: str, files: dict[str, Path]) -> str | None:
    """``name`` or its nearest enclosing module that exists in the package."""
    while name and name not in files:
        name = name.rpartition(".")[0]
    return name or None


def _dynamic_targets(call: ast.Call, files: dict[str, Path]) -> list[str] | None:
    """Modules an ``import_module``/``__import__`` call can load; None: not readable."""
    if not call.args:
        return None
    arg = call.args[0]
    if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
        return [arg.value]
    if isinstance(arg, ast.JoinedStr) and arg.values and isinstance(arg.values[0], ast.Constant):
        prefix = str(arg.values[0].value)
        return [name for name in files if name.startswith(prefix)]
    return None


def _is_dynamic_import(call: ast.Call) -> bool:
    f = call.func
    return ((isinstance(f, ast.Attribute) and f.attr == "import_module")
            or (isinstance(f, ast.Name) and f.id in ("import_module", "__import__")))


def imports_of(name: str, files: dict[str, Path]) -> tuple[set[str], list[str]]:
    """(package modules ``name`` imports, dynamic imports that could not be read)."""
    path = files[name]
    tree = ast.parse(path.read_text(), filename=str(path))
    targets: set[str] = set()
    unreadable: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = _absolute(node.module, node.level, name, files)
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                targets.add(sub if sub in files else base)
        elif isinstance(node, ast.Call) and _is_dynamic_import(node):
            found = _dynamic_targets(node, files)
            if found is None:
                unreadable.append(f"{path.relative_to(ROOT)}:{node.lineno}")
            else:
                targets.update(found)
    edges = {_known(t, files) for t in targets if t == PACKAGE or t.startswith(PACKAGE + ".")}
    edges.discard(None)
    edges |= {parent for target in edges for parent in _outer_packages(target, name)}
    edges.discard(name)
    return edges, unreadable


def _outer_packages(target: str, importer: str) -> list[str]:
    """The packages whose ``__init__`` importing ``target`` runs from ``importer``."""
    parts = target.split(".")
    parents = (".".join(parts[:i]) for i in range(1, len(parts)))
    return [p for p in parents if not (importer == p or importer.startswith(p + "."))]


def import_graph() -> tuple[dict[str, set[str]], list[str]]:
    files = module_files()
    graph, unreadable = {}, []
    for name in files:
        graph[name], bad = imports_of(name, files)
        unreadable += bad
    return graph, unreadable


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One circle ``[a, b, ..., a]`` in the graph, or None (iterative DFS)."""
    WHITE, GREY, BLACK = 0, 1, 2
    color = dict.fromkeys(graph, WHITE)
    for start in sorted(graph):
        if color[start] != WHITE:
            continue
        stack = [(start, iter(sorted(graph[start])))]
        path = [start]
        color[start] = GREY
        while stack:
            node, children = stack[-1]
            child = next(children, None)
            if child is None:
                color[node] = BLACK
                stack.pop()
                path.pop()
            elif color[child] == GREY:
                return path[path.index(child):] + [child]
            elif color[child] == WHITE:
                color[child] = GREY
                stack.append((child, iter(sorted(graph[child]))))
                path.append(child)
    return None


def test_graph_reader_sees_hidden_imports():
    # The reader itself must see what it claims to: function-level imports,
    # relative imports and importlib with a string or an f-string prefix.
    files = {"toolchain": Path("toolchain/__init__.py"),
             "toolchain.a": Path("toolchain/a/__init__.py"),
             "toolchain.a.b": Path("toolchain/a/b.py"), "toolchain.c": Path("toolchain/c.py")}
    call = ast.parse('importlib.import_module(f"toolchain.a.{x}")').body[0].value
    assert _is_dynamic_import(call) and _dynamic_targets(call, files) == ["toolchain.a.b"]
    call = ast.parse("importlib.import_module(name)").body[0].value
    assert _dynamic_targets(call, files) is None
    assert _absolute("b", 1, "toolchain.a", files) == "toolchain.a.b"
    assert _absolute(None, 2, "toolchain.a.b", files) == "toolchain"
    assert _outer_packages("toolchain.a.b", "toolchain.c") == ["toolchain.a"]
    assert _outer_packages("toolchain.a.b", "toolchain.a.d") == []
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _outer_packages("toolchain.a.b", "toolchain.c") == ["toolchain.a"]
    assert _outer_packages("toolchain.a.b", "toolchain.a.d") == []
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None


def test_every_dynamic_import_is_readable():
    _, unreadable = import_graph()
    assert not unreadable, f"import_module with a computed name at {unreadable}"


def test_no_import_cycles():
    graph, _ = import_graph()
    assert len(graph) > 50 and any(graph.values())       # the walk found the package
    cycle = find_cycle(graph)
    assert cycle is None, "import circle: " + " -> ".join(cycle)
