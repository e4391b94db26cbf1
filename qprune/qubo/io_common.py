"""Helpers every QUBO / sample file format shares: atomic writes, formats by suffix, BQM vectors, labels."""

from __future__ import annotations

from collections.abc import Callable, Hashable, Mapping
from pathlib import Path
from typing import IO, Any

import dimod
import numpy as np

from qprune.atomic import atomic_open
from qprune.errors import QpruneError

__all__ = [
    "Reader", "Vectors", "Writer", "atomic_write", "binary_bqm", "bqm_vectors", "format_of", "label_from_json",
    "suffix_format",
]

#: ``(linear [N], (row, col, quad) with row < col, offset)`` in the BQM's variable order
Vectors = tuple[np.ndarray, tuple[np.ndarray, np.ndarray, np.ndarray], float]
#: a format's writer: gets the BQM, k (None: penalised form) and a binary file object
Writer = Callable[[dimod.BinaryQuadraticModel, int | None, IO[bytes]], None]
#: a format's reader: gets the path, returns ``(bqm, k)``
Reader = Callable[[Path], tuple[dimod.BinaryQuadraticModel, int | None]]


def atomic_write(path: Path, write: Callable[[IO[bytes]], Any]) -> None:
    """Call ``write`` on a temporary file next to ``path`` and move it into place (no half-written file)."""
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise QpruneError(f"cannot write {str(path)!r}: directory {str(parent)!r} does not exist")
    if path.is_dir():
        raise QpruneError(f"cannot write {str(path)!r}: it is a directory")
    with atomic_open(path, "wb") as f:
        write(f)


def format_of(path: Path, format: str | None, table: Mapping[str, tuple[str, ...]], what: str) -> str:
    """``format`` if it is one of ``table`` (format -> suffixes), else the one ``path``'s suffix names."""
    if format is not None:
        if format not in table:
            raise QpruneError(f"unknown {what} format {format!r}; choose one of {', '.join(table)}")
        return format
    found = suffix_format(path, table)
    if found is None:
        known = ", ".join(s for suffixes in table.values() for s in suffixes)
        raise QpruneError(
            f"cannot tell the {what} format of {str(path)!r} from its suffix; use one of {known} or format="
        )
    return found


def suffix_format(path: Path, table: Mapping[str, tuple[str, ...]]) -> str | None:
    """The format whose suffixes include ``path``'s (case-insensitive), or None."""
    suffix = path.suffix.lower()
    return next((name for name, suffixes in table.items() if suffix in suffixes), None)


def bqm_vectors(bqm: dimod.BinaryQuadraticModel) -> Vectors:
    """float64 linear and couplings (``row < col``) in the BQM's own variable order, and the offset."""
    linear, (row, col, quad), offset = bqm.to_numpy_vectors(variable_order=list(bqm.variables))
    row, col = row.astype(np.int64), col.astype(np.int64)
    return linear.astype(np.float64), (np.minimum(row, col), np.maximum(row, col), quad.astype(np.float64)), offset


def binary_bqm(bqm: dimod.BinaryQuadraticModel) -> dimod.BinaryQuadraticModel:
    """``bqm`` with hashable labels; refuses a SPIN model."""
    if bqm.vartype is not dimod.BINARY:
        raise QpruneError("the model is SPIN; qprune QUBOs are BINARY (x_i = 1: unit pruned)")
    # JSON turns tuple labels into lists, which are unhashable: give them back as tuples
    if any(isinstance(v, list) for v in bqm.variables):
        bqm = bqm.relabel_variables({v: label_from_json(v) for v in bqm.variables if isinstance(v, list)}, inplace=False)
    return bqm


def label_from_json(v: Any) -> Hashable:
    """A label read from JSON: lists (JSON's tuples) become tuples again, recursively."""
    return tuple(label_from_json(x) for x in v) if isinstance(v, list) else v
