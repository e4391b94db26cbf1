"""The plain QUBO formats: dimod JSON, exact COO text, qbsolv ``.qubo`` and numpy ``.npz``.

None of them has a notion of constraint, so the constrained form's k is stored beside the model:
a ``"k"`` field (JSON, npz) or a ``# k`` / ``c k`` header line (COO, qbsolv). Floats are written
as Python reprs (shortest exact), so a round trip is bit-exact.
"""

from __future__ import annotations

import json
import math
import zipfile
from collections.abc import Hashable, Mapping
from pathlib import Path
from typing import IO, Any

import dimod
import numpy as np

from qprune.errors import QpruneError
from qprune.qubo.io_common import Reader, Writer, binary_bqm, bqm_vectors, label_from_json

__all__ = ["READERS", "WRITERS"]

_COO_HEADER = (
    "# qprune-coo 1 | vartype BINARY | energy = offset + sum over data lines of bias * x_i * x_j | "
    'header lines: "# offset <float>", optional "# k <int>" (constrained form: minimise subject to '
    'sum(x) = k), "# label <i> <JSON label>" for i = 0..N-1 in variable order | data lines: '
    '"<i> <j> <bias>", i == j linear, i < j quadratic | floats are Python repr (exact)'
)


_QUBO_HEADER = (
    "c qprune qbsolv .qubo | x_i in {0,1}, minimise offset + sum of bias * x_i * x_j | "
    '"c offset <float>", optional "c k <int>" (subject to sum(x) = k), "c label <i> <JSON label>"'
)


def _write_json(bqm: dimod.BinaryQuadraticModel, k: int | None, f: IO[bytes]) -> None:
    doc = {"format": "qprune-qubo", "version": 1, "k": k, "bqm": bqm.to_serializable()}
    f.write(json.dumps(doc).encode())


def _write_coo(bqm: dimod.BinaryQuadraticModel, k: int | None, f: IO[bytes]) -> None:
    linear, (row, col, quad), offset = bqm_vectors(bqm)
    head = [_COO_HEADER, f"# offset {float(offset)!r}"]
    if k is not None:
        head.append(f"# k {k}")
    head += [f"# label {i} {json.dumps(v)}" for i, v in enumerate(bqm.variables)]
    n = len(linear)
    data = _index_lines(np.arange(n), np.arange(n), linear) + _index_lines(row, col, quad)
    f.write(("\n".join(head + data) + "\n").encode())


def _write_qubo(bqm: dimod.BinaryQuadraticModel, k: int | None, f: IO[bytes]) -> None:
    linear, (row, col, quad), offset = bqm_vectors(bqm)
    n = len(linear)
    head = [_QUBO_HEADER, f"c offset {float(offset)!r}"]
    if k is not None:
        head.append(f"c k {k}")
    head += [f"c label {i} {json.dumps(v)}" for i, v in enumerate(bqm.variables)]
    head.append(f"p qubo 0 {n} {n} {len(quad)}")
    data = _index_lines(np.arange(n), np.arange(n), linear) + _index_lines(row, col, quad)
    f.write(("\n".join(head + data) + "\n").encode())


def _write_npz(bqm: dimod.BinaryQuadraticModel, k: int | None, f: IO[bytes]) -> None:
    linear, (row, col, quad), offset = bqm_vectors(bqm)
    np.savez(
        f,
        format=np.array("qprune-qubo"),
        version=np.array(1),
        labels_json=np.array(json.dumps(list(bqm.variables))),
        linear=linear,
        row=row,
        col=col,
        quad=quad,
        offset=np.array(float(offset)),
        k=np.array(-1 if k is None else k),
    )


def _index_lines(row: np.ndarray, col: np.ndarray, vals: np.ndarray) -> list[str]:
    # .tolist() yields Python floats, whose repr is the shortest exact one (numpy's is np.float64(..))
    return [f"{i} {j} {v!r}" for i, j, v in zip(row.tolist(), col.tolist(), vals.tolist())]


def _read_json(path: Path) -> tuple[dimod.BinaryQuadraticModel, int | None]:
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise QpruneError(f"not valid JSON: {e}") from None
    if not isinstance(doc, dict):
        raise QpruneError("JSON QUBO must be an object")
    k = None
    if "bqm" in doc:
        k = _int_or_none(doc.get("k"), "k")
        doc = doc["bqm"]
    if not isinstance(doc, dict) or doc.get("type") != "BinaryQuadraticModel":
        raise QpruneError("no dimod BinaryQuadraticModel serialization found (key 'bqm' or type)")
    return binary_bqm(dimod.BinaryQuadraticModel.from_serializable(doc)), k


def _int_or_none(v: Any, what: str) -> int | None:
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, int):
        raise QpruneError(f"{what} = {v!r} is not an integer")
    return v


def _read_coo(path: Path) -> tuple[dimod.BinaryQuadraticModel, int | None]:
    meta, rows = _read_index_text(path, comment="#", problem_line=None)
    return _assemble(meta, rows)


def _read_qubo(path: Path) -> tuple[dimod.BinaryQuadraticModel, int | None]:
    meta, rows = _read_index_text(path, comment="c", problem_line="p")
    return _assemble(meta, rows)


