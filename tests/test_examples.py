"""Every script in examples/ runs, in its quick mode, as a user would run it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"


def _run(args: list[str], env: dict[str, str] | None = None, timeout: int = 900) -> str:
    run = subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout,
                         env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}, check=False)
    assert run.returncode == 0, run.stderr[-3000:]
    return run.stdout


def test_there_are_at_least_five_examples_and_the_readme_points_to_them() -> None:
    scripts = sorted(p.name for p in EXAMPLES.glob("*.py"))
    assert len(scripts) + (EXAMPLES / "plugin_backend" / "pyproject.toml").is_file() >= 5
    readme = (ROOT / "README.md").read_text()
    for name in [*scripts, "plugin_backend"]:
        assert f"examples/{name}" in readme, name


def test_prune_torchvision() -> None:
    out = _run(["examples/prune_torchvision.py", "--quick"])
    assert "pruned" in out and "params" in out


def test_external_solver() -> None:
    out = _run(["examples/external_solver.py", "--quick"])
    for name in ("qprune (neal)", "HiGHS on the LP", "your code on the JSON"):
        assert name in out
    ks = {line.split("k=")[1].split()[0] for line in out.splitlines() if "k=" in line}
    assert len(ks) == 1  # every solver answered with the same, exact k


def test_custom_term() -> None:
    out = _run(["examples/custom_term.py", "--quick"])
    assert out.count("pruned per layer") == 2


def test_dwave_offline() -> None:
    pytest.importorskip("dwave.system", reason="the dwave extra is not installed")
    out = _run(["examples/dwave_qpu.py", "--quick"])
    assert "mock Pegasus QPU" in out and "'embedding_reused': True" in out


def test_plugin_backend_installs_and_serves(tmp_path: Path) -> None:
    target = tmp_path / "site"
    pip = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
                          "--target", str(target), str(EXAMPLES / "plugin_backend")],
                         capture_output=True, text=True, timeout=600, check=False)
    assert pip.returncode == 0, pip.stderr[-2000:]
    env = {"PYTHONPATH": str(target)}
    listing = _run(["-m", "qprune.cli", "backends"], env=env)
    assert "icm" in listing and "examples/plugin_backend" in listing
    out = _run(["-m", "qprune.cli", "prune", "--problem", "classify", "--sparsity", "0.3", "--backend", "icm",
                "--quiet"], env=env)
    assert "on backend `icm`" in out


def test_budgeted_prune() -> None:
    out = _run(["examples/budgeted_prune.py", "--quick"])
    assert "keep at most 70% of the MACs" in out and "kept channels per layer" in out
