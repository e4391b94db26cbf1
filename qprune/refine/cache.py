"""One cache of mask -> value, keyed by the mask's bit pattern.

The TT search, the chunked driver and the mask scorer all avoid evaluating a mask twice; they
share this type. A caller asks which rows of a batch are :meth:`~MaskCache.new` (distinct, not
cached, at most ``limit`` of them), evaluates those rows, :meth:`~MaskCache.store` s their values
and reads the whole batch back with :meth:`~MaskCache.lookup`.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np

__all__ = ["MaskCache", "mask_keys"]


def mask_keys(X: np.ndarray) -> list[bytes]:
    """One key per row of the 0/1 masks ``X [B, N]``: the row's packed bits."""
    return [np.packbits(row).tobytes() for row in X]


class MaskCache:
    """Values of masks by bit pattern, with hit counts.

    ``hits`` counts the rows :meth:`new` did not hand out because their value is (or, for a
    repeat within the batch, is about to be) known; ``asked`` counts every row it saw.
    """

    def __init__(self) -> None:
        self.values: dict[bytes, float] = {}
        self.asked = 0
        self.hits = 0

    keys = staticmethod(mask_keys)

    def __len__(self) -> int:
        return len(self.values)

    def __contains__(self, key: bytes) -> bool:
        return key in self.values

    def new(self, keys: Sequence[bytes], limit: int | None = None) -> dict[bytes, int]:
        """The keys to evaluate, each with its first row: distinct, not cached, in row order,
        at most ``limit`` of them (the rest of the new keys are neither handed out nor hits)."""
        todo: dict[bytes, int] = {}
        self.asked += len(keys)
        for i, key in enumerate(keys):
            if key in self.values or key in todo:
                self.hits += 1
            elif limit is None or len(todo) < limit:
                todo[key] = i
        return todo

    def store(self, keys: Iterable[bytes], values: Iterable[float]) -> None:
        """Remember ``values`` for ``keys`` (pairwise)."""
        self.values.update(zip(keys, values))

    def lookup(self, keys: Sequence[bytes], default: float = np.nan) -> np.ndarray:
        """``float64 [len(keys)]``: the stored values, ``default`` where none is stored."""
        return np.array([self.values.get(key, default) for key in keys], dtype=np.float64)
