"""The Problem protocol, batching helpers and the one training loop every problem shares."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, ClassVar, Iterator, Mapping, Protocol, Sequence, runtime_checkable

import numpy as np
import torch
from torch import nn


from . import training

Batch = training.Batch


@runtime_checkable
class Problem(Protocol):
    """A workload to prune: model + data + loss + metric (see docs/architecture.md)."""

    name: str
    config: dict
    primary_metric: str

    def build_model(self) -> nn.Module: ...
    def calibration_batches(self) -> list[Batch]: ...
    def validation_batches(self) -> list[Batch]: ...
    def test_batches(self) -> list[Batch]: ...
    def loss(self, out: torch.Tensor, target: torch.Tensor) -> torch.Tensor: ...
    def metric(self, out: torch.Tensor, target: torch.Tensor) -> float: ...
    def metrics(self, out: torch.Tensor, target: torch.Tensor) -> dict[str, float]: ...
    def example_inputs(self) -> torch.Tensor: ...
    def prunable(self, model: nn.Module) -> dict: ...


@dataclass
class TrainResult:
    """What :meth:`BaseProblem.train` returns; ``meta`` goes into the checkpoint as is."""

    model: nn.Module
    meta: dict[str, Any]
    history: list[dict[str, float]] = field(default_factory=list)


@dataclass
class FinetuneResult:
    """What :meth:`BaseProblem.finetune` returns: the trained pruned model and the metric before/after."""

    model: nn.Module
    before: dict[str, float]
    after: dict[str, float]
    history: list[dict[str, float]]
    meta: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: metrics before and after, the gain in each, the settings and the history."""
        gain = {k: self.after[k] - v for k, v in self.before.items() if k in self.after}
        return {"before": self.before, "after": self.after, "gain": gain, "history": self.history, **self.meta}


def batched(x: torch.Tensor, y: torch.Tensor, batch_size: int, limit: int | None = None) -> list[Batch]:
    """Consecutive batches of ``batch_size`` (the last may be smaller), at most ``limit`` of them."""
    n = int(x.shape[0])
    out = [(x[i:i + batch_size], y[i:i + batch_size]) for i in range(0, n, batch_size)]
    return out if limit is None else out[:limit]


def set_seed(seed: int) -> None:
    """Seed torch (CPU) so model initialisation and training order are reproducible."""
    torch.manual_seed(seed)


