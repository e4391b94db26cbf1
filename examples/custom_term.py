"""Add your own QUBO term: a plain function over arrays, registered by name, weighted like the rest.

The term here makes pruning the early layers dearer (their features feed everything after them):
a linear cost ``1 / (1 + depth)`` per unit, depth = the unit's layer index. A provider takes the
calibration inputs (the Signals fields, ``params`` and ``layer_ids``) and returns a
:class:`qprune.Term` or a bare array (its linear part). It is normalised like every built-in term,
then enters the QUBO with the weight ``Weights(extra={name: w})`` gives it.

    python examples/custom_term.py [--quick]
"""

from __future__ import annotations

import argparse

import numpy as np

import qprune
from qprune import problems


def early_layer_cost(inputs, power: float = 1.0) -> np.ndarray:
    """Cost of pruning each unit: 1 / (1 + layer index) ** power (a linear term over units)."""
    depth = np.asarray(inputs["layer_ids"], dtype=np.float64)
    return 1.0 / (1.0 + depth) ** power


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="the digits classifier instead of the denoiser")
    args = p.parse_args(argv)
    qprune.register_term("early_layer_cost", early_layer_cost, requires=("layer_ids",),
                         description="1 / (1 + depth): keep the early layers", replace=True)
    problem, model = problems.load_pretrained("classify" if args.quick else "denoise")
    rows = []
    for weight in (0.0, 20.0):
        result = qprune.prune(model, problem, sparsity=0.3, method="hybrid-qubo", seed=0, progress=False,
                              options=qprune.MethodOptions(weights=qprune.Weights(extra={"early_layer_cost": weight})),
                              remove=False)
        rows.append((weight, [r["pruned"] for r in result.per_layer()], result.metrics_after))
    for weight, counts, metrics in rows:
        shown = ", ".join(f"{k} {v:.4f}" for k, v in metrics.items())
        print(f"early_layer_cost weight {weight:g}: pruned per layer {counts}; {shown}")
    # the cost grows toward the input: the layers before the last two lose no more units with it
    assert sum(rows[1][1][:-2]) <= sum(rows[0][1][:-2])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
