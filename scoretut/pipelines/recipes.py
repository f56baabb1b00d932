"""What the pipelines share: recipes and the checkpoints that store them.

A *recipe* is a dict of plain (JSON-able) values that says how to rebuild a pipeline's model.
Every pipeline's ``fit`` trains through :func:`scoretut.train.train` with
``config={"kind": KIND, "recipe": recipe}``, so a checkpoint names its pipeline (``kind``)
and carries everything ``build(recipe)`` needs; :func:`load_model` rebuilds the model from it.
"""

from __future__ import annotations

import copy
import os
from typing import Any, Callable

from torch import nn

from scoretut.checkpoint import load_checkpoint
from scoretut.errors import UsageError

Recipe = dict[str, Any]


def with_overrides(base: Recipe, overrides: Recipe | None = None, merge: tuple[str, ...] = ("net",)) -> Recipe:
    """A deep copy of ``base`` with ``overrides`` applied: the dict-valued keys named in ``merge``
    are updated key by key (``{"net": {"hidden": 64}}`` keeps the other sizes), every other
    value is replaced whole."""
    recipe = copy.deepcopy(base)
    for key, value in copy.deepcopy(overrides or {}).items():
        recipe[key] = {**recipe[key], **value} if key in merge else value
    return recipe


def read(path: str | os.PathLike, kind: str, writer: str) -> tuple[dict[str, Any], Recipe]:
    """``(state, recipe)`` of a checkpoint whose config has ``kind``, read on the CPU.

    :class:`UsageError` naming ``writer`` (what writes checkpoints of this kind) when the file
    holds another kind, or no recipe and EMA weights."""
    state = load_checkpoint(path, map_location="cpu")
    config = state.get("config", {})
    if config.get("kind") != kind or "recipe" not in config or "ema" not in state:
        found = config.get("kind")
        other = f" (it holds a {found!r} one: scoretut.pipelines.load reads any kind)" if found else ""
        raise UsageError(f"{path} is not a '{writer}' checkpoint{other}; pass one written by it")
    return state, config["recipe"]


def load_model(path: str | os.PathLike, kind: str, writer: str, build: Callable[[Recipe], nn.Module], *,
               ema: bool = True) -> tuple[nn.Module, Recipe]:  # fmt: skip
    """``(model, recipe)``: ``build(recipe)`` with the checkpoint's EMA weights (the raw ones with
    ``ema=False``), in eval mode on the CPU (:func:`read` checks the kind)."""
    state, recipe = read(path, kind, writer)
    model = build(recipe)
    model.load_state_dict(state["ema" if ema else "model"])
    return model.eval(), recipe
