"""QAOA on Qiskit's Aer simulator (``qaoa``): a demonstrator for small sub-problems.

The BQM becomes a :class:`qiskit_optimization.QuadraticProgram`, solved by
``MinimumEigenOptimizer(QAOA(SamplerV2, optimizer, reps))``. The SampleSet holds the optimiser's best
solution and every other bitstring the final QAOA state produced (one row per distinct bitstring, with
its sampling probability as the ``probability`` data vector); energies are computed by dimod on the
caller's BQM. Measured: optimum found at 10 variables in ~1 s, rarely at 12, never at 16,
so the default size guard is 20 qubits — a statevector of 2^20 amplitudes is still cheap, anything
larger is slow and pointless.
"""

from __future__ import annotations

import time
from typing import Any

import dimod
import numpy as np

from qprune.backends.registry import register
from qprune.errors import QpruneError

__all__ = ["DEFAULT_MAX_QUBITS", "QAOASampler"]

DEFAULT_MAX_QUBITS = 20


def _make_optimizer(optimizer: Any, maxiter: int | None) -> Any:
    """A qiskit_optimization optimizer from a name (``"COBYLA"``, ``"SPSA"``, ``"NELDER_MEAD"``) or instance."""
    import qiskit_optimization.optimizers as opt

    if not isinstance(optimizer, str):
        return optimizer
    names = {"cobyla": opt.COBYLA, "spsa": opt.SPSA, "nelder_mead": opt.NELDER_MEAD,
             "nelder-mead": opt.NELDER_MEAD}
    cls = names.get(optimizer.lower())
    if cls is None:
        raise QpruneError(f"unknown QAOA optimizer {optimizer!r}; choose COBYLA, SPSA or NELDER_MEAD")
    return cls(maxiter=maxiter) if maxiter is not None else cls()


class QAOASampler(dimod.Sampler):
    """QAOA (qiskit-optimization + qiskit-aer) as a :class:`dimod.Sampler`.

    Args:
        reps: QAOA layers p.
        optimizer: ``"COBYLA"`` (default), ``"SPSA"``, ``"NELDER_MEAD"`` or a qiskit_optimization
            optimizer instance.
        maxiter: optimiser iteration budget (None: the optimiser's default).
        shots: shots per circuit evaluation.
        max_qubits: refuse larger problems (one qubit per variable).
    """

    # one sub-problem per call: QAOA's time grows exponentially and its quality falls beyond ~10 qubits
    batch_variables = 1

    def __init__(self, reps: int = 2, optimizer: Any = "COBYLA", maxiter: int | None = None,
                 shots: int = 1024, max_qubits: int = DEFAULT_MAX_QUBITS) -> None:
        import qiskit_optimization  # noqa: F401  - fail at construction when the extra is missing

        self.reps = int(reps)
        self.optimizer = optimizer
        self.maxiter = maxiter
        self.shots = int(shots)
        self.max_qubits = int(max_qubits)
        self._pm: Any = None
        _make_optimizer(optimizer, maxiter)  # validate the name now, not on first sample

    def _pass_manager(self) -> Any:
        """Transpile to Aer's gate set (QAOA warns that a V2 sampler without one may fail); ~0.1 s."""
        if self._pm is None:
            from qiskit.transpiler.preset_passmanagers import generate_preset_pass_manager
            from qiskit_aer import AerSimulator

            self._pm = generate_preset_pass_manager(optimization_level=1, backend=AerSimulator())
        return self._pm

    @property
    def parameters(self) -> dict[str, list]:
        """Per-call overrides; ``num_reads`` is accepted and ignored (QAOA returns its distribution)."""
        return {"seed": [], "reps": [], "shots": [], "num_reads": [], "initial_point": []}

    @property
    def properties(self) -> dict[str, Any]:
        """Static configuration."""
        return {"max_qubits": self.max_qubits, "reps": self.reps, "optimizer": str(self.optimizer)}

    def sample(self, bqm: dimod.BinaryQuadraticModel, *, seed: int | None = None, reps: int | None = None,
               shots: int | None = None, num_reads: int | None = None,
               initial_point: np.ndarray | None = None) -> dimod.SampleSet:
        """Solve ``bqm`` with QAOA; refuses more than ``max_qubits`` variables."""
        n = bqm.num_variables
        if n > self.max_qubits:
            raise QpruneError(
                f"backend 'qaoa' simulates one qubit per variable and refuses n={n} > {self.max_qubits} "
                f"(max_qubits); solve a sub-problem (--layers) or use --strategy layerwise, whose "
                f"per-layer problems are small")
        order = list(bqm.variables)
        if n == 0:
            return dimod.SampleSet.from_samples_bqm((np.empty((1, 0), np.int8), order), bqm)
        t0 = time.perf_counter()

        from qiskit_aer.primitives import SamplerV2
        from qiskit_optimization import QuadraticProgram
        from qiskit_optimization.algorithms import MinimumEigenOptimizer
        from qiskit_optimization.minimum_eigensolvers import QAOA
        from qiskit_optimization.utils import algorithm_globals

        binary = bqm if bqm.vartype is dimod.BINARY else bqm.change_vartype(dimod.BINARY, inplace=False)
        lin, (row, col, quad), offset = binary.to_numpy_vectors(variable_order=order)
        names = [f"x{i}" for i in range(n)]
        qp = QuadraticProgram("qprune")
        for name in names:
            qp.binary_var(name)
        qp.minimize(constant=float(offset), linear=np.asarray(lin, float),
                    quadratic={(names[i], names[j]): float(b) for i, j, b in zip(row, col, quad)})

        # QAOA draws its random initial point from algorithm_globals; the sampler has its own seed.
        algorithm_globals.random_seed = seed
        sampler = SamplerV2(default_shots=int(shots or self.shots), seed=seed)
        qaoa = QAOA(sampler, _make_optimizer(self.optimizer, self.maxiter), reps=int(reps or self.reps),
                    initial_point=initial_point, pass_manager=self._pass_manager())
        result = MinimumEigenOptimizer(qaoa).solve(qp)

        rows = [np.asarray(result.x)] + [np.asarray(s.x) for s in result.samples]
        probs = [np.nan] + [float(s.probability) for s in result.samples]
        X = np.rint(np.vstack(rows)).astype(np.int8)
        X, first = np.unique(X, axis=0, return_index=True)
        prob = np.asarray(probs)[first]
        for i, r in enumerate(X):  # the optimiser's answer may also be a sampled bitstring
            if np.isnan(prob[i]):
                same = [p for rr, p in zip(rows[1:], probs[1:]) if np.array_equal(np.rint(rr), r)]
                prob[i] = same[0] if same else 0.0
        if bqm.vartype is dimod.SPIN:
            X = 2 * X - 1
        sampleset = dimod.SampleSet.from_samples_bqm(
            (X, order), bqm, probability=prob,
            info={"seed": seed, "reps": int(reps or self.reps), "optimizer": str(self.optimizer),
                  "fval": float(result.fval), "timing": {"total_s": time.perf_counter() - t0}},
        )
        return sampleset


def _qaoa(**config: Any) -> dimod.Sampler:
    return QAOASampler(**config)


register("qaoa", _qaoa, description=f"QAOA on the Qiskit Aer simulator, <= {DEFAULT_MAX_QUBITS} variables "
         "(a demonstrator for small sub-problems)", requires=("qiskit_optimization", "qiskit_aer"),
         extra="qaoa", max_variables=DEFAULT_MAX_QUBITS, batch_variables=1)
