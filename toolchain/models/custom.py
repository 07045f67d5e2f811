"""Networks written in ``vst.toml``: ``[[model.layers]]`` tables into the graph IR.

Each table is one layer: ``kind`` (a layer kind of ``layers.py``), its
parameters, an optional ``name`` and an optional ``input``: the name of the
layer it reads, or a list of names, ``"input"`` being the network input. By
default a layer reads the one before it. Channel and feature counts coming
in (``in_channels``, ``in_features``, BatchNorm's ``channels``) are inferred
from the shapes; the last layer's ``out_features`` defaults to the number of
classes. An ``add`` reads two layers; given one name it adds that layer to the
one before it (a residual shortcut)::

    [[model.layers]]
    kind = "conv2d"
    out_channels = 8
    kernel = 3
    padding = 1
    name = "stem"
    [[model.layers]]
    kind = "relu"
    name = "a"
    [[model.layers]]
    kind = "conv2d"
    out_channels = 8
    kernel = 3
    padding = 1
    [[model.layers]]
    kind = "add"
    input = "a"          # a + the conv above
    [[model.layers]]
    kind = "globalavgpool"
    [[model.layers]]
    kind = "linear"

:func:`check_tables` validates what needs no shapes (when the config is read);
:func:`build_custom` builds the network for the data's input shape and
classes. Every mistake is one ``VstError`` line naming the layer.
"""

from __future__ import annotations

import dataclasses
import difflib
import re

from toolchain.errors import VstError
from toolchain.models import layers as L

INPUT_NAME = "input"
INFERRED = ("in_channels", "in_features", "channels")
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]*\Z")


def _fields(kind: str) -> dict[str, dataclasses.Field]:
    return {f.name: f for f in dataclasses.fields(L.LAYER_TYPES[kind])}


def _where(i: int, table) -> str:
    kind = table.get("kind") if isinstance(table, dict) else None
    name = table.get("name") if isinstance(table, dict) else None
    label = f" {name!r}" if isinstance(name, str) else ""
    return f"config: model.layers[{i}]{label}" + (f" ({kind})" if isinstance(kind, str) else "")


def _check_param(where: str, key: str, value, typ: str):
    if typ in ("int", "int | None"):
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise VstError(f"{where}: {key} must be an integer >= 0, got {value!r}")
    elif typ == "float":
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            raise VstError(f"{where}: {key} must be a number, got {value!r}")
    elif typ.startswith("tuple"):
        if (not isinstance(value, list) or not value
                or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)):
            raise VstError(f"{where}: {key} must be a list of numbers, got {value!r}")
        value = tuple(float(v) for v in value)
    return value


def _reads(i: int, table: dict, names: dict[str, int], later: set[str], where: str):
    """The indices layer ``i`` reads (-1: the network input)."""
    arity = getattr(L.LAYER_TYPES[table["kind"]], "arity", 1)
    given = table.get("input", [])
    given = [given] if isinstance(given, str) else given
    if not isinstance(given, list) or not all(isinstance(n, str) for n in given):
        raise VstError(f"{where}: input must be a layer name or a list of names, got {given!r}")
    reads = []
    for n in given:
        if n == INPUT_NAME:
            reads.append(-1)
        elif n in names:
            reads.append(names[n])
        elif n in later or n == table.get("name"):
            raise VstError(f"{where}: reads {n!r}, which is not before it (a layer reads only "
                           "earlier layers: no cycles, no forward references)")
        else:
            raise VstError(f"{where}: reads {n!r}, but no layer is named so"
                           f"{_close(n, list(names) + [INPUT_NAME])}")
    if arity == 2 and len(reads) == 1:
        reads.append(i - 1)                  # add: the named layer + the one before
    if not reads:
        reads = [i - 1]
    if len(reads) != arity:
        raise VstError(f"{where}: takes {arity} input(s), got {len(reads)}")
    return tuple(reads)


