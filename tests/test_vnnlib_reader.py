"""The general VNN-LIB reader (VNN-COMP property files), against vst's own
export and hand-written properties in the competition's common forms."""

from __future__ import annotations

import re

import numpy as np
import pytest

from toolchain.errors import VstError
from toolchain.epsbox import eps_box
from toolchain.export.vnnlib import property_text
from toolchain.verify.vnnlib_reader import parse_vnnlib_text, read_vnnlib


def test_vsts_own_properties_read_back_exactly():
    rng = np.random.default_rng(0)
    x = rng.random((1, 4, 4), dtype=np.float32)
    prop = parse_vnnlib_text(property_text(x, 2, 0.1, 5))
    lower, upper = eps_box(x, 0.1)
    assert np.array_equal(prop.lower, lower.ravel().astype(np.float64))
    assert np.array_equal(prop.upper, upper.ravel().astype(np.float64))
    assert prop.n_outputs == 5 and len(prop.disjuncts) == 4      # one per other class
    assert not prop.unsafe([0, 0, 9, 0, 0])                       # label 2 wins: safe
    assert prop.unsafe([0, 9, 5, 0, 0])                           # class 1 beats it
    assert prop.unsafe([0, 0, 5, 0, 5])                           # a tie is unsafe (>=)


PROPERTY = """
; a VNN-COMP style property with linear output terms
(declare-const X_0 Real)
(declare-const X_1 Real)
(declare-const Y_0 Real)
(declare-const Y_1 Real)
(declare-const Y_2 Real)
(assert (<= X_0 0.5))
(assert (>= X_0 -0.5))
(assert (and (<= X_1 1e-1) (>= X_1 0)))
(assert (or
    (and (>= Y_1 Y_0) (<= Y_2 3.5))
    (and (>= (+ Y_1 (* 2 Y_2)) (- Y_0 1)))
))
"""


def test_common_competition_forms():
    prop = parse_vnnlib_text(PROPERTY)
    assert prop.lower.tolist() == [-0.5, 0.0] and prop.upper.tolist() == [0.5, 0.1]
    assert len(prop.disjuncts) == 2
    assert prop.unsafe([0.0, 1.0, 3.0])          # first: Y1 >= Y0 and Y2 <= 3.5
    assert not prop.unsafe([5.0, 1.0, 1.0])      # neither: 1 < 5, and 1 + 2 < 5 - 1
    assert prop.unsafe([5.0, 1.0, 2.0])          # second: 1 + 4 >= 5 - 1
    a, c = prop.disjuncts[1]                     # -Y1 - 2 Y2 + Y0 <= 1
    assert a.tolist() == [[1.0, -1.0, -2.0]] and c.tolist() == [1.0]


@pytest.mark.parametrize("text,needle", [
    ("(declare-const X_0 Real)(declare-const Y_0 Real)(assert (<= X_0 1))(assert (>= Y_0 0))",
     "no lower or upper bound"),
    ("(declare-const X_0 Real)(declare-const Y_0 Real)(assert (<= X_0 1))(assert (>= X_0 0))",
     "no condition on the outputs"),
    ("(declare-const X_0 Real)(declare-const Y_0 Real)(assert (<= X_0 1)", "unbalanced"),
    ("(declare-const X_0 Real)(assert (<= X_0 1))", "needs X_ and Y_"),
    ("(declare-const X_0 Real)(declare-const Y_0 Real)(assert (<= X_3 1))", "not declared"),
    ("(declare-const X_0 Real)(declare-const Y_0 Real)(assert (<= X_0 1))(assert (>= X_0 2))"
     "(assert (>= Y_0 0))", "lower bound exceeds"),
    ("(declare-const X_0 Real)(declare-const Y_0 Real)(assert (<= X_0 1))(assert (>= X_0 0))"
     "(assert (>= (* Y_0 Y_0) 0))", "not linear"),
    ("(declare-const X_0 Real)(declare-const Y_0 Real)(assert (<= X_0 inf))(assert (>= X_0 0))"
     "(assert (>= Y_0 0))", "non-finite"),
    ("(declare-const X_0 Real)(declare-const Y_0 Real)(assert (<= X_0 1))(assert (>= X_0 0))"
     "(assert (>= (+ Y_0 X_0) 0))", "single inputs"),
    ("(declare-const Z_0 Real)", "X_i or Y_j"),
    ("(declare-const X_0 Real)(declare-const Y_0 Real)(push 1)", "declare-const or assert"),
])
def test_what_is_not_understood_is_one_line(text, needle):
    with pytest.raises(VstError, match=needle):
        parse_vnnlib_text(text, "p.vnnlib")


def test_unreadable_file(tmp_path):
    (tmp_path / "p.vnnlib").write_bytes(b"\xff\xfe\x00")
    with pytest.raises(VstError, match="cannot read"):
        read_vnnlib(tmp_path / "p.vnnlib")


HEAD = ("(declare-const X_0 Real)(declare-const Y_0 Real)(declare-const Y_1 Real)"
        "(assert (<= X_0 1))(assert (>= X_0 0))")


@pytest.mark.parametrize("body,needle", [
    ("(assert (>= Y_0 1e999))", "overflows a double"),
    ("(assert (>= Y_0 (* 1e200 1e200)))", "overflows a double"),
    ("(assert (>= Y_0 (- 1e308 -1e308)))", "overflows a double"),
    ("(assert (>= Y_0 (+ (* 1e308 Y_1) (* 1e308 Y_1))))", "overflows a double"),
    ("(assert (>= Y_0 (- (* 1e308 10) (* 1e308 10))))", "overflows a double"),   # inf - inf
    ("(assert (>= Y_0 \u0661))", "ASCII"),                  # an Arabic-Indic digit one
    ("(assert (>= Y_0 1_000))", "ASCII"),
    ("(assert (>= Y_0 0x10))", "ASCII"),
    ("(assert (<= X_0 1_0))", "ASCII"),                      # an input bound too
    ("(assert (or))", "empty (or)"),
    ("(assert (>= Y_0 " + "(+ " * 200 + "1" + ")" * 200 + "))", "nest deeper"),
    ("(declare-const X_" + "9" * 5000 + " Real)", "X_i or Y_j"),
    ("(declare-const X_99999999 Real)", "more than 10,000,000 variables"),
], ids=["1e999", "product", "difference", "coefficients", "inf - inf", "arabic digit",
        "underscores", "hex", "input bound", "empty or", "200 deep", "index of 5000 digits",
        "too many variables"])
def test_numbers_terms_and_nesting_that_are_refused(body, needle):
    with pytest.raises(VstError, match=re.escape(needle)) as exc:
        parse_vnnlib_text(HEAD + body, "p.vnnlib")
    assert "\n" not in str(exc.value)


def test_strict_and_non_strict_comparisons_read_alike():
    """The VNN-COMP convention (module docstring, README): ``<`` is ``<=``, so
    ``(< Y_0 Y_0)`` is met by every output and a tie meets ``(< Y_0 Y_1)``."""
    always = parse_vnnlib_text(HEAD + "(assert (< Y_0 Y_0))")
    assert always.unsafe([0.0, 0.0]) and always.unsafe([5.0, -3.0])
    tie = parse_vnnlib_text(HEAD + "(assert (< Y_0 Y_1))")
    assert tie.unsafe([1.0, 1.0]) and not tie.unsafe([2.0, 1.0])
    assert (parse_vnnlib_text(HEAD + "(assert (> Y_0 Y_1))").disjuncts[0][0].tolist()
            == parse_vnnlib_text(HEAD + "(assert (>= Y_0 Y_1))").disjuncts[0][0].tolist())
