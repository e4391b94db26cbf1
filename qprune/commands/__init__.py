"""Subcommands of the ``qprune`` CLI: one module per command, found by :mod:`qprune.cli` with pkgutil.

A command module ``qprune/commands/<name>.py`` defines

* ``register(subparsers)``: adds its parser (``subparsers.add_parser(...)``) and calls
  ``set_defaults(func=run)``;
* ``run(args) -> int``: does the work and returns the exit code.

Modules whose name starts with ``_`` (shared helpers such as ``_common``) are not commands. Keep the
module's top level light (argparse only) and import heavy dependencies (torch, the pipeline) inside
``run``: every command module is imported each time the CLI starts. User errors raise
:class:`qprune.errors.QpruneError`; the CLI prints them as one line and exits with code 2.
"""
