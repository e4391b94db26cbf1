"""QUBO core benchmark: build + exact-k solve of a synthetic full-Half-UNet instance (~4,000 units).

Compares, in one run and on one instance:

* ``paper``: the paper's procedure. neal at its default sweeps; exactly 20 bisection steps on gamma
  with 15 reads each (direction from the count of the lowest-energy read), then 100 reads at the last
  gamma whose best read had k ones (else the middle of the final bracket); the answer is the
  lowest-energy read of that final solve, whatever its count.
* ``qprune (defaults)``: :func:`qprune.solve.gamma.exact_k.solve_exact_k` with the paper's defaults (neal
  default sweeps, 15 reads while searching, 100 final reads) plus what it adds: any-read acceptance,
  per-layer recombination, interpolation on gamma, warm starts, pair-swap polish.
* ``qprune (fast)``: the same with fewer sweeps and final reads (``--fast-sweeps``, ``--fast-reads``);
  the table shows whether the quality holds.
* ``qprune (fast, no recombination)``: an ablation of the per-layer recombination.

Every answer is scored on the same BQMs: the objective (gamma = 0) and the energy on BQM(gamma_ref),
gamma_ref being the paper's final gamma. Lower is better for both; at a fixed count the second is the
one the paper's final solve minimises. Run: ``.venv/bin/python benchmarks/qubo_core.py`` (this is
not a test; on a shared 2-core machine expect several minutes, mostly the paper's 400 reads).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from qprune.pipeline.report import machine_info
from qprune.solve.gamma.exact_k import QuboArrays, solve_exact_k
from qprune.qubo.formulation import formulate, preset_terms
from qprune.instances.synthetic import synthetic_instance
from qprune.qubo.terms import compute_terms

# helper module beside this script (benchmarks/)
from common import PAPER_FULL_SPARSITY, RESULTS


def build(n: int, seed: int) -> tuple[Any, dict[str, float]]:
    """The hybrid (channel-Fisher) Formulation of a synthetic instance, with the time of each step."""
    t = {}
    t0 = time.perf_counter()
    inst = synthetic_instance(n_units=n, layer_sizes=(64, 128), seed=seed)
    t["instance_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    terms = compute_terms(preset_terms("hybrid", "channel"), inst)
    t["terms_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    form = formulate(terms, "hybrid", fisher="channel", labels=inst["labels"], layer_ids=inst["layer_ids"])
    t["formulate_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    form.bqm(1.0)
    t["bqm_s"] = time.perf_counter() - t0
    return form, t


def paper_procedure(form: Any, k: int, seed: int, steps: int = 20, reads: int = 15,
                    final_reads: int = 100) -> dict[str, Any]:
    """Plain bisection on gamma judged by the lowest-energy read, then one final solve."""
    from dwave.samplers import SimulatedAnnealingSampler

    sampler = SimulatedAnnealingSampler()
    rng = np.random.default_rng(seed)
    arrs = QuboArrays.from_bqm(form.objective_bqm(), form.reward, form.labels)
    lo, hi = arrs.gamma_bracket()  # all zeros optimal below lo, all ones above hi: no solve needed
    t_start, c_start = time.perf_counter(), time.process_time()
    hit_gamma, trace = None, []

    def best_read(gamma: float, num_reads: int) -> np.ndarray:
        ss = sampler.sample(form.bqm(gamma), num_reads=num_reads, seed=int(rng.integers(0, 2**31 - 1)))
        first = ss.first.sample
        return np.array([first[v] for v in form.labels], dtype=np.int8)

    for _ in range(steps):
        gamma = 0.5 * (lo + hi)
        t0 = time.perf_counter()
        x = best_read(gamma, reads)
        count = int(x.sum())
        trace.append({"gamma": gamma, "count_best": count, "time_s": time.perf_counter() - t0})
        if count == k:
            hit_gamma = gamma
        if count < k:
            lo = gamma
        else:
            hi = gamma
    gamma_final = hit_gamma if hit_gamma is not None else 0.5 * (lo + hi)
    x = best_read(gamma_final, final_reads)
    return {"x": x, "gamma": gamma_final, "time_s": time.perf_counter() - t_start,
            "cpu_s": time.process_time() - c_start, "solves": steps + 1,
            "hit": hit_gamma is not None, "trace": trace}


def score(form: Any, x: np.ndarray, gamma_ref: float) -> dict[str, Any]:
    return {
        "count": int(x.sum()),
        "objective": float(form.energy(x, 0.0)),
        "energy_at_gamma_ref": float(form.energy(x, gamma_ref)),
        "reward": float(form.reward @ x),  # share of all parameters in the pruned units
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=4000, help="prunable units (default 4000: the full Half-UNet)")
    ap.add_argument("--sparsity", type=float, default=PAPER_FULL_SPARSITY, help="share of units pruned (paper: ~36 %%)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--fast-sweeps", type=int, default=300, help="neal sweeps of the fast configuration")
    ap.add_argument("--fast-reads", type=int, default=15, help="final reads of the fast configuration")
    ap.add_argument("--skip-paper", action="store_true", help="leave out the paper's procedure (smoke runs)")
    ap.add_argument("--out", type=Path, default=RESULTS / "qubo_core.json")
    args = ap.parse_args(argv)

    machine = machine_info()
    form, build_times = build(args.n, args.seed)
    n = form.num_variables
    k = round(args.sparsity * n)
    print(f"instance: {n} units in {len(form.blocks)} layers, "
          f"{sum(idx.size * (idx.size - 1) // 2 for idx, _ in form.blocks)} couplings, k = {k}; "
          f"build {sum(build_times.values()):.2f} s ({', '.join(f'{a} {b:.2f}' for a, b in build_times.items())})",
          flush=True)

    runs: dict[str, dict[str, Any]] = {}
    if not args.skip_paper:
        print("paper procedure (20 x 15 reads + 100 reads, neal default sweeps) ...", flush=True)
        runs["paper"] = paper_procedure(form, k, args.seed)
    configs = {
        "qprune (defaults)": {},
        "qprune (fast)": {"sampler_params": {"num_sweeps": args.fast_sweeps}, "final_reads": args.fast_reads},
        "qprune (fast, no recombination)": {"sampler_params": {"num_sweeps": args.fast_sweeps},
                                            "final_reads": args.fast_reads, "recombine": False},
    }
    for name, kw in configs.items():
        print(f"{name} ...", flush=True)
        t0, c0 = time.perf_counter(), time.process_time()
        res = solve_exact_k(form, k, "neal", args.seed, **kw)
        runs[name] = {"x": res.x, "gamma": res.gamma, "time_s": time.perf_counter() - t0,
                      "cpu_s": time.process_time() - c0,
                      "solves": res.info["solves"], "hit": res.info["hit"], "config": kw,
                      "info": {key: v for key, v in res.info.items() if key != "iterations"},
                      "trace": res.info["iterations"]}

    gamma_ref = runs["paper"]["gamma"] if "paper" in runs else runs["qprune (defaults)"]["gamma"]
    base_time = runs["paper"]["time_s"] if "paper" in runs else None
    base_cpu = runs["paper"]["cpu_s"] if "paper" in runs else None
    rows = []
    for name, r in runs.items():
        s = score(form, r["x"], gamma_ref)
        row = {"method": name, "time_s": r["time_s"], "cpu_s": r["cpu_s"], "solves": r["solves"],
               "gamma": r["gamma"], **s,
               "speedup_vs_paper": (base_time / r["time_s"]) if base_time else None,
               "cpu_speedup_vs_paper": (base_cpu / r["cpu_s"]) if base_cpu else None}
        rows.append(row)
        r.update(s)

    header = f"{'method':34s} {'time s':>8s} {'x paper':>8s} {'cpu s':>8s} {'x paper':>8s} {'solves':>6s} {'count':>6s} " \
             f"{'objective':>14s} {'E(gamma_ref)':>14s} {'params pruned':>13s}"
    print()
    print(header)
    print("-" * len(header))
    for row in rows:
        sp = f"{row['speedup_vs_paper']:.2f}" if row["speedup_vs_paper"] else "-"
        cs = f"{row['cpu_speedup_vs_paper']:.2f}" if row["cpu_speedup_vs_paper"] else "-"
        print(f"{row['method']:34s} {row['time_s']:8.2f} {sp:>8s} {row['cpu_s']:8.2f} {cs:>8s} {row['solves']:6d} {row['count']:6d} "
              f"{row['objective']:14.4f} {row['energy_at_gamma_ref']:14.4f} {row['reward']:13.4f}")
    print(f"(k = {k}; gamma_ref = {gamma_ref:.6g}; energies on the same BQMs, lower is better; "
          f"'x paper' = paper time / this time, wall and CPU: the machine is shared, CPU time is steadier)")

    machine["loadavg_end"] = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    payload = {
        "benchmark": "qubo_core",
        "command": " ".join([Path(sys.argv[0]).name, *(argv if argv is not None else sys.argv[1:])]),
        "seed": args.seed, "n": n, "k": k, "layers": len(form.blocks), "gamma_ref": gamma_ref,
        "build_times_s": build_times, "machine": machine, "table": rows,
        "runs": {name: {key: v for key, v in r.items() if key != "x"} for name, r in runs.items()},
    }
    from qprune.atomic import write_json

    write_json(args.out, payload)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
