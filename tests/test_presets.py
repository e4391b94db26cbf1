"""The preset table: which terms each preset reads and with which weights (the formulas of docs/method.md)."""

from __future__ import annotations

import pytest

import qprune
import qprune.qubo
from qprune.errors import QpruneError
from qprune.qubo import formulation
from qprune.qubo.presets import (
    DEFAULT_PRESET,
    FISHER_CHOICES,
    PRESET_TABLE,
    PRESETS,
    Weights,
    contributions,
    preset_terms,
    preset_weights,
)

W = Weights(alpha=2.0, alpha_f=3.0, beta_diag=5.0, beta_off=7.0, lam=11.0)


def test_presets_and_choices() -> None:
    assert PRESETS == ("hybrid", "gradient", "l1", "fisher") == tuple(PRESET_TABLE)
    assert DEFAULT_PRESET == "hybrid"
    assert FISHER_CHOICES == ("taylor", "weight", "channel", "both")
    # the names callers have always imported from the formulation module are the same objects
    assert formulation.PRESETS is PRESETS and formulation.Weights is Weights
    assert formulation.preset_terms is preset_terms and qprune.qubo.PRESETS is PRESETS


def test_contributions_are_the_documented_formulas() -> None:
    # l1:       beta_diag A_ii,             2 beta_off A_ij
    assert contributions("l1", "taylor", W) == [("l1_redundancy", 5.0, 7.0)]
    # gradient: + alpha I_T
    assert contributions("gradient", "channel", W) == [("l1_redundancy", 5.0, 7.0), ("taylor", 2.0, 0.0)]
    # hybrid:   + alpha_F I_F on the diagonal, + lam max(0, S_ij) off it
    assert contributions("hybrid", "both", W) == [
        ("l1_redundancy", 5.0, 7.0), ("taylor", 2.0, 0.0), ("weight_fisher", 3.0, 0.0),
        ("channel_fisher", 3.0, 0.0), ("activation_similarity", 0.0, 11.0),
    ]
    # fisher="taylor" counts I_T twice: alpha + alpha_F in the end
    assert [c[0] for c in contributions("hybrid", "taylor", W)].count("taylor") == 2


def test_extra_terms_enter_on_both_parts() -> None:
    w = Weights(extra={"mine": 0.5})
    assert contributions("l1", "taylor", w)[-1] == ("mine", 0.5, 0.5)
    assert preset_terms("l1", weights=w) == ("capacity", "l1_redundancy", "mine")


def test_preset_terms() -> None:
    assert preset_terms() == ("capacity", "l1_redundancy", "taylor", "activation_similarity")
    assert preset_terms("hybrid", "both") == ("capacity", "l1_redundancy", "taylor", "weight_fisher",
                                              "channel_fisher", "activation_similarity")
    assert preset_terms("gradient", "weight") == ("capacity", "l1_redundancy", "taylor")
    assert preset_terms("l1") == ("capacity", "l1_redundancy")


def test_preset_weights_sorted() -> None:
    assert preset_weights("l1") == ("beta_diag", "beta_off")
    assert preset_weights("gradient") == ("alpha", "beta_diag", "beta_off")
    assert preset_weights("hybrid") == ("alpha", "alpha_f", "beta_diag", "beta_off", "lam")
    assert preset_weights("fisher") == ()  # the loss model has no weight to tune


def test_the_loss_model_preset_is_one_term_at_weight_one() -> None:
    assert contributions("fisher", "channel", W) == [("gate_fisher", 1.0, 1.0)]
    assert preset_terms("fisher") == ("capacity", "gate_fisher")


@pytest.mark.parametrize(("preset", "fisher", "match"), [
    ("nope", "taylor", "unknown preset 'nope'; choose one of hybrid, gradient, l1, fisher"),
    ("hybrid", "nope", "unknown fisher choice 'nope'; choose one of taylor, weight, channel, both"),
])
def test_unknown_names_are_refused(preset: str, fisher: str, match: str) -> None:
    with pytest.raises(QpruneError, match=match):
        preset_terms(preset, fisher)
    with pytest.raises(QpruneError, match=match):
        contributions(preset, fisher, Weights())


def test_package_reexports_resolve() -> None:
    for name in qprune.qubo.__all__:
        assert getattr(qprune.qubo, name) is not None, name
