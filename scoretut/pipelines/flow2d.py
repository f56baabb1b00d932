"""The 2-D flow-matching pipeline: a recipe (plain dict) → velocity network → training → samples.

The model is a velocity network ``v_θ(x, t)`` (:func:`scoretut.flow.velocity_net`), trained
by conditional flow matching on the recipe's Gaussian path (:class:`scoretut.flow.FlowMatchingLoss`)
and sampled by integrating ``dx/dt = v_θ(x, t)`` from noise at ``t = 0`` to data at ``t = 1``
(:func:`scoretut.flow.integrate`). The math lives in :mod:`scoretut.flow`; this module has
the pipeline shape of :mod:`~scoretut.pipelines.toy2d`: :func:`build`, :func:`fit`,
:func:`load` and :func:`generate`.
"""

from __future__ import annotations

import copy

import torch
from torch import Tensor, nn

from scoretut.errors import UsageError
from scoretut.flow import PATHS, SOLVERS, FlowMatchingLoss, integrate, noise, velocity_net
from scoretut.pipelines.recipes import Recipe, load_model, with_overrides
from scoretut.runtime import resolve_device
from scoretut.sampling import CountingScore, Generated, nfe_per_step, run_steps, steps_for_nfe
from scoretut.train import DEFAULT_TRAINING, TrainResult, train, training_config

KIND = "flow"
"""The ``kind`` of this pipeline's checkpoints."""

DEFAULT_RECIPE: Recipe = {
    "net": {"dim": 2, "hidden": 128, "depth": 3, "emb_dim": 64},
    "path": "linear",
    "loss_args": {"t_min": 0.0, "t_max": 1.0, "time_sampling": "uniform"},
    "solver": "heun",
    "nfe": 16,
}
"""The default flow recipe: the velocity network's sizes (``dim`` is the data's), the path and
the arguments of :class:`~scoretut.flow.FlowMatchingLoss`, and the sampler: ``solver``
(:data:`scoretut.flow.SOLVERS`) and its budget of network evaluations ``nfe``."""


def recipe_with(overrides: Recipe | None = None, base: Recipe | None = None) -> Recipe:
    """A deep copy of ``base`` (default :data:`DEFAULT_RECIPE`) with ``overrides`` applied
    (``net`` merged key by key, every other value replaced whole)."""
    return with_overrides(base or DEFAULT_RECIPE, overrides)


def build(recipe: Recipe) -> nn.Module:
    """The (untrained) velocity network of the recipe; seed torch before calling."""
    return velocity_net(**recipe["net"])


def make_loss(recipe: Recipe) -> FlowMatchingLoss:
    """The recipe's flow-matching loss: ``FlowMatchingLoss(PATHS[path](), **loss_args)``."""
    if recipe["path"] not in PATHS:
        raise UsageError(f"unknown path {recipe['path']!r}; choose one of: {', '.join(PATHS)}")
    return FlowMatchingLoss(PATHS[recipe["path"]](), **recipe["loss_args"])


def fit(data: Tensor, steps: int, *, recipe: Recipe | None = None, seed: int = 0, init: nn.Module | None = None,
        out_dir=None, device: torch.device | str | None = None, **training) -> TrainResult:  # fmt: skip
    """Train the recipe's velocity network on ``data`` (points ``(N, dim)`` or pairs
    ``(N, 2, dim)``, see :class:`~scoretut.flow.FlowMatchingLoss`); returns a
    :class:`scoretut.train.TrainResult` (use ``.ema``).

    ``init`` continues from a copy of a trained model of the same recipe (as reflow does);
    otherwise :func:`build` makes a fresh one after ``torch.manual_seed(seed)``. ``training``
    overrides the 2-D optimiser settings (:data:`scoretut.train.DEFAULT_TRAINING`, with the
    cosine decay over ``steps``). With ``out_dir`` the checkpoint stores the recipe (kind
    ``"flow"``), so :func:`load` rebuilds the model from it alone. ``device=None`` means
    :func:`scoretut.default_device`.
    """
    recipe = recipe or DEFAULT_RECIPE
    defaults = {**DEFAULT_TRAINING, "decay_steps": max(steps, DEFAULT_TRAINING["warmup"] + 1)}
    cfg = training_config(steps, seed, defaults=defaults, **training)
    torch.manual_seed(seed)
    model = copy.deepcopy(init) if init is not None else build(recipe)
    return train(model, make_loss(recipe), data, cfg, out_dir=out_dir, device=resolve_device(device),
                 config={"kind": KIND, "recipe": recipe})  # fmt: skip


def load(path, *, ema: bool = True) -> tuple[nn.Module, Recipe]:
    """``(model, recipe)`` from a checkpoint of :func:`fit`: the velocity network rebuilt from
    the stored recipe with the EMA weights (the raw ones with ``ema=False``), on the CPU."""
    return load_model(path, KIND, "flow2d.fit", build, ema=ema)


def generate(model: nn.Module, recipe: Recipe, n: int, *, nfe: int | None = None, solver: str | None = None,
             seed: int = 0, device: torch.device | str | None = None,
             trajectory_every: int | None = None) -> Generated:  # fmt: skip
    """``n`` samples ``(n, dim)`` from noise drawn with ``seed`` (:func:`scoretut.flow.noise`),
    carried by the most steps of ``solver`` that cost at most ``nfe`` evaluations (1 per Euler
    step, 2 per Heun step; :func:`scoretut.sampling.steps_for_nfe`): a
    :class:`~scoretut.sampling.Generated` with the samples, the NFE spent and, with
    ``trajectory_every = k``, every ``k``-th state ``(t, x)`` and the last (on the CPU).
    ``nfe`` and ``solver`` default to the recipe's; ``device=None`` is the model's device."""
    solver = solver or recipe["solver"]
    nfe = nfe or recipe["nfe"]
    if solver not in SOLVERS:
        raise UsageError(f"unknown solver {solver!r}; choose one of: {', '.join(SOLVERS)}")
    steps = steps_for_nfe(SOLVERS[solver], nfe)
    if steps < 1:
        cost = nfe_per_step(SOLVERS[solver])
        raise UsageError(f"{nfe} evaluations buy no {solver} step ({cost} each); give `nfe` >= {cost}")
    device = torch.device(device) if device is not None else next(model.parameters()).device
    velocity = CountingScore(model.to(device).eval())
    x0 = noise(n, seed, recipe["net"]["dim"], device)
    x, trajectory = run_steps(integrate(velocity, x0, steps, solver), trajectory_every)
    return Generated(x, velocity.nfe, trajectory)
