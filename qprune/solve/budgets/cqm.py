"""The budgeted problem as a dimod CQM: the objective, the budget as a quadratic constraint, the caps.

``min objective(x)  s.t.  lo <= cost(x) <= hi,  sum_{i in layer l} x_i <= cap_l`` with ``cost`` the
exact :class:`qprune.solve.budgets.budget.CostModel` written out in the unit variables: a term
``coeff * (s_a - a.x) * (s_b - b.x)`` (a conv's kept outputs x kept inputs) expands to a constant,
linear biases and the couplings ``coeff * a_i * b_j`` (``x_i^2 = x_i`` on the diagonal). Terms over
more than two (tensor, dim) pairs would be cubic and are refused, as is a latency budget (its table
is per-layer counts, not a polynomial in x). Constraint labels: ``"budget_max"``, ``"budget_min"``
and ``"group_<layer id>"``. ``round_to = r`` (kept counts multiples of r, or the whole layer kept)
is a disjunction per layer, exact with two auxiliary variables: ``sum_l x - size_l w_l + r z_l = 0``,
``z_l <= (size_l // r) w_l``, ``w_l`` binary (the layer is touched), ``z_l`` integer (kept count / r);
``w_l = 0`` forces ``z_l = 0`` and no pruning. Their labels start with ``"round_"`` (constraints
``"round_<layer id>"``, ``"round_on_<layer id>"``).

:func:`write_budget_lp` writes it as CPLEX LP (variables renamed ``x<i>`` in unit order); with
``linearize=True`` every product ``x_i x_j`` (objective and budget) becomes a continuous
``y_i_j`` in [0, 1] with ``y <= x_i``, ``y <= x_j``, ``y >= x_i + x_j - 1``: a MILP that HiGHS reads
and solves (HiGHS takes no quadratic constraints).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Hashable, Sequence

import dimod
import numpy as np

from qprune.atomic import atomic_open

from qprune.errors import QpruneError
from qprune.solve.budgets.budget import Budget, CostModel
from qprune.solve.constraint import ExactK

__all__ = ["AUX_PREFIX", "budget_cqm", "cost_polynomial", "linearized", "unit_variables", "write_budget_lp"]

AUX_PREFIX = "round_"  # labels of the auxiliary (non-unit) variables of round_to


def cost_polynomial(cost: CostModel, labels: Sequence[Hashable]) -> tuple[float, dimod.BinaryQuadraticModel]:
    """``(constant, BQM)`` with ``cost(x) = constant + bqm.energy(x)`` (the BQM's offset is 0)."""
    if cost.additive is not None:
        raise QpruneError("a latency budget is a per-layer table, not a polynomial in x: it has no CQM form")
    if cost.cols.shape[1] > 2 and np.any((cost.cols < cost.n_pairs).sum(axis=1) > 2):
        raise QpruneError("a cost term over more than two tensor dimensions would be cubic: no CQM form")
    U = cost.U.tocsc()
    const = float(cost.const)
    lin: dict[int, float] = defaultdict(float)
    quad: dict[tuple[int, int], float] = defaultdict(float)
    for t in range(cost.coeff.size):
        cols = [int(j) for j in cost.cols[t] if j < cost.n_pairs]
        c = float(cost.coeff[t])
        if len(cols) == 1:
            j = cols[0]
            const += c * cost.size[j]
            for i, v in zip(U[:, j].indices, U[:, j].data):
                lin[int(i)] -= c * v
            continue
        a, b = cols
        sa, sb = cost.size[a], cost.size[b]
        const += c * sa * sb
        ia, va = U[:, a].indices, U[:, a].data
        ib, vb = U[:, b].indices, U[:, b].data
        for i, v in zip(ia, va):
            lin[int(i)] -= c * sb * v
        for i, v in zip(ib, vb):
            lin[int(i)] -= c * sa * v
        for i, v in zip(ia, va):
            for j, w in zip(ib, vb):
                if i == j:
                    lin[int(i)] += c * v * w
                else:
                    key = (int(min(i, j)), int(max(i, j)))
                    quad[key] += c * v * w
    bqm = dimod.BinaryQuadraticModel({labels[i]: v for i, v in lin.items()},
                                     {(labels[i], labels[j]): v for (i, j), v in quad.items()}, 0.0, dimod.BINARY)
    return const, bqm


def budget_cqm(objective: dimod.BinaryQuadraticModel, cost: CostModel, budget: Budget, limits: ExactK,
               ) -> dimod.ConstrainedQuadraticModel:
    """The CQM of the budgeted problem (see the module doc); ``objective``'s variables are the units
    in space order (``Formulation.objective_bqm()``)."""
    labels = list(objective.variables)
    if len(labels) != limits.n:
        raise QpruneError(f"{len(labels)} objective variables for limits over {limits.n} units")
    obj = objective if objective.vartype is dimod.BINARY else objective.change_vartype(dimod.BINARY, inplace=False)
    const, poly = cost_polynomial(cost, labels)
    lo, hi = budget.window(cost.full())
    cqm = dimod.ConstrainedQuadraticModel()
    cqm.set_objective(obj)
    for v in labels:
        if v not in cqm.variables:
            cqm.add_variable("BINARY", v)
    cqm.add_constraint_from_model(poly, "<=", rhs=hi - const, label="budget_max", copy=True)
    cqm.add_constraint_from_model(poly, ">=", rhs=lo - const, label="budget_min", copy=True)
    size = limits.size
    for g in range(len(limits.cap)):
        members = [labels[i] for i in np.flatnonzero(limits.group == g)]
        if limits.cap[g] < size[g]:
            cqm.add_constraint_from_iterable([(v, 1) for v in members], "<=", rhs=int(limits.cap[g]),
                                             label=f"group_{g}")
        if limits.round_to > 1:
            _round_layer(cqm, members, g, int(size[g]), limits.round_to)
    return cqm


def _round_layer(cqm: dimod.ConstrainedQuadraticModel, members: list[Hashable], g: int, size: int, r: int) -> None:
    """Layer ``g`` keeps all its units or a multiple of ``r`` (the module doc's two constraints)."""
    w, z = f"{AUX_PREFIX}w_{g}", f"{AUX_PREFIX}z_{g}"
    cqm.add_variable("BINARY", w)
    cqm.add_variable("INTEGER", z, lower_bound=0, upper_bound=size // r)
    cqm.add_constraint_from_iterable([(v, 1) for v in members] + [(w, -size), (z, r)], "==", rhs=0,
                                     label=f"{AUX_PREFIX}{g}")
    cqm.add_constraint_from_iterable([(z, 1), (w, -(size // r))], "<=", rhs=0, label=f"{AUX_PREFIX}on_{g}")


def unit_variables(variables: Sequence[Hashable]) -> list[Hashable]:
    """The unit variables among a budget CQM's variables (the auxiliary ``round_*`` ones left out)."""
    return [v for v in variables if not str(v).startswith(AUX_PREFIX)]


def linearized(cqm: dimod.ConstrainedQuadraticModel) -> dimod.ConstrainedQuadraticModel:
    """The same problem with every quadratic term replaced by a McCormick-linked variable."""
    out = dimod.ConstrainedQuadraticModel()
    prod: dict[tuple[Hashable, Hashable], str] = {}

    def y(u: Hashable, v: Hashable) -> str:
        key = (u, v) if str(u) <= str(v) else (v, u)
        if key not in prod:
            name = f"y_{key[0]}_{key[1]}"
            prod[key] = name
            out.add_variable("REAL", name, lower_bound=0.0, upper_bound=1.0)
        return prod[key]

    def linear(model: dimod.QuadraticModel | dimod.BinaryQuadraticModel) -> list[tuple[Hashable, float]]:
        terms = [(v, float(b)) for v, b in model.iter_linear()]
        terms += [(y(u, v), float(b)) for u, v, b in model.iter_quadratic()]
        return terms

    for v in cqm.variables:  # binaries, and round_to's integers with their bounds
        out.add_variable(cqm.vartype(v), v, lower_bound=cqm.lower_bound(v), upper_bound=cqm.upper_bound(v))
    obj = linear(cqm.objective)
    for name, con in cqm.constraints.items():
        out.add_constraint_from_iterable(linear(con.lhs), con.sense, rhs=float(con.rhs) - float(con.lhs.offset),
                                         label=name)
    out.set_objective(dimod.QuadraticModel())
    for v, b in obj:
        out.objective.add_linear(v, b)
    out.objective.offset = float(cqm.objective.offset)
    for (u, v), name in prod.items():
        out.add_constraint_from_iterable([(name, 1.0), (u, -1.0)], "<=", rhs=0.0, label=f"{name}_a")
        out.add_constraint_from_iterable([(name, 1.0), (v, -1.0)], "<=", rhs=0.0, label=f"{name}_b")
        out.add_constraint_from_iterable([(name, 1.0), (u, -1.0), (v, -1.0)], ">=", rhs=-1.0, label=f"{name}_c")
    return out


def write_budget_lp(cqm: dimod.ConstrainedQuadraticModel, path: str, *, linearize: bool = False) -> list[Hashable]:
    """Write ``cqm`` as CPLEX LP (atomically), its unit variables renamed ``x<i>`` (the ``round_*``
    ones keep their names); returns the original unit labels in ``x<i>`` order (what a sample read
    back maps to)."""
    labels = unit_variables(list(cqm.variables))
    renamed = cqm.relabel_variables({v: f"x{i}" for i, v in enumerate(labels)}, inplace=False)
    model = linearized(renamed) if linearize else renamed
    with atomic_open(path) as fh:
        dimod.lp.dump(model, fh)
    return labels
