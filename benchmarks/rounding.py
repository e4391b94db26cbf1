"""Do this CPU's conv kernels prefer channel counts that are multiples of 8? (``make bench-rounding``)

Issue 19 asks for ``round_to=N`` (kept counts multiples of N per layer) and for a measurement of
whether it pays here. Two measurements, one torch thread, float32, side by side in one run:

* **kernels**: one 3x3 convolution with ``c`` input and ``c`` output channels on a 1 x c x S x S
  input, for every ``c`` in ``--channels`` (NCHW and channels-last); median of ``--repeats`` calls;
  time per MAC, and the time of ``c`` against the next multiple of 8 at or above it (a ratio > 1
  means the smaller, unrounded layer is slower than the rounded-up one);
* **models**: the same model pruned to the same MACs budget with ``round_to`` 1 and 8, in the space
  with residual-branch units (``residual_branches="auto"``) and in the default one without them
  (issue 17 asks that the branch units not make pruned models slower at equal MACs) (the
  trained F = 64 SIDD Half-UNet; ``--quick``: the bundled F = 16 denoiser), physically removed,
  its latency (``--rounds`` interleaved rounds of ``--repeats`` calls, with the unpruned model in
  every round), MACs and test PSNR.

Output: ``benchmarks/results/rounding.{json,md}`` (``rounding_quick.*`` with ``--quick``). Figures are
as measured on a shared 2-core machine: read the ratios, not single timings.
"""

from __future__ import annotations

import argparse
import copy
import itertools
import sys
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from qprune.atomic import write_json
from qprune.errors import QpruneError
from qprune.model.masking import apply_mask
from qprune.model.stats import count_macs, measure_latency, time_calls
from qprune.pipeline.budgeted import BudgetRequest, select_budget_mask
from qprune.pipeline.report import machine_info
from qprune.pipeline.run import prepare
from qprune.pipeline.workload import evaluate
from qprune.problems import load_checkpoint, load_pretrained

# helper module beside this script (benchmarks/)
from common import RESULTS, SIDD_CKPT, SIDD_DATA, logger, write_lines

METHODS = ("taylor-greedy", "hybrid-qubo")

log = logger("rounding")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="a short channel sweep and the bundled F=16 denoiser")
    ap.add_argument("--channels", help="channel counts, lo:hi (default 40:72; --quick 14:18)")
    ap.add_argument("--size", type=int, default=64, help="input height = width of the kernel sweep (default 64)")
    ap.add_argument("--budgets", default="0.5,0.7", help="MACs budgets of the model rows (default 0.5,0.7)")
    ap.add_argument("--repeats", type=int, default=20, help="timed calls per measurement (default 20)")
    ap.add_argument("--rounds", type=int, default=5, help="interleaved latency rounds of the models (default 5)")
    ap.add_argument("--out", help="output stem (default benchmarks/results/rounding[_quick])")
    return ap.parse_args(argv)


