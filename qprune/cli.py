"""The ``qprune`` command line: argparse subcommands discovered from :mod:`qprune.commands`.

Every user error ends the same way: one line ``qprune: error: <message>`` on stderr, exit code 2, no
traceback. That covers :class:`~qprune.errors.QpruneError` (bad values, unknown names, unreadable
inputs), missing files and other OS errors, and argparse's own usage errors.
"""

from __future__ import annotations

import argparse
import importlib
import os
import re
import pkgutil
import sys
from collections.abc import Sequence
from types import ModuleType
from typing import Any, NoReturn

from qprune import __version__
from qprune.errors import QpruneError

PROG = "qprune"


class UsageError(Exception):
    """An argparse error, raised instead of argparse printing usage and calling ``sys.exit``."""


class _Parser(argparse.ArgumentParser):
    # argparse's default prints the whole usage and exits; the CLI wants one line and a return code
    def error(self, message: str) -> NoReturn:
        raise UsageError(message)


def discover_commands() -> tuple[list[ModuleType], dict[str, str]]:
    """Command modules in :mod:`qprune.commands` (sorted by name) and ``{name: error}`` for broken ones.

    A module that fails to import, or lacks ``register``/``run``, does not take the other commands
    down: it is reported only when someone runs it.
    """
    import qprune.commands as pkg

    modules: list[ModuleType] = []
    broken: dict[str, str] = {}
    for entry in sorted(pkgutil.iter_modules(pkg.__path__), key=lambda m: m.name):
        if entry.name.startswith("_"):
            continue
        try:
            mod = importlib.import_module(f"{pkg.__name__}.{entry.name}")
        except Exception as exc:  # noqa: BLE001 - any import failure: report it when the command runs
            broken[entry.name] = f"{type(exc).__name__}: {exc}"
            continue
        if not callable(getattr(mod, "register", None)) or not callable(getattr(mod, "run", None)):
            continue  # a helper module, not a command
        modules.append(mod)
    return modules, broken


def build_parser() -> argparse.ArgumentParser:
    """The full parser: global options plus one subparser per discovered command."""
    parser = _Parser(
        prog=PROG,
        description="Prune neural-network filters by posing the choice as a QUBO.",
    )
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    modules, broken = discover_commands()
    for mod in modules:
        name = mod.__name__.rsplit(".", 1)[-1]
        try:
            mod.register(sub)
        except Exception as exc:  # noqa: BLE001 - one bad command must not break the CLI
            broken[name] = f"{type(exc).__name__}: {exc}"
    for name, why in broken.items():
        if name in sub.choices:
            sub.choices[name].set_defaults(func=_unavailable(name, why))
            continue
        p = sub.add_parser(name, help=f"(unavailable: {why})", add_help=False)
        p.add_argument("rest", nargs=argparse.REMAINDER)
        p.set_defaults(func=_unavailable(name, why))
    parser.set_defaults(_commands=sorted(sub.choices))
    return parser


def _unavailable(name: str, why: str) -> Any:
    def run(args: argparse.Namespace) -> int:
        raise QpruneError(f"command {name!r} is unavailable: {why}")

    return run


MAX_MESSAGE = 240  #: characters of an error line; what a library said beyond that is cut


def _one_line(message: object) -> str:
    text = " ".join(re.sub(r"\x1b\[[0-9;]*m", "", str(message)).split())
    if len(text) > MAX_MESSAGE:
        text = text[:MAX_MESSAGE - 3].rstrip() + "..."
    return text or "unknown error"


def _os_message(exc: OSError) -> str:
    if exc.filename is not None and exc.strerror:
        return f"{exc.strerror}: {exc.filename!s}"
    return str(exc)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI on ``argv`` (default ``sys.argv[1:]``) and return the exit code."""
    try:
        parser = build_parser()
        args = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
        func = getattr(args, "func", None)
        if func is None:
            if args.command is None:
                names = ", ".join(getattr(args, "_commands", []))
                raise UsageError(f"no command given; choose one of: {names} (see qprune --help)")
            raise UsageError(f"command {args.command!r} did not register a handler")
        return int(func(args) or 0)
    except UsageError as exc:
        message = str(exc)
    except QpruneError as exc:
        message = str(exc)
    except BrokenPipeError:  # `qprune backends | head`: the reader left; not an error of ours
        try:
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        except OSError:
            pass
        return 0
    except FileNotFoundError as exc:
        message = _os_message(exc)
    except OSError as exc:
        message = _os_message(exc)
    except SystemExit as exc:  # --help / --version: argparse printed what was asked
        code = exc.code
        return code if isinstance(code, int) else (0 if code is None else 2)
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
    print(f"{PROG}: error: {_one_line(message)}", file=sys.stderr)
    return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
