"""What the benchmark scripts share: paths, the shipped models, seeded calibration draws, logging.

Every script under ``benchmarks/`` imports this module and nothing from another script.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from qprune.errors import QpruneError
from qprune.problems import load_checkpoint, load_pretrained
from qprune.problems.base import batched

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
SIDD_CKPT = ROOT / "problems" / "checkpoints" / "denoise_sidd_f64.pt"
QUICK_CKPT = ROOT / "problems" / "checkpoints" / "denoise_bundled_f16.pt"
SIDD_DATA = (ROOT.parent / "shared" / "data" / "sidd_small_256").resolve()

__all__ = ["QUICK_CKPT", "RESULTS", "ROOT", "SIDD_CKPT", "SIDD_DATA", "Draw", "load_model", "load_sidd", "logger"]


def logger(tag: str, clock: bool = False) -> Callable[[str], None]:
    """A ``log(msg)`` that prints ``[tag] msg`` (with the time of day when ``clock``) to stderr."""
    def log(msg: str) -> None:
        stamp = f" {time.strftime('%H:%M:%S')}" if clock else ""
        print(f"[{tag}{stamp}] {msg}", file=sys.stderr, flush=True)
    return log


def load_sidd(**overrides: Any) -> tuple[Any, torch.nn.Module]:
    """The trained SIDD F = 64 Half-UNet with the SIDD-Small folder beside the project."""
    if not (SIDD_CKPT.is_file() and SIDD_DATA.is_dir()):
        raise QpruneError(f"the SIDD benchmarks need {SIDD_CKPT} and {SIDD_DATA}")
    return load_checkpoint(str(SIDD_CKPT), data=str(SIDD_DATA), **overrides)


def load_model(name: str) -> tuple[Any, torch.nn.Module]:
    """``sidd-f64`` (the trained SIDD model), or a shipped problem's model (``denoise``, ``classify``)."""
    return load_sidd() if name == "sidd-f64" else load_pretrained(name)


class Draw:
    """A problem whose calibration batches are the ``seed``-th seeded draw from its training split.

    Everything else (validation, test, loss, metrics, prunable) is the wrapped problem's, so a
    benchmark can vary the calibration subset alone.
    """

    def __init__(self, problem: Any, seed: int) -> None:
        if not (hasattr(problem, "_split_len") and hasattr(problem, "_take")):
            raise QpruneError(f"problem {getattr(problem, 'name', problem)!r} cannot draw other calibration subsets")
        self._p, self._seed = problem, int(seed)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._p, name)

    def calibration_batches(self) -> list:
        cfg = self._p.config
        bs, count = int(cfg["batch_size"]), cfg.get("calib_batches")
        perm = np.random.default_rng([int(cfg["seed"]), 1, self._seed]).permutation(self._p._split_len("train"))
        x, y = self._p._take("train", perm if count is None else perm[:count * bs])
        return batched(x, y, bs)
