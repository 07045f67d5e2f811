"""C array literals and the dense / sparse (CSR) weight storage choice.

A weight matrix has one row per output channel (neuron) and one column per
input it reads. Stored *dense* it is ``rows * cols`` values; stored *sparse*
(CSR) it is the nonzero values, their column indices and ``rows + 1`` row
pointers, each index array in the smallest unsigned type that holds its
indices (uint8, uint16 or uint32: the columns by the column count, the row
pointers by the nonzero count, so a 144-tap conv with 750 nonzeros keeps
one-byte columns). The cheaper one (in bytes) is used.

Tiny example (a 2x4 float matrix with 2 nonzeros)::

    [[0, 1.5, 0, 0],        dense:  8 * 4 bytes = 32
     [0, 0,   0, -2]]       sparse: values [1.5, -2] (8), cols [1, 3] (2 bytes,
                                    uint8), row_ptr [0, 1, 2] (3, uint8) = 13

>>> Storage.of(np.array([[0, 1.5, 0, 0], [0, 0, 0, -2]], np.float32)).kind
'sparse'
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from toolchain.errors import VstError

STORAGE_MODES = ("auto", "dense", "sparse")
INDEX_TYPES = ((0xFF, "uint8_t", 1), (0xFFFF, "uint16_t", 2), (0xFFFFFFFF, "uint32_t", 4))


def index_type(max_value: int) -> tuple[str, int]:
    """The smallest unsigned C type (name, bytes) holding 0..max_value.

    >>> index_type(255), index_type(256)
    (('uint8_t', 1), ('uint16_t', 2))
    """
    for limit, name, size in INDEX_TYPES:
        if max_value <= limit:
            return name, size
    raise VstError(f"index {max_value} does not fit 32 bits")


@dataclass(frozen=True)
class Storage:
    """How one weight matrix is stored; ``kind`` is "dense" or "sparse"."""

    kind: str
    matrix: np.ndarray           # (rows, cols), the dense values
    row_ptr: np.ndarray          # CSR row pointers (rows + 1)
    cols: np.ndarray             # CSR column index of each nonzero
    values: np.ndarray           # CSR nonzero values, row by row
    index_ctype: str             # of the column indices
    index_bytes: int
    row_ctype: str               # of the row pointers
    row_bytes: int

    @classmethod
    def of(cls, matrix: np.ndarray, mode: str = "auto", sparse_below: float = 1.0) -> "Storage":
        """Build both layouts of ``matrix`` and keep the one ``mode`` asks for
        ("auto": CSR where it takes fewer bytes and the density is below
        ``sparse_below``, where CSR kernels also run faster; a tie stays dense)."""
        if mode not in STORAGE_MODES:
            raise VstError(f"unknown weight storage {mode!r}; choose {', '.join(STORAGE_MODES)}")
        rows, cols_n = matrix.shape
        mask = matrix != 0
        row_ptr = np.concatenate([[0], np.cumsum(mask.sum(axis=1))]).astype(np.int64)
        cols = np.nonzero(mask)[1].astype(np.int64)
        ctype, size = index_type(max(cols_n - 1, 0))
        rtype, rsize = index_type(int(row_ptr[-1]))
        probe = cls("dense", matrix, row_ptr, cols, matrix[mask], ctype, size, rtype, rsize)
        density = probe.nnz / max(matrix.size, 1)
        kind = mode if mode != "auto" else (
            "sparse" if probe.sparse_bytes < probe.dense_bytes and density < sparse_below
            else "dense")
        return cls(kind, matrix, row_ptr, cols, matrix[mask], ctype, size, rtype, rsize)

    @property
    def nnz(self) -> int:
        return int(self.row_ptr[-1])

    @property
    def dense_bytes(self) -> int:
        return self.matrix.size * self.matrix.itemsize

    @property
    def sparse_bytes(self) -> int:
        return (self.nnz * (self.matrix.itemsize + self.index_bytes)
                + len(self.row_ptr) * self.row_bytes)

    @property
    def bytes(self) -> int:
        return self.sparse_bytes if self.kind == "sparse" else self.dense_bytes

    def describe(self) -> str:
        """E.g. "16x128 weights, sparse: 201 nonzero, uint8_t indices"."""
        rows, cols = self.matrix.shape
        if self.kind == "dense":
            return f"{rows}x{cols} weights, dense"
        return (f"{rows}x{cols} weights, sparse: {self.nnz} nonzero, {self.index_ctype} "
                f"columns, {self.row_ctype} row pointers")

    def table_row(self, layer: str) -> dict:
        """One row of the per-layer storage table that ``generate_c`` returns."""
        return {"layer": layer, "storage": self.kind, "shape": list(self.matrix.shape),
                "nnz": self.nnz, "dense_bytes": self.dense_bytes,
                "sparse_bytes": self.sparse_bytes, "index_type": self.index_ctype,
                "row_index_type": self.row_ctype}

    @property
    def types(self) -> str:
        """The C name suffix of the CSR kernel for these index types: ``uint8_uint16``."""
        return f"{self.index_ctype[:-2]}_{self.row_ctype[:-2]}"


def float_literal(value: float) -> str:
    """The shortest C float literal that reads back to the same float32.

    >>> float_literal(0.1), float_literal(1.0), float_literal(1e-05)
    ('0.1f', '1.0f', '1e-05f')
    """
    value = np.float32(value)
    if not np.isfinite(value):
        raise VstError(f"cannot write {value} as a C constant (NaN or infinity in the weights?)")
    text = str(value)
    if "." not in text and "e" not in text:
        text += ".0"
    return text + "f"


def c_values(values, ctype: str, per_line: int = 12, indent: str = "    ") -> str:
    """The comma-separated body of a C array initializer, ``per_line`` values a line."""
    flat = np.asarray(values).ravel()
    if ctype == "float":
        items = [float_literal(v) for v in flat]
    else:
        items = [str(int(v)) for v in flat]
    lines = [", ".join(items[i:i + per_line]) for i in range(0, len(items), per_line)]
    return ",\n".join(indent + line for line in lines)


def c_array(ctype: str, name: str, values, *, qualifiers: str = "static const",
            align: int = 0, attrs: str = "") -> str:
    """A complete C array definition; an empty array gets one 0 (C has no empty arrays).
    ``align``: bytes of alignment through the generated file's ``VST_ALIGN`` macro;
    ``attrs``: more attributes (macros) after the declarator."""
    flat = np.asarray(values).ravel()
    if flat.size == 0:
        flat = np.zeros(1, dtype=np.int64)
    body = c_values(flat, ctype)
    extra = (f" VST_ALIGN({align})" if align else "") + (f" {attrs}" if attrs else "")
    return f"{qualifiers} {ctype} {name}[{flat.size}]{extra} = {{\n{body}\n}};"


def weights_array(ctype: str, name: str, values, *, align: int = 4) -> str:
    """A constant array of a generated model: 4-byte aligned, placed by the
    user's ``VST_WEIGHTS_ATTR`` (e.g. a section in external flash)."""
    return c_array(ctype, name, values, align=align, attrs="VST_WEIGHTS_ATTR")


def array_bytes(values, ctype: str) -> int:
    """Bytes a C array of ``values`` takes (at least one element, see ``c_array``)."""
    size = {"float": 4, "int8_t": 1, "uint8_t": 1, "int16_t": 2, "uint16_t": 2,
            "int32_t": 4, "uint32_t": 4}[ctype]
    return max(np.asarray(values).size, 1) * size
