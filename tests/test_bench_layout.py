"""``benchmarks/`` is a set of scripts and helper modules: no file there imports a script.

A script is a ``benchmarks/*.py`` with a ``main`` function or an ``if __name__ == "__main__"`` block;
the others are helper modules (``common``, ``tp_importance``, ...). Scripts share code only through
the helpers, so each can change (or go) without breaking another.
"""

from __future__ import annotations

import ast
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


def _tree(path: Path) -> ast.Module:
    return ast.parse(path.read_text(), filename=str(path))


def _is_script(tree: ast.Module) -> bool:
    for node in tree.body:
        if isinstance(node, ast.FunctionDef) and node.name == "main":
            return True
        if isinstance(node, ast.If) and "__name__" in ast.unparse(node.test) and "__main__" in ast.unparse(node.test):
            return True
    return False


def _imported(tree: ast.Module) -> set[str]:
    """Top-level module names imported anywhere in the file (functions included)."""
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            out.add(node.module.split(".")[0])
    return out


def _layout() -> tuple[dict[str, ast.Module], set[str], set[str]]:
    trees = {p.stem: _tree(p) for p in sorted(BENCH.glob("*.py"))}
    scripts = {name for name, tree in trees.items() if _is_script(tree)}
    return trees, scripts, set(trees) - scripts


def test_no_benchmark_file_imports_a_script() -> None:
    trees, scripts, helpers = _layout()
    assert {"paper_tables", "peers", "tt_refine", "quality", "budgets"} <= scripts
    assert {"common", "tp_importance"} <= helpers
    bad = {name: sorted(_imported(tree) & scripts) for name, tree in trees.items() if _imported(tree) & scripts}
    assert not bad, f"benchmark files importing scripts (move what they share into a helper module): {bad}"


def test_every_helper_module_says_what_it_holds() -> None:
    trees, _, helpers = _layout()
    for name in helpers:
        assert ast.get_docstring(trees[name]), f"benchmarks/{name}.py: a helper module needs a docstring"


def test_no_benchmark_file_edits_sys_path() -> None:
    """A script run as ``python benchmarks/x.py`` finds the helpers in its own folder (``sys.path[0]``)."""
    trees, _, _ = _layout()
    edits = [name for name, tree in trees.items()
             if any(isinstance(n, ast.Attribute) and n.attr == "path" and isinstance(n.value, ast.Name)
                    and n.value.id == "sys" for n in ast.walk(tree))]
    assert not edits, f"benchmark files touching sys.path: {edits}"
