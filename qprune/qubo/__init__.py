"""The QUBO side of qprune: terms from calibration signals, their scaling, the formulation, files.

Modules, in the order data flows:

* :mod:`~qprune.qubo.types` - :class:`Term`, one named component, and its validation;
* :mod:`~qprune.qubo.providers` - the built-in term providers (plain array functions);
* :mod:`~qprune.qubo.scaling` - parameter-count normalisation, unit variance, spectral cap;
* :mod:`~qprune.qubo.terms` - the provider registry and :func:`compute_terms`;
* :mod:`~qprune.qubo.presets` - :class:`Weights` and the preset table;
* :mod:`~qprune.qubo.formulation` - :func:`formulate` -> :class:`Formulation` -> ``dimod`` BQM;
* :mod:`~qprune.qubo.fileio` - QUBO and sample export / import (formats in ``io_plain``,
  ``io_constrained``, ``io_samples``).

Nothing here imports torch, the solvers or the pipeline.
"""

from qprune.qubo.fileio import (
    FORMATS,
    SAMPLE_FORMATS,
    LoadedQubo,
    export_bqm,
    export_constrained,
    export_formulation,
    load_bqm,
    load_sample,
    parse_sample,
    save_sample,
)
from qprune.qubo.formulation import Formulation, formulate
from qprune.qubo.presets import FISHER_CHOICES, PRESETS, Weights, preset_terms, preset_weights
from qprune.qubo.scaling import normalise_terms
from qprune.qubo.terms import (
    Term,
    available_terms,
    compute_terms,
    l1_scores,
    register_term,
    term_requirements,
    unregister_term,
    validate_term,
)

__all__ = [
    "FISHER_CHOICES", "FORMATS", "PRESETS", "SAMPLE_FORMATS", "Formulation", "LoadedQubo", "Term", "Weights",
    "available_terms", "compute_terms", "export_bqm", "export_constrained", "export_formulation", "formulate",
    "l1_scores", "load_bqm", "load_sample", "normalise_terms", "parse_sample", "preset_terms", "preset_weights",
    "register_term", "save_sample", "term_requirements", "unregister_term", "validate_term",
]
