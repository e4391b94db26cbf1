"""What the benchmark scripts share: paths, the paper's setting, the shipped models, seeded
calibration draws, test metrics of a mask, logging and figures.

A helper module (no main): every script under ``benchmarks/`` imports this module (and
``tp_importance`` / ``peers_report`` where it needs them) and nothing from another script.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from qprune.atomic import atomic_open
from qprune.errors import QpruneError
from qprune.model.masking import apply_mask, remove_gates
from qprune.pipeline.run import Prepared, evaluate
from qprune.problems import load_checkpoint, load_pretrained
from qprune.problems.base import batched

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
CHECKPOINTS = ROOT / "problems" / "checkpoints"
SIDD_CKPT = CHECKPOINTS / "denoise_sidd_f64.pt"
QUICK_CKPT = CHECKPOINTS / "denoise_bundled_f16.pt"
SHARED_DATA = ROOT.parent / "shared" / "data"
SIDD_DATA = (SHARED_DATA / "sidd_small_256").resolve()

#: the paper's full-model setting: 36 % of the prunable units (paper Table 1: ~36 % of the filters)
PAPER_FULL_SPARSITY = 0.36
#: ``residual_branches`` of the spaces the benchmarks prune: the shipped runs' space, with the
#: residual-branch units (conv3/conv5, the upsample convs) where the trunk is not pruned. The paper's
#: filters include those convs; without these units (the library default) the F = 64 space has 12
#: layers, too few for its 16-layer sub-problem.
BRANCHES = "auto"

__all__ = ["BRANCHES", "CHECKPOINTS", "PAPER_FULL_SPARSITY", "QUICK_CKPT", "RESULTS", "ROOT", "SHARED_DATA",
           "SIDD_CKPT", "SIDD_DATA", "Draw", "data_override", "load_model", "load_sidd", "logger",
           "pick_checkpoint", "save_png", "test_metrics"]


def logger(tag: str, clock: bool = False) -> Callable[[str], None]:
    """A ``log(msg)`` that prints ``[tag] msg`` (with the time of day when ``clock``) to stderr."""
    def log(msg: str) -> None:
        stamp = f" {time.strftime('%H:%M:%S')}" if clock else ""
        print(f"[{tag}{stamp}] {msg}", file=sys.stderr, flush=True)
    return log


# ------------------------------------------------------------------------------------ models


def load_sidd(**overrides: Any) -> tuple[Any, torch.nn.Module]:
    """The trained SIDD F = 64 Half-UNet with the SIDD-Small folder beside the project."""
    if not (SIDD_CKPT.is_file() and SIDD_DATA.is_dir()):
        raise QpruneError(f"the SIDD benchmarks need {SIDD_CKPT} and {SIDD_DATA}")
    return load_checkpoint(str(SIDD_CKPT), data=str(SIDD_DATA), **overrides)


def load_model(name: str) -> tuple[Any, torch.nn.Module]:
    """``sidd-f64`` (the trained SIDD model), or a shipped problem's model (``denoise``, ``classify``)."""
    return load_sidd() if name == "sidd-f64" else load_pretrained(name)


def pick_checkpoint(arg: str | None) -> tuple[Path, str]:
    """The denoising model to benchmark (``arg``, else the shipped F=64 SIDD model, else the small
    shipped one) and a sentence saying why this one; exits with a message when there is none."""
    if arg:
        return Path(arg), "given with --checkpoint"
    if SIDD_CKPT.is_file():
        return SIDD_CKPT, "the shipped F=64 SIDD model (problems/checkpoints/denoise_sidd_f64.pt)"
    from qprune.problems import pretrained_path

    try:
        path = pretrained_path("denoise")
    except QpruneError as exc:
        raise SystemExit(
            f"no denoising checkpoint: {SIDD_CKPT} is absent (run `make train-sidd`) and {exc}"
        ) from exc
    return path, (f"{SIDD_CKPT} is absent (run `make train-sidd` for the paper's F=64 model); "
                  "using the small shipped checkpoint")


def data_override(ckpt: Path) -> dict[str, str]:
    """``data=`` for load_checkpoint when the folder recorded in ``ckpt`` is absent here but ours exists.

    The shipped SIDD model records the absolute path it was trained from; on another checkout the
    SIDD folder is ``<repo>/../shared/data/sidd_small_256``.
    """
    recorded = torch.load(ckpt, weights_only=True).get("config", {}).get("data")
    if isinstance(recorded, str) and recorded.endswith("sidd_small_256") and not Path(recorded).is_dir() \
            and SIDD_DATA.is_dir():
        return {"data": str(SIDD_DATA)}
    return {}


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


# ------------------------------------------------------------------------------------ results


def test_metrics(prep: Prepared, x: np.ndarray) -> dict[str, float]:
    """PSNR/SSIM of the gated model (exactly the pruned network) on the TEST batches."""
    model = apply_mask(prep.model, prep.space, x.astype(bool), mode="gate")
    try:
        return evaluate(model, prep.work.test, prep.work.metrics)
    finally:
        remove_gates(prep.model)


def save_png(fig: Any, path: Path, dpi: float | None = None) -> None:
    """Write a matplotlib figure as a PNG (atomically) and close it."""
    import matplotlib.pyplot as plt

    with atomic_open(path, "wb") as fh:
        fig.savefig(fh, format="png", **({} if dpi is None else {"dpi": dpi}))
    plt.close(fig)


def write_lines(path: Path | str, lines: list[str]) -> None:
    """A Markdown (or any text) file of ``lines``, written atomically."""
    with atomic_open(path) as fh:
        fh.write("\n".join(lines) + "\n")


def scoring_device(arg: str) -> torch.device:
    """The device masks are scored on (``auto``: CUDA when torch sees one)."""
    if arg == "auto":
        arg = "cuda" if torch.cuda.is_available() else "cpu"
    if arg.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"--device {arg}: torch sees no CUDA device (use --device cpu)")
    try:
        return torch.device(arg)
    except RuntimeError as exc:
        raise ValueError(f"--device {arg!r}: {exc}") from exc
