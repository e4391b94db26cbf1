"""Running groups of blocks: packing into groups, derived seeds, worker count and the pool."""

from __future__ import annotations

import os
from concurrent.futures import Executor, ProcessPoolExecutor, ThreadPoolExecutor
from typing import Any

import numpy as np

from qprune.solve.layerwise.blocks import Block
from qprune.solve.layerwise.harvest import Curve, GroupTask, solve_group

__all__ = ["auto_jobs", "child_seeds", "pack", "run_tasks"]


def pack(blocks: list[Block], order: list[int], batch_variables: int) -> list[list[int]]:
    """Consecutive groups of block positions with at most ``batch_variables`` variables each."""
    groups: list[list[int]] = []
    size = 0
    for i in order:
        if not groups or (size + blocks[i].m > batch_variables and groups[-1]):
            groups.append([])
            size = 0
        groups[-1].append(i)
        size += blocks[i].m
    return groups


def child_seeds(seed: int | None, tag: str, n: int) -> list[int]:
    """``n`` independent seeds for the ``tag`` phase, derived from ``seed`` only."""
    entropy = [0 if seed is None else int(seed), sum(map(ord, tag))]
    return [int(s.generate_state(1)[0] % (2**31 - 1)) for s in np.random.SeedSequence(entropy).spawn(n)]


def auto_jobs(n_jobs: int | None, blocks: list[Block], brute_force_max: int, n_tasks: int,
              sampling: bool = True) -> int:
    """Workers: as given, else the idle cores (cores minus the load average, this process aside)
    when there are seconds of work to share; measured on a loaded 2-core machine, a second
    process there made the 4,000-unit solve slower, not faster. Without sampler calls the work
    (greedy curves, swap search) is about a second for 10,000 units, less than starting a pool
    and pickling the blocks there and back: one process."""
    if n_jobs is None and not sampling:
        n_jobs = 1
    if n_jobs is None:
        heavy = sum(b.m for b in blocks if b.m > brute_force_max)
        brute = sum(b.m for b in blocks if b.m <= brute_force_max)
        n_jobs = 1
        if heavy >= 1500 or brute >= 200:
            cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
            try:
                busy = max(0.0, os.getloadavg()[0] - 1.0)
            except OSError:  # no load average on this platform
                busy = 0.0
            n_jobs = max(1, int(cores - busy + 0.5))
    return max(1, min(int(n_jobs), n_tasks))


def run_tasks(tasks: list[GroupTask], backend: Any, n_jobs: int, desc: str,
              progress: bool) -> list[list[Curve]]:
    """Run ``solve_group`` over tasks, in a pool when ``n_jobs`` > 1, results in task order."""
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(tasks), desc=desc, unit="group", leave=False)
    results: list[list[Curve]] = []
    if n_jobs <= 1 or len(tasks) <= 1:
        for t in tasks:
            results.append(solve_group(t))
            if bar is not None:
                bar.update(1)
    else:
        # processes for a named backend (each worker builds its own sampler); threads for a sampler
        # instance, which may not pickle (a cloud client) and may cache state (an embedding)
        pool: Executor = (ProcessPoolExecutor(n_jobs) if isinstance(backend, str) else ThreadPoolExecutor(n_jobs))
        with pool:
            for fut in [pool.submit(solve_group, t) for t in tasks]:
                results.append(fut.result())
                if bar is not None:
                    bar.update(1)
    if bar is not None:
        bar.close()
    return results
