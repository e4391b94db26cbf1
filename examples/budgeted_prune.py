"""Prune to a MACs budget instead of a unit count, with hardware-friendly channel counts.

A budget is what a deployment asks for: "keep at most half the multiply-accumulates". A conv's MACs
are kept-in x kept-out channels x kernel x output size, so the budget is exact in the per-layer kept
counts, and qprune meets it as a constraint of the search (a price on the budget over the layerwise
strategy's per-layer curves), landing within 1 % below it; ``round_to=8`` keeps a multiple of 8
channels in every layer, also as a constraint.

    python examples/budgeted_prune.py                 # the bundled denoiser, MACs 0.5, multiples of 8
    python examples/budgeted_prune.py --quick         # MACs 0.7 without rounding (the test runs this)
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

import qprune
from qprune import problems


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="a looser budget and no rounding")
    p.add_argument("--macs", type=float, default=0.5, help="fraction of the model's MACs to keep (default 0.5)")
    p.add_argument("--round-to", type=int, default=8, help="kept channels per layer a multiple of this")
    args = p.parse_args(argv)
    torch.manual_seed(0)
    macs, round_to = (0.7, 1) if args.quick else (args.macs, args.round_to)

    problem, model = problems.load_pretrained("denoise")  # shipped F=16 Half-UNet, bundled photos
    # with multiples of 8 every layer of this F = 16 model keeps 8 of its 16-32 channels, which
    # leaves at least 60 % of the MACs in the default space; the convs added into the residual
    # trunk, as units of their own (residual_branches="auto"; off by default), reach half
    result = qprune.prune(model, problem, budget=qprune.BudgetRequest.of({"macs": macs}, round_to=round_to),
                          method="taylor-greedy" if args.quick else "hybrid-qubo",
                          space=qprune.SpaceOptions(residual_branches="auto"), seed=0, progress=False)

    before, after = result.stats_before, result.stats_after
    kept = after["macs"] / before["macs"]
    print(f"budget: keep at most {macs:.0%} of the MACs; kept {kept:.2%} "
          f"({after['macs']:.3g} of {before['macs']:.3g}), params {after['params']:.0f} of {before['params']:.0f}")
    print(f"PSNR {result.metrics_before['psnr']:.2f} dB -> {result.metrics_after['psnr']:.2f} dB")
    kept_per_layer = [r["kept"] for r in result.per_layer()]
    print("kept channels per layer:", kept_per_layer)
    assert macs - 0.01 <= kept <= macs + 1e-9, kept
    if round_to > 1:
        assert all(np.asarray(kept_per_layer) % round_to == 0), kept_per_layer
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
