"""``classify``: a small ResNet on scikit-learn's digits (bundled) or CIFAR-10 from a local folder."""

from __future__ import annotations

import pickle
from functools import lru_cache
from pathlib import Path
from typing import Any, Iterator, Mapping

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from qprune.errors import QpruneError

from .base import Batch, BaseProblem

DIGITS = "digits"
CIFAR_DIR = "cifar-10-batches-py"
CIFAR_TRAIN = tuple(f"data_batch_{i}" for i in range(1, 6))
CIFAR_TEST = "test_batch"
CIFAR_LAYOUT = (f"expected CIFAR-10 python layout <root>/{CIFAR_DIR}/"
                f"{{{','.join(CIFAR_TRAIN)},{CIFAR_TEST}}} (torchvision's layout)")
# Per-channel statistics of the CIFAR-10 training set (standard values).
CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2470, 0.2435, 0.2616)
# Distillation temperature: Hinton et al.'s usual choice, soft enough to carry the teacher's ranking.
DISTILL_TEMPERATURE = 4.0


# --------------------------------------------------------------------------- model


class BasicBlock(nn.Module):
    """ResNet basic block: two 3x3 conv+BN, identity (or 1x1 conv+BN) shortcut, ReLU."""

    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample: nn.Module | None = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        identity = x if self.downsample is None else self.downsample(x)
        return F.relu(out + identity)


