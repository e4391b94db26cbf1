"""Subcommands of the ``qprune`` CLI: one module per command, found by :mod:`qprune.cli` with pkgutil.

A command module ``qprune/commands/<name>.py`` defines

* a docstring whose first line is ```qprune <name>`: <help>.`` and whose next paragraph is the
  command's description (``qprune <name> --help``);
* ``register(subparsers)``: adds its parser with :func:`add_command` (name, help and description
  from the module, the argument groups it shares with other commands, ``func=run``), then its own
  arguments;
* ``run(args) -> int``: does the work and returns the exit code.

Modules whose name starts with ``_`` (shared helpers such as ``_common``) are not commands. Keep the
module's top level light (argparse only) and import heavy dependencies (torch, the pipeline) inside
``run``: every command module is imported each time the CLI starts. User errors raise
:class:`qprune.errors.QpruneError`; the CLI prints them as one line and exits with code 2.
"""

from __future__ import annotations

import argparse
import inspect
import sys
from collections.abc import Callable

__all__ = ["add_command"]


def add_command(subparsers: argparse._SubParsersAction, run: Callable[[argparse.Namespace], int],
                *groups: Callable[[argparse.ArgumentParser], None]) -> argparse.ArgumentParser:
    """The parser of the command whose ``run`` is given: named after its module, help and description
    from the module's docstring, each of the shared argument ``groups`` added, ``func=run``."""
    module = run.__module__
    head, _, body = (inspect.getdoc(sys.modules[module]) or "").partition("\n\n")
    help = " ".join(head.split(": ", 1)[-1].split()).rstrip(".")
    description = " ".join(body.split("\n\n")[0].split()) or help
    p = subparsers.add_parser(module.rsplit(".", 1)[-1], help=help, description=description)
    for add in groups:
        add(p)
    p.set_defaults(func=run)
    return p
