"""A search's scores kept on disk, so that a stopped refinement resumes where it was.

The TT search is deterministic for a given seed and objective: run again, it proposes the same
masks in the same order. :class:`ScoreJournal` wraps the objective and appends every score it
computes to a text file (one ``<mask hex> <value>`` line per mask, flushed after each call); a
run started again on the same file takes the scores it finds there instead of computing them, so
it replays the finished part of the search in seconds and goes on from there.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from qprune.errors import QpruneError
from qprune.refine.cache import MaskCache, mask_keys
from qprune.refine.result import Objective

__all__ = ["ScoreJournal", "read_journal"]


def _header(n: int) -> str:
    return f"# qprune score journal, masks of {n}"


def _entries(text: str, path: Path, n: int) -> dict[bytes, float]:
    """The scores of a journal's text by mask key, in the order they were written."""
    lines = text.splitlines()
    if not lines or lines[0] != _header(n):
        raise QpruneError(f"{path} is not a score journal for masks of {n} units "
                          f"(first line {lines[0] if lines else ''!r}); give another path")
    out: dict[bytes, float] = {}
    for line in lines[1:]:
        parts = line.split()
        if len(parts) != 2:
            continue  # a line cut short by a crash
        try:
            out[bytes.fromhex(parts[0])] = float(parts[1])
        except ValueError:
            continue
    return out


def read_journal(path: str | os.PathLike[str], n: int) -> tuple[np.ndarray, np.ndarray]:
    """A journal's masks ``int8 [E, n]`` and scores ``[E]``, in the order they were scored."""
    path = Path(path)
    entries = _entries(path.read_text(), path, n)
    keys = np.frombuffer(b"".join(entries), dtype=np.uint8).reshape(len(entries), (n + 7) // 8)
    return np.unpackbits(keys, axis=1)[:, :n].astype(np.int8), np.fromiter(entries.values(), dtype=np.float64)


class ScoreJournal:
    """``journal(masks [B, N]) -> B floats``: ``objective``'s scores, read from ``path`` where
    the file holds them and appended to it where it does not.

    The file belongs to one search (same objective, mask length and seed); its first line records
    the mask length, and a file for another length is refused. A last line cut short by a crash is
    dropped (and written again when that mask is scored again).
    """

    def __init__(self, objective: Objective, path: str | os.PathLike[str], n: int) -> None:
        self.objective, self.path, self.n = objective, Path(path), int(n)
        self.cache = MaskCache()
        self.replayed = 0  # scores served from the file
        self.computed = 0
        self._read()

    def _read(self) -> None:
        if not self.path.is_file():
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.path.write_text(_header(self.n) + "\n")
            return
        text = self.path.read_text()
        if not text.endswith("\n"):  # a last line cut short by a crash: drop it before appending
            text = text[:text.rfind("\n") + 1]
            self.path.write_text(text)
        entries = _entries(text, self.path, self.n)
        self.cache.store(entries, entries.values())

    def __call__(self, X: np.ndarray) -> np.ndarray:
        X = np.asarray(X)
        keys = mask_keys(X)
        todo = self.cache.new(keys)
        self.replayed += len(keys) - len(todo)
        if todo:
            values = np.asarray(self.objective(X[list(todo.values())]), dtype=np.float64).reshape(-1)
            if values.shape[0] != len(todo):
                raise QpruneError(f"the objective returned {values.shape[0]} values for {len(todo)} masks")
            self.cache.store(todo, values.tolist())
            with self.path.open("a") as fh:
                fh.writelines(f"{key.hex()} {float(v)!r}\n" for key, v in zip(todo, values))
                fh.flush()
                os.fsync(fh.fileno())
            self.computed += len(todo)
        return self.cache.lookup(keys)
