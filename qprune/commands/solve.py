"""`qprune solve`: solve a QUBO file (any format qprune reads) with a backend.

Solve a QUBO file. A constrained file (objective + sum(x) = k) or --k runs the exact-k search (gamma
search with a reward of 1 per variable, then k-preserving repair/polish); otherwise the backend
samples the BQM and the best sample is kept. A budgeted file (`qprune export --budget`: .cqm or .lp
with a budget constraint) is solved as a MILP by HiGHS (--backend highs, the only backend that takes
it; --time-limit).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from qprune.commands import add_command
from qprune.errors import QpruneError

if TYPE_CHECKING:  # pragma: no cover
    from qprune.solve.sampling import SamplerCall


def register(subparsers: argparse._SubParsersAction) -> None:
    p = add_command(subparsers, run)
    p.add_argument("file", help="QUBO file: .bqm/.cqm (dimod), .coo, .json, .qubo, .lp, .npz")
    p.add_argument("--format", "-f", help="file format when the suffix does not say")
    p.add_argument("--backend", "-b", default="neal", help="solver backend (see `qprune backends`; default neal)")
    p.add_argument("--k", type=int, help="number of ones wanted (overrides the k stored in the file)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--reads", type=int, default=100,
                   help="reads of the final solve (plain sampling: the only solve; default 100)")
    p.add_argument("--search-reads", type=int, default=15, help="reads per gamma-search solve (default 15)")
    p.add_argument("--max-iter", type=int, default=20, help="gamma-search iterations at most (default 20)")
    p.add_argument("--no-polish", action="store_true", help="skip the pair-swap local search")
    p.add_argument("--param", "-p", action="append", default=[], metavar="KEY=VALUE",
                   help="backend parameter, e.g. -p num_sweeps=500 (VALUE read as JSON when it parses)")
    p.add_argument("--time-limit", type=float, default=60.0,
                   help="budgeted files: HiGHS's time limit in seconds (its best incumbent is kept; default 60)")
    p.add_argument("--start", metavar="FILE",
                   help="budgeted files: HiGHS's first incumbent, a sample file or a recipe from `qprune prune "
                        "--budget ... --recipe` (a recipe's units in order: x<i> in an .lp)")
    p.add_argument("--out", "-o", help="write {sample, energy, info} as JSON here ('-' for stdout)")
    p.add_argument("--progress", action="store_true", help="show a progress bar")


def parse_params(items: list[str]) -> dict[str, Any]:
    """``["num_sweeps=500", "beta_range=[0.1, 5]"]`` -> ``{"num_sweeps": 500, "beta_range": [0.1, 5]}``."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or not key.isidentifier():
            raise QpruneError(f"--param {item!r} is not KEY=VALUE")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


def run(args: argparse.Namespace) -> int:
    # project modules are imported here, not at the top: the CLI imports every command module to
    # build its parser, and the solve layer (dimod, scipy) would add ~1 s to every `qprune` call
    from qprune import backends
    from qprune.qubo import fileio as qubo_io
    from qprune.solve.arrays import lagrangian
    from qprune.solve.gamma.exact_k import solve_exact_k
    from qprune.solve.budgets.milp import read_budget_file
    from qprune.solve.sampling import SamplerCall

    # every check that can fail runs before any work, so a bad call writes nothing
    if args.backend != "highs":
        backends.info(args.backend)
    params = parse_params(args.param)
    for flag, value, low in (("--reads", args.reads, 1), ("--search-reads", args.search_reads, 1),
                             ("--max-iter", args.max_iter, 0)):
        if value < low:
            raise QpruneError(f"{flag} must be >= {low}, got {value}")
    if args.out and args.out != "-":
        parent = Path(args.out).resolve().parent
        if parent.exists() and not parent.is_dir():
            raise QpruneError(f"--out {args.out!r}: {str(parent)!r} is not a directory")
    budget_file = read_budget_file(args.file)
    if budget_file is not None:
        return _solve_budget(args, budget_file)
    if args.backend == "highs":
        raise QpruneError(f"--backend highs solves budgeted files (`qprune export --budget`); {args.file} has no "
                          "budget constraint: use a QUBO backend (see `qprune backends`)")
    loaded = qubo_io.load_bqm(args.file, format=args.format)
    bqm = loaded.bqm
    n = bqm.num_variables
    k, k_source = (args.k, "--k") if args.k is not None else (loaded.k, "file")
    if k is not None and not 0 <= k <= n:
        raise QpruneError(f"k={k} is out of range: {args.file} has {n} variables (0 <= k <= {n})")

    t0 = time.perf_counter()
    if k is None:
        labels, x, energy, info = _sample(SamplerCall.of(args.backend, params), bqm, args)
    else:
        res = solve_exact_k(lagrangian(bqm), k, args.backend, args.seed, max_iter=args.max_iter,
                            search_reads=args.search_reads, final_reads=args.reads,
                            polish=not args.no_polish, progress=args.progress, sampler_params=params)
        labels, x = res.labels, res.x
        # the file's BQM is the objective: report its energy, and gamma's for the record
        energy = res.objective
        info = {k_: v for k_, v in res.info.items() if k_ not in ("objective", "energy")}
        info["energy_at_gamma"] = res.energy
        info["k_source"] = k_source
    count = sum(int(b) for b in x)  # int8 arrays would overflow a plain sum past 127
    info.update({"file": str(args.file), "num_variables": n, "count": count,
                 "wall_time_s": time.perf_counter() - t0})
    payload = {"sample": {_key(v): int(b) for v, b in zip(labels, x)}, "energy": float(energy), "info": info}

    mode = f"exact k={k} ({k_source})" if k is not None else "plain sampling"
    summary = (f"solved {args.file}: {n} variables, {mode}, backend {args.backend}: energy {energy:.10g}, "
               f"{count} ones, {info['wall_time_s']:.2f} s")
    if k is not None:
        summary += (f", gamma {info['gamma']:.6g}, {info['solves']} solves"
                    + (f", repaired ({info['repair_moves']} moves)" if info["repaired"] else "")
                    + (f", polished ({info['polish_moves']} swaps)" if info["polished"] else ""))
    return _emit(args, summary, payload)


