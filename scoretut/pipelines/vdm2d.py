"""The 2-D VDM pipeline: a recipe (plain dict) → :class:`~scoretut.vdm.VDM` → training → samples.

The model is a network ``F(z, γ_t)`` predicting ``ε``, ``x₀`` or ``v`` under a ``γ(t)``
schedule (:mod:`scoretut.vdm`), trained on the negative ELBO (:class:`scoretut.vdm.VDMLoss`)
and sampled by any sampler of :mod:`scoretut.sampling` on its
:class:`~scoretut.schedules.GammaSDE`. The math lives in :mod:`scoretut.vdm` and
:mod:`scoretut.schedules`; this module has the pipeline shape of
:mod:`~scoretut.pipelines.toy2d`: :func:`build`, :func:`fit`, :func:`load` and :func:`generate`.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from scoretut.errors import UsageError
from scoretut.nets.mlp import ScoreMLP
from scoretut.parametrisation import prediction_of
from scoretut.pipelines.recipes import Recipe, load_model, with_overrides
from scoretut.runtime import resolve_device
from scoretut.sampling import Generated, get_sampler, run_steps, timesteps
from scoretut.schedules import GAMMA_MAX, GAMMA_MIN, LinearSchedule, MonotoneSchedule, NoiseSchedule
from scoretut.train import TrainResult, train, training_config
from scoretut.vdm import VDM, VDMLoss

KIND = "vdm"
"""The ``kind`` of this pipeline's checkpoints."""

SCHEDULES = ("linear", "monotone")
"""Schedule kinds: :class:`~scoretut.schedules.LinearSchedule` (fixed) and
:class:`~scoretut.schedules.MonotoneSchedule` (learned, VDM's monotone network)."""

DEFAULT_RECIPE: Recipe = {
    "net": {"dim": 2, "hidden": 128, "depth": 3, "emb_dim": 64},
    "schedule": "linear",
    "gamma_min": GAMMA_MIN,
    "gamma_max": GAMMA_MAX,
    "n_features": 1024,
    "prediction": "eps",
    "loss_args": {"n_steps": 0, "time_sampling": "stratified", "elbo_terms": True, "variance_trick": True},
    "sampler": "em",
    "steps": 200,
}
"""The default VDM recipe: the network's sizes (``dim`` is the data's), the schedule
(:data:`SCHEDULES`) with its initial ``γ(0)``, ``γ(1)`` and, for ``monotone``, its width
``n_features``, what the network predicts (``eps``, ``x0`` or ``v``), the arguments of
:class:`~scoretut.vdm.VDMLoss`, and the sampler with its number of uniform steps."""

TRAINING: dict[str, Any] = {"batch_size": 256, "lr": 2e-3, "warmup": 50, "ema_decay": 0.99}
"""Optimiser settings of :func:`fit` (those of the VDM chapter), overriding
:class:`scoretut.train.TrainConfig`: a 50-step warm-up to a constant 2e-3."""


def recipe_with(overrides: Recipe | None = None, base: Recipe | None = None) -> Recipe:
    """A deep copy of ``base`` (default :data:`DEFAULT_RECIPE`) with ``overrides`` applied
    (``net`` and ``loss_args`` merged key by key, every other value replaced whole)."""
    return with_overrides(base or DEFAULT_RECIPE, overrides, merge=("net", "loss_args"))


def make_schedule(recipe: Recipe) -> NoiseSchedule:
    """The recipe's ``γ(t)`` (the monotone network draws its weights from the torch RNG)."""
    ends = recipe["gamma_min"], recipe["gamma_max"]
    if recipe["schedule"] == "monotone":
        return MonotoneSchedule(*ends, n_features=recipe["n_features"])
    if recipe["schedule"] == "linear":
        return LinearSchedule(*ends)
    raise UsageError(f"unknown schedule {recipe['schedule']!r}; choose one of: {', '.join(SCHEDULES)}")


def build(recipe: Recipe) -> VDM:
    """The (untrained) VDM of the recipe: the schedule first, then the network (the order of
    their draws from the torch RNG); seed torch before calling."""
    schedule = make_schedule(recipe)
    return VDM(ScoreMLP(**recipe["net"]), schedule, prediction=recipe["prediction"])


def fit(data: Tensor, steps: int, *, recipe: Recipe | None = None, seed: int = 0, out_dir=None,
        device: torch.device | str | None = None, callback=None, **training) -> TrainResult:  # fmt: skip
    """Build the recipe's model after ``torch.manual_seed(seed)`` and train it on ``data``
    ``(N, dim)`` with :class:`~scoretut.vdm.VDMLoss`; returns a :class:`scoretut.train.TrainResult`.

    ``training`` overrides :data:`TRAINING` (``batch_size``, ``lr``, ``log_every``...);
    ``callback`` goes to :func:`scoretut.train.train`. With ``out_dir`` the checkpoint stores
    the recipe (kind ``"vdm"``), so :func:`load` rebuilds the model from it alone.
    ``device=None`` means :func:`scoretut.default_device`.
    """
    recipe = recipe or DEFAULT_RECIPE
    cfg = training_config(steps, seed, defaults=TRAINING, **training)
    torch.manual_seed(seed)
    model = build(recipe)
    return train(model, VDMLoss(**recipe["loss_args"]), data, cfg, out_dir=out_dir, device=resolve_device(device),
                 config={"kind": KIND, "recipe": recipe}, callback=callback)  # fmt: skip


def load(path, *, ema: bool = True) -> tuple[VDM, Recipe]:
    """``(model, recipe)`` from a checkpoint of :func:`fit`: the VDM rebuilt from the stored
    recipe with the EMA weights (the raw ones with ``ema=False``), on the CPU."""
    return load_model(path, KIND, "vdm2d.fit", build, ema=ema)


@torch.no_grad()
def generate(model: VDM, recipe: Recipe, n: int, *, sampler: str | None = None, steps: int | None = None,
             seed: int = 0, device: torch.device | str | None = None,
             trajectory_every: int | None = None) -> Generated:  # fmt: skip
    """Draw ``n`` samples ``(n, dim)`` by running ``sampler`` (default the recipe's, Euler–Maruyama
    on the reverse SDE of :class:`~scoretut.schedules.GammaSDE`) over ``steps`` uniform steps from
    ``t = 1`` to ``0``, starting at ``N(0, I)``: a :class:`~scoretut.sampling.Generated` with the
    samples, the NFE and, with ``trajectory_every = k``, every ``k``-th state ``(t, x)`` and the
    last (on the CPU). ``device=None`` is the model's device."""
    sampler = sampler or recipe["sampler"]
    steps = steps or recipe["steps"]
    if n <= 0 or steps <= 0:
        raise UsageError(f"need a positive number of samples and steps, got n={n}, steps={steps}")
    device = torch.device(device) if device is not None else next(model.parameters()).device
    model = model.to(device).eval()
    gen = torch.Generator(device).manual_seed(seed)
    sde = model.sde
    x = sde.prior_sampling((n, recipe["net"]["dim"]), generator=gen, device=device)
    score = prediction_of(sde, model)  # the VDM's score −ε̂/σ_t, counting evaluations
    steps_run = get_sampler(sampler)(sde, score, x, timesteps(sde, steps), generator=gen)
    x, trajectory = run_steps(steps_run, trajectory_every)
    return Generated(x, score.nfe, trajectory)
