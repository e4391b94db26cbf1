"""D-Wave backends: the QPU (``dwave``), Leap's hybrid BQM solver (``dwave-hybrid``) and Leap's
hybrid CQM solver (:func:`cqm_sampler`; the exact-k CQM itself is built and solved by
:mod:`qprune.solve.cqm`, where sum(x) = k is posed directly, so no gamma search).

Credentials come from the usual Ocean configuration (``dwave config create`` writes dwave.conf;
``DWAVE_API_TOKEN`` overrides it). They are checked by reading that configuration, without a network
round trip, so a missing token is a one-line :class:`BackendUnavailable` at ``get()`` time.

The gamma search re-solves BQMs that differ only in their linear biases; minor-embedding a dense
60-variable block takes seconds, so :class:`CachedEmbeddingSampler` embeds each *structure*
(variables + edges) once through :class:`EmbeddingComposite` and reuses the embedding through a
:class:`FixedEmbeddingComposite` for every later BQM with the same structure.
"""

from __future__ import annotations

import time
import warnings
from collections import OrderedDict
from collections.abc import Callable, Mapping
from typing import Any

import dimod
import numpy as np

from qprune.backends.registry import register
from qprune.errors import BackendUnavailable, QpruneError

__all__ = [
    "CachedEmbeddingSampler",
    "HybridBQMSampler",
    "check_credentials",
    "cqm_sampler",
]

_HOW_TO = "run `dwave config create` or `export DWAVE_API_TOKEN=...`"

ChainStrength = float | Mapping | Callable[..., Any] | None


def check_credentials(backend: str, config: Mapping[str, Any] | None = None) -> None:
    """Raise :class:`BackendUnavailable` unless an API token is configured (no network access).

    ``config`` may carry ``token``, ``config_file`` and ``profile`` as accepted by Ocean's samplers.
    """
    config = dict(config or {})
    if config.get("token"):
        return
    try:
        from dwave.cloud.config import load_config

        loaded = load_config(config_file=config.get("config_file"), profile=config.get("profile"))
    except Exception as exc:  # a malformed dwave.conf, a missing named profile, ...
        raise BackendUnavailable(
            f"backend {backend!r}: the D-Wave configuration could not be read ({exc}); {_HOW_TO}"
        ) from None
    if not loaded.get("token"):
        raise BackendUnavailable(f"backend {backend!r} needs a D-Wave Leap API token; {_HOW_TO}")


def _connect(backend: str, cls: Callable[..., Any], config: Mapping[str, Any]) -> Any:
    """Instantiate an Ocean cloud sampler, turning its configuration/network errors into one line."""
    check_credentials(backend, config)
    try:
        return cls(**config)
    except Exception as exc:  # SolverNotFoundError, timeouts, bad token...: all need the user
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise BackendUnavailable(f"backend {backend!r}: could not reach the D-Wave solver ({first}); "
                                 f"check the token/solver in your Ocean configuration") from None


def _structure_key(bqm: dimod.BinaryQuadraticModel) -> tuple[frozenset, frozenset]:
    """Variables + edges of ``bqm``: the part of a BQM its minor-embedding depends on."""
    return frozenset(bqm.variables), frozenset(frozenset(e) for e in bqm.quadratic)


