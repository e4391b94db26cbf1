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


def test_top_level_is_the_main_job_and_the_extension_points():
    names = set(qprune.__all__)
    assert {"prune", "compare_methods", "tune_weights", "MethodOptions", "PruneResult", "register_term",
            "export_bqm", "load_bqm", "save_pruned", "load_pruned", "backends", "problems"} <= names
    # test fixtures and internals live in their subpackages, not at the top
    assert not names & {"synthetic_instance", "random_formulation", "naive_score", "compare_rows", "Gates"}
    assert len(names) <= 40


def test_every_subpackage_name_resolves():
    import importlib

    for sub in ("model", "qubo", "solve", "refine", "pipeline", "instances"):
        mod = importlib.import_module(f"qprune.{sub}")
        assert mod.__doc__, sub
        for name in mod.__all__:
            assert getattr(mod, name) is not None, f"qprune.{sub}.{name}"


def test_subpackage_import_is_lazy():
    code = ("import sys, qprune.solve.strategies, qprune.qubo.presets, qprune.pipeline; "
            "print(sorted(m for m in ('torch', 'dimod', 'torch_pruning', 'optuna') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "[]"
