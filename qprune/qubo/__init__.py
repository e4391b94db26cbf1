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

from qprune.lazy import lazy_exports

_EXPORTS: dict[str, str] = {
    "FISHER_CHOICES": "qprune.qubo.presets",
    "FORMATS": "qprune.qubo.fileio",
    "Formulation": "qprune.qubo.formulation",
    "LoadedQubo": "qprune.qubo.fileio",
    "PRESETS": "qprune.qubo.presets",
    "SAMPLE_FORMATS": "qprune.qubo.fileio",
    "Term": "qprune.qubo.terms",
    "Weights": "qprune.qubo.presets",
    "available_terms": "qprune.qubo.terms",
    "compute_terms": "qprune.qubo.terms",
    "export_bqm": "qprune.qubo.fileio",
    "export_constrained": "qprune.qubo.fileio",
    "export_formulation": "qprune.qubo.fileio",
    "formulate": "qprune.qubo.formulation",
    "l1_scores": "qprune.qubo.terms",
    "load_bqm": "qprune.qubo.fileio",
    "load_sample": "qprune.qubo.fileio",
    "normalise_terms": "qprune.qubo.scaling",
    "parse_sample": "qprune.qubo.fileio",
    "preset_terms": "qprune.qubo.presets",
    "preset_weights": "qprune.qubo.presets",
    "register_term": "qprune.qubo.terms",
    "save_sample": "qprune.qubo.fileio",
    "term_requirements": "qprune.qubo.terms",
    "unregister_term": "qprune.qubo.terms",
    "validate_term": "qprune.qubo.terms",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
