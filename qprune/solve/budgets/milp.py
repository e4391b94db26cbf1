"""Solving a budgeted problem file (``qprune export --budget``) back: HiGHS on the linearised MILP.

A budget is a quadratic constraint, which no QUBO sampler takes and HiGHS takes only once every
product is linearised (:func:`qprune.solve.budgets.cqm.linearized`). A ``.cqm`` file is linearised
and written as LP in a temporary folder; an ``.lp`` file (already linearised by the export) goes to
HiGHS as it is. HiGHS returns its best incumbent at ``time_limit``; ``info["status"]`` says whether
it proved it optimal.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
import tempfile
from collections.abc import Hashable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dimod
import numpy as np

from qprune.errors import QpruneError
from qprune.solve.budgets.cqm import AUX_PREFIX, unit_variables, write_budget_lp

__all__ = ["BudgetFile", "MilpResult", "is_budget_file", "read_budget_file", "solve_budget_file"]

BUDGET_LABEL = "budget_max"


@dataclass
class MilpResult:
    """Binary variables (their labels in the file) and values, the objective, HiGHS's status."""

    labels: list[Hashable]
    x: list[int]
    objective: float
    info: dict[str, Any] = field(default_factory=dict)


@dataclass
class BudgetFile:
    """A budgeted problem file read once: its CQM (``None`` for an ``.lp``, which HiGHS reads as it
    is) and its unit variables in unit order (a CQM's labels without the ``round_*`` auxiliaries,
    an LP's ``x0 .. x<N-1>``)."""

    path: Path
    cqm: dimod.ConstrainedQuadraticModel | None
    units: list[Hashable]


def read_budget_file(path: str | Path) -> BudgetFile | None:
    """``path`` as a :class:`BudgetFile`, or ``None`` when it holds no ``budget_max`` constraint
    (a QUBO file: the QUBO readers deal with it)."""
    p = Path(path)
    suffix = p.suffix.lower()
    if suffix == ".lp":
        text = p.read_text(errors="replace")
        if BUDGET_LABEL not in text:
            return None
        found = [int(m) for m in re.findall(r"\bx(\d+)\b", text)]
        return BudgetFile(p, None, [f"x{i}" for i in range(max(found) + 1)] if found else [])
    if suffix not in (".cqm", ".dimod", ".bqm"):
        return None
    try:
        with p.open("rb") as fh:
            cqm = dimod.ConstrainedQuadraticModel.from_file(fh)
    except (ValueError, TypeError, OSError, EOFError):
        return None  # a BQM file or not dimod's
    return BudgetFile(p, cqm, unit_variables(list(cqm.variables))) if BUDGET_LABEL in cqm.constraints else None


def is_budget_file(path: str | Path) -> bool:
    """Whether ``path`` holds a budgeted problem (a CQM or LP with a ``budget_max`` constraint)."""
    return read_budget_file(path) is not None


def solve_budget_file(path: str | Path | BudgetFile, *, time_limit: float = 60.0, seed: int = 0,
                      start: Sequence[int] | None = None) -> MilpResult:
    """Solve a budgeted ``.cqm`` / ``.lp`` file (a path, or one :func:`read_budget_file` read) with
    HiGHS; the CQM's own feasibility check and objective are reported for a ``.cqm``. ``start`` (0/1
    per unit in ``BudgetFile.units`` order, e.g. qprune's own budgeted mask) is HiGHS's first
    incumbent: a MILP of this size often finds no feasible point on its own when ``round_to`` is set."""
    if time_limit <= 0:
        raise QpruneError(f"time limit must be > 0 seconds, got {time_limit}")
    read = path if isinstance(path, BudgetFile) else read_budget_file(path)
    if read is None:
        raise QpruneError(f"{path} holds no budget constraint: solve it as a QUBO file")
    p, cqm = read.path, read.cqm
    if cqm is not None:
        with tempfile.TemporaryDirectory() as tmp:
            lp = Path(tmp) / "budget.lp"
            order = write_budget_lp(cqm, str(lp), linearize=True)
            res = _highs(lp, time_limit, seed, shown=p, start=start)
        values = dict(zip(res.labels, res.x))
        full = {v: values[str(v)] for v in cqm.variables if str(v).startswith(AUX_PREFIX)}
        full.update({v: values[f"x{i}"] for i, v in enumerate(order)})
        res.labels, res.x = list(order), [full[v] for v in order]
        res.objective = float(cqm.objective.energy(full))
        res.info["feasible"] = bool(cqm.check_feasible(full))
        return res
    res = _highs(p, time_limit, seed, shown=p, start=start)
    keep = [i for i, v in enumerate(res.labels) if not str(v).startswith(AUX_PREFIX)]
    res.labels, res.x = [res.labels[i] for i in keep], [res.x[i] for i in keep]
    return res


