"""The formats with a native constraint: dimod's binary files (BQM or CQM) and CPLEX LP.

The constrained form "minimise the objective subject to sum(x) = k" is written as a dimod CQM
(constraint :data:`CARDINALITY`) or as an LP constraint of that name; a penalised BQM as a plain
dimod BQM file or an LP without constraints. ``linearize=True`` writes the LP as a MILP (y_ij in
[0, 1] for each coupling) for MIP solvers without binary quadratic support (HiGHS, CBC).
"""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Hashable, Sequence
from pathlib import Path
from typing import IO, Any

import dimod
import numpy as np
from dimod.serialization.fileview import load as load_dimod_file
from dimod.sym import Sense

from qprune.errors import QpruneError
from qprune.qubo.io_common import Reader, Writer, binary_bqm, bqm_vectors, label_from_json

__all__ = ["CARDINALITY", "READERS", "WRITERS", "write_lp_linearized"]

CARDINALITY = "cardinality"  # name of the sum(x) = k constraint in CQM and LP files


_LP_HEADER = (
    "\\ qprune-lp 1 | variable x<i> is the i-th label below | constraint 'cardinality' (if any): "
    "sum(x) = k | linearized {lin}: y<i>_<j> stands for x<i>*x<j>"
)


def _write_dimod(bqm: dimod.BinaryQuadraticModel, k: int | None, f: IO[bytes]) -> None:
    model = bqm if k is None else _cqm(bqm, k)
    with model.to_file() as src:
        shutil.copyfileobj(src, f)


def _cqm(bqm: dimod.BinaryQuadraticModel, k: int) -> dimod.ConstrainedQuadraticModel:
    model = dimod.CQM.from_bqm(bqm)
    model.add_constraint_from_iterable([(v, 1) for v in bqm.variables], "==", rhs=k, label=CARDINALITY)
    return model


def _read_dimod(path: Path) -> tuple[dimod.BinaryQuadraticModel, int | None]:
    with path.open("rb") as f:
        model = load_dimod_file(f)
    if isinstance(model, dimod.BinaryQuadraticModel):
        return binary_bqm(model), None
    if isinstance(model, dimod.ConstrainedQuadraticModel):
        return _from_cqm(model)
    raise QpruneError(f"holds a {type(model).__name__}, not a BQM or a CQM with sum(x) = k")


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
    linear, (row, col, quad), offset = bqm_vectors(bqm)
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


def _signed(b: float) -> str:
    return f"- {-b!r}" if b < 0 else f"+ {b!r}"


def _read_lp(path: Path) -> tuple[dimod.BinaryQuadraticModel, int | None]:
    labels, linearized = _lp_comments(path)
    model = dimod.lp.load(str(path))
    names = {f"x{i}": lab for i, lab in labels.items()}
    order = [f"x{i}" for i in range(len(labels))] if labels else [
        v for v in model.variables if not (linearized and v.startswith("y"))
    ]
    _check_lp_variables(model, order, linearized)
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


def _lp_comments(path: Path) -> tuple[dict[int, Hashable], bool]:
    """The ``\\ label`` map (index -> label) and whether the file says it is linearized."""
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
                labels[int(m.group(1))] = label_from_json(json.loads(m.group(2)))
    return labels, linearized


def _check_lp_variables(model: dimod.ConstrainedQuadraticModel, order: Sequence[str], linearized: bool) -> None:
    """Add the labelled x variables the file omits; refuse others (bar a MILP's y_ij) and non-binary ones."""
    known = set(order)
    for v in order:
        if v not in model.variables:
            model.add_variable("BINARY", v)  # a variable with no bias at all may be omitted
    for v in model.variables:
        if v not in known and not (linearized and re.fullmatch(r"y\d+_\d+", v)):
            raise QpruneError(f"LP variable {v!r} is not one of the labelled x variables")
        if v in known and model.vartype(v) is not dimod.BINARY:
            raise QpruneError(f"LP variable {v!r} is not binary")


WRITERS: dict[str, Writer] = {"dimod": _write_dimod, "lp": _write_lp}
READERS: dict[str, Reader] = {"dimod": _read_dimod, "lp": _read_lp}
write_lp_linearized: Writer = _write_lp_linearized
