import subprocess
import sys

import qprune


def test_every_public_name_resolves():
    for name in qprune.__all__:
        assert getattr(qprune, name) is not None, name


def test_import_is_light():
    # `import qprune` must not drag in the optional heavy stacks
    code = "import sys, qprune, qprune.backends; print(sorted(m for m in ('qiskit','openjij','jax','protes','optuna','dwave.system') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "[]"
