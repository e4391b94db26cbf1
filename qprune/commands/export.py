"""`qprune export`: write the pruning QUBO (at the found gamma, or the constrained form) to a file.

Build the pruning QUBO of a QUBO method, find gamma for exactly k, and export it. With
--constrained, write the objective without the gamma term plus sum(x) = k. With --budget, write the
objective plus the budget (quadratic) and the per-layer caps as constraints: a dimod CQM (.cqm) or a
linearised MILP in LP format (.lp, HiGHS reads it); `qprune solve` solves either back.
"""

from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path

from qprune.commands import add_command
from qprune.commands._common import (
    add_budget_args, add_problem_args, add_solver_args, add_space_args, budget_request, check_amount,
    check_output, load_problem_and_model, method_options, parse_weights, residual_branches,
)
from qprune.errors import QpruneError
from qprune.solve.budgets.budget import parse_budget

BUDGET_FORMATS = {".cqm": "dimod", ".dimod": "dimod", ".lp": "lp"}


def register(subparsers: argparse._SubParsersAction) -> None:
    p = add_command(subparsers, run, add_problem_args, add_solver_args, add_space_args, add_budget_args)
    p.add_argument("--format", "-f", help="file format (default: from the suffix of -o): "
                   "dimod, coo, json, qubo, lp, npz")
    p.add_argument("--constrained", action="store_true",
                   help="export objective + constraint sum(x)=k instead of the BQM at the found gamma")
    p.add_argument("--output", "-o", required=True, help="output file")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bars")


def run(args: argparse.Namespace) -> int:
    from qprune.qubo import fileio as qubo_io
    from qprune.pipeline.run import method_spec, prepare, resolve_k, select_mask

    check_amount(args)
    if args.budget is not None:
        return _export_budget(args)
    spec = method_spec(args.method)
    if spec.kind != "qubo":
        raise QpruneError(f"method {args.method!r} builds no QUBO; export needs a *-qubo method")
    check_output(args.output, "--output")
    weights = parse_weights(args.weights)
    problem, model, _ = load_problem_and_model(args)
    prep = prepare(model, problem, methods=[args.method], layers=args.layers, min_keep=args.min_keep,
                   residual_branches=residual_branches(args), fisher=args.fisher, weights=weights,
                   progress=not args.quiet)
    k = resolve_k(prep.space.N, args.sparsity, args.k)
    # the QUBO is what is exported: no refinement stage, whatever --refine says
    x, out = select_mask(prep, args.method, k, replace(method_options(args, weights), refine=None))
    formulation = out["formulation"]
    if args.constrained:
        qubo_io.export_constrained(formulation.objective_bqm(), k, args.output, format=args.format)
        what = f"objective + constraint sum(x) = {k}"
    else:
        qubo_io.export_bqm(out["solved"].bqm, args.output, format=args.format)
        what = f"BQM at gamma = {out['gamma']:.6g} (solver found exactly k = {k})"
    print(f"wrote {args.output}: {what}, {prep.space.N} variables, "
          f"{out['solved'].bqm.num_interactions} interactions")
    return 0


def _export_budget(args: argparse.Namespace) -> int:
    """``--budget``: the budgeted problem as a CQM or linearised LP (checks first, then the model)."""
    from qprune.atomic import atomic_open
    from qprune.pipeline.budgeted import budget_problem
    from qprune.pipeline.run import prepare
    from qprune.solve.budgets.cqm import write_budget_lp

    fmt = args.format or BUDGET_FORMATS.get(Path(args.output).suffix.lower())
    if fmt not in ("dimod", "lp"):
        raise QpruneError(f"--budget exports a constrained problem: format {fmt or Path(args.output).suffix!r} "
                          "cannot hold it; use .cqm (dimod) or .lp")
    check_output(args.output, "--output")
    if parse_budget(args.budget).kind == "latency":
        raise QpruneError("a latency budget is a measured per-layer table, not a polynomial in the units: "
                          "it cannot be exported; use macs=, params= or units=")
    request = budget_request(args)
    weights = parse_weights(args.weights)
    problem, model, _ = load_problem_and_model(args)
    prep = prepare(model, problem, methods=[args.method], layers=args.layers, min_keep=args.min_keep,
                   residual_branches=residual_branches(args), fisher=args.fisher, weights=weights,
                   progress=not args.quiet)
    cqm = budget_problem(prep.space, prep.signals, args.method, request, method_options(args, weights))
    if fmt == "lp":
        write_budget_lp(cqm, args.output, linearize=True)
    else:
        with cqm.to_file() as src, atomic_open(args.output, "wb") as fh:
            fh.write(src.read())
    print(f"wrote {args.output}: objective + budget {request.budget.text} ({', '.join(cqm.constraints)[:80]}), "
          f"{len(cqm.variables)} variables{' (linearised products as continuous y_i_j)' if fmt == 'lp' else ''}")
    return 0