def _close(name: str, options) -> str:
    close = difflib.get_close_matches(name, list(options), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def check_tables(tables) -> list[dict]:
    """Validate the tables' kinds, keys, value types, names and wiring; return them."""
    if not isinstance(tables, list) or not all(isinstance(t, dict) for t in tables):
        raise VstError("config: model.layers must be a list of tables ([[model.layers]])")
    names: dict[str, int] = {}
    all_names = {t.get("name") for t in tables if isinstance(t.get("name"), str)}
    used: set[int] = set()
    for i, table in enumerate(tables):
        where = _where(i, table)
        kind = table.get("kind")
        if kind not in L.LAYER_TYPES:
            raise VstError(f"{where}: unknown layer kind {kind!r}; choose one of "
                           f"{', '.join(L.LAYER_TYPES)}{_close(str(kind), L.LAYER_TYPES)}")
        fields = _fields(kind)
        for key, value in table.items():
            if key in ("kind", "name", "input"):
                continue
            if key not in fields:
                raise VstError(f"{where}: unknown key {key!r}; {kind} takes "
                               f"{', '.join(fields) or 'no parameters'}{_close(key, fields)}")
            _check_param(where, key, value, fields[key].type)
        last_linear = kind == "linear" and i == len(tables) - 1
        for key, f in fields.items():
            no_default = (f.default is dataclasses.MISSING
                          and f.default_factory is dataclasses.MISSING)
            if (no_default and key not in table and key not in INFERRED
                    and not (last_linear and key == "out_features")):
                raise VstError(f"{where}: missing {key}")
        name = table.get("name")
        if name is not None:
            if not isinstance(name, str) or not _NAME.match(name) or name == INPUT_NAME:
                raise VstError(f"{where}: name must be a word other than {INPUT_NAME!r}, "
                               f"got {name!r}")
            if name in names:
                raise VstError(f"{where}: name {name!r} is already layer {names[name]}'s")
        used.update(_reads(i, table, names, all_names - set(names), where))
        if name is not None:
            names[name] = i
    for i in range(len(tables) - 1):
        if i not in used:
            raise VstError(f"{_where(i, tables[i])}: its output is never used (the network's "
                           "output is the last layer)")
    return tables


def _layer(table: dict, shape: L.Shape, last: bool, num_classes: int):
    kind = table["kind"]
    fields = _fields(kind)
    values = {k: _check_param("", k, v, fields[k].type) for k, v in table.items()
              if k in fields}
    if "in_channels" in fields:
        values["in_channels"] = values.get("in_channels", shape[0])
    if "in_features" in fields:
        values["in_features"] = values.get("in_features", shape[0])
    if kind == "batchnorm":
        values["channels"] = values.get("channels", shape[0])
    if kind == "linear" and last:
        values.setdefault("out_features", num_classes)
    return L.LAYER_TYPES[kind](**values)


def build_custom(tables, input_shape: L.Shape, num_classes: int) -> L.Network:
    """The network the tables describe, for inputs of ``input_shape`` and ``num_classes``."""
    check_tables(tables)
    names: dict[str, int] = {}
    layers, inputs, shapes = [], [], []
    for i, table in enumerate(tables):
        where = _where(i, table)
        reads = _reads(i, table, names, set(), where)
        in_shapes = [input_shape if j < 0 else shapes[j] for j in reads]
        try:
            layer = _layer(table, in_shapes[0], i == len(tables) - 1, num_classes)
            shapes.append(layer.out_shape(*in_shapes))
        except (VstError, TypeError, ValueError, ZeroDivisionError) as exc:
            raise VstError(f"{where}: {exc}") from None
        layers.append(layer)
        inputs.append(reads)
        if table.get("name") is not None:
            names[table["name"]] = i
    if shapes and shapes[-1] != (num_classes,):
        raise VstError(f"config: model.layers: the last layer gives {shapes[-1]}, the data has "
                       f"{num_classes} classes (end with a linear layer)")
    network = L.Network(tuple(input_shape), tuple(layers), tuple(inputs))
    network.check_size("model.layers")
    return network
