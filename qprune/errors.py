"""Errors a user can cause and fix; the CLI turns them into one line and exit code 2."""

from __future__ import annotations


class QpruneError(ValueError):
    """Bad input or configuration: the message names the bad value and how to fix it."""


class BackendUnavailable(QpruneError):
    """A backend's optional dependency or credentials are missing."""
