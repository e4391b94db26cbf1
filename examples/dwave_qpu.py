"""The D-Wave path: the pruning QUBO on a quantum annealer, offline on a mock QPU or live with a token.

Without a Leap token (``dwave config create`` or ``DWAVE_API_TOKEN``) the script runs offline:
``dwave.system.testing.MockDWaveSampler`` has a real Pegasus topology (so embedding, chains and
chain strength are real) and a simulated-annealing substitute in place of the physics. With a
token, ``--live`` sends the same QUBO to a real QPU through ``DWaveSampler``. The gamma search
changes only the biases between its calls, so the QUBO is embedded once and the embedding reused.

    python examples/dwave_qpu.py [--quick]      # offline, mock QPU
    python examples/dwave_qpu.py --live         # a real QPU (needs a Leap token)
"""

from __future__ import annotations

import argparse
import os

import qprune
from qprune import backends, problems


def qpu_backend(live: bool):
    """A sampler for qprune: the real QPU when ``live``, else the mock Pegasus QPU."""
    if live:
        if not os.environ.get("DWAVE_API_TOKEN") and not os.path.exists(os.path.expanduser("~/.config/dwave/dwave.conf")):
            raise SystemExit("--live needs a Leap token: run `dwave config create` or set DWAVE_API_TOKEN")
        return backends.get("dwave")  # DWaveSampler() behind an embedding cache
    from dwave.samplers import SimulatedAnnealingSampler
    from dwave.system.testing import MockDWaveSampler

    mock = MockDWaveSampler(topology_type="pegasus", topology_shape=[16],
                            substitute_sampler=SimulatedAnnealingSampler(), substitute_kwargs={"num_sweeps": 200})
    return backends.get("dwave", qpu=mock)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--live", action="store_true", help="use a real QPU (needs a Leap token)")
    p.add_argument("--quick", action="store_true", help="the first two prunable layers only")
    args = p.parse_args(argv)
    problem, model = problems.load_pretrained("classify")
    sampler = qpu_backend(args.live)
    # the gamma search sends the whole QUBO to the QPU at every step (the layerwise strategy would
    # enumerate blocks this small exactly and never call it)
    gamma, space = qprune.MethodOptions(strategy="gamma"), qprune.SpaceOptions(layers=2 if args.quick else None)
    result = qprune.prune(model, problem, sparsity=0.3, method="hybrid-qubo", backend=sampler, options=gamma,
                          space=space, seed=0, progress=False, remove=False)
    neal = qprune.prune(model, problem, sparsity=0.3, method="hybrid-qubo", backend="neal", options=gamma,
                        space=space, seed=0, progress=False, remove=False)
    where = "a real QPU" if args.live else "the mock Pegasus QPU"
    print(f"{result.k} of {result.space.N} units pruned on {where}: energy {result.energy:.4f} "
          f"(neal: {neal.energy:.4f}); accuracy {result.metrics_after['accuracy']:.4f} "
          f"(neal: {neal.metrics_after['accuracy']:.4f})")
    # one more call on the final BQM: its structure is cached, so the embedding is reused
    again = sampler.sample(result.bqm, num_reads=10, seed=0)
    print("last call:", {k: again.info[k] for k in sorted(again.info) if k != "embedding_context"})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
