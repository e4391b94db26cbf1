"""FilterSpace and Unit as plain data: vectors, masks, exact parameter counts, JSON round trip.

Built by hand (no model, no tracing): two layers sharing one weight tensor, so that removing units
of both overlaps exactly where one takes output rows and the other input columns.
"""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest
import torch

import qprune.model
from qprune.errors import QpruneError
from qprune.model.tensors import as_tuple, iter_tensors, map_tensors
from qprune.model.units import FilterSpace, Unit, count_removed

# a: conv 3 -> 4 (3x3, bias) feeding b: conv 4 -> 5 (3x3); b feeds c: conv 5 -> 2 (1x1)
SHAPES = {"a.weight": (4, 3, 3, 3), "a.bias": (4,), "b.weight": (5, 4, 3, 3), "c.weight": (2, 5, 1, 1)}


def _space(min_keep: int = 1) -> FilterSpace:
    units = []
    for c in range(4):
        slices = (("a.bias", 0, (c,)), ("a.weight", 0, (c,)), ("b.weight", 1, (c,)))
        units.append(Unit(f"a:{c}", "a", c, (("a", c),), count_removed(SHAPES, [slices]), 28, (("b", c),), slices))
    for c in range(5):
        slices = (("b.weight", 0, (c,)), ("c.weight", 1, (c,)))
        units.append(Unit(f"b:{c}", "b", c, (("b", c),), count_removed(SHAPES, [slices]), 36, (("c", c),), slices))
    total = sum(int(np.prod(s)) for s in SHAPES.values())
    return FilterSpace(units, ["a", "b"], min_keep, {"c": "its channels reach the model output"}, total,
                       dict(SHAPES), {"b": 4, "c": 5}, [((1, 3, 8, 8), "float32")])


def test_vectors_over_units() -> None:
    space = _space()
    assert space.N == 9 and space.n_layers == 2
    assert space.labels[:2] == ["a:0", "a:1"] and space.labels[-1] == "b:4"
    assert space.layer_ids.tolist() == [0] * 4 + [1] * 5
    assert space.layer_sizes.tolist() == [4, 5]
    assert space.max_pruned_per_layer.tolist() == [3, 4]
    assert space.layer_units("b").tolist() == [4, 5, 6, 7, 8] == space.layer_units(1).tolist()
    # a:c removes its 27 weights + bias and b's 5 x 3 x 3 input column; b:c its 36 weights and c's input
    assert space.params.tolist() == [28 + 45] * 4 + [36 + 2] * 5
    assert space.filter_params.tolist() == [28] * 4 + [36] * 5


def test_masks_from_labels_and_vectors() -> None:
    space = _space(min_keep=2)
    assert np.flatnonzero(space.to_mask({"a:1": 1, "b:3": True, "b:0": 0})).tolist() == [1, 7]
    assert space.to_mask([0, 1, 0, 0, 0, 0, 0, 0, 1]).dtype == bool
    with pytest.raises(QpruneError, match="not units"):
        space.to_mask({"z:0": 1})
    with pytest.raises(QpruneError, match="must be 0 or 1"):
        space.to_mask({"a:0": 2})
    with pytest.raises(QpruneError, match=r"shape \(9,\)"):
        space.to_mask(np.zeros(4))
    with pytest.raises(QpruneError, match="entries must be 0 or 1"):
        space.to_mask(np.full(9, 0.5))
    with pytest.raises(QpruneError, match="min_keep=2 allows at most 2"):
        space.check_mask({"a:0": 1, "a:1": 1, "a:2": 1})


def test_random_mask_respects_the_caps_and_the_seed() -> None:
    space = _space(min_keep=2)
    for k in range(6):
        m = space.random_mask(k, seed=k)
        assert m.sum() == k and np.all(np.bincount(space.layer_ids[m], minlength=2) <= [2, 3])
        assert np.array_equal(m, space.random_mask(k, seed=k))
    assert space.random_mask(0.5, seed=0).sum() == round(0.5 * 9)
    with pytest.raises(QpruneError, match="outside"):
        space.random_mask(6)


def test_removed_params_are_exact_and_pairwise() -> None:
    space = _space()
    O = space.param_overlap().toarray()
    P = space.params
    for bits in itertools.product((0, 1), repeat=space.N):
        x = np.array(bits, dtype=np.int64)
        kept_a, kept_b = 4 - x[:4].sum(), 5 - x[4:].sum()
        # the pruned network by hand: a 3 -> kept_a, b kept_a -> kept_b, c kept_b -> 2
        pruned = kept_a * 28 + kept_b * kept_a * 9 + 2 * kept_b
        assert space.predicted_params(x) == pruned
        assert space.removed_params(x) == int(P @ x - x @ O @ x)
    # one a-unit and one b-unit share exactly the 3x3 kernel b.weight[o, c]
    assert O[0, 4] == 9 and O[0, 1] == 0 and np.all(np.tril(O) == 0)


def test_count_removed_counts_overlaps_once() -> None:
    rows = [("b.weight", 0, (0, 1))]
    cols = [("b.weight", 1, (0,))]
    assert count_removed(SHAPES, [rows]) == 2 * 36
    assert count_removed(SHAPES, [cols]) == 5 * 9
    assert count_removed(SHAPES, [rows, cols]) == 2 * 36 + 5 * 9 - 2 * 9
    assert count_removed(SHAPES, []) == 0


def test_dict_round_trip_and_summary() -> None:
    space = _space()
    back = FilterSpace.from_dict(json.loads(json.dumps(space.to_dict())))
    assert back == space
    text = space.summary()
    assert "9 units in 2 layers" in text and "excluded c: its channels reach the model output" in text
    (x,) = space.example_inputs(seed=3)
    assert x.shape == (1, 3, 8, 8) and x.dtype == torch.float32
    assert torch.equal(x, space.example_inputs(seed=3)[0])


def test_nested_tensor_helpers() -> None:
    t = torch.ones(2)
    assert as_tuple(t) == (t,) and as_tuple([t, 1]) == (t, 1)
    with pytest.raises(QpruneError, match="tensor or a tuple"):
        as_tuple("x")
    out = {"a": (t, [2 * t]), "b": 3}
    assert [float(v.sum()) for v in iter_tensors(out)] == [2.0, 4.0]
    doubled = map_tensors(out, lambda v: v * 2)
    assert float(doubled["a"][1][0].sum()) == 8.0 and doubled["b"] == 3


def test_package_reexports_resolve() -> None:
    for name in qprune.model.__all__:
        assert getattr(qprune.model, name) is not None, name
    assert qprune.model.FilterSpace is FilterSpace