class ResNet(nn.Module):
    """A CIFAR-style ResNet: stem conv, three stages (width w, 2w, 4w; strides 1, 2, 2), GAP, linear.

    Names follow torchvision's ResNet (``conv1``, ``layer1.0.conv1``, ``fc``) so labels read as usual.
    """

    def __init__(self, in_channels: int = 3, num_classes: int = 10, width: int = 16, blocks: int = 1) -> None:
        super().__init__()
        w = width
        self.conv1 = nn.Conv2d(in_channels, w, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(w)
        self.layer1 = self._stage(w, w, blocks, 1)
        self.layer2 = self._stage(w, 2 * w, blocks, 2)
        self.layer3 = self._stage(2 * w, 4 * w, blocks, 2)
        self.fc = nn.Linear(4 * w, num_classes)

    @staticmethod
    def _stage(cin: int, cout: int, blocks: int, stride: int) -> nn.Sequential:
        return nn.Sequential(BasicBlock(cin, cout, stride), *[BasicBlock(cout, cout) for _ in range(blocks - 1)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


# --------------------------------------------------------------------------- data


def _unpickle(path: Path) -> dict:
    try:
        with open(path, "rb") as f:
            d = pickle.load(f, encoding="bytes")
    except (OSError, pickle.UnpicklingError, EOFError, ValueError) as exc:
        raise QpruneError(f"cannot read CIFAR batch {path}: {exc}") from exc
    if not isinstance(d, dict):
        raise QpruneError(f"{path} is not a CIFAR-10 batch (a pickled dict); {CIFAR_LAYOUT}")
    # The official files use bytes keys (Python 2 pickles); accept str keys too.
    d = {(k.decode() if isinstance(k, bytes) else k): v for k, v in d.items()}
    if "data" not in d or "labels" not in d:
        raise QpruneError(f"{path} lacks 'data'/'labels'; {CIFAR_LAYOUT}")
    return d


def cifar_dir(root: str | Path) -> Path:
    """The ``cifar-10-batches-py`` folder under ``root`` (or ``root`` itself), validated."""
    root = Path(root)
    if not root.is_dir():
        raise QpruneError(f"CIFAR-10 path {root} is not a directory; {CIFAR_LAYOUT}")
    d = root / CIFAR_DIR if (root / CIFAR_DIR).is_dir() else root
    missing = [n for n in (*CIFAR_TRAIN, CIFAR_TEST) if not (d / n).is_file()]
    if missing:
        raise QpruneError(f"{d} lacks {', '.join(missing)}; {CIFAR_LAYOUT}")
    return d


def read_cifar10(root: str | Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """``{"train": (x, y), "test": (x, y)}``: x uint8 [N, 3, 32, 32], y int64 [N]; pickle only."""
    d = cifar_dir(root)
    out = {}
    for split, names in (("train", CIFAR_TRAIN), ("test", (CIFAR_TEST,))):
        xs, ys = [], []
        for n in names:
            b = _unpickle(d / n)
            x = np.asarray(b["data"], dtype=np.uint8)
            if x.ndim != 2 or x.shape[1] != 3 * 32 * 32:
                raise QpruneError(f"{d / n}: data has shape {x.shape}, expected [N, 3072]")
            xs.append(x.reshape(-1, 3, 32, 32))
            ys.append(np.asarray(b["labels"], dtype=np.int64))
        out[split] = (np.concatenate(xs), np.concatenate(ys))
    return out


def _split_idx(n: int, fractions: list[float], seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    perm = np.random.default_rng(seed).permutation(n)
    n_val = int(round(fractions[1] * n))
    n_test = int(round(fractions[2] * n))
    return perm[n_val + n_test:], perm[:n_val], perm[n_val:n_val + n_test]


@lru_cache(maxsize=4)
def _load(key: tuple) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    cfg = dict(key)
    if cfg["data"] == DIGITS:
        from sklearn.datasets import load_digits

        d = load_digits()
        x = torch.from_numpy(d.images.astype(np.float32) / 16.0).unsqueeze(1)
        y = torch.from_numpy(d.target.astype(np.int64))
        # Normalise to zero mean / unit std over the whole set: a constant transform, no leakage.
        x = (x - 0.3) / 0.4
        tr, va, te = _split_idx(len(y), list(cfg["split"]), cfg["seed"])
        out = {"train": (x[tr], y[tr]), "val": (x[va], y[va]), "test": (x[te], y[te])}
    else:
        raw = read_cifar10(cfg["data"])
        mean = torch.tensor(CIFAR_MEAN).view(1, 3, 1, 1)
        std = torch.tensor(CIFAR_STD).view(1, 3, 1, 1)

        def norm(a: np.ndarray) -> torch.Tensor:
            return (torch.from_numpy(a).float() / 255.0 - mean) / std

        xtr, ytr = raw["train"]
        # CIFAR has its own test set; validation is carved from the training batches.
        frac_val = cfg["split"][1] / max(cfg["split"][0] + cfg["split"][1], 1e-12)
        perm = np.random.default_rng(cfg["seed"]).permutation(len(ytr))
        n_val = int(round(frac_val * len(ytr)))
        va, tr = perm[:n_val], perm[n_val:]
        xte, yte = raw["test"]
        out = {"train": (norm(xtr[tr]), torch.from_numpy(ytr[tr])), "val": (norm(xtr[va]), torch.from_numpy(ytr[va])),
               "test": (norm(xte), torch.from_numpy(yte))}
    if cfg["upsample"] > 1:
        out = {k: (F.interpolate(x, scale_factor=cfg["upsample"], mode="bilinear", align_corners=False), y)
               for k, (x, y) in out.items()}
    return out


DEFAULTS: dict[str, Any] = {
    "width": 16,
    "blocks": 1,
    "data": DIGITS,            # "digits" (scikit-learn, bundled) or a CIFAR-10 folder
    "upsample": 1,             # integer factor for the input images (digits are 8x8)
    "split": [0.8, 0.1, 0.1],  # digits: train/val/test; CIFAR: train/val from the train batches
    "seed": 0,
    "batch_size": 64,
    "calib_batches": 4,
    "val_batches": None,
    "test_batches": None,
}
_DATA_KEYS = ("data", "upsample", "split", "seed")


def _resolve(config: Mapping[str, Any]) -> dict[str, Any]:
    unknown = sorted(set(config) - set(DEFAULTS))
    if unknown:
        raise QpruneError(f"unknown classify option(s) {unknown}; known: {sorted(DEFAULTS)}")
    nullable = ("calib_batches", "val_batches", "test_batches")
    cfg = {**DEFAULTS, **{k: v for k, v in config.items() if v is not None or k in nullable}}
    cfg["data"] = DIGITS if cfg["data"] in (None, DIGITS) else str(Path(cfg["data"]).expanduser().resolve())
    cfg["split"] = [float(f) for f in cfg["split"]]
    for key in ("width", "blocks", "upsample", "seed", "batch_size"):
        cfg[key] = int(cfg[key])
        if key != "seed" and cfg[key] < 1:
            raise QpruneError(f"{key} must be >= 1, got {cfg[key]}")
    for key in nullable:
        if cfg[key] is not None and int(cfg[key]) < 1:
            raise QpruneError(f"{key} must be >= 1 or None, got {cfg[key]}")
        cfg[key] = None if cfg[key] is None else int(cfg[key])
    return cfg


class ClassifyProblem(BaseProblem):
    """Image classification with a small ResNet. Metric: accuracy (fraction in [0, 1])."""

    name = "classify"
    primary_metric = "accuracy"

    # Channels-last stays off: 8x8 images gain nothing from it, and torch 2.13's CPU kernels
    # corrupted the heap ("free(): invalid size") training this ResNet channels-last on 1 thread.
    train_channels_last = False

    def __init__(self, **config: Any) -> None:
        self.config = _resolve(config)

    @property
    def _digits(self) -> bool:
        return self.config["data"] == DIGITS

    def _shape(self) -> tuple[int, int]:
        channels, size = (1, 8) if self._digits else (3, 32)
        return channels, size * self.config["upsample"]

    def build_model(self) -> nn.Module:
        """A fresh :class:`ResNet` for the configured data (1x8x8 digits or 3x32x32 CIFAR)."""
        return ResNet(self._shape()[0], 10, self.config["width"], self.config["blocks"])

    def loss(self, out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Cross-entropy."""
        return F.cross_entropy(out, target)

    def distill_loss(self, out: torch.Tensor, teacher_out: torch.Tensor) -> torch.Tensor:
        """Hinton's distillation loss: KL divergence of the softened class distributions (T = 4), times T²."""
        t = DISTILL_TEMPERATURE
        return F.kl_div(F.log_softmax(out / t, 1), F.log_softmax(teacher_out / t, 1), reduction="batchmean",
                        log_target=True) * (t * t)

    def metrics(self, out: torch.Tensor, target: torch.Tensor) -> dict[str, float]:
        """``{"accuracy": fraction correct}``."""
        return {"accuracy": float((out.argmax(1) == target).float().mean())}

    def example_inputs(self) -> torch.Tensor:
        """A fixed random [1, C, H, W] input."""
        c, s = self._shape()
        return torch.randn(1, c, s, s, generator=torch.Generator().manual_seed(0))

    def prunable(self, model: nn.Module) -> dict:
        """build_space kwargs: the classifier head keeps its 10 outputs."""
        return {"exclude": ("fc",)}

    def baseline_metrics(self, batches: list[Batch]) -> dict[str, float]:
        """Accuracy of always answering the most frequent test class."""
        y = torch.cat([t for _, t in batches])
        return {"accuracy": float((y == y.mode().values).float().mean())}

    def splits(self) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """(inputs, labels) per split, cached per process."""
        key = tuple((k, tuple(v) if isinstance(v, list) else v) for k, v in sorted(self.config.items())
                    if k in _DATA_KEYS)
        return _load(key)

    def _split_tensors(self, split: str) -> tuple[torch.Tensor, torch.Tensor]:
        return self.splits()[split]

    def _train_epoch_len(self) -> int:
        return -(-len(self.splits()["train"][1]) // self.config["batch_size"])

    def _train_epoch_batches(self, epoch: int, rng: np.random.Generator) -> Iterator[Batch]:
        x, y = self.splits()["train"]
        idx = torch.from_numpy(rng.permutation(len(y)))
        bs = self.config["batch_size"]
        for i in range(0, len(idx), bs):
            sel = idx[i:i + bs]
            xb, yb = x[sel], y[sel]
            if not self._digits:
                # Standard CIFAR augmentation: random horizontal flip + 4-pixel padded random crop.
                flip = torch.from_numpy(rng.random(len(sel)) < 0.5)
                xb = torch.where(flip.view(-1, 1, 1, 1), xb.flip(-1), xb)
                pad = 4 * self.config["upsample"]
                xp = F.pad(xb, (pad, pad, pad, pad), mode="reflect")
                dy, dx = rng.integers(0, 2 * pad + 1, size=2)
                xb = xp[..., dy:dy + xb.shape[-2], dx:dx + xb.shape[-1]]
            yield xb, yb

    def summary(self, meta: Mapping[str, Any]) -> str:
        """``majority-class accuracy a -> model accuracy b`` on the held-out split."""
        t, b = meta.get("test_metrics", {}), meta.get("test_baseline_metrics", {})
        return (f"held-out test split ({meta.get('test_samples', '?')} images): majority-class accuracy "
                f"{b.get('accuracy', float('nan')):.4f} -> model accuracy {t.get('accuracy', float('nan')):.4f}")
