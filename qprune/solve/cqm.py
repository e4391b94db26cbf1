"""Exact k as a constrained model: the count (and the group caps) posed directly, no gamma search.

:func:`build_exact_k_cqm` writes ``min objective(x) s.t. sum(x) == k, sum_{i in g} x_i <= cap_g``
with :meth:`ExactK.add_to_cqm`; :func:`solve_cqm_exact_k` hands it to a CQM sampler (Leap's hybrid
CQM solver by default, :func:`qprune.backends.dwave.cqm_sampler`) and, should no returned sample be
feasible, repairs the best one within the caps (:func:`qprune.solve.local.repair_to_k`).
"""

from __future__ import annotations

import time
from typing import Any

import dimod
import numpy as np

from qprune.backends.dwave import cqm_sampler
from qprune.errors import QpruneError
from qprune.solve.arrays import QuboArrays
from qprune.solve.constraint import ExactK
from qprune.solve.local import repair_to_k
from qprune.solve.result import ExactKResult

__all__ = ["build_exact_k_cqm", "solve_cqm_exact_k"]


def _binary(bqm: dimod.BinaryQuadraticModel) -> dimod.BinaryQuadraticModel:
    return bqm if bqm.vartype is dimod.BINARY else bqm.change_vartype(dimod.BINARY, inplace=False)


def _exact_k(bqm: dimod.BinaryQuadraticModel, k: int, constraint: ExactK | None) -> ExactK:
    n = bqm.num_variables
    if not 0 <= k <= n:
        raise QpruneError(f"k={k} must lie in [0, {n}] for a {n}-variable problem")
    return ExactK.coerce(n, k, constraint)


def build_exact_k_cqm(objective_bqm: dimod.BinaryQuadraticModel, k: int, *,
                      constraint: ExactK | None = None) -> dimod.ConstrainedQuadraticModel:
    """The CQM ``min objective_bqm(x)  s.t.  sum(x) == k`` (+ ``sum_{i in g} x_i <= cap_g``).

    Args:
        objective_bqm: the objective (a Formulation's ``objective_bqm()``: no gamma term); a SPIN
            model is converted to BINARY.
        k: number of variables set to one (filters pruned).
        constraint: an :class:`ExactK` over ``objective_bqm.variables`` (in that order; None: no caps).

    The count constraint is labelled ``"count"``, the caps ``"group_<g>"`` (g the group's index);
    a cap at or above its group's size constrains nothing and is left out.
    """
    objective_bqm = _binary(objective_bqm)
    con = _exact_k(objective_bqm, k, constraint)
    cqm = dimod.ConstrainedQuadraticModel()
    cqm.set_objective(objective_bqm)
    con.add_to_cqm(cqm, list(objective_bqm.variables), count_label="count", cap_label="group_{}")
    return cqm


def solve_cqm_exact_k(objective_bqm: dimod.BinaryQuadraticModel, k: int, *,
                      sampler: Any | None = None, time_limit: float | None = None,
                      constraint: ExactK | None = None,
                      label: str = "qprune exact-k", **config: Any) -> ExactKResult:
    """Exact-k on a CQM solver: the count is a constraint, no gamma search.

    Args:
        objective_bqm: the objective without the gamma term (``Formulation.objective_bqm()``).
        k: exact number of ones.
        sampler: a CQM sampler (``sample_cqm``); default Leap's ``LeapHybridCQMSampler(**config)``
            (a missing token is a one-line error). ``dimod.ExactCQMSolver()`` works offline for
            tiny problems.
        time_limit: seconds for the hybrid solver (None: its minimum).
        constraint: the group caps, see :func:`build_exact_k_cqm`.

    Returns:
        :class:`ExactKResult` with ``gamma=0.0`` and ``bqm=objective_bqm`` (BINARY); the best
        feasible sample is taken, and if the solver returned none, the best sample is repaired to k
        ones within the caps with the cheapest single flips (``info["repaired"]``).
    """
    t0 = time.perf_counter()
    objective_bqm = _binary(objective_bqm)
    order = list(objective_bqm.variables)
    con = _exact_k(objective_bqm, k, constraint)
    cqm = build_exact_k_cqm(objective_bqm, k, constraint=con)
    if sampler is None:
        sampler = cqm_sampler(**config)
    kwargs: dict[str, Any] = {}
    if time_limit is not None:
        kwargs["time_limit"] = time_limit
    if label and not isinstance(sampler, dimod.ExactCQMSolver):
        kwargs["label"] = label
    sampleset = sampler.sample_cqm(cqm, **kwargs)
    feasible = sampleset.filter(lambda d: d.is_feasible) if "is_feasible" in sampleset.record.dtype.names \
        else sampleset
    repaired = len(feasible) == 0
    pick = (sampleset if repaired else feasible).first.sample
    x = np.array([int(pick[v]) for v in order], dtype=np.int8)
    if repaired or not con.ok(x):
        repaired = True
        x, _ = repair_to_k(QuboArrays.from_bqm(objective_bqm, labels=order), x, k, con)
    sample = dict(zip(order, x.tolist()))
    energy = float(objective_bqm.energy(sample))
    info = {"strategy": "cqm", "repaired": repaired, "num_samples": len(sampleset),
            "num_feasible": len(feasible), "times": {"total_s": time.perf_counter() - t0},
            "solver_info": dict(sampleset.info)}
    return ExactKResult(labels=list(order), x=x, sample=sample, energy=energy, objective=energy,
                        gamma=0.0, bqm=objective_bqm, info=info)
