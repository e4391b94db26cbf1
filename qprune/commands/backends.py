"""`qprune backends`: list solver backends (installed? needs a token? which extra?).

List every registered solver backend: built-in ones and those added by other packages through the
'qprune.backends' entry-point group.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from qprune.commands import add_command


def register(subparsers: argparse._SubParsersAction) -> None:
    p = add_command(subparsers, run)
    p.add_argument("--json", action="store_true", help="print the list as JSON")


def rows() -> list[dict[str, Any]]:
    """One JSON-ready dict per registered backend, sorted by name."""
    from qprune.backends import available

    return [
        {
            "name": b.name,
            "installed": b.installed,
            "needs_token": b.needs_token,
            "extra": b.extra,
            "max_variables": b.max_variables,
            "description": b.description,
        }
        for b in available()
    ]


def run(args: argparse.Namespace) -> int:
    table = rows()
    if args.json:
        print(json.dumps(table, indent=2))
        return 0
    header = ("name", "installed", "token", "extra", "description")
    body = [
        (r["name"], "yes" if r["installed"] else "no", "yes" if r["needs_token"] else "no",
         f"qprune[{r['extra']}]" if r["extra"] else "-", r["description"])
        for r in table
    ]
    widths = [max(len(h), *(len(row[i]) for row in body)) if body else len(h) for i, h in enumerate(header)]
    for row in (header, *body):
        print("  ".join(cell.ljust(w) for cell, w in zip(row[:-1], widths[:-1])) + "  " + row[-1])
    return 0
