"""Export and import of pruning QUBOs and of samples, for solvers outside qprune.

A QUBO is written either *penalised* (the BQM at one gamma) or *constrained* (the objective without
the gamma term, plus ``sum(x) = k``, with k stored in the file). Formats, picked from the suffix or
``format=``:

=========  ===============  =========================================================================
format     suffixes         content
=========  ===============  =========================================================================
``dimod``  .bqm .dimod .cqm dimod's own binary file (``bqm.to_file()``); constrained: a CQM file
``coo``    .coo             exact COO text (format in its first line; repr floats, offset, labels, k)
``json``   .json            ``{"format": "qprune-qubo", "k": ..., "bqm": bqm.to_serializable()}``
``qubo``   .qubo            qbsolv text: ``p qubo 0 N N nCouplers``, index lines; ``c`` comments keep
                            offset, k and the index -> label map
``lp``     .lp              CPLEX LP via dimod (variables x<i>, LP-safe; ``\\`` comments keep the labels;
                            constraint ``cardinality``). ``linearize=True`` writes a MILP instead
                            (y_ij in [0, 1] for each coupling) for MIP solvers without MIQP (HiGHS, CBC)
``npz``    .npz             numpy arrays (linear, row, col, quad, offset, k) + JSON labels
=========  ===============  =========================================================================

Every write goes to a temporary file in the target directory and is moved into place with
``os.replace``, so an error never leaves a half-written file. Every load error is a
:class:`~qprune.errors.QpruneError` naming the file and what is wrong with it.

Samples (x_i = 1: unit i pruned) are read from JSON (``{"sample": {label: 0|1}, ...}`` or plain
``{label: 0|1}``), CSV (``label,value`` rows, optional header) or a bitstring in the BQM's variable
order, and matched to the BQM by label.

This module is the public face; the formats live by family in :mod:`qprune.qubo.io_plain` (COO,
qbsolv, JSON, npz), :mod:`qprune.qubo.io_constrained` (dimod BQM/CQM files, LP) and
:mod:`qprune.qubo.io_samples` (samples), with shared helpers in :mod:`qprune.qubo.io_common`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import NamedTuple

import dimod
import numpy as np

from qprune.errors import QpruneError
from qprune.qubo import io_constrained, io_plain
from qprune.qubo.formulation import Formulation
from qprune.qubo.io_common import Reader, Writer, atomic_write, format_of
from qprune.qubo.io_constrained import CARDINALITY
from qprune.qubo.io_samples import SAMPLE_FORMATS, load_sample, parse_sample, save_sample

__all__ = [
    "CARDINALITY", "FORMATS", "READERS", "SAMPLE_FORMATS", "WRITERS", "LoadedQubo", "export_bqm", "export_constrained",
    "export_formulation", "load_bqm", "load_sample", "parse_sample", "save_sample",
]

FORMATS: dict[str, tuple[str, ...]] = {
    "dimod": (".bqm", ".dimod", ".cqm"),
    "coo": (".coo",),
    "json": (".json",),
    "qubo": (".qubo",),
    "lp": (".lp",),
    "npz": (".npz",),
}

#: format -> writer / reader, one per entry of FORMATS (linearized LP has a writer of its own)
WRITERS: dict[str, Writer] = {**io_constrained.WRITERS, **io_plain.WRITERS}
READERS: dict[str, Reader] = {**io_constrained.READERS, **io_plain.READERS}


class LoadedQubo(NamedTuple):
    """What :func:`load_bqm` returns: the BQM and k for the constrained form (else None)."""

    bqm: dimod.BinaryQuadraticModel
    k: int | None


def export_bqm(
    bqm: dimod.BinaryQuadraticModel,
    path: str | os.PathLike[str],
    *,
    format: str | None = None,
    linearize: bool = False,
) -> Path:
    """Write ``bqm`` (e.g. the BQM at the gamma that gives k) atomically; returns the path.

    ``format`` defaults to the one the suffix names (see :data:`FORMATS`); ``linearize`` applies to
    LP only (a MILP for solvers without binary quadratic support).
    """
    return _save(bqm, path, None, format, linearize)


def export_constrained(
    bqm: dimod.BinaryQuadraticModel,
    k: int,
    path: str | os.PathLike[str],
    *,
    format: str | None = None,
    linearize: bool = False,
) -> Path:
    """Write the constrained form "minimise ``bqm`` subject to sum(x) = k" atomically; k is stored
    in the file (CQM constraint, LP constraint, header line or field) and :func:`load_bqm` returns it.
    """
    if k is None:
        raise QpruneError("export_constrained needs k, the number of units to prune")
    return _save(bqm, path, k, format, linearize)


def _save(
    bqm: dimod.BinaryQuadraticModel,
    path: str | os.PathLike[str],
    k: int | None,
    format: str | None,
    linearize: bool,
) -> Path:
    path = Path(path)
    fmt = format_of(path, format, FORMATS, "QUBO")
    if bqm.vartype is not dimod.BINARY:
        raise QpruneError("only BINARY BQMs are exported (x_i = 1: unit pruned); convert SPIN models first")
    if k is not None:
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 0 <= int(k) <= bqm.num_variables:
            raise QpruneError(f"k = {k!r} must be an integer in [0, {bqm.num_variables}]")
        k = int(k)
    if linearize and fmt != "lp":
        raise QpruneError(f"linearize=True applies to LP files only, not format {fmt!r}")
    if fmt in ("coo", "qubo", "npz", "lp"):
        for v in bqm.variables:
            if isinstance(v, bool) or not isinstance(v, (str, int)):
                raise QpruneError(f"label {v!r} is neither a string nor an integer; format {fmt!r} cannot keep it")
    writer = io_constrained.write_lp_linearized if linearize else WRITERS[fmt]
    atomic_write(path, lambda f: writer(bqm, k, f))
    return path


def export_formulation(
    formulation: Formulation,
    path: str | os.PathLike[str],
    *,
    gamma: float | None = None,
    k: int | None = None,
    format: str | None = None,
    linearize: bool = False,
) -> Path:
    """Write a :class:`~qprune.qubo.formulation.Formulation`: ``gamma`` gives the BQM at that gamma,
    ``k`` the constrained form (objective without the gamma term, sum(x) = k). Exactly one of them.
    """
    if (gamma is None) == (k is None):
        raise QpruneError("give exactly one of gamma (penalised BQM) or k (constrained form)")
    if k is not None:
        return export_constrained(formulation.objective_bqm(), k, path, format=format, linearize=linearize)
    return export_bqm(formulation.bqm(gamma), path, format=format, linearize=linearize)


def load_bqm(path: str | os.PathLike[str], *, format: str | None = None) -> LoadedQubo:
    """Read a QUBO written by :func:`export_bqm`/:func:`export_constrained` (or a plain dimod/COO/qbsolv/LP file from elsewhere)."""
    path = Path(path)
    fmt = format_of(path, format, FORMATS, "QUBO")
    if not path.is_file():
        raise QpruneError(f"QUBO file {str(path)!r} does not exist")
    reader = READERS[fmt]
    try:
        bqm, k = reader(path)
    except QpruneError as e:
        raise QpruneError(f"{path}: {e}") from None
    except Exception as e:  # any failure to parse means the file is not what its format says
        raise QpruneError(f"{path} is not a valid {fmt!r} QUBO file: {type(e).__name__}: {e}") from None
    if k is not None and not 0 <= k <= bqm.num_variables:
        raise QpruneError(f"{path}: k = {k} is outside [0, {bqm.num_variables}]")
    return LoadedQubo(bqm, k)