def _emit(args: argparse.Namespace, summary: str, payload: dict[str, Any]) -> int:
    """Print the summary; the JSON goes to stdout (``--out -``, summary on stderr) or to ``--out``."""
    from qprune.atomic import write_json

    if args.out == "-":
        print(summary, file=sys.stderr)
        print(json.dumps(payload, indent=1, default=_json_default))
        return 0
    if args.out:
        write_json(args.out, payload)
        summary += f"; wrote {args.out}"
    print(summary)
    return 0


def _solve_budget(args: argparse.Namespace, budget_file: Any) -> int:
    """A budgeted file (a ``BudgetFile``): HiGHS on its (linearised) MILP; prints/writes as the QUBO
    path does."""
    from qprune.solve.budgets.milp import solve_budget_file

    if args.backend not in ("highs", "neal"):  # neal: the default, i.e. no backend asked for
        raise QpruneError(f"backend {args.backend!r} takes no constraints: a budgeted file is solved with "
                          "--backend highs (or as a CQM by LeapHybridCQMSampler, outside qprune)")
    if args.k is not None:
        raise QpruneError("--k does not apply to a budgeted file: its budget constraint sets the size")
    start = _read_start(args.start, budget_file.units) if args.start else None
    t0 = time.perf_counter()
    res = solve_budget_file(budget_file, time_limit=args.time_limit, seed=args.seed, start=start)
    count = sum(res.x)
    info = dict(res.info, backend="highs", file=str(args.file), num_variables=len(res.x), count=count,
                wall_time_s=time.perf_counter() - t0)
    payload = {"sample": {_key(v): int(b) for v, b in zip(res.labels, res.x)}, "energy": res.objective,
               "info": info}
    summary = (f"solved {args.file}: {len(res.x)} variables, budgeted MILP, HiGHS ({info['status']}): "
               f"objective {res.objective:.10g}, {count} ones, feasible {info['feasible']}, "
               f"{info['wall_time_s']:.2f} s")
    return _emit(args, summary, payload)


def _read_start(path: str, units: list[Any]) -> list[int]:
    """A start for a budgeted file: a recipe (its pruned labels; by position in an .lp's x<i>) or a
    sample file matched to the file's unit labels."""
    from qprune.model.recipe import RECIPE_FORMAT, load_recipe
    from qprune.qubo.io_samples import load_sample

    try:
        is_recipe = json.loads(Path(path).read_text()).get("format") == RECIPE_FORMAT
    except (OSError, ValueError, AttributeError):
        is_recipe = False
    if not is_recipe:
        return [int(v) for v in load_sample(path, [str(u) for u in units])]
    recipe = load_recipe(path)
    by_position = bool(units) and units[0] == "x0" and "x0" not in recipe["labels"]  # an .lp's renamed units
    labels = recipe["labels"] if by_position else [str(u) for u in units]
    if len(recipe["labels"]) != len(units) or not (by_position or set(labels) == set(recipe["labels"])):
        raise QpruneError(f"--start {path}: the recipe's {len(recipe['labels'])} units are not the "
                          f"{len(units)} units of the budgeted file")
    pruned = set(recipe["pruned"])
    return [int(label in pruned) for label in labels]


def _sample(call: SamplerCall, bqm: Any, args: argparse.Namespace) -> tuple[list[Any], list[int], float, dict[str, Any]]:
    """Plain sampling: the lowest-energy read of one call with ``--reads`` reads and ``--seed``."""
    import dimod

    if bqm.vartype is not dimod.BINARY:
        bqm = bqm.change_vartype(dimod.BINARY, inplace=False)
    labels = list(bqm.variables)
    s = call(bqm, labels, reads=args.reads, seed=args.seed)
    x = [int(b) for b in s.X[s.best]]
    info = {"backend": args.backend, "seed": args.seed, "num_reads": int(s.num_occurrences.sum()),
            "solve_time_s": s.time_s, "energy_min": float(s.energy.min()), "energy_mean": float(s.energy.mean())}
    return labels, x, float(bqm.energy(dict(zip(labels, x)))), info


def _key(label: Any) -> str:
    return label if isinstance(label, str) else json.dumps(label) if isinstance(label, (list, tuple)) else str(label)


def _json_default(obj: Any) -> Any:
    if hasattr(obj, "tolist"):
        return obj.tolist()
    raise TypeError(f"{type(obj).__name__} is not JSON serialisable")