class CachedEmbeddingSampler(dimod.Sampler):
    """``EmbeddingComposite(qpu)`` that embeds each BQM structure once and then reuses it.

    Args:
        qpu: a structured sampler: ``DWaveSampler()`` or, offline,
            ``MockDWaveSampler(topology_type="pegasus", topology_shape=[16], substitute_sampler=...)``.
        chain_strength: float, mapping, or ``callable(bqm, embedding)``; the default is
            :func:`dwave.embedding.chain_strength.uniform_torque_compensation`, computed per BQM
            (so it follows the biases as gamma changes). Overridable per ``sample`` call.
        embedding_parameters: keyword arguments for ``minorminer.find_embedding``.
        max_cached: how many structures to keep embedded (least recently used is dropped).

    ``sample(bqm, seed=...)`` seeds the embedding search (the QPU itself takes no seed); parameters
    the QPU does not accept (e.g. ``num_sweeps`` meant for SA) are dropped with one warning and listed
    in ``info["ignored_parameters"]``. The SampleSet carries the ``chain_break_fraction`` data
    vector, and ``info`` its mean, the embedding size and whether the embedding was reused.
    """

    # one sub-problem per call: each embeds once and its embedding is reused for every later call
    batch_variables = 1

    def __init__(self, qpu: dimod.Sampler, *, chain_strength: ChainStrength = None,
                 embedding_parameters: Mapping[str, Any] | None = None, max_cached: int = 8) -> None:
        from dwave.embedding.chain_strength import uniform_torque_compensation

        if not isinstance(qpu, dimod.Structured):
            raise QpruneError(f"backend 'dwave' needs a structured (QPU-like) sampler, got {type(qpu).__name__}")
        self.qpu = qpu
        self.chain_strength = uniform_torque_compensation if chain_strength is None else chain_strength
        self.embedding_parameters = dict(embedding_parameters or {})
        self.max_cached = int(max_cached)
        self.embeddings_computed = 0  # how many times minorminer ran; tests and info read it
        self._cache: OrderedDict[tuple, Any] = OrderedDict()
        self._warned: set[str] = set()

    @property
    def parameters(self) -> dict[str, list]:
        """The QPU's parameters plus ``chain_strength`` and ``seed``."""
        return {**{k: list(v) for k, v in self.qpu.parameters.items()}, "chain_strength": [], "seed": []}

    @property
    def properties(self) -> dict[str, Any]:
        """The QPU's properties under ``child_properties``."""
        return {"child_properties": dict(self.qpu.properties)}

    def embedding_for(self, bqm: dimod.BinaryQuadraticModel) -> dict | None:
        """The cached embedding for ``bqm``'s structure, or None when it has not been embedded yet."""
        comp = self._cache.get(_structure_key(bqm))
        return None if comp is None else dict(comp.embedding)

    def sample(self, bqm: dimod.BinaryQuadraticModel, *, chain_strength: ChainStrength = None,
               seed: int | None = None, **params: Any) -> dimod.SampleSet:
        """Sample ``bqm`` on the QPU, embedding its structure on the first call only."""
        from dwave.system import EmbeddingComposite, FixedEmbeddingComposite

        t0 = time.perf_counter()
        accepted = self.qpu.parameters
        ignored = sorted(k for k in params if k not in accepted)
        for k in ignored:
            params.pop(k)
            if k not in self._warned:
                self._warned.add(k)
                warnings.warn(f"backend 'dwave' ignores parameter {k!r} (not a QPU parameter)", stacklevel=2)
        strength = self.chain_strength if chain_strength is None else chain_strength
        if bqm.num_variables == 0:
            return dimod.SampleSet.from_samples_bqm((np.empty((1, 0), np.int8), []), bqm)

        key = _structure_key(bqm)
        comp = self._cache.get(key)
        reused = comp is not None
        if comp is None:
            emb_params = dict(self.embedding_parameters)
            if seed is not None:
                emb_params.setdefault("random_seed", int(seed))
            try:
                sampleset = EmbeddingComposite(self.qpu).sample(
                    bqm, chain_strength=strength, embedding_parameters=emb_params,
                    return_embedding=True, chain_break_fraction=True, **params)
            except ValueError as exc:
                if "embedding" not in str(exc).lower():
                    raise
                raise QpruneError(
                    f"backend 'dwave' found no minor-embedding for {bqm.num_variables} variables / "
                    f"{bqm.num_interactions} couplings on this QPU; solve a sub-problem (--layers), "
                    f"use --strategy layerwise, or the 'dwave-hybrid' backend") from None
            embedding = sampleset.info["embedding_context"]["embedding"]
            self.embeddings_computed += 1
            self._cache[key] = FixedEmbeddingComposite(self.qpu, embedding=embedding)
            while len(self._cache) > self.max_cached:
                self._cache.popitem(last=False)
        else:
            self._cache.move_to_end(key)
            sampleset = comp.sample(bqm, chain_strength=strength, return_embedding=True,
                                    chain_break_fraction=True, **params)
            embedding = comp.embedding

        chains = [len(c) for c in embedding.values()]
        cbf = sampleset.data_vectors.get("chain_break_fraction")
        sampleset.info.update(
            embedding_reused=reused,
            embeddings_computed=self.embeddings_computed,
            embedding_qubits=int(sum(chains)),
            max_chain_length=int(max(chains, default=0)),
            chain_break_fraction=float(np.mean(cbf)) if cbf is not None and len(cbf) else 0.0,
            ignored_parameters=ignored,
            seed=seed,
            timing_total_s=time.perf_counter() - t0,
        )
        return sampleset


