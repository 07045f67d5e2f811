"""Read VNN-LIB properties as VNN-COMP writes them (the input side of issue 14).

A property states the *unsafe* region: an input box and a condition on the
outputs; a verifier answers ``unsat`` (no input in the box meets the
condition: the property holds) or ``sat`` (with a counterexample). This
reader takes the common form of the competition's benchmarks:

- ``(declare-const X_i Real)`` / ``(declare-const Y_j Real)``;
- input bounds as top-level ``(assert (<= X_i c))`` / ``(assert (>= X_i c))``;
- output constraints as top-level asserts (a conjunction), or one
  ``(assert (or (and ...) (and ...)))`` (a disjunction of conjunctions),
  each atom ``(<= a b)`` / ``(>= a b)`` over linear terms: numbers,
  ``Y_j``, ``(+ ...)``, ``(- a b)``, ``(- a)`` and ``(* c Y_j)``.

Strict and non-strict comparisons are read alike, the VNN-COMP convention:
``(< a b)`` is ``(<= a b)``. So ``(assert (< Y_0 Y_0))`` is met by every
output (``sat``), and a property whose unsafe region is only a boundary
(``Y_0 < Y_1`` at a tie) is answered on its closure, which can only say
``sat`` where the strict reading might say ``unsat``, never the reverse.

Numbers are plain decimals in ASCII (``-1``, ``0.5``, ``.5``, ``1e-3``): no
``inf`` / ``nan``, ``1_000``, hex or other digits; every number and every
coefficient and constant computed from them must be finite in float64 (so
``1e999`` or ``(* 1e200 1e200)`` is an error, not an infinite bound). Terms
nest at most ``MAX_DEPTH`` deep; an ``(or)`` needs at least one branch.

Every output atom becomes a row ``a . Y <= c``; the property is unsafe iff
some disjunct has all its rows true. Anything else is one ``VstError`` line
naming the file and what was not understood (no partial reading).

>>> p = parse_vnnlib_text("(declare-const X_0 Real)(declare-const Y_0 Real)"
...     "(declare-const Y_1 Real)(assert (<= X_0 1))(assert (>= X_0 0))"
...     "(assert (>= Y_1 Y_0))")
>>> p.lower.tolist(), p.upper.tolist(), [d[0].tolist() for d in p.disjuncts]
([0.0], [1.0], [[[1.0, -1.0]]])
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import numpy as np

from toolchain.errors import VstError

_TOKEN = re.compile(r"\(|\)|[^\s()]+")
_VAR = re.compile(r"([XY])_([0-9]{1,9})", re.ASCII)
_NUMBER = re.compile(r"[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?", re.ASCII)
MAX_VARIABLES = 10_000_000
MAX_DEPTH = 64          # VNN-COMP properties nest a few levels; a term deeper is refused
MAX_FILE_BYTES = 256 << 20


@dataclass
class Property:
    """An input box and the unsafe output region: a list of disjuncts, each
    ``(A, c)`` meaning all rows of ``A @ y <= c`` hold."""

    lower: np.ndarray                                  # (n_inputs,)
    upper: np.ndarray
    n_outputs: int
    disjuncts: list[tuple[np.ndarray, np.ndarray]]

    def unsafe(self, y: np.ndarray) -> bool:
        """Whether outputs ``y`` lie in the unsafe region (a counterexample)."""
        y = np.asarray(y, np.float64).ravel()
        return any(bool(np.all(a @ y <= c)) for a, c in self.disjuncts)


def _parse_sexprs(text: str, where: str) -> list:
    text = re.sub(r";[^\n]*", "", text)
    stack: list[list] = [[]]
    for tok in _TOKEN.findall(text):
        if tok == "(":
            if len(stack) > MAX_DEPTH:
                raise VstError(f"{where}: terms nest deeper than {MAX_DEPTH} levels")
            stack.append([])
        elif tok == ")":
            if len(stack) == 1:
                raise VstError(f"{where}: unbalanced ')'")
            done = stack.pop()
            stack[-1].append(done)
        else:
            stack[-1].append(tok)
    if len(stack) != 1:
        raise VstError(f"{where}: unbalanced '('")
    return stack[0]


def parse_number(tok: str) -> float | None:
    """A plain ASCII decimal as a float; ``None`` if ``tok`` is not one.

    >>> parse_number("1e-3"), parse_number("1_000"), parse_number("inf")
    (0.001, None, None)
    """
    return float(tok) if _NUMBER.fullmatch(tok) else None


def _number(tok, where: str) -> float | None:
    if not isinstance(tok, str):
        return None
    value = parse_number(tok)
    if value is None:
        if tok.lower().lstrip("+-") in ("inf", "infinity", "nan"):
            raise VstError(f"{where}: non-finite number {tok!r}")
        return None
    if not math.isfinite(value):
        raise VstError(f"{where}: number {_show(tok)} overflows a double")
    return value


class _Reader:
    def __init__(self, where: str) -> None:
        self.where = where
        self.declared = {"X": 0, "Y": 0}

    def var(self, tok):
        m = _VAR.fullmatch(tok) if isinstance(tok, str) else None
        if m is None:
            return None
        kind, index = m.group(1), int(m.group(2))
        if index >= self.declared[kind]:
            raise VstError(f"{self.where}: {tok} is used but not declared")
        return kind, index

    def linear(self, term) -> tuple[dict[int, float], float, bool]:
        """A linear term over Y: (coefficients, constant, mentions X); every
        coefficient and the constant finite."""
        coef, const, has_x = self._linear(term)
        if not (math.isfinite(const) and all(math.isfinite(v) for v in coef.values())):
            raise VstError(f"{self.where}: the term {_show(term)} overflows a double")
        return coef, const, has_x

    def _linear(self, term) -> tuple[dict[int, float], float, bool]:
        value = _number(term, self.where)
        if value is not None:
            return {}, value, False
        v = self.var(term)
        if v is not None:
            return ({v[1]: 1.0}, 0.0, False) if v[0] == "Y" else ({}, 0.0, True)
        if isinstance(term, list) and term and term[0] in ("+", "-", "*"):
            parts = [self.linear(t) for t in term[1:]]
            if not parts:
                raise VstError(f"{self.where}: empty ({term[0]})")
            if term[0] == "*":
                consts = [p for p in parts if not p[0] and not p[2]]
                rest = [p for p in parts if p[0] or p[2]]
                if len(rest) > 1:
                    raise VstError(f"{self.where}: a product of variables is not linear")
                scale = math.prod(p[1] for p in consts)
                if not rest:
                    return {}, scale, False
                coef, const, has_x = rest[0]
                return {k: scale * v for k, v in coef.items()}, scale * const, has_x
            sign = [1.0] + [(-1.0 if term[0] == "-" else 1.0)] * (len(parts) - 1)
            if term[0] == "-" and len(parts) == 1:
                sign = [-1.0]
            coef: dict[int, float] = {}
            const, has_x = 0.0, False
            for s, (c, k, x) in zip(sign, parts):
                for j, v in c.items():
                    coef[j] = coef.get(j, 0.0) + s * v
                const += s * k
                has_x |= x
            return coef, const, has_x
        raise VstError(f"{self.where}: cannot read term {_show(term)} (numbers are plain "
                       "ASCII decimals such as 0.5 or -1e-3)")

    def atom(self, expr):
        """``(<= a b)`` as ('X', index, bound, is_upper) or ('Y', row, c)."""
        if not (isinstance(expr, list) and len(expr) == 3 and expr[0] in ("<=", ">=", "<", ">")):
            raise VstError(f"{self.where}: expected (<= a b) or (>= a b), got {_show(expr)}")
        op, a, b = expr
        if op in (">=", ">"):
            a, b = b, a                                    # a <= b from here on
        va, vb = self.var(a), self.var(b)
        if va is not None and va[0] == "X" and _number(b, self.where) is not None:
            return ("X", va[1], _number(b, self.where), True)
        if vb is not None and vb[0] == "X" and _number(a, self.where) is not None:
            return ("X", vb[1], _number(a, self.where), False)
        ca, ka, xa = self.linear(a)
        cb, kb, xb = self.linear(b)
        if xa or xb:
            raise VstError(f"{self.where}: only bounds on single inputs are supported, got "
                           f"{_show(expr)}")
        row = np.zeros(self.declared["Y"])
        for j, v in ca.items():
            row[j] += v
        for j, v in cb.items():
            row[j] -= v
        c = kb - ka
        if not (math.isfinite(c) and np.all(np.isfinite(row))):
            raise VstError(f"{self.where}: the comparison {_show(expr)} overflows a double")
        return ("Y", row, c)


def _show(expr) -> str:
    text = expr if isinstance(expr, str) else "(" + " ".join(_show(e) for e in expr) + ")"
    return text if len(text) <= 60 else text[:57] + "..."


def parse_vnnlib_text(text: str, where: str = "vnnlib") -> Property:
    """A ``Property`` from VNN-LIB text (see the module docstring)."""
    reader = _Reader(where)
    forms = _parse_sexprs(text, where)
    for form in forms:
        if isinstance(form, list) and form and form[0] == "declare-const":
            if len(form) != 3 or form[2] != "Real" or not isinstance(form[1], str):
                raise VstError(f"{where}: bad declaration {_show(form)}")
            m = _VAR.fullmatch(form[1])
            if m is None:
                raise VstError(f"{where}: variables must be X_i or Y_j, got {_show(form[1])}")
            reader.declared[m.group(1)] = max(reader.declared[m.group(1)], int(m.group(2)) + 1)
    n_in, n_out = reader.declared["X"], reader.declared["Y"]
    if n_in == 0 or n_out == 0:
        raise VstError(f"{where}: needs X_ and Y_ variables, found {n_in} and {n_out}")
    if n_in + n_out > MAX_VARIABLES:
        raise VstError(f"{where}: declares {n_in} inputs and {n_out} outputs, more than "
                       f"{MAX_VARIABLES:,} variables")
    lower, upper = np.full(n_in, -np.inf), np.full(n_in, np.inf)
    common: list[tuple[np.ndarray, float]] = []
    disjunctions: list[list[list[tuple[np.ndarray, float]]]] = []
    for form in forms:
        if not (isinstance(form, list) and form and form[0] == "assert"):
            if isinstance(form, list) and form and form[0] == "declare-const":
                continue
            raise VstError(f"{where}: expected declare-const or assert, got {_show(form)}")
        if len(form) != 2:
            raise VstError(f"{where}: bad assert {_show(form)}")
        body = form[1]
        if isinstance(body, list) and body and body[0] == "or":
            if len(body) == 1:
                raise VstError(f"{where}: an empty (or) is false: it states no unsafe "
                               "region; give at least one branch")
            branches = []
            for branch in body[1:]:
                atoms = branch[1:] if isinstance(branch, list) and branch[:1] == ["and"] \
                    else [branch]
                rows = []
                for a in atoms:
                    got = reader.atom(a)
                    if got[0] != "Y":
                        raise VstError(f"{where}: input bounds inside (or ...) are not "
                                       "supported")
                    rows.append((got[1], got[2]))
                branches.append(rows)
            disjunctions.append(branches)
            continue
        atoms = body[1:] if isinstance(body, list) and body[:1] == ["and"] else [body]
        for a in atoms:
            got = reader.atom(a)
            if got[0] == "X":
                _, i, bound, is_upper = got
                if is_upper:
                    upper[i] = min(upper[i], bound)
                else:
                    lower[i] = max(lower[i], bound)
            else:
                common.append((got[1], got[2]))
    if not np.all(np.isfinite(lower)) or not np.all(np.isfinite(upper)):
        missing = int(np.sum(~np.isfinite(lower) | ~np.isfinite(upper)))
        raise VstError(f"{where}: {missing} inputs have no lower or upper bound")
    if np.any(lower > upper):
        raise VstError(f"{where}: an input's lower bound exceeds its upper bound")
    if len(disjunctions) > 1:
        raise VstError(f"{where}: more than one (or ...) assertion is not supported")
    branches = disjunctions[0] if disjunctions else [[]]
    disjuncts = []
    for rows in branches:
        rows = rows + common
        if not rows:
            raise VstError(f"{where}: the property puts no condition on the outputs")
        disjuncts.append((np.array([r for r, _ in rows]), np.array([c for _, c in rows])))
    return Property(lower, upper, n_out, disjuncts)


def read_vnnlib(path) -> Property:
    """``parse_vnnlib_text`` of a file (a regular file, at most ``MAX_FILE_BYTES``);
    one-line errors for unreadable files."""
    from toolchain.inputs import read_input

    data = read_input(path, "property file", limit=MAX_FILE_BYTES, gunzip=False)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise VstError(f"{path}: cannot read ({exc})") from None
    return parse_vnnlib_text(text, str(path))
