"""Lazy re-exports: a package names its public objects without importing the modules that hold them.

``import qprune`` or ``import qprune.solve.strategies`` must stay cheap (the CLI builds its parser
from every command at start-up, and torch, dimod and torch-pruning take seconds to import), so a
package's ``__init__`` maps each public name to its module and imports it on first use.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any, Callable, Mapping


def lazy_exports(package: str, exports: Mapping[str, str]) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """``(__getattr__, __dir__)`` for ``package`` whose public ``name`` lives in ``exports[name]``.

    Use as ``__getattr__, __dir__ = lazy_exports(__name__, {...})``; the first access imports the
    module, caches the object in the package's namespace and returns it.
    """

    def __getattr__(name: str) -> Any:
        if name not in exports:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(import_module(exports[name]), name)
        setattr(import_module(package), name, value)
        return value

    def __dir__() -> list[str]:
        return sorted(exports)

    return __getattr__, __dir__
