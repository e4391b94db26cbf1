"""OR-Library "bqp" QUBO instances (Beasley): the classic benchmark the backends are measured on.

File format: first line ``n nnz``, then ``i j q`` lines, 1-based, upper triangle including the
diagonal. The objective is MAXIMISED: sum_i q_ii x_i + 2 sum_{i<j} q_ij x_i x_j. As a minimisation
QUBO the energy is its negative, so a best-known maximum m is a best-known energy -m.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path

import dimod
import numpy as np

from qprune.errors import QpruneError


def read_bqp(path: str | os.PathLike[str]) -> dimod.BinaryQuadraticModel:
    """One bqp file as a minimisation BQM over integer labels 0..n-1."""
    path = Path(path)
    try:
        tokens = path.read_text().split()
        n, nnz = int(tokens[0]), int(tokens[1])
        a = np.array(tokens[2:2 + 3 * nnz], dtype=np.float64).reshape(nnz, 3)
    except (OSError, ValueError, IndexError) as exc:
        raise QpruneError(f"{path} is not an OR-Library bqp file ('n nnz' then 'i j q' lines): {exc}") from None
    i, j, q = a[:, 0].astype(np.int64) - 1, a[:, 1].astype(np.int64) - 1, a[:, 2]
    if i.size and (min(i.min(), j.min()) < 0 or max(i.max(), j.max()) >= n):
        raise QpruneError(f"{path}: an index lies outside 1..{n}")
    diag = i == j
    lin = np.zeros(n)
    np.add.at(lin, i[diag], -q[diag])
    return dimod.BinaryQuadraticModel.from_numpy_vectors(
        lin, (i[~diag], j[~diag], -2.0 * q[~diag]), 0.0, "BINARY", variable_order=range(n)
    )


def load_instance(folder: str | os.PathLike[str], instance: str) -> tuple[dimod.BinaryQuadraticModel, float]:
    """``(bqm, best-known energy)`` for ``instance`` (e.g. ``"bqp50.1"``) from a folder holding
    ``bqp_best_known.csv`` (``instance,n,file,best_known_max``) and the files it names."""
    folder = Path(folder)
    with open(folder / "bqp_best_known.csv") as fh:
        row = next((r for r in csv.DictReader(fh) if r["instance"] == instance), None)
    if row is None:
        raise QpruneError(f"instance {instance!r} is not listed in {folder / 'bqp_best_known.csv'}")
    return read_bqp(folder / row["file"]), -float(row["best_known_max"])