class HybridBQMSampler(dimod.Sampler):
    """Leap's hybrid BQM solver; accepts and ignores ``num_reads``/``seed`` (it returns one answer).

    Args:
        sampler: the underlying sampler (``LeapHybridSampler()`` by default, injected in tests).
        time_limit: default time limit in seconds (None: the solver's minimum for the problem size).
    """

    def __init__(self, sampler: dimod.Sampler, time_limit: float | None = None) -> None:
        self.sampler = sampler
        self.time_limit = time_limit

    @property
    def parameters(self) -> dict[str, list]:
        """``time_limit`` plus the accepted-and-ignored ``num_reads`` and ``seed``."""
        return {"time_limit": [], "num_reads": [], "seed": []}

    @property
    def properties(self) -> dict[str, Any]:
        """The underlying solver's properties."""
        return dict(getattr(self.sampler, "properties", {}))

    def sample(self, bqm: dimod.BinaryQuadraticModel, *, time_limit: float | None = None,
               num_reads: int | None = None, seed: int | None = None, **params: Any) -> dimod.SampleSet:
        """One hybrid solve; the hybrid service is neither seedable nor multi-read."""
        limit = self.time_limit if time_limit is None else time_limit
        if limit is not None:
            params["time_limit"] = limit
        sampleset = self.sampler.sample(bqm, **params)
        sampleset.info.setdefault("ignored_parameters", [k for k, v in (("num_reads", num_reads),
                                                                       ("seed", seed)) if v is not None])
        return sampleset


def _dwave(qpu: dimod.Sampler | None = None, chain_strength: ChainStrength = None,
           embedding_parameters: Mapping[str, Any] | None = None, max_cached: int = 8,
           **config: Any) -> dimod.Sampler:
    """``qpu`` injects a (mock) structured sampler; otherwise ``DWaveSampler(**config)``."""
    if qpu is None:
        from dwave.system import DWaveSampler

        qpu = _connect("dwave", DWaveSampler, config)
    elif config:
        raise QpruneError(f"backend 'dwave': {sorted(config)} configure DWaveSampler and cannot be "
                          f"combined with an injected qpu")
    return CachedEmbeddingSampler(qpu, chain_strength=chain_strength,
                                  embedding_parameters=embedding_parameters, max_cached=max_cached)


def _dwave_hybrid(sampler: dimod.Sampler | None = None, time_limit: float | None = None,
                  **config: Any) -> dimod.Sampler:
    if sampler is None:
        from dwave.system import LeapHybridSampler

        sampler = _connect("dwave-hybrid", LeapHybridSampler, config)
    return HybridBQMSampler(sampler, time_limit=time_limit)


def cqm_sampler(**config: Any) -> Any:
    """Leap's hybrid CQM solver, ``LeapHybridCQMSampler(**config)`` (it has ``sample_cqm``).

    Used by :func:`qprune.solve.cqm.solve_cqm_exact_k`, where sum(x) = k is a constraint. A missing
    extra or token is a one-line :class:`BackendUnavailable`.
    """
    try:
        from dwave.system import LeapHybridCQMSampler
    except ImportError:
        raise BackendUnavailable("the CQM solver needs dwave-system which is not installed; "
                                 "run: pip install 'qprune[dwave]'") from None
    return _connect("dwave-hybrid-cqm", LeapHybridCQMSampler, config)


register("dwave", _dwave,
         description="D-Wave QPU (EmbeddingComposite, embedding cached per structure); needs a Leap token",
         requires=("dwave.system",), extra="dwave", needs_token=True, batch_variables=1)
register("dwave-hybrid", _dwave_hybrid, description="D-Wave Leap hybrid BQM solver; needs a Leap token",
         requires=("dwave.system",), extra="dwave", needs_token=True)