class BaseProblem:
    """Shared machinery: fixed batches, evaluation and the training loop.

    Subclasses define ``name``, ``primary_metric``, ``build_model``, ``loss``, ``metrics``,
    ``example_inputs``, ``prunable``, ``_split_tensors(split) -> (inputs, targets)`` and
    ``_train_epoch_batches(epoch, rng) -> Iterator[Batch]``; ``config`` must be a plain dict
    (JSON-like) that ``qprune.problems.get(name, **config)`` accepts.
    """

    name: ClassVar[str] = ""
    primary_metric: ClassVar[str] = ""
    # Train in channels-last layout: a problem turns it on where it was measured to be faster.
    train_channels_last: ClassVar[bool] = False
    config: dict

    # ----- data (subclass hooks)
    def _split_tensors(self, split: str) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def _train_epoch_batches(self, epoch: int, rng: np.random.Generator) -> Iterator[Batch]:
        raise NotImplementedError

    def _train_epoch_len(self) -> int:
        raise NotImplementedError

    # ----- fixed batches
    def _fixed(self, split: str, count_key: str) -> list[Batch]:
        x, y = self._split_tensors(split)
        return batched(x, y, int(self.config["batch_size"]), self.config.get(count_key))

    def _split_len(self, split: str) -> int:
        return int(self._split_tensors(split)[0].shape[0])

    def _take(self, split: str, idx: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        x, y = self._split_tensors(split)
        t = torch.from_numpy(idx)
        return x[t], y[t]

    def calibration_batches(self) -> list[Batch]:
        """``calib_batches`` batches from the training split (seeded order, no augmentation)."""
        bs, count = int(self.config["batch_size"]), self.config.get("calib_batches")
        # A seeded shuffle so calibration sees many scenes, not just the first few.
        perm = np.random.default_rng([int(self.config["seed"]), 1]).permutation(self._split_len("train"))
        if count is not None:
            perm = perm[:count * bs]
        x, y = self._take("train", perm)
        return batched(x, y, bs)

    def validation_batches(self) -> list[Batch]:
        """The first ``val_batches`` batches of the validation split (all when None)."""
        return self._fixed("val", "val_batches")

    def test_batches(self) -> list[Batch]:
        """The first ``test_batches`` batches of the held-out test split (all when None)."""
        return self._fixed("test", "test_batches")

    def metric(self, out: torch.Tensor, target: torch.Tensor) -> float:
        """The headline metric (higher is better)."""
        return self.metrics(out, target)[self.primary_metric]

    def metrics(self, out: torch.Tensor, target: torch.Tensor) -> dict[str, float]:
        raise NotImplementedError

    def loss(self, out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def distill_loss(self, out: torch.Tensor, teacher_out: torch.Tensor) -> torch.Tensor:
        """How far ``out`` is from the teacher's output; by default the task loss with the teacher's
        output as the target (right for image-to-image problems; classifiers override it)."""
        return self.loss(out, teacher_out)

    def build_model(self) -> nn.Module:
        raise NotImplementedError

    def baseline_metrics(self, batches: Sequence[Batch]) -> dict[str, float] | None:
        """Metrics of a trivial predictor (e.g. the noisy input itself), or None."""
        return None

    @torch.no_grad()
    def evaluate(self, model: nn.Module, batches: Sequence[Batch] | None = None) -> dict[str, float]:
        """Batch-size-weighted mean of :meth:`metrics` over ``batches`` (default: test batches)."""
        batches = self.test_batches() if batches is None else batches
        was_training = model.training
        model.eval()
        device = next(model.parameters()).device
        totals: dict[str, float] = {}
        count = 0
        for x, y in batches:
            n = int(x.shape[0])
            x, y = x.to(device), y.to(device)
            for k, v in self.metrics(model(x), y).items():
                totals[k] = totals.get(k, 0.0) + float(v) * n
            count += n
        model.train(was_training)
        return {k: v / max(count, 1) for k, v in totals.items()}

    # ----- training
    def train(self, model: nn.Module | None = None, *, epochs: int = 10, lr: float = 1e-3, seed: int = 0,
              schedule: str = "cosine", weight_decay: float = 0.0, device: str = "cpu",
              precision: str = "auto", channels_last: bool | None = None, step_every: int = 10,
              state: str | Path | None = None, resume: bool = False,
              progress: bool = True, log: Callable[[str], None] | None = None,
              distill: training.Distillation | None = None) -> TrainResult:
        """Train with Adam (the paper's optimiser) and return the model plus checkpoint metadata.

        ``schedule``: ``"cosine"`` (anneals to 0 over the run) or ``"step"`` (the paper's StepLR:
        halve every ``step_every`` epochs). ``precision``: ``"auto"`` (bf16 autocast where the CPU
        or GPU has native bf16, else float32), ``"fp32"`` or ``"bf16"``; weights, loss and metrics
        are float32 either way. ``channels_last``: None takes the problem's measured default
        (:attr:`train_channels_last`). ``state``: a file the whole training state is written to after
        every epoch; with ``resume=True`` a run continues from it. The final model is kept (as in
        the paper), not the best-on-validation one; it is returned on the CPU in NCHW layout.
        ``device``: ``"cpu"``, ``"cuda"`` or ``"auto"``. ``meta`` holds the settings, wall time and
        final validation/test metrics, plus the trivial baseline's test metrics when there is one.
        ``distill``: knowledge distillation from a teacher (:meth:`finetune` uses it).
        """
        device = training.resolve_device(device)
        settings = training.TrainSettings(
            epochs=int(epochs), lr=float(lr), seed=int(seed), schedule=schedule, weight_decay=float(weight_decay),
            precision=training.resolve_precision(precision, device), channels_last=self.train_channels_last if channels_last is None else bool(channels_last),
            step_every=int(step_every))
        settings.check()
        set_seed(seed)
        model = (self.build_model() if model is None else model).to(device)
        run = training.fit(self, model, settings, device=device, state=None if state is None else Path(state),
                           resume=resume, progress=progress, log=log, distill=distill)
        model = run.model.cpu().to(memory_format=torch.contiguous_format)
        test = self.test_batches()
        meta: dict[str, Any] = {
            **asdict(settings), "train_seconds": round(run.seconds, 1), "device": device,
            "torch": str(torch.__version__), "threads": torch.get_num_threads(),
            "val_metrics": self.evaluate(model, self.validation_batches()),
            "test_metrics": self.evaluate(model, test),
            "test_samples": sum(int(x.shape[0]) for x, _ in test),
        }
        base = self.baseline_metrics(test)
        if base is not None:
            meta["test_baseline_metrics"] = base
        return TrainResult(model, meta, run.history)

    def summary(self, meta: Mapping[str, Any]) -> str:
        """One human line about the held-out result in ``meta`` (as printed by ``qprune train``)."""
        test = meta.get("test_metrics", {})
        return "held-out test split: " + ", ".join(f"{k} {v:.4f}" for k, v in test.items())

    def finetune(self, model: nn.Module, *, epochs: int = 3, lr: float = 1e-4, seed: int = 0,
                 teacher: nn.Module | None = None, distill_weight: float = 0.5, device: str = "cpu",
                 precision: str = "auto", state: str | Path | None = None, resume: bool = False,
                 progress: bool = True, log: Callable[[str], None] | None = None) -> FinetuneResult:
        """Recovery fine-tuning of a (physically pruned) model with this problem's training loop.

        The same loop as :meth:`train` (Adam, cosine schedule, resumable ``state``), from the
        pruned model's weights and with a smaller learning rate; with ``teacher`` (the unpruned
        model) each step also pulls the output towards the teacher's (:class:`training.Distillation`,
        ``distill_weight`` of the loss). ``before``/``after`` are the held-out test metrics; the
        model is trained in place and returned on the CPU.
        """
        before = self.evaluate(model)
        distill = None if teacher is None else training.Distillation(teacher, float(distill_weight))
        run = self.train(model, epochs=epochs, lr=lr, seed=seed, schedule="cosine", device=device,
                         precision=precision, state=state, resume=resume, progress=progress, log=log,
                         distill=distill)
        meta = {"epochs": int(epochs), "lr": float(lr), "seed": int(seed),
                "distill_weight": None if teacher is None else float(distill_weight),
                "seconds": run.meta["train_seconds"], "val_after": run.meta["val_metrics"]}
        return FinetuneResult(run.model, before, run.meta["test_metrics"], run.history, meta)
