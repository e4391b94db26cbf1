"""Export and import of pruning QUBOs and of samples, for solvers outside qprune.

A QUBO is written either *penalised* (the BQM at one gamma) or *constrained* (the objective without
the gamma term, plus ``sum(x) = k``, with k stored in the file). Formats, picked from the suffix or
``format=``:

=========  ===============  =========================================================================
format     suffixes         content
=========  ===============  =========================================================================
``dimod``  .bqm .dimod .cqm dimod's own binary file (``bqm.to_file()``); constrained: a CQM file
``coo``    .coo             exact COO text (format in its first line; repr floats, offset, labels, k)
``json``   .json            ``{"format": "qprune-qubo", "k": ..., "bqm": bqm.to_serializable()}``
``qubo``   .qubo            qbsolv text: ``p qubo 0 N N nCouplers``, index lines; ``c`` comments keep
                            offset, k and the index -> label map
``lp``     .lp              CPLEX LP via dimod (variables x<i>, LP-safe; ``\\`` comments keep the labels;
                            constraint ``cardinality``). ``linearize=True`` writes a MILP instead
                            (y_ij in [0, 1] for each coupling) for MIP solvers without MIQP (HiGHS, CBC)
``npz``    .npz             numpy arrays (linear, row, col, quad, offset, k) + JSON labels
=========  ===============  =========================================================================

Every write goes to a temporary file in the target directory and is moved into place with
``os.replace``, so an error never leaves a half-written file. Every load error is a
:class:`~qprune.errors.QpruneError` naming the file and what is wrong with it.

Samples (x_i = 1: unit i pruned) are read from JSON (``{"sample": {label: 0|1}, ...}`` or plain
``{label: 0|1}``), CSV (``label,value`` rows, optional header) or a bitstring in the BQM's variable
order, and matched to the BQM by label.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import re
import shutil
import zipfile
from collections.abc import Callable, Hashable, Mapping, Sequence
from pathlib import Path
from typing import IO, Any, NamedTuple

import dimod
import numpy as np
from dimod.sym import Sense

from qprune.atomic import atomic_open
from qprune.errors import QpruneError

FORMATS: dict[str, tuple[str, ...]] = {
    "dimod": (".bqm", ".dimod", ".cqm"),
    "coo": (".coo",),
    "json": (".json",),
    "qubo": (".qubo",),
    "lp": (".lp",),
    "npz": (".npz",),
}
SAMPLE_FORMATS: dict[str, tuple[str, ...]] = {
    "json": (".json",),
    "csv": (".csv",),
    "bits": (".bits", ".txt"),
}
CARDINALITY = "cardinality"  # name of the sum(x) = k constraint in CQM and LP files

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
_LP_HEADER = (
    "\\ qprune-lp 1 | variable x<i> is the i-th label below | constraint 'cardinality' (if any): "
    "sum(x) = k | linearized {lin}: y<i>_<j> stands for x<i>*x<j>"
)


class LoadedQubo(NamedTuple):
    """What :func:`load_bqm` returns: the BQM and k for the constrained form (else None)."""

    bqm: dimod.BinaryQuadraticModel
    k: int | None


# --------------------------------------------------------------------------------------------------
# Public API


def export_bqm(
    bqm: dimod.BinaryQuadraticModel,
    path: str | os.PathLike[str],
    *,
    format: str | None = None,
    linearize: bool = False,
) -> Path:
    """Write ``bqm`` (e.g. the BQM at the gamma that gives k) atomically; returns the path.

    ``format`` defaults to the one the suffix names (see :data:`FORMATS`); ``linearize`` applies to
    LP only (a MILP for solvers without binary quadratic support).
    """
    return _save(bqm, path, None, format, linearize)


def export_constrained(
    bqm: dimod.BinaryQuadraticModel,
    k: int,
    path: str | os.PathLike[str],
    *,
    format: str | None = None,
    linearize: bool = False,
) -> Path:
    """Write the constrained form "minimise ``bqm`` subject to sum(x) = k" atomically; k is stored
    in the file (CQM constraint, LP constraint, header line or field) and :func:`load_bqm` returns it.
    """
    if k is None:
        raise QpruneError("export_constrained needs k, the number of units to prune")
    return _save(bqm, path, k, format, linearize)


def _save(
    bqm: dimod.BinaryQuadraticModel,
    path: str | os.PathLike[str],
    k: int | None,
    format: str | None,
    linearize: bool,
) -> Path:
    path = Path(path)
    fmt = _format_of(path, format, FORMATS, "QUBO")
    if bqm.vartype is not dimod.BINARY:
        raise QpruneError("only BINARY BQMs are exported (x_i = 1: unit pruned); convert SPIN models first")
    if k is not None:
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 0 <= int(k) <= bqm.num_variables:
            raise QpruneError(f"k = {k!r} must be an integer in [0, {bqm.num_variables}]")
        k = int(k)
    if linearize and fmt != "lp":
        raise QpruneError(f"linearize=True applies to LP files only, not format {fmt!r}")
    if fmt in ("coo", "qubo", "npz", "lp"):
        for v in bqm.variables:
            if isinstance(v, bool) or not isinstance(v, (str, int)):
                raise QpruneError(f"label {v!r} is neither a string nor an integer; format {fmt!r} cannot keep it")
    writer = {
        "dimod": _write_dimod,
        "coo": _write_coo,
        "json": _write_json,
        "qubo": _write_qubo,
        "lp": _write_lp_linearized if linearize else _write_lp,
        "npz": _write_npz,
    }[fmt]
    _atomic_write(path, lambda f: writer(bqm, k, f))
    return path


def export_formulation(
    formulation: Any,
    path: str | os.PathLike[str],
    *,
    gamma: float | None = None,
    k: int | None = None,
    format: str | None = None,
    linearize: bool = False,
) -> Path:
    """Write a :class:`~qprune.qubo.formulation.Formulation`: ``gamma`` gives the BQM at that gamma,
    ``k`` the constrained form (objective without the gamma term, sum(x) = k). Exactly one of them.
    """
    if (gamma is None) == (k is None):
        raise QpruneError("give exactly one of gamma (penalised BQM) or k (constrained form)")
    if k is not None:
        return export_constrained(formulation.objective_bqm(), k, path, format=format, linearize=linearize)
    return export_bqm(formulation.bqm(gamma), path, format=format, linearize=linearize)


def load_bqm(path: str | os.PathLike[str], *, format: str | None = None) -> LoadedQubo:
    """Read a QUBO written by :func:`export_bqm`/:func:`export_constrained` (or a plain dimod/COO/qbsolv/LP file from elsewhere)."""
    path = Path(path)
    fmt = _format_of(path, format, FORMATS, "QUBO")
    if not path.is_file():
        raise QpruneError(f"QUBO file {str(path)!r} does not exist")
    reader = {
        "dimod": _read_dimod,
        "coo": _read_coo,
        "json": _read_json,
        "qubo": _read_qubo,
        "lp": _read_lp,
        "npz": _read_npz,
    }[fmt]
    try:
        bqm, k = reader(path)
    except QpruneError as e:
        raise QpruneError(f"{path}: {e}") from None
    except Exception as e:  # any failure to parse means the file is not what its format says
        raise QpruneError(f"{path} is not a valid {fmt!r} QUBO file: {type(e).__name__}: {e}") from None
    if k is not None and not 0 <= k <= bqm.num_variables:
        raise QpruneError(f"{path}: k = {k} is outside [0, {bqm.num_variables}]")
    return LoadedQubo(bqm, k)


def load_sample(
    path: str | os.PathLike[str],
    variables: Sequence[Hashable] | dimod.BinaryQuadraticModel,
    *,
    format: str | None = None,
) -> np.ndarray:
    """Read a sample and return x (int8 [N], 1 = pruned) in the order of ``variables``.

    ``variables`` is the BQM (or its labels). JSON and CSV samples are matched by label and must
    name every variable exactly once; a bitstring is read in the variables' order.
    """
    path = Path(path)
    if not path.is_file():
        raise QpruneError(f"sample file {str(path)!r} does not exist")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise QpruneError(f"cannot read sample file {str(path)!r}: {e}") from None
    fmt = format or _suffix_format(path, SAMPLE_FORMATS) or _sniff_sample(text)
    try:
        return parse_sample(text, variables, format=fmt)
    except QpruneError as e:
        raise QpruneError(f"{path}: {e}") from None


def parse_sample(
    text: str, variables: Sequence[Hashable] | dimod.BinaryQuadraticModel, *, format: str = "json"
) -> np.ndarray:
    """Parse a sample given as text (``format``: json, csv or bits); see :func:`load_sample`."""
    labels = list(variables.variables if isinstance(variables, dimod.BinaryQuadraticModel) else variables)
    if format not in SAMPLE_FORMATS:
        raise QpruneError(f"unknown sample format {format!r}; choose one of {', '.join(SAMPLE_FORMATS)}")
    if format == "bits":
        return _from_sequence(list(re.sub(r"\s+", "", text)), len(labels), "bitstring")
    if format == "json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise QpruneError(f"not valid JSON: {e}") from None
        if isinstance(data, dict) and "sample" in data:
            data = data["sample"]
        if isinstance(data, list):
            return _from_sequence(data, len(labels), "sample list")
        if not isinstance(data, dict):
            raise QpruneError(f"JSON sample must be an object {{label: 0|1}}, got {type(data).__name__}")
        return _from_pairs(list(data.items()), labels)
    return _from_pairs(_csv_pairs(text), labels)


def save_sample(
    sample: Mapping[Hashable, int] | np.ndarray | Sequence[int],
    path: str | os.PathLike[str],
    *,
    variables: Sequence[Hashable] | dimod.BinaryQuadraticModel | None = None,
    format: str | None = None,
    info: Mapping[str, Any] | None = None,
) -> Path:
    """Write a sample as JSON (``{"sample": {label: 0|1}, **info}``), CSV or a bitstring, atomically.

    An array sample needs ``variables`` (its labels, in order); a mapping carries its own.
    """
    path = Path(path)
    fmt = _format_of(path, format, SAMPLE_FORMATS, "sample")
    if isinstance(sample, Mapping):
        labels = list(sample)
        values = [sample[v] for v in labels]
    else:
        if variables is None:
            raise QpruneError("an array sample needs variables= (its labels in order)")
        labels = list(variables.variables if isinstance(variables, dimod.BinaryQuadraticModel) else variables)
        values = list(np.asarray(sample).ravel())
        if len(values) != len(labels):
            raise QpruneError(f"sample has {len(values)} values but there are {len(labels)} variables")
    bits = [_binary(v, lab) for lab, v in zip(labels, values)]
    if fmt == "json":
        text = json.dumps({"sample": {str(lab): b for lab, b in zip(labels, bits)}, **dict(info or {})}, indent=1)
    elif fmt == "csv":
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(["label", "value"])
        w.writerows([[lab, b] for lab, b in zip(labels, bits)])
        text = buf.getvalue()
    else:
        text = "".join(map(str, bits))
    _atomic_write(path, lambda f: f.write((text + ("" if text.endswith("\n") else "\n")).encode()))
    return path


# --------------------------------------------------------------------------------------------------
# Writers (each gets the BQM, k and a binary file object)


def _write_dimod(bqm: dimod.BinaryQuadraticModel, k: int | None, f: IO[bytes]) -> None:
    model = bqm if k is None else _cqm(bqm, k)
    with model.to_file() as src:
        shutil.copyfileobj(src, f)


def _write_json(bqm: dimod.BinaryQuadraticModel, k: int | None, f: IO[bytes]) -> None:
    doc = {"format": "qprune-qubo", "version": 1, "k": k, "bqm": bqm.to_serializable()}
    f.write(json.dumps(doc).encode())


def _write_coo(bqm: dimod.BinaryQuadraticModel, k: int | None, f: IO[bytes]) -> None:
    linear, (row, col, quad), offset = _vectors(bqm)
    head = [_COO_HEADER, f"# offset {float(offset)!r}"]
    if k is not None:
        head.append(f"# k {k}")
    head += [f"# label {i} {json.dumps(v)}" for i, v in enumerate(bqm.variables)]
    n = len(linear)
    data = _index_lines(np.arange(n), np.arange(n), linear) + _index_lines(row, col, quad)
    f.write(("\n".join(head + data) + "\n").encode())


def _write_qubo(bqm: dimod.BinaryQuadraticModel, k: int | None, f: IO[bytes]) -> None:
    linear, (row, col, quad), offset = _vectors(bqm)
    n = len(linear)
    head = [_QUBO_HEADER, f"c offset {float(offset)!r}"]
    if k is not None:
        head.append(f"c k {k}")
    head += [f"c label {i} {json.dumps(v)}" for i, v in enumerate(bqm.variables)]
    head.append(f"p qubo 0 {n} {n} {len(quad)}")
    data = _index_lines(np.arange(n), np.arange(n), linear) + _index_lines(row, col, quad)
    f.write(("\n".join(head + data) + "\n").encode())


def _write_npz(bqm: dimod.BinaryQuadraticModel, k: int | None, f: IO[bytes]) -> None:
    linear, (row, col, quad), offset = _vectors(bqm)
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


def _write_lp(bqm: dimod.BinaryQuadraticModel, k: int | None, f: IO[bytes]) -> None:
    names = {v: f"x{i}" for i, v in enumerate(bqm.variables)}
    model = dimod.CQM.from_bqm(bqm.relabel_variables(names, inplace=False))
    if k is not None:
        model.add_constraint_from_iterable([(x, 1) for x in names.values()], "==", rhs=k, label=CARDINALITY)
    f.write((_lp_header(bqm, linearized=False) + dimod.lp.dumps(model) + "\n").encode())


def _write_lp_linearized(bqm: dimod.BinaryQuadraticModel, k: int | None, f: IO[bytes]) -> None:
    """MILP: x binary, y_ij in [0, 1] replacing x_i x_j; only the constraints the sign needs.

    Minimising, a positive coupling pushes y_ij down, so y_ij >= x_i + x_j - 1 is enough; a negative
    one pushes it up, so y_ij <= x_i and y_ij <= x_j. At the optimum y_ij = x_i x_j exactly.
    """
    linear, (row, col, quad), offset = _vectors(bqm)
    n = len(linear)
    nz = quad != 0.0
    row, col, quad = row[nz], col[nz], quad[nz]
    lo, hi = np.minimum(row, col), np.maximum(row, col)
    y = [f"y{i}_{j}" for i, j in zip(lo.tolist(), hi.tolist())]
    obj = [f" {_signed(b)} x{i}" for i, b in enumerate(linear.tolist()) if b != 0.0]
    obj += [f" {_signed(b)} {name}" for name, b in zip(y, quad.tolist())]
    if offset:
        obj.append(f" {_signed(float(offset))}")
    cons = []
    if k is not None:
        # many LP readers limit line length: break the sum every 16 terms
        terms = [" ".join(f"+ x{i}" for i in range(s, min(s + 16, n))) for s in range(0, n, 16)]
        cons.append(f" {CARDINALITY}: " + "\n  ".join(terms) + f" = {k}")
    for name, i, j, b in zip(y, lo.tolist(), hi.tolist(), quad.tolist()):
        if b > 0:
            cons.append(f" {name}_and: {name} - x{i} - x{j} >= -1")
        else:
            cons.append(f" {name}_a: {name} - x{i} <= 0")
            cons.append(f" {name}_b: {name} - x{j} <= 0")
    lines = [_lp_header(bqm, linearized=True).rstrip("\n"), "Minimize", " obj:" + ("\n".join(obj) or " 0")]
    lines += ["Subject To"] + cons + ["Bounds"] + [f" 0 <= {name} <= 1" for name in y]
    lines += ["Binary"] + [f" x{i}" for i in range(n)] + ["End"]
    f.write(("\n".join(lines) + "\n").encode())


def _lp_header(bqm: dimod.BinaryQuadraticModel, *, linearized: bool) -> str:
    head = [_LP_HEADER.format(lin=int(linearized))]
    head += [f"\\ label {i} {json.dumps(v)}" for i, v in enumerate(bqm.variables)]
    return "\n".join(head) + "\n"


# --------------------------------------------------------------------------------------------------
# Readers (each gets the path, returns (bqm, k))


def _read_dimod(path: Path) -> tuple[dimod.BinaryQuadraticModel, int | None]:
    from dimod.serialization.fileview import load

    with path.open("rb") as f:
        model = load(f)
    if isinstance(model, dimod.BinaryQuadraticModel):
        return _binary_bqm(model), None
    if isinstance(model, dimod.ConstrainedQuadraticModel):
        return _from_cqm(model)
    raise QpruneError(f"holds a {type(model).__name__}, not a BQM or a CQM with sum(x) = k")


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
    return _binary_bqm(dimod.BinaryQuadraticModel.from_serializable(doc)), k


def _read_coo(path: Path) -> tuple[dimod.BinaryQuadraticModel, int | None]:
    meta, rows = _read_index_text(path, comment="#", problem_line=None)
    return _assemble(meta, rows)


def _read_qubo(path: Path) -> tuple[dimod.BinaryQuadraticModel, int | None]:
    meta, rows = _read_index_text(path, comment="c", problem_line="p")
    return _assemble(meta, rows)


def _read_npz(path: Path) -> tuple[dimod.BinaryQuadraticModel, int | None]:
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {key: z[key] for key in ("labels_json", "linear", "row", "col", "quad", "offset", "k")}
    except KeyError as e:
        raise QpruneError(f"npz lacks array {e}") from None
    except (ValueError, OSError, zipfile.BadZipFile) as e:
        raise QpruneError(f"not a readable .npz file ({e})") from None
    labels = [_label(v) for v in json.loads(str(arrays["labels_json"]))]
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


def _read_lp(path: Path) -> tuple[dimod.BinaryQuadraticModel, int | None]:
    labels: dict[int, Hashable] = {}
    linearized = False
    with path.open(encoding="utf-8") as f:
        for line in f:
            if not line.startswith("\\"):
                break
            if line.startswith("\\ qprune-lp"):
                linearized = "linearized 1" in line
            m = re.match(r"\\ label (\d+) (.*)$", line.rstrip("\n"))
            if m:
                labels[int(m.group(1))] = _label(json.loads(m.group(2)))
    model = dimod.lp.load(str(path))
    names = {f"x{i}": lab for i, lab in labels.items()}
    order = [f"x{i}" for i in range(len(labels))] if labels else [
        v for v in model.variables if not (linearized and v.startswith("y"))
    ]
    known = set(order)
    for v in order:
        if v not in model.variables:
            model.add_variable("BINARY", v)  # a variable with no bias at all may be omitted
    for v in model.variables:
        if v not in known and not (linearized and re.fullmatch(r"y\d+_\d+", v)):
            raise QpruneError(f"LP variable {v!r} is not one of the labelled x variables")
        if v in known and model.vartype(v) is not dimod.BINARY:
            raise QpruneError(f"LP variable {v!r} is not binary")
    obj = model.objective
    lin = {v: obj.get_linear(v) for v in order}
    quad: dict[tuple[Hashable, Hashable], float] = {}
    for (u, v), b in obj.quadratic.items():
        quad[(u, v)] = quad.get((u, v), 0.0) + b
    if linearized:  # fold y_ij back into x_i x_j
        for v in model.variables:
            m = re.fullmatch(r"y(\d+)_(\d+)", v)
            if m and obj.get_linear(v):
                key = (f"x{m.group(1)}", f"x{m.group(2)}")
                quad[key] = quad.get(key, 0.0) + obj.get_linear(v)
    bqm = dimod.BinaryQuadraticModel(dimod.BINARY)
    bqm.add_variables_from((names.get(v, v), lin[v]) for v in order)
    bqm.add_quadratic_from((names.get(u, u), names.get(v, v), b) for (u, v), b in quad.items())
    bqm.offset = obj.offset
    k = None
    for label, con in model.constraints.items():
        if label == CARDINALITY or not linearized:
            k = _cardinality(con, order, label)
    return bqm, k


# --------------------------------------------------------------------------------------------------
# Helpers


def _atomic_write(path: Path, write: Callable[[IO[bytes]], Any]) -> None:
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise QpruneError(f"cannot write {str(path)!r}: directory {str(parent)!r} does not exist")
    if path.is_dir():
        raise QpruneError(f"cannot write {str(path)!r}: it is a directory")
    with atomic_open(path, "wb") as f:
        write(f)


def _format_of(path: Path, format: str | None, table: Mapping[str, tuple[str, ...]], what: str) -> str:
    if format is not None:
        if format not in table:
            raise QpruneError(f"unknown {what} format {format!r}; choose one of {', '.join(table)}")
        return format
    found = _suffix_format(path, table)
    if found is None:
        known = ", ".join(s for suffixes in table.values() for s in suffixes)
        raise QpruneError(
            f"cannot tell the {what} format of {str(path)!r} from its suffix; use one of {known} or format="
        )
    return found


def _suffix_format(path: Path, table: Mapping[str, tuple[str, ...]]) -> str | None:
    suffix = path.suffix.lower()
    return next((name for name, suffixes in table.items() if suffix in suffixes), None)


def _vectors(bqm: dimod.BinaryQuadraticModel) -> tuple[np.ndarray, tuple[np.ndarray, np.ndarray, np.ndarray], float]:
    linear, (row, col, quad), offset = bqm.to_numpy_vectors(variable_order=list(bqm.variables))
    row, col = row.astype(np.int64), col.astype(np.int64)
    return linear.astype(np.float64), (np.minimum(row, col), np.maximum(row, col), quad.astype(np.float64)), offset


def _index_lines(row: np.ndarray, col: np.ndarray, vals: np.ndarray) -> list[str]:
    # .tolist() yields Python floats, whose repr is the shortest exact one (numpy's is np.float64(..))
    return [f"{i} {j} {v!r}" for i, j, v in zip(row.tolist(), col.tolist(), vals.tolist())]


def _signed(b: float) -> str:
    return f"- {-b!r}" if b < 0 else f"+ {b!r}"


def _cqm(bqm: dimod.BinaryQuadraticModel, k: int) -> dimod.ConstrainedQuadraticModel:
    model = dimod.CQM.from_bqm(bqm)
    model.add_constraint_from_iterable([(v, 1) for v in bqm.variables], "==", rhs=k, label=CARDINALITY)
    return model


def _from_cqm(model: dimod.ConstrainedQuadraticModel) -> tuple[dimod.BinaryQuadraticModel, int | None]:
    order = list(model.variables)
    for v in order:
        if model.vartype(v) is not dimod.BINARY:
            raise QpruneError(f"CQM variable {v!r} is {model.vartype(v).name}, not BINARY")
    obj = model.objective
    bqm = dimod.BinaryQuadraticModel(dimod.BINARY)
    bqm.add_variables_from((v, obj.get_linear(v)) for v in order)
    bqm.add_quadratic_from((u, v, b) for (u, v), b in obj.quadratic.items())
    bqm.offset = obj.offset
    k = None
    for label, con in model.constraints.items():
        k = _cardinality(con, order, label)
    return bqm, k


def _cardinality(con: Any, order: Sequence[Hashable], label: Hashable) -> int:
    """k from a constraint that must read sum(x) == k over all variables."""
    lhs = con.lhs
    ok = con.sense is Sense.Eq
    coeffs = {v: lhs.get_linear(v) for v in lhs.variables}
    if not ok or lhs.quadratic or set(coeffs) != set(order) or any(c != 1.0 for c in coeffs.values()):
        raise QpruneError(f"constraint {label!r} is not sum(x) = k over all variables; only that one is supported")
    rhs = float(con.rhs) - float(lhs.offset)
    if not rhs.is_integer():
        raise QpruneError(f"constraint {label!r} has non-integer right-hand side {rhs!r}")
    return int(rhs)


def _binary_bqm(bqm: dimod.BinaryQuadraticModel) -> dimod.BinaryQuadraticModel:
    if bqm.vartype is not dimod.BINARY:
        raise QpruneError("the model is SPIN; qprune QUBOs are BINARY (x_i = 1: unit pruned)")
    # JSON turns tuple labels into lists, which are unhashable: give them back as tuples
    if any(isinstance(v, list) for v in bqm.variables):
        bqm = bqm.relabel_variables({v: _label(v) for v in bqm.variables if isinstance(v, list)}, inplace=False)
    return bqm


def _label(v: Any) -> Hashable:
    return tuple(_label(x) for x in v) if isinstance(v, list) else v


def _int_or_none(v: Any, what: str) -> int | None:
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, int):
        raise QpruneError(f"{what} = {v!r} is not an integer")
    return v


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
                body = line[len(comment):].strip()
                key, _, rest = body.partition(" ")
                try:
                    if key == "offset":
                        meta["offset"] = float(rest)
                    elif key == "k":
                        meta["k"] = int(rest)
                    elif key == "label":
                        i, _, lab = rest.partition(" ")
                        meta["labels"][int(i)] = _label(json.loads(lab))
                except ValueError as e:
                    raise QpruneError(f"{where}: bad {key!r} header {rest!r} ({e})") from None
                continue
            if problem_line and line.startswith(problem_line):
                parts = line.split()
                if len(parts) != 6 or parts[1] != "qubo":
                    raise QpruneError(f"{where}: expected 'p qubo 0 maxNodes nNodes nCouplers', got {line!r}")
                meta["declared"] = (int(parts[4]), int(parts[5]))
                continue
            parts = line.split()
            if len(parts) != 3:
                raise QpruneError(f"{where}: expected '<i> <j> <bias>', got {line!r}")
            try:
                i, j, b = int(parts[0]), int(parts[1]), float(parts[2])
            except ValueError:
                raise QpruneError(f"{where}: expected '<i> <j> <bias>', got {line!r}") from None
            if i < 0 or j < 0 or not math.isfinite(b):
                raise QpruneError(f"{where}: bad entry {line!r}")
            rows.append((i, j, b))
    if problem_line and meta["declared"] is not None:
        n_diag = sum(1 for i, j, _ in rows if i == j)
        if (n_diag, len(rows) - n_diag) != meta["declared"]:
            raise QpruneError(
                f"problem line declares {meta['declared'][0]} nodes and {meta['declared'][1]} couplers, "
                f"the file has {n_diag} and {len(rows) - n_diag} (truncated?)"
            )
    return meta, rows


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


def _check_indices(row: np.ndarray, col: np.ndarray, n: int) -> None:
    if row.shape != col.shape:
        raise QpruneError("row and col differ in length")
    if row.size and (min(row.min(), col.min()) < 0 or max(row.max(), col.max()) >= n):
        raise QpruneError(f"coupling index out of range [0, {n})")


def _sniff_sample(text: str) -> str:
    stripped = text.strip()
    if stripped.startswith(("{", "[")):
        return "json"
    if re.fullmatch(r"[01\s]*", stripped):
        return "bits"
    return "csv"


def _csv_pairs(text: str) -> list[tuple[str, Any]]:
    pairs: list[tuple[str, Any]] = []
    reader = csv.reader(io.StringIO(text))
    first = True
    for row in reader:
        if not row or (len(row) == 1 and not row[0].strip()) or row[0].lstrip().startswith("#"):
            continue
        if len(row) != 2:
            raise QpruneError(f"CSV line {reader.line_num}: expected 'label,value', got {','.join(row)!r}")
        label, value = row[0].strip(), row[1].strip()
        if first:
            first = False
            try:
                float(value)
            except ValueError:
                continue  # a header row such as "label,value"
        pairs.append((label, value))
    return pairs


def _from_pairs(pairs: list[tuple[Any, Any]], labels: Sequence[Hashable]) -> np.ndarray:
    index = {str(v): i for i, v in enumerate(labels)}
    x = np.zeros(len(labels), dtype=np.int8)
    seen = np.zeros(len(labels), dtype=bool)
    unknown = [str(lab) for lab, _ in pairs if str(lab) not in index]
    if unknown:
        more = f" (and {len(unknown) - 1} more)" if len(unknown) > 1 else ""
        raise QpruneError(f"unknown label {unknown[0]!r}{more}: not a variable of this QUBO")
    for lab, value in pairs:
        i = index[str(lab)]
        if seen[i]:
            raise QpruneError(f"label {str(lab)!r} appears twice")
        seen[i] = True
        x[i] = _binary(value, lab)
    if not seen.all():
        missing = [str(labels[i]) for i in np.flatnonzero(~seen)]
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise QpruneError(f"sample lacks label {missing[0]!r}{more}; every variable needs a 0/1 value")
    return x


def _from_sequence(values: list[Any], n: int, what: str) -> np.ndarray:
    if len(values) != n:
        raise QpruneError(f"{what} has {len(values)} values but the QUBO has {n} variables")
    return np.array([_binary(v, f"position {i}") for i, v in enumerate(values)], dtype=np.int8)


def _binary(value: Any, where: Hashable) -> int:
    """0 or 1 from 0/1, True/False, 0.0/1.0 or "0"/"1"; anything else names the bad value."""
    if isinstance(value, (bool, np.bool_)):
        return int(value)
    if isinstance(value, str):
        s = value.strip()
        if s in ("0", "1"):
            return int(s)
        try:
            if float(s) in (0.0, 1.0):
                return int(float(s))
        except ValueError:
            pass
    elif isinstance(value, (int, float, np.integer, np.floating)) and value in (0, 1):
        return int(value)
    raise QpruneError(f"value {value!r} for {where!r} is not 0 or 1 (1 = pruned)")
