"""A pruning recipe: the mask as a file that re-applies to a fresh instance of the original model.

A pruned model file holds the smaller architecture; a recipe holds the *decision*: the space
options it was found in, every unit label of that space, the pruned labels and, per layer, the
kept channels. :func:`apply_recipe` rebuilds the filter space on a fresh instance of the model
definition (your own code, untrained or trained), checks that it is the same space, and removes
the same channels: the same pruned model, without qprune's search and without a saved module.

    recipe = make_recipe(space, mask, space_options={"exclude": ["ending"]})
    save_recipe("recipe.json", recipe)
    pruned = apply_recipe(MyNet(), load_recipe("recipe.json"), example_inputs)
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

from qprune.atomic import write_json
from qprune.errors import QpruneError
from qprune.model.masking import apply_mask
from qprune.model.space import build_space
from qprune.model.units import FilterSpace

__all__ = ["RECIPE_FORMAT", "apply_recipe", "load_recipe", "make_recipe", "recipe_space", "save_recipe"]

RECIPE_FORMAT = "qprune-recipe"
RECIPE_VERSION = 2
# version 1 recipes were written while build_space's residual_branches defaulted to "auto"
_V1_DEFAULTS = {"residual_branches": "auto"}
_SPACE_OPTIONS = ("layers", "exclude", "include_linear", "min_keep", "verify", "residual_branches")


def _digest(labels: list[str]) -> str:
    return hashlib.sha256("\n".join(labels).encode()).hexdigest()[:16]


def _plain_options(options: Mapping[str, Any]) -> dict[str, Any]:
    unknown = sorted(set(options) - set(_SPACE_OPTIONS))
    if unknown:
        raise QpruneError(f"unknown space option(s) {unknown}; a recipe records {list(_SPACE_OPTIONS)}")
    return {k: list(v) if isinstance(v, (tuple, list)) else v for k, v in options.items()}


def make_recipe(space: FilterSpace, mask: Any, *, space_options: Mapping[str, Any] | None = None,
                meta: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The recipe of ``mask`` (bool/0-1 array over the units, or ``{label: 0|1}``) on ``space``.

    ``space_options`` are the :func:`qprune.model.space.build_space` keywords the space was built
    with (layers, exclude, include_linear, min_keep, verify, residual_branches); they are what lets
    a fresh model rebuild the same space.
    """
    x = space.to_mask(mask)
    ids = space.layer_ids
    kept = {layer: [int(space.units[i].channel) for i in np.flatnonzero((ids == lid) & ~x)]
            for lid, layer in enumerate(space.layers)}
    return {
        "format": RECIPE_FORMAT, "version": RECIPE_VERSION,
        "space_options": _plain_options({**dict(space_options or {}), "min_keep": space.min_keep}),
        "units": space.N, "labels_sha256": _digest(space.labels), "labels": space.labels,
        "pruned": [space.labels[i] for i in np.flatnonzero(x)], "k": int(x.sum()),
        "kept_channels": kept, "meta": dict(meta or {}),
    }


def save_recipe(path: str | Path, recipe: Mapping[str, Any]) -> Path:
    """Write ``recipe`` as JSON, atomically."""
    write_json(path, recipe)
    return Path(path)


def load_recipe(path: str | Path) -> dict[str, Any]:
    """Read and check a recipe file written by :func:`save_recipe`."""
    path = Path(path)
    try:
        recipe = json.loads(path.read_text())
    except FileNotFoundError:
        raise QpruneError(f"recipe file {path} does not exist") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise QpruneError(f"{path} is not a recipe (not JSON: {exc})") from None
    if not isinstance(recipe, dict) or recipe.get("format") != RECIPE_FORMAT:
        raise QpruneError(f"{path} is not a qprune recipe (no 'format': {RECIPE_FORMAT!r})")
    if int(recipe.get("version", 0)) > RECIPE_VERSION:
        raise QpruneError(f"{path} is recipe version {recipe['version']}; this qprune reads <= {RECIPE_VERSION}")
    return recipe


def recipe_space(model: nn.Module, recipe: Mapping[str, Any], example_inputs: Any) -> FilterSpace:
    """The recipe's filter space rebuilt on ``model``; a QpruneError when it is not the same space."""
    options = dict(recipe["space_options"])
    if int(recipe.get("version", 1)) < 2:
        options = {**_V1_DEFAULTS, **options}
    space = build_space(model, example_inputs, **options)
    if space.labels != list(recipe["labels"]):
        ours, theirs = space.labels, list(recipe["labels"])
        first = next((i for i, (a, b) in enumerate(zip(ours, theirs)) if a != b), min(len(ours), len(theirs)))
        raise QpruneError(f"this model's filter space differs from the recipe's ({len(ours)} vs {len(theirs)} units; "
                          f"first difference at unit {first}: "
                          f"{ours[first] if first < len(ours) else None!r} vs "
                          f"{theirs[first] if first < len(theirs) else None!r}): not the same model definition")
    return space


def apply_recipe(model: nn.Module, recipe: Mapping[str, Any], example_inputs: Any) -> nn.Module:
    """``model`` (a fresh instance of the original definition) with the recipe's channels removed."""
    space = recipe_space(model.eval(), recipe, example_inputs)
    mask = space.to_mask({label: 1 for label in recipe["pruned"]})
    return apply_mask(model, space, mask, mode="remove", example_inputs=example_inputs)
