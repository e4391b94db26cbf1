"""`qprune tune`: search the QUBO weights (Optuna) on the validation split at a fixed k."""

from __future__ import annotations

import argparse

from qprune.commands._common import add_problem_args, add_solver_args, add_space_args, load_problem_and_model


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "tune", help="search the QUBO weights on the validation split (Optuna, resumable)",
        description="Search (alpha, alpha_F, beta_diag, beta_off, lambda) for a QUBO method at exactly k, "
                    "gamma searched inside every trial. --storage makes the study resumable and shareable.")
    add_problem_args(p)
    add_solver_args(p)
    add_space_args(p)
    p.add_argument("--trials", type=int, default=20, help="number of trials (default 20)")
    p.add_argument("--timeout", type=float, help="stop after this many seconds")
    p.add_argument("--sampler", choices=("tpe", "random"), default="tpe")
    p.add_argument("--storage", help="SQLite file (or Optuna RDB URL) holding the study")
    p.add_argument("--study", help="study name (default derived from method and k)")
    p.add_argument("--output", "-o", required=True, help="best weights as JSON (usable as --weights)")
    p.add_argument("--quiet", "-q", action="store_true")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from qprune.commands._common import check_amount, check_output, method_options
    from qprune.pipeline.run import method_spec, prepare, resolve_k, tune_weights

    check_amount(args)
    method_spec(args.method)
    check_output(args.output, "--output")
    problem, model, _ = load_problem_and_model(args)
    prep = prepare(model, problem, methods=[args.method], layers=args.layers, min_keep=args.min_keep,
                   fisher=args.fisher, progress=not args.quiet)
    k = resolve_k(prep.space.N, args.sparsity, args.k)
    result = tune_weights(prep, args.method, k, method_options(args), n_trials=args.trials, timeout=args.timeout,
                          sampler=args.sampler, storage=args.storage, study_name=args.study, save_best=args.output,
                          progress=not args.quiet)
    print(f"best validation metric {result.best_value:.4f} after {result.n_trials} trials; "
          f"weights written to {args.output}")
    return 0