def _read_index_text(path: Path, *, comment: str, problem_line: str | None) -> tuple[dict[str, Any], list[tuple[int, int, float]]]:
    """Parse the COO/qbsolv text: metadata comment lines and ``i j bias`` data lines."""
    meta: dict[str, Any] = {"labels": {}, "offset": 0.0, "k": None, "declared": None}
    rows: list[tuple[int, int, float]] = []
    with path.open(encoding="utf-8") as f:
        for lineno, raw in enumerate(f, 1):
            line = raw.strip()
            if not line:
                continue
            where = f"line {lineno}"
            if line.startswith(comment):
                _header_line(meta, line[len(comment):].strip(), where)
            elif problem_line and line.startswith(problem_line):
                parts = line.split()
                if len(parts) != 6 or parts[1] != "qubo":
                    raise QpruneError(f"{where}: expected 'p qubo 0 maxNodes nNodes nCouplers', got {line!r}")
                meta["declared"] = (int(parts[4]), int(parts[5]))
            else:
                rows.append(_data_line(line, where))
    if problem_line and meta["declared"] is not None:
        _check_declared(meta["declared"], rows)
    return meta, rows


def _header_line(meta: dict[str, Any], body: str, where: str) -> None:
    """``offset <float>``, ``k <int>`` or ``label <i> <JSON>`` into ``meta``; other comments are ignored."""
    key, _, rest = body.partition(" ")
    try:
        if key == "offset":
            meta["offset"] = float(rest)
        elif key == "k":
            meta["k"] = int(rest)
        elif key == "label":
            i, _, lab = rest.partition(" ")
            meta["labels"][int(i)] = label_from_json(json.loads(lab))
    except ValueError as e:
        raise QpruneError(f"{where}: bad {key!r} header {rest!r} ({e})") from None


def _data_line(line: str, where: str) -> tuple[int, int, float]:
    """``<i> <j> <bias>`` with non-negative indices and a finite bias."""
    parts = line.split()
    if len(parts) != 3:
        raise QpruneError(f"{where}: expected '<i> <j> <bias>', got {line!r}")
    try:
        i, j, b = int(parts[0]), int(parts[1]), float(parts[2])
    except ValueError:
        raise QpruneError(f"{where}: expected '<i> <j> <bias>', got {line!r}") from None
    if i < 0 or j < 0 or not math.isfinite(b):
        raise QpruneError(f"{where}: bad entry {line!r}")
    return i, j, b


def _check_declared(declared: tuple[int, int], rows: list[tuple[int, int, float]]) -> None:
    """The qbsolv problem line's node and coupler counts must match the data (a truncated file does not)."""
    n_diag = sum(1 for i, j, _ in rows if i == j)
    if (n_diag, len(rows) - n_diag) != declared:
        raise QpruneError(
            f"problem line declares {declared[0]} nodes and {declared[1]} couplers, "
            f"the file has {n_diag} and {len(rows) - n_diag} (truncated?)"
        )


def _assemble(meta: Mapping[str, Any], rows: list[tuple[int, int, float]]) -> tuple[dimod.BinaryQuadraticModel, int | None]:
    labels: dict[int, Hashable] = meta["labels"]
    n = max([len(labels)] + [max(i, j) + 1 for i, j, _ in rows])
    if labels:
        if sorted(labels) != list(range(len(labels))):
            raise QpruneError(f"label indices are not 0..{len(labels) - 1}")
        if n > len(labels):
            raise QpruneError(f"data refers to index {n - 1} but only {len(labels)} labels are declared")
        order = [labels[i] for i in range(n)]
    else:
        order = list(range(n))
    arr = np.array(rows, dtype=np.float64).reshape(-1, 3)
    i, j, b = arr[:, 0].astype(np.int64), arr[:, 1].astype(np.int64), arr[:, 2]
    diag = i == j
    linear = np.zeros(n)
    np.add.at(linear, i[diag], b[diag])
    bqm = dimod.BinaryQuadraticModel.from_numpy_vectors(
        linear, (i[~diag], j[~diag], b[~diag]), meta["offset"], dimod.BINARY, variable_order=order
    )
    return bqm, meta["k"]


def _read_npz(path: Path) -> tuple[dimod.BinaryQuadraticModel, int | None]:
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {key: z[key] for key in ("labels_json", "linear", "row", "col", "quad", "offset", "k")}
    except KeyError as e:
        raise QpruneError(f"npz lacks array {e}") from None
    except (ValueError, OSError, zipfile.BadZipFile) as e:
        raise QpruneError(f"not a readable .npz file ({e})") from None
    labels = [label_from_json(v) for v in json.loads(str(arrays["labels_json"]))]
    linear = np.asarray(arrays["linear"], dtype=np.float64)
    if linear.shape != (len(labels),):
        raise QpruneError(f"linear has shape {linear.shape} for {len(labels)} labels")
    quad = (arrays["row"].astype(np.int64), arrays["col"].astype(np.int64), arrays["quad"].astype(np.float64))
    _check_indices(quad[0], quad[1], len(labels))
    k = int(arrays["k"])
    bqm = dimod.BinaryQuadraticModel.from_numpy_vectors(
        linear, quad, float(arrays["offset"]), dimod.BINARY, variable_order=labels
    )
    return bqm, None if k < 0 else k


def _check_indices(row: np.ndarray, col: np.ndarray, n: int) -> None:
    if row.shape != col.shape:
        raise QpruneError("row and col differ in length")
    if row.size and (min(row.min(), col.min()) < 0 or max(row.max(), col.max()) >= n):
        raise QpruneError(f"coupling index out of range [0, {n})")


WRITERS: dict[str, Writer] = {"coo": _write_coo, "json": _write_json, "qubo": _write_qubo, "npz": _write_npz}
READERS: dict[str, Reader] = {"coo": _read_coo, "json": _read_json, "qubo": _read_qubo, "npz": _read_npz}
