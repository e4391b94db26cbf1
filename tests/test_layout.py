"""The package reads in the order data flows: imports only run down the layers, and never in a cycle.

Every import of a project module counts, at module level or inside a function, so a function-local
import cannot hide a cycle or an upward dependency.
"""

from __future__ import annotations

import ast
from pathlib import Path

import networkx as nx
import pytest

ROOT = Path(__file__).resolve().parents[1]
# Source folder -> the package it installs as (pyproject.toml's package-dir).
SOURCES = {"qprune": ROOT / "qprune", "qprune.backends": ROOT / "backends", "qprune.problems": ROOT / "problems"}

BASE = "base"  # errors, atomic files, the torchvision shim: usable from anywhere
# layer -> the layers it may import from (its own included). Backends and problems are leaves.
ALLOWED: dict[str, set[str]] = {
    BASE: {BASE},
    "backends": {BASE, "backends"},
    "problems": {BASE, "problems"},
    "model": {BASE, "model"},
    "qubo": {BASE, "model", "qubo"},
    "instances": {BASE, "model", "qubo", "instances"},
    "solve": {BASE, "model", "qubo", "backends", "solve"},
    "refine": {BASE, "model", "qubo", "backends", "solve", "refine"},
    "pipeline": {BASE, "model", "qubo", "backends", "problems", "solve", "refine", "pipeline"},
    "cli": {BASE, "model", "qubo", "backends", "problems", "instances", "solve", "refine", "pipeline", "cli"},
}
ORDER = ["model", "qubo", "solve", "refine", "pipeline"]
MAX_FUNCTION_LINES = 80  # a function a reader holds in mind at once


def _modules() -> dict[str, Path]:
    out: dict[str, Path] = {}
    for package, folder in SOURCES.items():
        for path in folder.rglob("*.py"):
            rel = path.relative_to(folder).with_suffix("")
            parts = [p for p in rel.parts if p != "__init__"]
            name = ".".join([package, *parts])
            if package == "qprune" and parts[:1] in (["backends"], ["problems"]):
                continue
            out[name] = path
    return out


MODULES = _modules()


def layer(module: str) -> str:
    """The layer a project module belongs to."""
    parts = module.split(".")
    if module == "qprune" or parts[1:2] in (["cli"], ["commands"]):
        return "cli"
    if parts[1] in ALLOWED:
        return parts[1]
    return BASE


def _resolve(current: str, is_package: bool, node: ast.ImportFrom | ast.Import) -> list[str]:
    """The project modules an import statement pulls in."""
    targets: list[str] = []
    if isinstance(node, ast.Import):
        names = [a.name for a in node.names]
        for name in names:
            while name and name not in MODULES:
                name = name.rpartition(".")[0]
            if name:
                targets.append(name)
        return targets
    if node.level:
        base = current.split(".") if is_package else current.split(".")[:-1]
        base = base[:len(base) - node.level + 1]
        mod = ".".join(base + ([node.module] if node.module else []))
    else:
        mod = node.module or ""
    if not mod.startswith("qprune"):
        return []
    for alias in node.names:
        full = f"{mod}.{alias.name}"
        targets.append(full if full in MODULES else mod)
    return [t for t in targets if t in MODULES]


def import_graph() -> nx.DiGraph:
    """module -> imported module, for every import statement anywhere in the file."""
    graph = nx.DiGraph()
    for name, path in MODULES.items():
        graph.add_node(name)
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                for target in _resolve(name, path.name == "__init__.py", node):
                    if target != name:
                        graph.add_edge(name, target, line=node.lineno)
    return graph


GRAPH = import_graph()


def test_the_graph_sees_the_whole_package() -> None:
    for expected in ("qprune.model.space", "qprune.qubo.formulation", "qprune.solve.gamma.exact_k",
                     "qprune.refine.tt", "qprune.pipeline.run", "qprune.backends.registry",
                     "qprune.problems.denoise", "qprune.cli"):
        assert expected in GRAPH, expected
    assert GRAPH.has_edge("qprune.qubo.formulation", "qprune.qubo.terms")


def test_no_import_cycles() -> None:
    # A package's __init__ re-exporting its own modules is not a cycle between modules.
    graph = GRAPH.copy()
    graph.remove_edges_from([(a, b) for a, b in GRAPH.edges if b.startswith(a + ".") or a.startswith(b + ".")
                             and _is_init(b)])
    cycles = list(nx.simple_cycles(graph))
    assert not cycles, "import cycles: " + "; ".join(" -> ".join([*c, c[0]]) for c in cycles)


def _is_init(module: str) -> bool:
    return MODULES[module].name == "__init__.py"


def test_imports_run_down_the_layers() -> None:
    upward = [f"{a} ({layer(a)}) imports {b} ({layer(b)}) at line {GRAPH.edges[a, b]['line']}"
              for a, b in GRAPH.edges if layer(b) not in ALLOWED[layer(a)]]
    assert not upward, "imports against the data-flow order:\n" + "\n".join(sorted(upward))


@pytest.mark.parametrize("name", sorted(MODULES))
def test_modules_and_functions_are_short(name: str) -> None:
    path = MODULES[name]
    text = path.read_text()
    assert len(text.splitlines()) <= 500, f"{path} has {len(text.splitlines())} lines"
    long = [f"{node.name} ({node.end_lineno - node.lineno + 1} lines)" for node in ast.walk(ast.parse(text))
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES]
    assert not long, f"{path}: {', '.join(long)}"


def test_order_is_the_documented_one() -> None:
    text = (ROOT / "docs" / "architecture.md").read_text()
    positions = [text.index(f"qprune/{sub}/") for sub in ORDER]
    assert positions == sorted(positions)


def test_no_file_cites_a_document_outside_the_project() -> None:
    """The design notes the project grew from are not shipped: nothing may send a reader to them."""
    cited = "DESIGN" + ".md"
    skip = {".git", ".venv", "__pycache__", "out"}
    hits = [str(p.relative_to(ROOT)) for p in ROOT.rglob("*")
            if p.is_file() and not skip & set(p.relative_to(ROOT).parts) and ".egg-info" not in str(p)
            and p.suffix in {".py", ".md", ".txt", ".toml", ".cfg", ".yml", ".yaml", ".json", ""}
            and cited in p.read_text(errors="ignore")]
    assert not hits, hits


def test_every_package_folder_is_installed() -> None:
    """pyproject.toml lists its packages one by one: a subpackage missing there installs without its
    files (an editable install hides it; a wheel, e.g. make gpu-bundle's, does not)."""
    import tomllib

    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {
        ".".join([pkg, *init.parent.relative_to(src).parts])
        for pkg, src in SOURCES.items() for init in src.rglob("__init__.py")
        if "__pycache__" not in init.parts
    }
    assert found - listed == set(), f"package folders missing from pyproject.toml's packages: {sorted(found - listed)}"