def _highs(lp: Path, time_limit: float, seed: int, shown: Path, start: Sequence[int] | None = None) -> MilpResult:
    """HiGHS on an LP file: the integer columns of its best solution (errors name ``shown``, the user's file)."""
    try:
        import highspy  # the optional extra qprune[highs]
    except ImportError:
        raise QpruneError("solving a budgeted file needs HiGHS: pip install 'qprune[highs]'") from None
    with _stdout_silenced():  # HiGHS's constructor prints a banner on fd 1 (it would break `--out -`)
        h = highspy.Highs()
    h.setOptionValue("output_flag", False)
    h.setOptionValue("time_limit", float(time_limit))
    h.setOptionValue("random_seed", int(seed))
    if h.readModel(str(lp)) != highspy.HighsStatus.kOk:
        raise QpruneError(f"HiGHS cannot read {shown} as an LP file")
    if start is not None:
        _set_start(h, start, shown)
    h.run()
    status = h.getModelStatus()
    info = h.getInfo()
    if status == highspy.HighsModelStatus.kInfeasible:
        raise QpruneError(f"HiGHS proved {shown} infeasible: no mask meets the budget window and the per-layer "
                          "limits together (with few or coarse units the window, 1 % below the target, can fall "
                          "between two reachable costs): export another budget or more layers")
    if info.primal_solution_status != 2:  # 2 = feasible: HiGHS found an incumbent
        raise QpruneError(f"HiGHS found no feasible point of {shown} in {time_limit:g} s "
                          f"(status {h.modelStatusToString(status)})")
    model = h.getLp()
    integer = [i for i, t in enumerate(model.integrality_) if t == highspy.HighsVarType.kInteger]
    values = h.getSolution().col_value
    labels = [model.col_names_[i] for i in integer]
    return MilpResult(labels, [int(round(values[i])) for i in integer], float(info.objective_function_value),
                      {"status": h.modelStatusToString(status), "optimal": status == highspy.HighsModelStatus.kOptimal,
                       "mip_gap": float(info.mip_gap), "time_limit_s": float(time_limit), "feasible": True})


def _set_start(h: Any, start: Sequence[int], shown: Path) -> None:
    """The units' values as a partial MIP start (HiGHS completes the auxiliary columns)."""
    index = []
    for i in range(len(start)):
        status, col = h.getColByName(f"x{i}")
        if int(status) != 0:  # HighsStatus.kOk
            raise QpruneError(f"--start has {len(start)} units; {shown} has no variable x{i}")
        index.append(col)
    h.setSolution(len(index), np.asarray(index, dtype=np.int32), np.asarray(start, dtype=np.float64))


@contextlib.contextmanager
def _stdout_silenced() -> Iterator[None]:
    """File descriptor 1 to /dev/null for the block (C code's prints included)."""
    sys.stdout.flush()
    saved = os.dup(1)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 1)
            yield
    finally:
        os.dup2(saved, 1)
        os.close(saved)
