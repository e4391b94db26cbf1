"""``denoise``: the paper's NAF Half-UNet on SIDD-Small sRGB (or bundled photos with sensor noise)."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from qprune.errors import QpruneError

from . import sidd
from .base import Batch, BaseProblem
from .halfunet import HalfUNet
from .metrics import psnr, psnr_loss, ssim

BUNDLED = "bundled"

DEFAULTS: dict[str, Any] = {
    "width": 64,               # model: the paper's FILTER
    "data": BUNDLED,           # "bundled" or a SIDD path (Data/<scene>/... folder, or validation .mat)
    "patch": None,             # None: 64 (bundled tiles) / 128 (SIDD quadrants of the 256x256 copy)
    "mode": None,              # "quadrants" (paper) | "tiles"; None: tiles for bundled, quadrants for SIDD
    "group_by": "image",       # split unit for SIDD folders: "image" (capture) or "scene" (physical scene)
    "split": [0.8, 0.1, 0.1],
    "seed": 0,                 # data seed: split, synthetic noise, calibration order
    "augment": 3,              # training copies per epoch with random flips (paper: 3)
    "batch_size": 16,
    "calib_batches": 8,
    "val_batches": 4,
    "test_batches": None,      # None = the whole held-out split
    "limit": None,             # read only the first N images / scenes (quick runs)
    "photons": 300.0,          # bundled noise: expected photons at full white (SIDD-like ~29.7 dB)
    "read_noise": 0.004,       # bundled noise: Gaussian read noise, fraction of full scale
    "images": list(sidd.BUNDLED_IMAGES),
    "max_side": 512,
}
_DATA_KEYS = ("data", "patch", "mode", "group_by", "split", "seed", "limit", "photons", "read_noise",
              "images", "max_side")


def _resolve(config: Mapping[str, Any]) -> dict[str, Any]:
    unknown = sorted(set(config) - set(DEFAULTS))
    if unknown:
        raise QpruneError(f"unknown denoise option(s) {unknown}; known: {sorted(DEFAULTS)}")
    # For these None is a real value ("all" / "automatic"); for the rest it means "the default".
    nullable = ("patch", "mode", "calib_batches", "val_batches", "test_batches", "limit")
    cfg = {**DEFAULTS, **{k: v for k, v in config.items() if v is not None or k in nullable}}
    data = cfg["data"]
    if data is None or str(data) == BUNDLED:
        cfg["data"] = BUNDLED
    else:
        cfg["data"] = str(Path(data).expanduser().resolve())
    bundled = cfg["data"] == BUNDLED
    if cfg["patch"] is None:
        cfg["patch"] = 64 if bundled else 128
    if cfg["mode"] is None:
        cfg["mode"] = "tiles" if bundled else "quadrants"
    cfg["split"] = [float(f) for f in cfg["split"]]
    cfg["images"] = list(cfg["images"])
    for key in ("width", "patch", "seed", "augment", "batch_size", "max_side"):
        cfg[key] = int(cfg[key])
    if cfg["width"] < 2 or cfg["width"] % 2:
        raise QpruneError(f"width must be an even integer >= 2, got {cfg['width']}")
    if cfg["augment"] < 1 or cfg["batch_size"] < 1:
        raise QpruneError(f"augment and batch_size must be >= 1, got {cfg['augment']}, {cfg['batch_size']}")
    for key in ("calib_batches", "val_batches", "test_batches", "limit"):
        if cfg[key] is not None and int(cfg[key]) < 1:
            raise QpruneError(f"{key} must be >= 1 or None, got {cfg[key]}")
        cfg[key] = None if cfg[key] is None else int(cfg[key])
    return cfg


@lru_cache(maxsize=4)
def _load_splits(key: tuple) -> dict[str, sidd.Patches]:
    """Read + cut + split once per process per data configuration (tests load it repeatedly)."""
    cfg = dict(key)
    if cfg["data"] == BUNDLED:
        pairs = sidd.bundled_pairs(cfg["images"][:cfg["limit"]], seed=cfg["seed"], photons=cfg["photons"],
                                   read_noise=cfg["read_noise"], max_side=cfg["max_side"])
    else:
        pairs = sidd.read_sidd(cfg["data"], group_by=cfg["group_by"], limit=cfg["limit"])
    patches = sidd.make_patches(pairs, mode=cfg["mode"], patch=cfg["patch"])
    return sidd.split_patches(patches, cfg["split"], cfg["seed"])


def _to_float(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(a).float().div_(255.0)


class DenoiseProblem(BaseProblem):
    """Half-UNet denoising. Inputs: noisy [B, 3, p, p] in [0, 1]; targets: clean. Metric: PSNR (dB).

    Every option is in ``config`` (see ``DEFAULTS``); the data is read lazily on the first batch
    request, so building a model or loading a checkpoint never touches the dataset.
    """

    name = "denoise"
    primary_metric = "psnr"
    # F = 64, 128x128 patches, batch 16, one Adam step on 2 cores: 7.4 s channels-last, 9.5 s NCHW.
    train_channels_last = True

    def __init__(self, **config: Any) -> None:
        self.config = _resolve(config)
        self._cache: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

    # ----- model, loss, metrics
    def build_model(self) -> nn.Module:
        """A fresh :class:`HalfUNet` of the configured width."""
        return HalfUNet(width=self.config["width"])

    def loss(self, out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """−PSNR (mean per image), the paper's training loss."""
        return psnr_loss(out, target)

    def metric(self, out: torch.Tensor, target: torch.Tensor) -> float:
        """PSNR in dB, the mean over the batch (the headline metric alone: a mask search calls
        this once per batch and mask, and SSIM would cost ~70x what PSNR does)."""
        return psnr(out, target)

    def metrics(self, out: torch.Tensor, target: torch.Tensor) -> dict[str, float]:
        """``{"psnr": dB, "ssim": ...}``, means over the batch, output clamped to [0, 1]."""
        return {"psnr": psnr(out, target), "ssim": ssim(out, target)}

    def example_inputs(self) -> torch.Tensor:
        """A fixed random [1, 3, p, p] input (tracing needs shapes, not data)."""
        g = torch.Generator().manual_seed(0)
        return torch.rand(1, 3, self.config["patch"], self.config["patch"], generator=g)

    def prunable(self, model: nn.Module) -> dict:
        """build_space kwargs: the output conv must keep its 3 channels."""
        return {"exclude": ("ending",)}

    def baseline_metrics(self, batches: Sequence[Batch]) -> dict[str, float]:
        """Metrics of the noisy input itself: what the model must beat."""
        total: dict[str, float] = {}
        count = 0
        for x, y in batches:
            n = int(x.shape[0])
            for k, v in self.metrics(x, y).items():
                total[k] = total.get(k, 0.0) + v * n
            count += n
        return {k: v / max(count, 1) for k, v in total.items()}

    # ----- data
    def splits(self) -> dict[str, sidd.Patches]:
        """The uint8 patches of each split (cached per process)."""
        key = tuple((k, tuple(v) if isinstance(v, list) else v) for k, v in sorted(self.config.items())
                    if k in _DATA_KEYS)
        return _load_splits(key)

    def _split_len(self, split: str) -> int:
        return len(self.splits()[split])

    def _take(self, split: str, idx: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        # Convert only the selected patches: the whole SIDD training split is ~200 MB as float.
        p = self.splits()[split]
        return _to_float(p.noisy[idx]), _to_float(p.clean[idx])

    def _split_tensors(self, split: str) -> tuple[torch.Tensor, torch.Tensor]:
        if split not in self._cache:
            p = self.splits()[split]
            self._cache[split] = (_to_float(p.noisy), _to_float(p.clean))
        return self._cache[split]

    def _train_epoch_len(self) -> int:
        n = len(self.splits()["train"]) * self.config["augment"]
        return -(-n // self.config["batch_size"])

    def _train_epoch_batches(self, epoch: int, rng: np.random.Generator) -> Iterator[Batch]:
        p = self.splits()["train"]
        n = len(p)
        idx = rng.permutation(np.tile(np.arange(n), self.config["augment"]))
        flips = rng.random((len(idx), 2)) < 0.5  # horizontal, vertical
        bs = self.config["batch_size"]
        for i in range(0, len(idx), bs):
            sel = idx[i:i + bs]
            x, y = _to_float(p.noisy[sel]), _to_float(p.clean[sel])
            for axis, dim in ((0, -1), (1, -2)):
                f = torch.from_numpy(flips[i:i + bs, axis])
                if f.any():
                    x[f] = x[f].flip(dim)
                    y[f] = y[f].flip(dim)
            yield x, y

    def summary(self, meta: Mapping[str, Any]) -> str:
        """``noisy input PSNR a dB (SSIM s) -> model PSNR b dB (SSIM t)`` on the held-out split."""
        t, b = meta.get("test_metrics", {}), meta.get("test_baseline_metrics", {})
        n = meta.get("test_samples", "?")
        return (f"held-out test split ({n} patches): noisy input PSNR {b.get('psnr', float('nan')):.2f} dB "
                f"(SSIM {b.get('ssim', float('nan')):.4f}) -> model PSNR {t.get('psnr', float('nan')):.2f} dB "
                f"(SSIM {t.get('ssim', float('nan')):.4f})")
