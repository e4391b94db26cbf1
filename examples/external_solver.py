"""Export the pruning QUBO, solve it outside qprune, import the sample and score it on the network.

Two external solvers:

1. HiGHS (``highspy``) on the LP file: the QUBO's objective with the constraint ``sum(x) = k``,
   linearised (``y_ij`` for each product ``x_i x_j``, since HiGHS solves MILPs but not binary
   quadratic programs), solved as a MIP under a time limit. Gurobi, CPLEX or any LP-reading
   solver takes the same file (those two also read the quadratic LP, without ``linearize``).
2. Your own code on the JSON file: here a few lines of numpy that read the linear and quadratic
   biases by label and run a greedy swap search with exactly k ones.

Each answer is written as a sample file (``{label: 0|1}``, 1 = pruned) and scored by qprune on the
model, exactly as ``qprune apply --sample`` does.

    python examples/external_solver.py [--quick]
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np

import qprune
from qprune import problems
from qprune.pipeline import MethodOptions, finish, prepare, select_mask


def solve_lp_with_highs(path: Path, time_limit: float) -> dict[str, int]:
    """The LP/MIP file solved by HiGHS (its best incumbent at the time limit); returns ``{label: 0|1}``."""
    import highspy

    h = highspy.Highs()
    h.setOptionValue("output_flag", False)
    h.setOptionValue("time_limit", time_limit)
    h.readModel(str(path))
    h.run()
    if h.getInfo().primal_solution_status != highspy.SolutionStatus.kSolutionStatusFeasible:
        raise RuntimeError(f"HiGHS found no feasible point in {time_limit} s: {h.modelStatusToString(h.getModelStatus())}")
    values = dict(zip((h.getColName(i)[1] for i in range(h.getNumCol())), h.getSolution().col_value))
    # the file names the units x0, x1, ... in the order of the BQM it was written from
    labels = list(qprune.load_bqm(path).bqm.variables)
    return {label: int(round(values[f"x{i}"])) for i, label in enumerate(labels)}


def solve_json_yourself(path: Path, k: int, sweeps: int = 20) -> dict[str, int]:
    """A stand-in for your own solver: greedy fill to k ones, then improving swaps, on the JSON biases."""
    data = json.loads(path.read_text())  # dimod's JSON: variable labels, linear and quadratic terms
    bqm = qprune.load_bqm(path).bqm
    labels = list(bqm.variables)
    h = np.array([bqm.linear[v] for v in labels])
    index = {v: i for i, v in enumerate(labels)}
    J = np.zeros((len(labels), len(labels)))
    for (u, v), b in bqm.quadratic.items():
        J[index[u], index[v]] = J[index[v], index[u]] = b
    x = np.zeros(len(labels))
    x[np.argsort(h)[:k]] = 1  # the k cheapest alone
    for _ in range(sweeps):
        field = h + J @ x  # energy change of setting each variable on (given the others)
        ones, zeros = np.flatnonzero(x), np.flatnonzero(x == 0)
        i, j = ones[np.argmax(field[ones])], zeros[np.argmin(field[zeros])]
        gain = field[j] - field[i] - J[i, j]
        if gain >= 0:
            break
        x[i], x[j] = 0, 1
    assert data and int(x.sum()) == k
    return {v: int(b) for v, b in zip(labels, x)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="the digits classifier (small), short HiGHS limit")
    args = p.parse_args(argv)
    problem, model = problems.load_pretrained("classify" if args.quick else "denoise")
    prep = prepare(model, problem, methods=["hybrid-qubo"], progress=False)
    k = int(round(0.3 * prep.space.N))
    mask, out = select_mask(prep, "hybrid-qubo", k, MethodOptions(seed=0))
    formulation = out["formulation"]
    work = Path(tempfile.mkdtemp(prefix="qprune-external-"))
    lp, js = work / "qubo.lp", work / "qubo.json"
    qprune.export_constrained(formulation.objective_bqm(), k, lp, linearize=True)  # objective + sum(x) = k
    qprune.export_bqm(out["solved"].bqm, js)                         # the BQM at the gamma qprune found
    answers = {"qprune (neal)": {lab: int(v) for lab, v in zip(prep.space.labels, mask)},
               "HiGHS on the LP": solve_lp_with_highs(lp, time_limit=5 if args.quick else 60),
               "your code on the JSON": solve_json_yourself(js, k)}
    objective = formulation.objective_bqm()
    for name, sample in answers.items():
        qprune.save_sample(sample, work / "sample.json")           # what an external solver hands back
        x = qprune.load_sample(work / "sample.json", prep.space.labels).astype(bool)
        result = finish(prep.model, prep.space, x, prep.work, remove=False)
        metric = next(iter(result.metrics_after.items()))
        print(f"{name:24s} k={int(x.sum())}  objective {objective.energy(sample):9.4f}  "
              f"{metric[0]} {metric[1]:.4f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
