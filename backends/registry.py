"""Name -> sampler-factory registry, extensible through the ``qprune.backends`` entry-point group.

A backend is a :class:`dimod.Sampler` (``sample(bqm, **params) -> dimod.SampleSet``). Factories
import their optional dependencies lazily so that listing backends never imports qiskit or jax.
"""

from __future__ import annotations

import importlib.util
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from typing import Any

import dimod

from qprune.errors import BackendUnavailable, QpruneError

SamplerFactory = Callable[..., dimod.Sampler]
# (bqm, the sample call's keyword arguments) -> the beta range to pass, or None to leave it to the sampler
BetaRange = Callable[[dimod.BinaryQuadraticModel, Mapping[str, Any]], "list[float] | None"]


@dataclass(frozen=True)
class BackendInfo:
    """What ``qprune backends`` prints about one backend."""

    name: str
    factory: SamplerFactory = field(repr=False)
    description: str = ""
    requires: tuple[str, ...] = ()  # importable module names that must be present
    extra: str | None = None  # pip extra that installs ``requires``
    needs_token: bool = False  # needs cloud credentials (e.g. D-Wave Leap)
    max_variables: int | None = None  # hard size limit, if any
    # Variables per call when a solver packs independent sub-problems into one BQM (None: up to
    # ``max_variables``, else the solver's choice). 1 = one sub-problem per call.
    batch_variables: int | None = None
    # A fast equivalent of the sampler's own default beta range (simulated annealing), for callers to pass.
    beta_range: BetaRange | None = field(default=None, repr=False)
    # "module.Class" of sampler instances this entry describes, so a sampler passed in directly
    # (not by name) gets the same traits.
    sampler_classes: tuple[str, ...] = ()

    @property
    def installed(self) -> bool:
        """True when every module in ``requires`` can be imported."""
        return all(_module_present(m) for m in self.requires)


_REGISTRY: dict[str, BackendInfo] = {}
_ENTRY_POINTS_LOADED = False
_BROKEN: dict[str, str] = {}  # entry-point name -> why it failed to load


def _module_present(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def register(
    name: str,
    factory: SamplerFactory,
    *,
    description: str = "",
    requires: tuple[str, ...] = (),
    extra: str | None = None,
    needs_token: bool = False,
    max_variables: int | None = None,
    batch_variables: int | None = None,
    beta_range: BetaRange | None = None,
    sampler_classes: tuple[str, ...] = (),
    replace: bool = False,
) -> BackendInfo:
    """Register ``factory(**config) -> dimod.Sampler`` under ``name``.

    Third-party packages do the same through the ``qprune.backends`` entry-point group, whose
    entries point at a zero-argument callable that calls :func:`register`.
    """
    if not name or not isinstance(name, str):
        raise QpruneError(f"backend name must be a non-empty string, got {name!r}")
    if name in _REGISTRY and not replace:
        raise QpruneError(f"backend {name!r} is already registered (pass replace=True to override)")
    info = BackendInfo(name, factory, description, tuple(requires), extra, needs_token, max_variables,
                       batch_variables, beta_range, tuple(sampler_classes))
    _REGISTRY[name] = info
    return info


def unregister(name: str) -> None:
    """Remove ``name`` from the registry (no error if it is absent)."""
    _REGISTRY.pop(name, None)


def _load_entry_points() -> None:
    """Load the ``qprune.backends`` entry points once.

    An entry point names either a zero-argument hook that calls :func:`register`, or a
    :class:`dimod.Sampler` subclass, registered under the entry point's name. A plugin that fails to
    load gives a warning and is reported when someone asks for it; it never breaks the others.
    """
    global _ENTRY_POINTS_LOADED
    if _ENTRY_POINTS_LOADED:
        return
    _ENTRY_POINTS_LOADED = True
    for ep in entry_points(group="qprune.backends"):
        try:
            target = ep.load()
            if isinstance(target, type) and issubclass(target, dimod.Sampler):
                if ep.name not in _REGISTRY:
                    register(ep.name, target, description=(target.__doc__ or "").strip().split("\n")[0])
            elif callable(target):
                target()
            else:
                raise TypeError(f"{ep.value} is neither a registration hook nor a dimod.Sampler class")
        except Exception as exc:  # noqa: BLE001 - a broken plugin must not take the registry down
            _BROKEN[ep.name] = f"{type(exc).__name__}: {exc}"
            warnings.warn(f"qprune backend plugin {ep.name!r} ({ep.value}) failed to load: {exc}",
                          RuntimeWarning, stacklevel=2)


def info(name: str) -> BackendInfo:
    """The :class:`BackendInfo` of ``name``; unknown names raise with the list of known ones."""
    _load_entry_points()
    try:
        return _REGISTRY[name]
    except KeyError:
        if name in _BROKEN:
            raise BackendUnavailable(f"backend plugin {name!r} failed to load: {_BROKEN[name]}") from None
        known = ", ".join(sorted(_REGISTRY))
        raise QpruneError(f"unknown backend {name!r}; known backends: {known}") from None


def available() -> list[BackendInfo]:
    """Every registered backend, installed or not, sorted by name."""
    _load_entry_points()
    return [_REGISTRY[n] for n in sorted(_REGISTRY)]


def get(name: str | dimod.Sampler, **config: Any) -> dimod.Sampler:
    """A ready sampler for ``name`` (a sampler instance passes through unchanged).

    Raises :class:`BackendUnavailable` with the pip extra to install when a dependency is missing.
    """
    if isinstance(name, dimod.Sampler):
        return name
    entry = info(name)
    missing = [m for m in entry.requires if not _module_present(m)]
    if missing:
        hint = f"pip install 'qprune[{entry.extra}]'" if entry.extra else "install " + ", ".join(missing)
        raise BackendUnavailable(
            f"backend {name!r} needs {', '.join(missing)} which is not installed; run: {hint}"
        )
    return entry.factory(**config)


@dataclass(frozen=True)
class SamplerTraits:
    """What a solver may ask of a backend beyond dimod's interface (see :func:`traits`)."""

    batch_variables: int | None = None  # variables per call when packing sub-problems; None: no preference
    beta_range: BetaRange | None = None  # fast default beta range (simulated annealing), or None


def traits(backend: str | dimod.Sampler) -> SamplerTraits:
    """The traits a backend describes itself with.

    A name: its :class:`BackendInfo` (``batch_variables``, else ``max_variables``). A sampler
    instance: the entry whose ``sampler_classes`` lists its class, then the instance's own
    ``batch_variables`` or ``max_variables`` attribute, if it has one.
    """
    if isinstance(backend, str):
        return _entry_traits(info(backend))
    _load_entry_points()
    cls = type(backend)
    path = f"{cls.__module__}.{cls.__qualname__}"
    found = next((_entry_traits(e) for e in _REGISTRY.values() if path in e.sampler_classes), SamplerTraits())
    own = next((getattr(backend, a) for a in ("batch_variables", "max_variables")
                if isinstance(getattr(backend, a, None), int)), None)
    return SamplerTraits(own if own is not None else found.batch_variables, found.beta_range)


def _entry_traits(entry: BackendInfo) -> SamplerTraits:
    batch = entry.batch_variables if entry.batch_variables is not None else entry.max_variables
    return SamplerTraits(batch, entry.beta_range)
