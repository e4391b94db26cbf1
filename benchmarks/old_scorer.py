"""Score masks with an earlier qprune: the ``old`` row of ``make bench-tt`` (not a test).

``tt_scorer.py`` runs this file in a subprocess whose ``PYTHONPATH`` is an earlier source tree of
qprune (``make bench-tt`` unpacks the commit ``TT_OLD_REF`` there), so the masks are scored by
the scorer the TT search really ran before: that version's code, that version's defaults (float32,
the whole validation split, the problem's own ``metric``). It loads the same checkpoint and data,
builds the same sub-problem with that version's code, refuses masks whose units are in another
order, scores the masks of ``--masks`` (``.npz``: ``masks`` and ``labels``) and writes
``{"scores", "seconds", "setup_s", "qprune"}`` as JSON to ``--out``.

It imports only what that version already had (``qprune.problems.load_checkpoint``,
``qprune.pipeline.run.prepare``, ``qprune.refine.MaskScorer``) and, from this folder, only
``scorer_timing`` (which imports nothing from qprune).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

import qprune
from qprune.pipeline.run import prepare
from qprune.problems import load_checkpoint
from qprune.refine import MaskScorer

# helper module beside this script (benchmarks/)
from scorer_timing import timed_scores


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--masks", required=True, help=".npz with masks [B, N] and the space's unit labels")
    ap.add_argument("--checkpoint", required=True)
    ap.add_argument("--data", help="dataset folder (default: the one the checkpoint records)")
    ap.add_argument("--layers", type=int, required=True, help="the sub-problem's first prunable layers")
    ap.add_argument("--branches", default="auto", help="residual_branches of prepare()")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--out", required=True)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    saved = np.load(args.masks)
    masks, labels = saved["masks"], [str(s) for s in saved["labels"]]
    problem, model = load_checkpoint(args.checkpoint, **({"data": args.data} if args.data else {}))
    prep = prepare(model, problem, methods=("taylor-greedy",), layers=args.layers,
                   residual_branches=args.branches, progress=False)
    if list(prep.space.labels) != labels:
        print(f"old_scorer: the qprune at {Path(qprune.__file__).parent} orders the {prep.space.N} units "
              f"otherwise than the masks' {len(labels)}", file=sys.stderr)
        return 2
    device = torch.device(args.device)
    prep.model.to(device)
    val = [(x.to(device), y.to(device)) for x, y in problem.validation_batches()]
    scores, setup, seconds = timed_scores(MaskScorer(prep.model, prep.space, val, problem.metric, progress=False),
                                          masks)
    Path(args.out).write_text(json.dumps({"scores": scores.tolist(), "seconds": seconds,
                                          "setup_s": setup, "qprune": str(Path(qprune.__file__).parent)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