def kernel_rows(channels: Sequence[int], size: int, repeats: int) -> list[dict[str, Any]]:
    """One row per (channel count, layout): median ms of a c -> c 3x3 conv, and ns per MAC."""
    rows = []
    for layout in ("nchw", "channels_last"):
        fmt = torch.channels_last if layout == "channels_last" else torch.contiguous_format
        for c in channels:
            conv = torch.nn.Conv2d(c, c, 3, padding=1).eval().to(memory_format=fmt)
            x = torch.randn(1, c, size, size).to(memory_format=fmt)
            with torch.inference_mode():
                ms = time_calls({"conv": lambda: conv(x)}, repeats=repeats, warmup=1, threads=None)["conv"]["median_ms"]
            macs = c * c * 9 * size * size
            rows.append({"layout": layout, "channels": c, "ms": ms, "ns_per_mac": 1e6 * ms / macs})
    for r in rows:  # against the next multiple of 8 at or above, same layout
        up = -(-r["channels"] // 8) * 8
        ref = next((q for q in rows if q["layout"] == r["layout"] and q["channels"] == up), None)
        r["vs_next_multiple_of_8"] = r["ms"] / ref["ms"] if ref else None
    return rows


def model_rows(name: str, problem: Any, model: torch.nn.Module, budgets: Sequence[float], repeats: int,
               rounds: int) -> dict[str, Any]:
    """The model at each MACs budget, per method, round_to 1 and 8, with and without residual-branch
    units: latency, MACs, test metric (a space that cannot reach a budget is listed as such).

    Latency is measured in ``rounds`` interleaved rounds (unpruned, then every pruned model, each
    ``repeats`` calls): on a shared machine one model's timings drift by a third between runs, so
    the per-round ratio to the unpruned model is the figure to read."""
    preps = {rb: prepare(model, problem, methods=list(METHODS), progress=False,
                         space_options={"residual_branches": rb}) for rb in ("auto", False)}
    prep = preps["auto"]
    example = prep.work.test[0][0][:1]
    full = count_macs(prep.model, example)
    rows, models, unreachable = [], [prep.model], []
    for budget, (rb, pr), method, round_to in itertools.product(budgets, preps.items(), METHODS, (1, 8)):
        where = {"budget": budget, "method": method, "round_to": round_to, "branch_units": rb == "auto",
                 "units": pr.space.N}
        try:
            x, _ = select_budget_mask(pr.space, pr.signals, method,
                                      BudgetRequest.of({"macs": budget}, round_to=round_to))
        except QpruneError as exc:  # e.g. without branch units the trunk's MACs cannot go
            unreachable.append({**where, "reason": str(exc)})
            continue
        mask = x.astype(bool)
        gated = apply_mask(copy.deepcopy(pr.model), pr.space, mask, mode="gate")
        metric = evaluate(gated, pr.work.test, pr.work.metrics)[pr.work.primary]
        removed = apply_mask(copy.deepcopy(pr.model), pr.space, mask, mode="remove", example_inputs=example)
        kept = [int((~mask[pr.space.layer_ids == g]).sum()) for g in range(pr.space.n_layers)]
        models.append(removed)
        rows.append({**where, "macs_kept": count_macs(removed, example) / full, pr.work.primary: float(metric),
                     "kept_per_layer": kept, "layers_multiple_of_8": sum(k % 8 == 0 for k in kept)})
    times = np.array([[measure_latency(m, example, repeats=repeats, threads=1)["median_ms"] for m in models]
                      for _ in range(rounds)])  # [round, model]
    for i, r in enumerate(rows, start=1):
        r["latency_ms"] = float(np.median(times[:, i]))
        r["latency_rounds_ms"] = times[:, i].tolist()
        r["vs_unpruned"] = float(np.median(times[:, i] / times[:, 0]))
        log(f"{name} macs={r['budget']} {r['method']} round_to={r['round_to']} branch units {r['branch_units']}: "
            f"latency {r['latency_ms']:.2f} ms ({r['vs_unpruned']:.2f}x unpruned), MACs {r['macs_kept']:.4f}, "
            f"{prep.work.primary} {r[prep.work.primary]:.4f}")
    return {"problem": name, "primary": prep.work.primary, "budgets": list(budgets),
            "unpruned_latency_ms": float(np.median(times[:, 0])), "unpruned_rounds_ms": times[:, 0].tolist(),
            "rows": rows, "unreachable": unreachable}


def _summary(rows: list[dict[str, Any]], layout: str) -> tuple[float, float]:
    mult = [r["ns_per_mac"] for r in rows if r["layout"] == layout and r["channels"] % 8 == 0]
    other = [r["ns_per_mac"] for r in rows if r["layout"] == layout and r["channels"] % 8]
    return float(np.median(mult)) if mult else float("nan"), float(np.median(other)) if other else float("nan")


def write_md(res: dict[str, Any], path: Path) -> None:
    k = res["kernels"]
    lines = ["# Channel counts (multiples of 8) and residual-branch units: latency on this CPU", "",
             f"`{res['command']}`; {res['machine']['platform']}, torch {res['machine']['torch']}, 1 thread, float32; "
             f"wall time {res['wall_s']:.0f} s.", "",
             f"## Kernels: 3x3 conv, c -> c channels, {res['size']}x{res['size']} input, median of {res['repeats']}", "",
             "| layout | multiples of 8: median ns/MAC | others: median ns/MAC | others / multiples |", "|---|---|---|---|"]
    for layout in ("nchw", "channels_last"):
        m, o = _summary(k, layout)
        lines.append(f"| {layout} | {m:.4f} | {o:.4f} | {o / m:.2f} |")
    lines += ["", "| layout | c | ms | ns/MAC | time / time at next multiple of 8 |", "|---|---|---|---|---|"]
    for r in k:
        ratio = r["vs_next_multiple_of_8"]
        lines.append(f"| {r['layout']} | {r['channels']} | {r['ms']:.3f} | {r['ns_per_mac']:.4f} | "
                     f"{'–' if ratio is None else f'{ratio:.2f}'} |")
    for p in res["models"]:
        prim = p["primary"]
        lines += ["", f"## {p['problem']}: MACs budgets {', '.join(f'{b:g}' for b in p['budgets'])} (unpruned latency "
                      f"{p['unpruned_latency_ms']:.2f} ms; {len(p['unpruned_rounds_ms'])} interleaved rounds, medians)", "",
                  f"| MACs budget | method | round_to | residual-branch units | MACs kept | latency ms | latency / unpruned "
                  f"(per round, median) | {prim} | layers with a multiple of 8 kept |", "|---|---|---|---|---|---|---|---|---|"]
        for r in p["rows"]:
            lines.append(f"| {r['budget']:g} | {r['method']} | {r['round_to']} | "
                         f"{'yes' if r['branch_units'] else 'no'} ({r['units']} units) | {r['macs_kept']:.4f} | "
                         f"{r['latency_ms']:.2f} | {r['vs_unpruned']:.2f} | {r[prim]:.4f} | "
                         f"{r['layers_multiple_of_8']} of {len(r['kept_per_layer'])} |")
        for u in p["unreachable"]:
            lines.append(f"\nNot reachable: MACs {u['budget']:g}, {u['method']}, round_to {u['round_to']}, "
                         f"branch units {'yes' if u['branch_units'] else 'no'}: {u['reason']}")
    write_lines(path, lines)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(1)
    torch.manual_seed(0)
    t0 = time.perf_counter()
    try:
        lo, _, hi = (args.channels or ("14:18" if args.quick else "40:72")).partition(":")
        channels = list(range(int(lo), int(hi) + 1))
        if not channels or channels[0] < 1:
            raise QpruneError(f"--channels {args.channels!r}: give lo:hi with 1 <= lo <= hi")
        kernels = kernel_rows(channels, args.size, args.repeats)
        if args.quick:
            name, (problem, model) = "denoise (bundled F=16)", load_pretrained("denoise")
        else:
            if not SIDD_CKPT.is_file():
                raise QpruneError(f"checkpoint {SIDD_CKPT} does not exist")
            name, (problem, model) = "denoise (SIDD F=64)", load_checkpoint(str(SIDD_CKPT), data=str(SIDD_DATA))
        models = [model_rows(name, problem, model.eval(), [float(b) for b in args.budgets.split(',')],
                             args.repeats, args.rounds)]
    except (QpruneError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    res = {"command": "python benchmarks/rounding.py " + " ".join(argv if argv is not None else sys.argv[1:]),
           "machine": machine_info(), "size": args.size, "repeats": args.repeats, "kernels": kernels,
           "models": models, "wall_s": time.perf_counter() - t0}
    stem = Path(args.out) if args.out else RESULTS / ("rounding_quick" if args.quick else "rounding")
    write_json(stem.with_suffix(".json"), res)
    write_md(res, stem.with_suffix(".md"))
    print(stem.with_suffix(".md").read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
