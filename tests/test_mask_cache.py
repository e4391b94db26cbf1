"""MaskCache: the one mask -> value cache of the TT search, the chunked driver and the scorer."""

from __future__ import annotations

import subprocess
import sys

import numpy as np

from qprune.refine.cache import MaskCache, mask_keys


def test_new_rows_are_distinct_uncached_and_limited() -> None:
    X = np.array([[1, 0, 1], [0, 1, 1], [1, 0, 1], [1, 1, 0], [0, 0, 1]], dtype=np.int8)
    keys = mask_keys(X)
    assert keys[0] == keys[2] and len(set(keys)) == 4
    cache = MaskCache()
    todo = cache.new(keys, limit=2)
    assert list(todo.values()) == [0, 1]  # first row of each new pattern, in order, at most 2
    assert cache.hits == 1 and cache.asked == 5  # row 2 repeats row 0; rows 3, 4 are over the limit
    cache.store(todo, [10.0, 20.0])
    got = cache.lookup(keys)
    assert got[:3].tolist() == [10.0, 20.0, 10.0] and np.isnan(got[3:]).all()
    assert len(cache) == 2 and keys[1] in cache and keys[3] not in cache
    assert list(cache.new(keys).values()) == [3, 4] and cache.hits == 4


def test_importing_the_subpackage_leaves_the_optional_extras_alone() -> None:
    code = ("import sys, qprune.refine as r\n"
            "assert r.refine and r.MaskScorer and r.refine_mask\n"
            "bad = [m for m in ('protes', 'jax', 'optax') if m in sys.modules]\n"
            "assert not bad, bad\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
