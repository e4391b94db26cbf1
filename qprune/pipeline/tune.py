"""Hyper-parameter search over the QUBO weights with Optuna.

The paper picks (alpha, alpha_F, beta_diag, beta_off, lambda) by random search, with gamma found by
the exact-k search inside every trial. Optuna gives the same random search plus TPE (the default),
and its RDB storage (an SQLite file) lets a search resume and lets several processes or machines
share one study. A score may report partial values (the metric on a first part of the validation
split, then on all of it): a trial whose partial value is below the median of the earlier trials at
that point stops there (Optuna's median pruner, after :data:`PRUNE_AFTER` complete trials).
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

from qprune.atomic import write_json
from qprune.errors import QpruneError
from qprune.qubo.presets import Weights

#: Default log-uniform ranges for each weight; a weight that a preset ignores is still sampled but
#: has no effect, so restrict ``space`` to the preset's weights for a tighter search.
DEFAULT_SPACE: dict[str, tuple[float, float]] = {
    "alpha": (1e-2, 1e2),
    "alpha_f": (1e-2, 1e2),
    "beta_diag": (1e-3, 1e1),
    "beta_off": (1e-3, 1e1),
    "lam": (1e-3, 1e1),
}
PRUNE_AFTER = 4  #: complete trials before the median pruner may stop a trial early

@dataclass
class SearchResult:
    """Best weights found, their validation score and every trial's record."""

    best_weights: Weights
    best_value: float
    n_trials: int
    trials: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "best_weights": asdict(self.best_weights),
            "best_value": self.best_value,
            "n_trials": self.n_trials,
            "seconds": self.seconds,
            "trials": self.trials,
        }


def search_weights(
    score: Callable[[Weights], float | Iterable[float]],
    *,
    n_trials: int | None = 20,
    timeout: float | None = None,
    sampler: str = "tpe",
    space: Mapping[str, tuple[float, float]] | None = None,
    base: Weights | None = None,
    storage: str | os.PathLike[str] | None = None,
    study_name: str = "qprune-weights",
    seed: int | None = 0,
    progress: bool = True,
    save_best: str | os.PathLike[str] | None = None,
) -> SearchResult:
    """Maximise ``score(weights)`` (a validation metric) over the QUBO weights.

    Args:
        score: evaluates one set of weights; gamma is searched inside it (exact k per trial). A
            float, or an iterable of partial values whose last one is the score: each is reported
            to the trial, which stops early when it falls below the earlier trials' median.
        n_trials / timeout: budget in trials and/or seconds (at least one must be given).
        sampler: ``"tpe"`` (default) or ``"random"`` (the paper's procedure).
        space: ``{weight_name: (low, high)}`` log-uniform ranges; defaults to :data:`DEFAULT_SPACE`.
        base: values for weights outside ``space``.
        storage: an SQLite file path (or any Optuna RDB URL); an existing study of the same name
            resumes, and several processes may share it.
        save_best: write the best weights as JSON here when done (atomically).
    """
    import optuna

    if n_trials is None and timeout is None:
        raise QpruneError("give a search budget: n_trials and/or timeout")
    if n_trials is not None and n_trials < 1:
        raise QpruneError(f"n_trials must be >= 1, got {n_trials}")
    if sampler not in ("tpe", "random"):
        raise QpruneError(f"unknown sampler {sampler!r}; choose 'tpe' or 'random'")
    space = dict(DEFAULT_SPACE if space is None else space)
    known = set(asdict(Weights()))
    unknown = set(space) - known
    if unknown:
        raise QpruneError(f"unknown weight(s) {sorted(unknown)}; known: {sorted(known)}")
    for name, (lo, hi) in space.items():
        if not (0 < lo <= hi and math.isfinite(hi)):
            raise QpruneError(f"range for {name!r} must satisfy 0 < low <= high, got ({lo}, {hi})")
    base = base or Weights()

    study = open_study(storage, study_name, sampler=sampler, seed=seed)

    def objective(trial: "optuna.Trial") -> float:
        values = asdict(base)
        for name, (lo, hi) in space.items():
            values[name] = trial.suggest_float(name, lo, hi, log=True)
        out = score(Weights(**values))
        if isinstance(out, (int, float)):
            return float(out)
        value = math.nan
        for step, value in enumerate(out):
            trial.report(float(value), step)
            if trial.should_prune():
                raise optuna.TrialPruned()
        return float(value)

    start = time.perf_counter()
    study.optimize(objective, n_trials=n_trials, timeout=timeout, show_progress_bar=progress)
    result = study_result(study, base, seconds=time.perf_counter() - start)
    if save_best is not None:
        write_json(save_best, result.to_dict())
    return result


def storage_url(storage: str | os.PathLike[str] | None) -> str | None:
    """An Optuna RDB URL: a plain path is an SQLite file (its folder is made), a URL passes through."""
    if storage is None:
        return None
    url = str(storage)
    if "://" not in url:
        Path(url).parent.mkdir(parents=True, exist_ok=True)
        url = f"sqlite:///{Path(url).resolve()}"
    return url


def open_study(storage: str | os.PathLike[str] | None, study_name: str, *, sampler: str = "tpe",
               seed: int | None = 0) -> "optuna.Study":
    """The study ``study_name`` in ``storage`` (created when absent), maximising, with a seeded sampler."""
    import optuna

    optuna_sampler = (
        optuna.samplers.TPESampler(seed=seed) if sampler == "tpe" else optuna.samplers.RandomSampler(seed=seed)
    )
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    pruner = optuna.pruners.MedianPruner(n_startup_trials=PRUNE_AFTER, n_warmup_steps=0)
    try:
        return optuna.create_study(study_name=study_name, storage=storage_url(storage), sampler=optuna_sampler,
                                   pruner=pruner, direction="maximize", load_if_exists=True)
    except ImportError as exc:  # e.g. a postgresql:// URL without a driver
        raise QpruneError(f"storage {storage!r} needs a database driver: {exc}") from None


def study_result(study: "optuna.Study", base: Weights | None = None, seconds: float = 0.0) -> SearchResult:
    """The best weights of a study (every worker's trials) and a record of each trial."""
    known = set(asdict(Weights()))
    best = study.best_trial
    best_values = asdict(base or Weights())
    best_values.update({k: v for k, v in best.params.items() if k in known})
    return SearchResult(
        best_weights=Weights(**best_values),
        best_value=float(best.value),
        n_trials=len(study.trials),
        trials=[{"number": t.number, "value": t.value, "params": t.params, "state": t.state.name}
                for t in study.trials],
        seconds=seconds,
    )


def worker_shares(n_trials: int, workers: int) -> list[int]:
    """``n_trials`` split over ``workers`` as evenly as possible (the first ones take the remainder)."""
    if workers < 1:
        raise QpruneError(f"workers must be >= 1, got {workers}")
    if n_trials < workers:
        raise QpruneError(f"{n_trials} trials cannot keep {workers} workers busy; give at least one trial each")
    return [n_trials // workers + (i < n_trials % workers) for i in range(workers)]

