"""`qprune tune`: search the QUBO weights on the validation split (Optuna, resumable, shareable).

Search (alpha, alpha_F, beta_diag, beta_off, lambda) for a QUBO method at exactly k, gamma searched
inside every trial. --storage makes the study resumable and shareable; --workers N runs N processes
on one study (a PostgreSQL/MySQL URL for real parallel use).
"""

from __future__ import annotations

import argparse
import multiprocessing

from qprune.commands import add_command
from qprune.commands._common import (
    add_problem_args, add_solver_args, add_space_args, load_problem_and_model, residual_branches,
)
from qprune.errors import QpruneError


def register(subparsers: argparse._SubParsersAction) -> None:
    p = add_command(subparsers, run, add_problem_args)
    # the default method (fisher-qubo) has no weights: the weighted one is the paper's hybrid
    add_solver_args(p, default_method="hybrid-qubo")
    add_space_args(p)
    p.add_argument("--trials", type=int, default=20, help="number of trials, over all workers (default 20)")
    p.add_argument("--timeout", type=float, help="stop after this many seconds")
    p.add_argument("--sampler", choices=("tpe", "random"), default="tpe")
    p.add_argument("--storage", help="SQLite file or Optuna RDB URL (postgresql://user@host/db) holding the study")
    p.add_argument("--study", help="study name (default derived from method and k)")
    p.add_argument("--workers", type=int, default=1,
                   help="processes searching the one study at once (needs --storage; default 1)")
    p.add_argument("--output", "-o", required=True, help="best weights as JSON (usable as --weights)")
    p.add_argument("--quiet", "-q", action="store_true")



def _search(args: argparse.Namespace, trials: int, worker: int, progress: bool) -> tuple:
    """Prepare the model and run ``trials`` of the study; returns (k, study name, result)."""
    from qprune.commands._common import method_options
    from qprune.pipeline.run import default_study_name, prepare, resolve_k, tune_weights

    problem, model, _ = load_problem_and_model(args)
    prep = prepare(model, problem, methods=[args.method], layers=args.layers, min_keep=args.min_keep,
                   residual_branches=residual_branches(args), fisher=args.fisher, progress=progress)
    k = resolve_k(prep.space.N, args.sparsity, args.k)
    study = args.study or default_study_name(args.method, k)
    # each worker's sampler has its own seed, so two workers do not propose the same weights
    result = tune_weights(prep, args.method, k, method_options(args), n_trials=trials, timeout=args.timeout,
                          sampler=args.sampler, storage=args.storage, study_name=study,
                          sampler_seed=args.seed + worker, progress=progress)
    return k, study, result


def run(args: argparse.Namespace) -> int:
    from qprune.atomic import write_json
    from qprune.commands._common import check_amount, check_output
    from qprune.pipeline.run import method_spec
    from qprune.pipeline.tune import open_study, study_result, worker_shares

    check_amount(args)
    method_spec(args.method)
    check_output(args.output, "--output")
    if args.workers > 1 and not args.storage:
        raise QpruneError("--workers needs --storage: the workers share the study through it")
    shares = worker_shares(args.trials, args.workers)
    # spawn, not fork: each worker imports torch afresh instead of inheriting a parent's threads
    ctx = multiprocessing.get_context("spawn")
    others = [ctx.Process(target=_search, args=(args, n, i, False), name=f"qprune-tune-{i}")
              for i, n in enumerate(shares[1:], start=1)]
    for proc in others:
        proc.start()
    try:
        k, study_name, result = _search(args, shares[0], 0, progress=not args.quiet)
    finally:
        for proc in others:
            proc.join()
    failed = [p.name for p in others if p.exitcode != 0]
    if failed:
        raise QpruneError(f"tuning worker(s) {', '.join(failed)} failed; the study keeps every finished trial")
    if others:  # the best over every worker's trials, read back from the shared storage
        result = study_result(open_study(args.storage, study_name, sampler=args.sampler), seconds=result.seconds)
    write_json(args.output, result.to_dict())
    print(f"best validation metric {result.best_value:.4f} after {result.n_trials} trials "
          f"({args.workers} worker{'s' if args.workers > 1 else ''}, k={k}); weights written to {args.output}")
    return 0
