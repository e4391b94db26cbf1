"""TT (PROTES) refinement stage: optimum on small QUBOs, exact k, never worse than the seed, seeds."""

from __future__ import annotations

import itertools
import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip("protes")

from qprune.errors import QpruneError
from qprune.solve.constraint import ExactK
from qprune.refine import RefineResult, layer_chunks, refine, refine_chunked


def _qubo(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.normal(size=n), np.triu(rng.normal(size=(n, n)), 1)


def _energy(X: np.ndarray, h: np.ndarray, J: np.ndarray) -> np.ndarray:
    X = np.atleast_2d(X).astype(float)
    return X @ h + np.einsum("bi,ij,bj->b", X, J, X)


def _all_k(n: int, k: int) -> np.ndarray:
    X = np.zeros((0, n), dtype=np.int8)
    rows = []
    for ones in itertools.combinations(range(n), k):
        row = np.zeros(n, dtype=np.int8)
        row[list(ones)] = 1
        rows.append(row)
    return np.array(rows) if rows else X


class Counting:
    """An objective wrapper that records every mask it is asked about."""

    def __init__(self, fn):
        self.fn = fn
        self.seen: list[np.ndarray] = []

    def __call__(self, X: np.ndarray) -> np.ndarray:
        self.seen.extend(np.array(X))
        return self.fn(X)


# one variable count (16) for most tests: the TT functions are jit-compiled once per size
@pytest.mark.parametrize("n,k,instance", [(16, 5, 0), (16, 6, 1), (16, 8, 2)])
def test_reaches_brute_force_optimum_from_worst_seed(n: int, k: int, instance: int) -> None:
    h, J = _qubo(n, instance)
    X = _all_k(n, k)
    e = _energy(X, h, J)
    worst, best = X[int(np.argmax(e))], -float(e.min())
    budget = 1500  # well below C(16, k) = 4368 / 8008 / 12870: a real search
    res = refine(worst, lambda M: -_energy(M, h, J), k, budget=budget, seed=instance, progress=False)
    assert isinstance(res, RefineResult)
    assert res.value == pytest.approx(best, abs=1e-9)
    assert int(res.x.sum()) == k
    assert res.evaluations <= budget
    assert res.info["engine"] == "protes"
    # the trace is monotone, starts at the seed and ends at the result
    values = [v for _, v in res.trace]
    assert values[0] == pytest.approx(res.seed_value) and values[-1] == res.value
    assert all(b > a for a, b in itertools.pairwise(values))


def test_budget_counts_distinct_masks_and_nothing_is_asked_twice() -> None:
    h, J = _qubo(16, 3)
    seed = np.zeros(16, dtype=np.int8)
    seed[:6] = 1
    f = Counting(lambda M: -_energy(M, h, J))
    res = refine(seed, f, 6, budget=300, seed=0, progress=False)
    seen = {np.packbits(m).tobytes() for m in f.seen}
    assert len(f.seen) == len(seen) == res.evaluations <= 300
    assert res.proposals >= res.evaluations
    assert all(int(m.sum()) == 6 for m in f.seen)  # exact-k mode only ever proposes k ones


@pytest.mark.parametrize("kind", ["noisy", "adversarial", "nan", "penalty-lure"])
def test_never_worse_than_seed_and_always_k(kind: str) -> None:
    n, k = 16, 7
    seed = np.zeros(n, dtype=np.int8)
    seed[[1, 4, 6, 9, 11, 13, 15]] = 1
    rng = np.random.default_rng(0)
    exact_k = True
    if kind == "noisy":
        def f(M):  # pure noise: whatever wins, it is judged by the value it was given
            return rng.normal(size=len(M))
    elif kind == "adversarial":
        def f(M):  # the seed is the unique maximum; anything else is worse
            return -np.abs(M - seed).sum(axis=1).astype(float)
    elif kind == "nan":
        def f(M):  # broken objective: NaN / +inf everywhere but the seed
            out = np.full(len(M), np.nan)
            out[::2] = np.inf
            out[(M == seed).all(axis=1)] = 1.0
            return out
    else:
        exact_k = False

        def f(M):  # more ones always score higher: the penalty mode must still return k ones
            return 10.0 * M.sum(axis=1)
    res = refine(seed, f, k, budget=400, seed=1, exact_k=exact_k, rho=0.5, progress=False)
    assert int(res.x.sum()) == k
    assert res.value >= res.seed_value
    if kind in ("adversarial", "nan"):
        np.testing.assert_array_equal(res.x, seed)
        assert not res.improved


def test_same_seed_same_result_and_seed_changes_path() -> None:
    h, J = _qubo(16, 5)
    seed = np.zeros(16, dtype=np.int8)
    seed[:10] = 1
    f = lambda M: -_energy(M, h, J)
    a = refine(seed, f, 10, budget=500, seed=7, progress=False)
    b = refine(seed, f, 10, budget=500, seed=7, progress=False)
    np.testing.assert_array_equal(a.x, b.x)
    assert a.value == b.value and a.trace == b.trace and a.proposals == b.proposals


def test_mapping_seed_labels_and_summary() -> None:
    labels = [f"conv:{i}" for i in range(16)]
    sample = {lab: int(i % 4 == 0) for i, lab in enumerate(labels)}
    h, J = _qubo(16, 9)
    res = refine(sample, lambda M: -_energy(M, h, J), 4, labels=labels, budget=200, progress=False)
    out = res.sample(labels)
    assert set(out) == set(labels) and sum(out.values()) == 4
    summary = res.summary()
    assert summary["evaluations"] == res.evaluations and isinstance(summary["trace"], list)


def test_caps_per_group_are_kept() -> None:
    n, k = 16, 7
    group = np.repeat(np.arange(4), 4)
    cap = np.array([3, 3, 2, 3])
    seed = np.zeros(n, dtype=np.int8)
    seed[[0, 1, 4, 5, 8, 12, 13]] = 1

    def f(M):  # rewards pruning group 2, which the cap limits
        assert np.all(np.stack([np.bincount(group, weights=m, minlength=4) for m in M]) <= cap)
        return M[:, 8:12].sum(axis=1) + 0.01 * M[:, 0]

    con = ExactK.build(n, k, (group, cap))
    res = refine(seed, f, k, budget=300, constraint=con, seed=0, progress=False)
    counts = np.bincount(group, weights=res.x, minlength=4)
    assert int(res.x.sum()) == k and np.all(counts <= cap) and counts[2] == 2
    with pytest.raises(QpruneError, match="caps"):
        bad = seed.copy()
        bad[[0, 1, 4]] = 0
        bad[[9, 10, 11]] = 1
        refine(bad, f, k, budget=10, constraint=con, progress=False)



def test_the_constraint_holds_and_chunks_keep_it() -> None:
    """The ExactK is checked against the problem; chunked refinement keeps the caps on the whole mask."""
    n, k = 16, 7
    group = np.repeat(np.arange(4), 4)
    cap = np.array([3, 3, 2, 3])
    seed = np.zeros(n, dtype=np.int8)
    seed[[0, 1, 4, 5, 8, 12, 13]] = 1
    h, J = _qubo(n, 6)
    f = lambda M: -_energy(M, h, J)
    con = ExactK.build(n, k, (group, cap))
    a = refine(seed, f, k, budget=300, constraint=con, seed=2, progress=False)
    b = refine(seed, f, k, budget=300, constraint=con, seed=2, progress=False)
    np.testing.assert_array_equal(a.x, b.x)
    assert a.trace == b.trace and a.proposals == b.proposals and con.ok(a.x)
    with pytest.raises(QpruneError, match="must be an ExactK"):
        refine(seed, f, k, budget=10, constraint=(group, cap), progress=False)
    with pytest.raises(QpruneError, match="k=6"):
        refine(seed, f, k, budget=10, constraint=con.with_k(6), progress=False)
    res = refine_chunked(seed, f, k, [np.arange(8), np.arange(8, 16)], budget=200, constraint=con, seed=0,
                         progress=False)
    assert con.ok(res.x) and res.value >= res.seed_value


def test_bad_inputs_raise() -> None:
    seed = np.array([1, 0, 1, 0, 0], dtype=np.int8)
    f = lambda M: np.zeros(len(M))
    with pytest.raises(QpruneError, match="exactly k"):
        refine(seed, f, 3, progress=False)
    with pytest.raises(QpruneError, match="0 and 1"):
        refine(np.array([2, 0, 1]), f, 2, progress=False)
    with pytest.raises(QpruneError, match="values for"):
        refine(np.array([1, 0, 1, 0, 1, 0, 1, 0]), lambda M: np.zeros(1), 4, budget=50, progress=False)


def test_small_spaces_are_enumerated() -> None:
    h, J = _qubo(6, 4)
    X = _all_k(6, 2)
    best = -float(_energy(X, h, J).min())
    res = refine(X[0], lambda M: -_energy(M, h, J), 2, budget=100, progress=False)
    assert res.info["engine"] == "enumeration" and res.value == pytest.approx(best)


def test_chunked_keeps_k_and_improves_each_chunk() -> None:
    n, k = 64, 22
    layer = np.repeat(np.arange(8), 8)
    h, J = _qubo(n, 11)
    J = J * (layer[:, None] == layer[None, :])  # block-diagonal, as the pruning QUBO
    f = lambda M: -_energy(M, h, J)
    rng = np.random.default_rng(0)
    seed = np.zeros(n, dtype=np.int8)
    seed[rng.choice(n, k, replace=False)] = 1
    groups = layer_chunks(layer, size=16)
    assert [len(g) for g in groups] == [16, 16, 16, 16]
    res = refine_chunked(seed, f, k, groups, budget=1200, seed=0, progress=False)
    assert int(res.x.sum()) == k and res.value > res.seed_value
    assert res.evaluations <= 1200 and len(res.info["stages"]) == 4
    assert all(st["value"] >= st["seed_value"] for st in res.info["stages"])
    counts, values = zip(*res.trace)
    assert values[-1] == res.value and list(counts) == sorted(counts) and counts[-1] <= res.evaluations
    assert all(b > a for a, b in itertools.pairwise(values))
    # each chunk kept its count: the global count never moved
    for g in groups:
        assert int(res.x[g].sum()) == int(seed[g].sum())
    again = refine_chunked(seed, f, k, groups, budget=1200, seed=0, progress=False)
    assert again.value == res.value
    np.testing.assert_array_equal(res.x, again.x)


def test_protes_import_leaves_rcparams_alone() -> None:
    code = (
        "import matplotlib as mpl\n"
        "before = dict(mpl.rcParams)\n"
        "from qprune.refine.engine import engine\n"
        "engine()\n"
        "import sys; assert 'protes' in sys.modules\n"
        "after = dict(mpl.rcParams)\n"
        "diff = {k for k in before if before[k] != after[k] and k != 'backend'}\n"
        "assert not diff, diff\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr[-2000:]


def test_refine_mask_on_a_model_keeps_caps_and_never_loses(small_unet) -> None:
    """The pipeline hook: scorer from the workload's validation batches + primary metric."""
    from types import SimpleNamespace

    import torch

    from qprune.refine import naive_score, refine_mask
    from qprune.model.space import build_space

    model, make_batches = small_unet
    batches = make_batches(1, 2)

    def metrics(out, target):
        mse = ((out.clamp(0, 1) - target) ** 2).mean()
        return {"psnr": float(-10 * torch.log10(mse)), "mse": float(mse)}

    work = SimpleNamespace(validation=batches, metrics=metrics, primary="psnr")
    space = build_space(model, batches[0][0][:1], exclude=("ending",), min_keep=1)
    k = space.N // 3
    seed = space.random_mask(k, seed=0).astype(np.int8)
    res = refine_mask(model, space, work, seed, k, budget=60, seed=0, progress=False, batch=20)
    assert int(res.x.sum()) == k and res.value >= res.seed_value
    assert np.all(np.bincount(space.layer_ids, weights=res.x) <= space.max_pruned_per_layer)
    metric = lambda o, t: metrics(o, t)["psnr"]
    ref = naive_score(model, space, batches, metric, np.stack([seed, res.x]))
    assert ref[0] == pytest.approx(res.seed_value, abs=1e-4) and ref[1] == pytest.approx(res.value, abs=1e-4)
    assert res.info["scorer"]["evaluated"] == res.evaluations
