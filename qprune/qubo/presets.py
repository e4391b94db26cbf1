"""The QUBO presets and weights, from one table.

Minimise E(x) = sum_i Q_ii x_i + sum_{i<j} Q_ij x_i x_j with x_i = 1 meaning "unit i is pruned":

* ``l1``:       Q_ii = beta_diag A_ii - gamma D_i;                              Q_ij = 2 beta_off A_ij
* ``gradient``: Q_ii = beta_diag A_ii + alpha I_T,i - gamma D_i;                Q_ij = 2 beta_off A_ij
* ``hybrid``:   Q_ii = beta_diag A_ii + alpha I_T,i + alpha_F I_F,i - gamma D_i;
                Q_ij = 2 beta_off A_ij + lam max(0, S_ij)

(the paper's L1-QUBO has a single beta: beta_diag == beta_off, the default), and one that is not the
paper's and has no weight at all:

* ``fisher``:   E(x) = 1/2 x^T F_rho x, the gates' shrunk empirical Fisher over all units
                (:mod:`qprune.qubo.fisher`: a second-order estimate of the loss increase)
 ``fisher`` picks what
I_F is: ``taylor`` (I_T again, so the Taylor weight becomes alpha + alpha_F), ``weight`` (I_WF),
``channel`` (I_CF) or ``both`` (I_WF + I_CF, each normalised on its own). ``Weights.extra`` adds any
registered term with its own weight.

:data:`PRESET_TABLE` is the only place these formulas are written down: every preset lists its
terms with the :class:`Weights` field that multiplies the term's linear part and the one that
multiplies its off-diagonal part. :func:`preset_terms`, :func:`preset_weights` and
:func:`contributions` (what :func:`qprune.qubo.formulation.formulate` sums) all read it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from qprune.errors import QpruneError

__all__ = [
    "CAPACITY", "COUPLING_SCALE", "DEFAULT_PRESET", "FISHER", "FISHER_CHOICES", "FISHER_TERMS", "PRESETS", "PRESET_TABLE", "Weights",
    "contributions", "preset_terms", "preset_weights",
]

CAPACITY = "capacity"  #: the reward term gamma multiplies; every preset reads it
FISHER = "<fisher>"  #: placeholder in the table for the term(s) ``fisher=`` picks
FIXED = "<fixed>"  #: a weight of 1 that is part of the formula (nothing to tune)
#: ``fisher=`` choice -> the terms standing for I_F
FISHER_TERMS: dict[str, tuple[str, ...]] = {
    "taylor": ("taylor",),
    "weight": ("weight_fisher",),
    "channel": ("channel_fisher",),
    "both": ("weight_fisher", "channel_fisher"),
}
FISHER_CHOICES = tuple(FISHER_TERMS)

#: preset -> (term, Weights field on its linear part, Weights field on its off-diagonal part); None = 0
PRESET_TABLE: dict[str, tuple[tuple[str, str | None, str | None], ...]] = {
    "hybrid": (
        ("l1_redundancy", "beta_diag", "beta_off"),
        ("taylor", "alpha", None),
        (FISHER, "alpha_f", None),
        ("activation_similarity", None, "lam"),
    ),
    "gradient": (
        ("l1_redundancy", "beta_diag", "beta_off"),
        ("taylor", "alpha", None),
    ),
    "l1": (
        ("l1_redundancy", "beta_diag", "beta_off"),
    ),
    "fisher": (
        ("gate_fisher", FIXED, FIXED),
    ),
}
#: how :func:`qprune.qubo.formulation.formulate` scales a preset's within-layer couplings by default:
#: the paper's unit-variance terms are divided by (layer size - 1); the loss model keeps its own scale
COUPLING_SCALE: dict[str, str] = {"hybrid": "layer", "gradient": "layer", "l1": "layer", "fisher": "none"}
PRESETS = tuple(PRESET_TABLE)
DEFAULT_PRESET = PRESETS[0]


@dataclass
class Weights:
    """Relative weights of the QUBO components (gamma, the capacity weight, is searched).

    Every term enters on the same footing (:func:`qprune.qubo.scaling.normalise_terms`: each one's
    energy varies by 1 between random masks), so a weight says how much that term decides. The
    defaults let the gradient terms (Taylor, Fisher) lead and the redundancy and similarity terms
    refine (0.1): at 1 those two cost the bundled denoiser 2.4 dB at 70 % of the MACs and 0.3 dB at
    36 % of the units (``benchmarks/results/quality.md`` has the defaults against a tuned search).

    ``extra`` maps the name of any other computed term to the weight it enters with (linear and
    quadratic parts alike), which is how a user-registered term reaches the QUBO.
    """

    alpha: float = 1.0
    alpha_f: float = 1.0
    beta_diag: float = 0.1
    beta_off: float = 0.1
    lam: float = 0.1
    extra: dict[str, float] = field(default_factory=dict)


def contributions(preset: str, fisher: str, w: Weights) -> list[tuple[str, float, float]]:
    """(term name, weight on its linear part, weight on its off-diagonal part) for a preset, in table order.

    Raises:
        QpruneError: unknown ``preset`` or ``fisher``.
    """
    _check(preset, fisher)
    out: list[tuple[str, float, float]] = []
    for term, on_linear, on_off in PRESET_TABLE[preset]:
        diag, off = _weight(w, on_linear), _weight(w, on_off)
        names = FISHER_TERMS[fisher] if term == FISHER else (term,)
        out += [(name, diag, off) for name in names]
    out += [(name, float(v), float(v)) for name, v in w.extra.items()]
    return out


def preset_terms(preset: str = DEFAULT_PRESET, fisher: str = "taylor", weights: Weights | None = None) -> tuple[str, ...]:
    """Names of the terms a preset reads (what :func:`qprune.qubo.terms.compute_terms` must produce)."""
    return tuple(dict.fromkeys([CAPACITY] + [n for n, _, _ in contributions(preset, fisher, weights or Weights())]))


def preset_weights(preset: str = DEFAULT_PRESET) -> tuple[str, ...]:
    """The :class:`Weights` fields a preset reads, sorted by name (what a weight search tunes)."""
    _check(preset, FISHER_CHOICES[0])
    return tuple(sorted({f for _, *on in PRESET_TABLE[preset] for f in on if f not in (None, FIXED)}))


def _weight(w: Weights, field_name: str | None) -> float:
    if field_name is None:
        return 0.0
    return 1.0 if field_name == FIXED else float(getattr(w, field_name))


def _check(preset: str, fisher: str) -> None:
    if preset not in PRESET_TABLE:
        raise QpruneError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
    if fisher not in FISHER_TERMS:
        raise QpruneError(f"unknown fisher choice {fisher!r}; choose one of {', '.join(FISHER_CHOICES)}")
