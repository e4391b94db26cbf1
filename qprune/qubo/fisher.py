"""The loss model: a second-order estimate of how much the loss grows when units are removed.

Every unit i has a virtual gate m_i on its channels (1 = kept, 0 = removed), and the calibration
pass gives every sample's derivative ``d_i(s) = dL_s/dm_i`` (:mod:`qprune.model.signals`,
``gate_grads``; rows are samples, or blocks of samples). Removing the units of a mask x moves the
gates by -x, so to second order

    dL(x) ~ -gbar . x + 1/2 x^T H x,      H ~ F = D^T D / S   (the gates' empirical Fisher)

with ``D`` the ``[S, N]`` matrix of derivatives. F couples units ACROSS layers; its diagonal alone
is Fisher pruning (Theis et al. 2018; Liu et al. 2021's group Fisher). No weight is set by hand:
the energy is an estimate of the damage itself.

Two measured choices:

* The first-order term is left out by default: at a trained model the mean derivative is mostly
  calibration noise, and with it every mask we tried was worse.
* F is shrunk towards its diagonal, ``F_rho = (1 - rho) F + rho diag(F)``, with rho chosen from the
  data by the Schafer-Strimmer estimate (the variance of the off-diagonal entries over their size):
  with fewer rows than units the raw F is singular and a search finds masks in its null space,
  whose estimated damage is small and real damage is not; with many rows rho is small.

The result stays factored: ``1/2 x^T F_rho x = rho/2 sum_i F_ii x_i + 1/2 |C x|^2`` with
``C = sqrt((1 - rho) / S) D``, so a 10,000-unit model never forms an N x N matrix; solvers that work
on the factor evaluate a flip in O(S) (:mod:`qprune.solve.lowrank`).
"""

from __future__ import annotations

import numpy as np

from qprune.errors import QpruneError
from qprune.qubo.types import Term

__all__ = ["fisher_shrinkage", "gate_fisher"]


def fisher_shrinkage(D: np.ndarray) -> float:
    """Schafer-Strimmer shrinkage intensity towards the diagonal for ``F = D^T D / S`` (in [0, 1]).

    ``rho = sum_{i != j} Var(F_ij) / sum_{i != j} F_ij^2``, each F_ij the mean over rows of
    ``D_si D_sj``. Uses the S x S or N x N Gram matrix, whichever is smaller.
    """
    D = np.asarray(D, dtype=np.float64)
    S, N = D.shape
    if S < 2 or N < 2:
        return 1.0
    gram = D @ D.T if S <= N else D.T @ D
    frob2 = float(np.sum(gram * gram)) / (S * S)  # sum_ij F_ij^2
    sq = D * D
    diag = sq.mean(axis=0)  # F_ii
    row_norm2 = sq.sum(axis=1)
    # sum_ij Var(F_ij) = (sum_s |d_s|^4 / S - sum_ij F_ij^2) / (S - 1), and the same on the diagonal
    var_all = (float(np.sum(row_norm2 ** 2)) / S - frob2) / (S - 1)
    var_diag = (float(np.sum(sq * sq)) / S - float(np.sum(diag ** 2))) / (S - 1)
    off2 = frob2 - float(np.sum(diag ** 2))
    if off2 <= 0.0:
        return 1.0
    return float(np.clip((var_all - var_diag) / off2, 0.0, 1.0))


def gate_fisher(gate_grads: np.ndarray, *, shrinkage: float | str = "auto", first_order: bool = False) -> Term:
    """The loss model as a :class:`Term`: ``linear`` = rho/2 F_ii (- gbar_i with ``first_order``),
    ``factor`` = sqrt((1 - rho) / S) D (see the module doc).

    Args:
        gate_grads: ``[S, N]`` per-sample (or per-block) gate derivatives.
        shrinkage: rho in [0, 1], or ``"auto"`` (:func:`fisher_shrinkage`).
        first_order: add the mean derivative's first-order term.
    """
    D = np.asarray(gate_grads, dtype=np.float64)
    if D.ndim != 2 or D.shape[0] < 1:
        raise QpruneError(f"gate_grads must be a [samples, units] matrix, got shape {D.shape}")
    if not np.all(np.isfinite(D)):
        raise QpruneError("gate_grads contain NaN or inf; check the calibration loss")
    if isinstance(shrinkage, str):
        if shrinkage != "auto":
            raise QpruneError(f"shrinkage must be a number in [0, 1] or 'auto', got {shrinkage!r}")
        rho = fisher_shrinkage(D)
    else:
        rho = float(shrinkage)
        if not 0.0 <= rho <= 1.0:
            raise QpruneError(f"shrinkage must lie in [0, 1], got {shrinkage!r}")
    S = D.shape[0]
    linear = 0.5 * rho * (D * D).mean(axis=0)
    if first_order:
        linear = linear - D.mean(axis=0)
    return Term("gate_fisher", linear=linear, factor=np.sqrt((1.0 - rho) / S) * D)
