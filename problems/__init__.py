"""Workloads to prune (installed as ``qprune.problems``): model + data + loss + metric.

Registry::

    problem = qprune.problems.get("denoise", width=16)            # or "classify"
    problem, model = qprune.problems.load_checkpoint("ckpt.pt")   # trained model, eval mode
    problem, model = qprune.problems.load_pretrained("denoise")   # the small checkpoint shipped here
    qprune.problems.save_checkpoint("ckpt.pt", problem, model, meta={...})

Checkpoint file (``torch.save``, loadable with ``weights_only=True``)::

    {"format": "qprune-checkpoint", "version": 1, "problem": name,
     "config": problem.config,   # everything get(name, **config) needs: model AND data options
     "state_dict": ..., "meta": {"epochs", "seed", "test_metrics", ...}}

so later commands need only the file. The data is read lazily, on the first batch request.
"""

from __future__ import annotations

import re

from importlib import import_module
from pathlib import Path
from typing import Any, Callable, Mapping

import torch
from torch import nn

from qprune.atomic import atomic_open
from qprune.errors import QpruneError

from .base import Batch, BaseProblem, FinetuneResult, Problem, TrainResult
from .plain import plain

CHECKPOINT_FORMAT = "qprune-checkpoint"
CHECKPOINT_VERSION = 1
CHECKPOINT_DIR = Path(__file__).resolve().parent / "checkpoints"

# name -> "module:Class" (imported lazily so `import qprune.problems` stays cheap) or a factory.
_REGISTRY: dict[str, str | Callable[..., Problem]] = {
    "denoise": "qprune.problems.denoise:DenoiseProblem",
    "classify": "qprune.problems.classify:ClassifyProblem",
}
# The small models shipped in checkpoints/ (see checkpoints/README.md for the commands).
PRETRAINED: dict[str, str] = {
    "denoise": "denoise_bundled_f16.pt",
    "classify": "classify_digits_w16.pt",
}

__all__ = [
    "Batch", "BaseProblem", "FinetuneResult", "Problem", "TrainResult", "available", "get", "register",
    "save_checkpoint", "load_checkpoint", "load_pretrained", "pretrained_path", "default_checkpoint",
    "read_checkpoint", "PRETRAINED", "plain",
]


def register(name: str, factory: Callable[..., Problem], *, replace: bool = False) -> None:
    """Add a problem factory (``factory(**config) -> Problem``) under ``name``."""
    if name in _REGISTRY and not replace:
        raise QpruneError(f"problem {name!r} is already registered")
    _REGISTRY[name] = factory


def available() -> list[str]:
    """Registered problem names, sorted."""
    return sorted(_REGISTRY)


def _factory(name: str) -> Callable[..., Problem]:
    if name not in _REGISTRY:
        raise QpruneError(f"unknown problem {name!r}; available: {', '.join(available())}")
    entry = _REGISTRY[name]
    if isinstance(entry, str):
        module, _, attr = entry.partition(":")
        entry = getattr(import_module(module), attr)
    return entry


def get(name: str, **config: Any) -> Problem:
    """A problem instance; unknown names and unknown options raise :class:`QpruneError`."""
    return _factory(name)(**config)


def save_checkpoint(path: str | Path, problem: Problem, model: nn.Module,
                    meta: Mapping[str, Any] | None = None) -> Path:
    """Write ``model``'s weights with the problem name, its full config and ``meta``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    payload = {"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, "problem": problem.name,
               "config": plain(problem.config), "state_dict": state, "meta": plain(meta or {})}
    with atomic_open(path, "wb") as fh:  # a stop mid-write never leaves a broken checkpoint
        torch.save(payload, fh)
    return path


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """The raw checkpoint dict, validated (a QpruneError says what is wrong with the file)."""
    path = Path(path)
    if not path.is_file():
        raise QpruneError(f"checkpoint {path} does not exist")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several unrelated types for a non-checkpoint file
        raise QpruneError(f"{path} is not a qprune checkpoint ({_load_failure(exc)})") from exc
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT or "state_dict" not in ckpt:
        raise QpruneError(f"{path} is not a qprune checkpoint (no 'format': {CHECKPOINT_FORMAT!r} entry); "
                          "create one with `qprune train`")
    if int(ckpt.get("version", 0)) > CHECKPOINT_VERSION:
        raise QpruneError(f"{path} is checkpoint version {ckpt['version']}; "
                          f"this qprune reads <= {CHECKPOINT_VERSION}")
    if ckpt.get("problem") not in _REGISTRY:
        raise QpruneError(f"{path} is for unknown problem {ckpt.get('problem')!r}; "
                          f"available: {', '.join(available())}")
    return ckpt


def _load_failure(exc: Exception) -> str:
    """Why ``torch.load(weights_only=True)`` refused a file, in a few words (torch's own message is a
    page of advice with terminal colour codes)."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(exc))
    found = re.search(r"GLOBAL\s+([\w.]+)", text)
    if found:
        return (f"not a trusted weights file: it holds a Python object ({found.group(1)}) that only an unsafe "
                "pickle load would run")
    reason = re.search(r"WeightsUnpickler error:\s*(.+)", text)
    if reason:
        return f"not a torch weights file ({reason.group(1).strip()[:80]})"
    first = text.strip().splitlines()
    return f"torch.load failed: {first[0][:120] if first else type(exc).__name__}"


def load_checkpoint(path: str | Path, **overrides: Any) -> tuple[Problem, nn.Module]:
    """``(problem, model)`` from a checkpoint; the model is in eval mode.

    ``overrides`` replace config entries, e.g. ``data=...`` when the dataset moved, or smaller
    ``val_batches``; a None override is ignored. Options that change the model (``width``...)
    must match the weights.
    """
    ckpt = read_checkpoint(path)
    # None means "keep the checkpoint's value" so CLI flags that were not given pass straight through.
    config = {**ckpt["config"], **{k: v for k, v in overrides.items() if v is not None}}
    problem = get(ckpt["problem"], **config)
    model = problem.build_model()
    try:
        model.load_state_dict(ckpt["state_dict"])
    except RuntimeError as exc:
        raise QpruneError(f"{path}: weights do not fit the {ckpt['problem']} model built from its config "
                          f"({str(exc).splitlines()[0]})") from exc
    model.eval()
    problem.checkpoint_meta = dict(ckpt.get("meta", {}))  # type: ignore[attr-defined]
    return problem, model


def pretrained_path(name: str) -> Path:
    """Path of the checkpoint shipped for ``name`` (``"denoise"`` or ``"classify"``)."""
    if name not in PRETRAINED:
        raise QpruneError(f"no shipped checkpoint for problem {name!r}; "
                          f"shipped: {', '.join(sorted(PRETRAINED))}")
    path = CHECKPOINT_DIR / PRETRAINED[name]
    if not path.is_file():
        raise QpruneError(f"shipped checkpoint {path} is missing from this install")
    return path


default_checkpoint = pretrained_path


def load_pretrained(name: str, **overrides: Any) -> tuple[Problem, nn.Module]:
    """``load_checkpoint(pretrained_path(name), **overrides)``: a trained model in seconds."""
    return load_checkpoint(pretrained_path(name), **overrides)
