"""Side-by-side pictures of an image-to-image run, as the paper's Figure 5: noisy, unpruned, pruned, clean.

:func:`write_figure` runs named models on a few held-out images and writes one row per image: the
noisy input, each model's output, the clean target, every panel exactly ``panel_px`` x ``panel_px``
pixels under a title band with its PSNR, so the PNG is ``(models + 2) * panel_px`` wide and
``images * (panel_px + TITLE_PX)`` high. :func:`write_comparison_figure` is the four-panel case
(unpruned, pruned). Written atomically (a bare Matplotlib ``Figure``, rendered by Agg: no display,
no pyplot state).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from matplotlib.figure import Figure
from torch import nn

from qprune.atomic import atomic_open
from qprune.errors import QpruneError
from qprune.model.modes import eval_mode
from qprune.problems.metrics import psnr

__all__ = ["COLUMNS", "TITLE_PX", "check_image_batches", "typical_image", "write_comparison_figure", "write_figure"]

COLUMNS = ("noisy", "unpruned", "pruned", "clean")
TITLE_PX = 28  #: height of the title band above each panel, in pixels
_DPI = 100

Batch = tuple[torch.Tensor, torch.Tensor]


def check_image_batches(batches: Sequence[Batch]) -> None:
    """Raise :class:`QpruneError` unless the batches are image pairs (input and target [B, 1|3, H, W])."""
    if not batches:
        raise QpruneError("a comparison figure needs test images, and the problem has no test batches")
    x, y = batches[0]
    if x.ndim != 4 or tuple(x.shape) != tuple(y.shape) or x.shape[1] not in (1, 3):
        raise QpruneError(
            f"a comparison figure needs an image-to-image problem (input and target [B, 1|3, H, W]); "
            f"got input {tuple(x.shape)} and target {tuple(y.shape)}")


def _pick(batches: Sequence[Batch], images: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``images`` (input, target) pairs spread evenly over the batches' samples, in order."""
    xs = torch.cat([x for x, _ in batches])
    ys = torch.cat([y for _, y in batches])
    idx = np.unique(np.linspace(0, xs.shape[0] - 1, num=min(images, xs.shape[0])).round().astype(int))
    return xs[idx], ys[idx]


@torch.inference_mode()
def typical_image(a: nn.Module, b: nn.Module, batches: Sequence[Batch]) -> list[Batch]:
    """The one test pair on which ``a`` leads ``b`` by the median of its per-image PSNR leads, so a
    one-image figure shows the usual difference between two models, not the best or worst case."""
    check_image_batches(batches)
    xs = torch.cat([x for x, _ in batches])
    ys = torch.cat([y for _, y in batches])
    gaps = []
    for i in range(xs.shape[0]):
        x, y = xs[i:i + 1], ys[i:i + 1]
        gaps.append(psnr(_run(a, x), y) - psnr(_run(b, x), y))
    i = int(np.argsort(gaps)[(len(gaps) - 1) // 2])
    return [(xs[i:i + 1], ys[i:i + 1])]


def _run(net: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with eval_mode(net):
        return net(x).clamp(0.0, 1.0)


def _as_rgb(t: torch.Tensor) -> np.ndarray:
    a = t.detach().float().clamp(0.0, 1.0).cpu().numpy()
    a = np.transpose(a, (1, 2, 0))
    return np.repeat(a, 3, axis=2) if a.shape[2] == 1 else a


def write_comparison_figure(
    path: str | os.PathLike[str],
    model: nn.Module,
    pruned: nn.Module,
    batches: Sequence[Batch],
    *,
    images: int = 3,
    panel_px: int = 192,
    title: str | None = None,
) -> dict[str, Any]:
    """Write the noisy / unpruned / pruned / clean figure for ``images`` test images to ``path`` (PNG).

    Args:
        path: the PNG to write (atomically; its folder is created).
        model, pruned: the unpruned and the pruned network (gated or physically smaller), run in eval mode.
        batches: ``(noisy, clean)`` test batches; images are taken evenly spread over them.
        images: rows of the figure (at most the number of test images).
        panel_px: side of each image panel in pixels.
        title: optional words after "clean" in the last panel's caption (none by default).

    Returns:
        ``{"path", "images", "panel_px", "width_px", "height_px", "psnr"}`` where ``psnr`` holds, per
        image, the PSNR in dB of the noisy input, the unpruned output and the pruned output.

    Raises:
        QpruneError: not an image-to-image problem, or ``images`` / ``panel_px`` below 1.
    """
    return write_figure(path, [("unpruned", model), ("pruned", pruned)], batches, images=images, panel_px=panel_px,
                        title=title)


@torch.inference_mode()
def write_figure(
    path: str | os.PathLike[str],
    models: Sequence[tuple[str, nn.Module]],
    batches: Sequence[Batch],
    *,
    images: int = 3,
    panel_px: int = 192,
    title: str | None = None,
) -> dict[str, Any]:
    """Write noisy / each of ``models`` (label, network) / clean for ``images`` test images (see
    :func:`write_comparison_figure`; ``psnr`` then holds the noisy input's and each model's)."""
    if isinstance(images, bool) or int(images) < 1 or isinstance(panel_px, bool) or int(panel_px) < 16:
        raise QpruneError(f"figure needs images >= 1 and panel_px >= 16, got images={images!r}, panel_px={panel_px!r}")
    if Path(path).suffix.lower() != ".png":
        raise QpruneError(f"figure {str(path)!r}: the file name must end in .png")
    check_image_batches(batches)
    x, y = _pick(batches, int(images))
    outs = [_run(net, x) for _, net in models]
    names = ["noisy", *(label for label, _ in models), "clean"]
    cols = [x, *outs, y]
    scores = [[psnr(c[i:i + 1], y[i:i + 1]) for c in cols[:-1]] for i in range(x.shape[0])]
    rows, cell_h = x.shape[0], panel_px + TITLE_PX
    width, height = len(names) * panel_px, rows * cell_h
    fig = Figure(figsize=(width / _DPI, height / _DPI), dpi=_DPI)
    for r in range(rows):
        for c, name in enumerate(names):
            left, bottom = c * panel_px / width, (height - (r + 1) * cell_h) / height
            ax = fig.add_axes((left, bottom, panel_px / width, panel_px / height))
            ax.imshow(_as_rgb(cols[c][r]), interpolation="nearest")
            ax.set_axis_off()
            label = f"{name} {scores[r][c]:.2f} dB" if c < len(names) - 1 else (f"{name} ({title})" if title else name)
            fig.text(left + 0.5 * panel_px / width, bottom + (panel_px + TITLE_PX / 2) / height, label,
                     ha="center", va="center", fontsize=9)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with atomic_open(path, "wb") as fh:
        fig.savefig(fh, format="png", dpi=_DPI)
    return {"path": str(path), "images": rows, "panel_px": int(panel_px), "width_px": width, "height_px": height,
            "psnr": [[float(v) for v in s] for s in scores], "columns": names}
