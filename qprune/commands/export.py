"""`qprune export`: write the pruning QUBO of a run to a file an external solver reads."""

from __future__ import annotations

import argparse
from dataclasses import replace

from qprune.commands._common import (
    add_problem_args, add_solver_args, add_space_args, check_amount, check_output, load_problem_and_model,
    method_options, parse_weights,
)


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "export", help="write the pruning QUBO (at the found gamma, or the constrained form) to a file",
        description="Build the pruning QUBO of a QUBO method, find gamma for exactly k, and export it. "
                    "With --constrained, write the objective without the gamma term plus sum(x) = k.")
    add_problem_args(p)
    add_solver_args(p)
    add_space_args(p)
    p.add_argument("--format", "-f", help="file format (default: from the suffix of -o): "
                   "dimod, coo, json, qubo, lp, npz")
    p.add_argument("--constrained", action="store_true",
                   help="export objective + constraint sum(x)=k instead of the BQM at the found gamma")
    p.add_argument("--output", "-o", required=True, help="output file")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bars")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from qprune.qubo import fileio as qubo_io
    from qprune.pipeline.run import method_spec, prepare, resolve_k, select_mask

    check_amount(args)
    spec = method_spec(args.method)
    if spec.kind != "qubo":
        from qprune.errors import QpruneError

        raise QpruneError(f"method {args.method!r} builds no QUBO; export needs a *-qubo method")
    check_output(args.output, "--output")
    weights = parse_weights(args.weights)
    problem, model, _ = load_problem_and_model(args)
    prep = prepare(model, problem, methods=[args.method], layers=args.layers, min_keep=args.min_keep,
                   fisher=args.fisher, weights=weights, progress=not args.quiet)
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
