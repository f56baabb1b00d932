"""End-to-end pipelines, recipe → model → training → samples, all of one shape:
:mod:`~scoretut.pipelines.toy2d` (score models on 2-D data), :mod:`~scoretut.pipelines.images`
(image DDPM), :mod:`~scoretut.pipelines.vdm2d` (variational diffusion models) and
:mod:`~scoretut.pipelines.flow2d` (flow matching). Each has a ``DEFAULT_RECIPE`` or recipe
maker, ``build(recipe)``, ``fit``, ``load(path) -> (model, recipe)`` and
``generate(model, recipe, n, *, …, trajectory_every=None) -> Generated``, and writes one
checkpoint format: the :func:`scoretut.train.train` checkpoint with
``config = {"kind": KIND, "recipe": recipe}`` (:mod:`~scoretut.pipelines.recipes`).
"""

from __future__ import annotations

import os
from types import ModuleType
from typing import Any, NamedTuple

from torch import nn

from scoretut.checkpoint import load_checkpoint
from scoretut.errors import UsageError


class Loaded(NamedTuple):
    """A checkpoint rebuilt: ``pipeline.generate(model, recipe, n)`` samples from it."""

    pipeline: ModuleType
    model: nn.Module
    recipe: dict[str, Any]


def load(path: str | os.PathLike, *, ema: bool = True) -> Loaded:
    """Any pipeline's checkpoint as ``(pipeline, model, recipe)``, dispatched on its ``kind``:
    the pipeline module whose ``fit`` wrote it, and its ``load(path, ema=ema)``."""
    from scoretut.pipelines import flow2d, images, toy2d, vdm2d

    pipelines = {p.KIND: p for p in (toy2d, images, vdm2d, flow2d)}
    kind = load_checkpoint(path, map_location="cpu").get("config", {}).get("kind")
    if kind not in pipelines:
        raise UsageError(f"{path} has no pipeline kind ({kind!r}); pass a checkpoint written by the "
                         f"fit of one of: {', '.join(pipelines)}")  # fmt: skip
    pipeline = pipelines[kind]
    return Loaded(pipeline, *pipeline.load(path, ema=ema))
