"""The 2D pipeline end to end: a recipe (plain dict) → model → training → samples → metrics.

A *recipe* is a dict of plain values, stored in every checkpoint, that says how to rebuild the
model: the data set, the SDE, the parametrisation, the loss and the network size. The default,
:data:`DEFAULT_RECIPE`, is the best one we measured on the swiss roll (see
``benchmarks/toy_swiss_roll.py``): an EDM-preconditioned denoiser (Karras et al. 2022) trained
with the EDM loss, sampled with Heun's method on the probability-flow ODE over the ρ = 7 grid.

Two parametrisations share one module, :class:`ToyScoreModel`:

* ``"edm"`` — ``D(x̂; σ) = c_skip x̂ + c_out F(c_in x̂, ¼ ln σ)``; the score of any SDE follows
  from Tweedie's formula (:meth:`scoretut.parametrisation.Prediction.score`).
* ``"score"`` — the network predicts ``−ε``: ``s_θ(x, t) = F(x, t)/std(t)`` (the "scale by
  σ" trick of Song et al. 2021), the classic HelloScore-style score network.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from scoretut.data.toy2d import sample_dataset
from scoretut.errors import UsageError
from scoretut.losses import LOSSES, DSMLoss, EDMLoss, ISMLoss, SSMLoss
from scoretut.nets.mlp import ScoreMLP
from scoretut.parametrisation import EDMPrecond, Prediction, prediction_of
from scoretut.pipelines.recipes import load_model, with_overrides
from scoretut.runtime import resolve_device
from scoretut.sampling import Generated, get_sampler, run_steps, timesteps
from scoretut.sde import SDE
from scoretut.sde_registry import SDES
from scoretut.train import train, training_config

DEFAULT_RECIPE: dict[str, Any] = {
    "data": "swiss_roll",
    "n_data": 100_000,
    "sde": "edm",
    "sde_args": {"sigma_min": 0.002, "sigma_max": 40.0},
    "param": "edm",
    "sigma_data": 2.0,
    "loss": "edm",
    "loss_args": {"P_mean": -0.5, "P_std": 1.4},
    "net": {"dim": 2, "hidden": 128, "depth": 3, "emb_dim": 64},
    "sampler": "ode_heun",
    "grid": "karras",
    "steps": 18,
}
"""The default 2D recipe. ``steps`` is the number of sampler steps (Heun: 2·steps − 1 NFE)."""

KIND = "toy"
"""The ``kind`` of this pipeline's checkpoints."""

PARAMS = ("edm", "score")

SDE_NAMES = ("ou", "vp", "subvp", "ve", "edm")
"""The SDEs a 2D recipe may name: the continuous ones of :mod:`scoretut.sde`, built from
:data:`scoretut.sde_registry.SDES`."""


def make_sde(recipe: dict[str, Any]) -> SDE:
    """The recipe's forward SDE, ``SDES[recipe["sde"]](**recipe["sde_args"])``."""
    name = recipe["sde"]
    if name not in SDE_NAMES:
        raise UsageError(f"unknown SDE {name!r}; choose one of: {', '.join(SDE_NAMES)}")
    return SDES[name](**recipe.get("sde_args", {}))


class ToyScoreModel(nn.Module):
    """A score model ``s_θ(x, t)`` for ``sde``, with the recipe's parametrisation.

    ``forward(x, t)`` returns the score (``x``: ``(batch, dim)``, ``t``: ``(batch,)``);
    :meth:`denoiser` returns ``D(x̂; σ)`` (for the EDM loss); :meth:`prediction_view` gives the
    samplers the network's own output (``D`` or ``ε̂``) instead of the score.
    """

    def __init__(self, sde: SDE, net: nn.Module, param: str = "edm", sigma_data: float = 1.0):
        super().__init__()
        if param not in PARAMS:
            raise UsageError(f"unknown parametrisation {param!r}; choose one of: {', '.join(PARAMS)}")
        self.sde, self.param = sde, param
        if param == "edm":
            self.precond = EDMPrecond(net, sigma_data)
        else:
            self.net = net

    def prediction_view(self) -> Prediction:
        """The model as a :class:`~scoretut.parametrisation.Prediction` of ``self.sde``: the
        denoiser ``D(x̂; σ)`` for ``"edm"``, the noise ``ε̂ = −F(x, t)`` for ``"score"``. Built per
        call, so copies (e.g. the EMA) use their own weights."""
        if self.param == "edm":
            return Prediction(self.sde, self.precond, "denoiser")
        return Prediction(self.sde, lambda x, t: -self.net(x, t), "eps")

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        return self.prediction_view().score(x, t)

    def denoiser(self, x_hat: Tensor, sigma: Tensor) -> Tensor:
        """``D(x̂; σ)`` of the model (only for the ``edm`` parametrisation)."""
        if self.param != "edm":
            raise UsageError("the EDM loss needs the 'edm' parametrisation; use `param` edm")
        return self.precond(x_hat, sigma)


def build(recipe: dict[str, Any]) -> ToyScoreModel:
    """Build the (untrained) model the recipe describes."""
    sde = make_sde(recipe)
    net = ScoreMLP(**recipe["net"])
    return ToyScoreModel(sde, net, recipe["param"], recipe.get("sigma_data", 1.0))


def make_loss(recipe: dict[str, Any], sde: SDE):
    """``loss_fn(model, x0, generator)`` for :func:`scoretut.train.train`."""
    name, args = recipe["loss"], dict(recipe.get("loss_args", {}))
    if name not in LOSSES:
        raise UsageError(f"unknown loss {name!r}; choose one of: {', '.join(LOSSES)}")
    if name == "edm":
        edm = EDMLoss(sigma_data=recipe.get("sigma_data", 0.5), **args)
        return lambda model, x0, generator=None: edm(model.denoiser, x0, generator)
    cls = {"dsm": DSMLoss, "ism": ISMLoss, "ssm": SSMLoss}[name]
    return cls(sde, **args)


def recipe_with(overrides: dict[str, Any] | None = None, base: dict[str, Any] | None = None) -> dict[str, Any]:
    """A deep copy of ``base`` (default recipe) with ``overrides`` applied.

    ``net`` is merged key by key (``{"net": {"hidden": 64}}`` keeps the other sizes); every other
    value, including ``sde_args`` and ``loss_args``, is replaced whole.
    """
    recipe = with_overrides(base or DEFAULT_RECIPE, overrides)
    if recipe["loss"] == "edm" and recipe["param"] != "edm":
        raise UsageError("the EDM loss trains a denoiser; use `param` edm (or another `loss`)")
    return recipe


def training_data(recipe: dict[str, Any], seed: int) -> Tensor:
    """The fixed training set: ``n_data`` points of the recipe's data set drawn with ``seed``."""
    return sample_dataset(recipe["data"], recipe.get("n_data", 100_000), seed=seed)


def fit(recipe: dict[str, Any] | None = None, steps: int = 1000, seed: int = 0, *, out_dir=None,
        resume: bool = False, device: torch.device | str | None = None, progress: bool = False, **training):
    """Build the recipe's model (seeded) and train it; returns a :class:`scoretut.train.TrainResult`.

    ``training`` overrides :data:`scoretut.train.DEFAULT_TRAINING` (``batch_size``, ``lr``, ``ema_decay``,
    ``ckpt_every``...). The recipe is stored in the checkpoint, so ``scoretut toy sample`` can
    rebuild the model from it alone. ``device=None`` means :func:`scoretut.default_device`.
    """
    recipe = recipe or DEFAULT_RECIPE
    cfg = training_config(steps, seed, progress, **training)
    torch.manual_seed(seed)
    model = build(recipe)
    return train(model, make_loss(recipe, model.sde), training_data(recipe, seed), cfg, out_dir=out_dir,
                 resume=resume, device=resolve_device(device), config={"kind": KIND, "recipe": recipe})  # fmt: skip


def load(path, *, ema: bool = True) -> tuple[ToyScoreModel, dict[str, Any]]:
    """``(model, recipe)`` from a checkpoint of :func:`fit`: the model rebuilt from the stored
    recipe with the EMA weights (the raw ones with ``ema=False``), on the CPU."""
    return load_model(path, KIND, "scoretut toy train", build, ema=ema)


@torch.no_grad()
def generate(
    model: ToyScoreModel,
    recipe: dict[str, Any],
    n: int,
    *,
    sampler: str | None = None,
    steps: int | None = None,
    grid: str | None = None,
    seed: int = 0,
    device: torch.device | str | None = None,
    trajectory_every: int | None = None,
    **options,
) -> Generated:
    """Draw ``n`` samples ``(n, dim)`` from ``model`` built with ``recipe``: a
    :class:`~scoretut.sampling.Generated` with the samples, the NFE and, with
    ``trajectory_every = k``, every ``k``-th state ``(t, x)`` and the last (on the CPU).

    ``sampler``, ``steps`` and ``grid`` default to the recipe's (the grid belongs to the SDE:
    the ρ = 7 noise levels for the EDM SDE, uniform times for the others); ``options`` go to the
    sampler. The samples are on ``device`` (``None``: :func:`scoretut.default_device`).
    """
    if n <= 0:
        raise UsageError(f"the number of samples must be positive, got `n` {n}")
    name = sampler or recipe["sampler"]
    fn = get_sampler(name)
    steps = steps or recipe["steps"]
    grid = grid or recipe["grid"]
    sde = model.sde
    ts = timesteps(sde, steps, grid)
    device = resolve_device(device)
    gen = torch.Generator(device).manual_seed(seed)
    dim = recipe["net"]["dim"]
    x = sde.prior_sampling((n, dim), generator=gen, device=device)
    model = model.to(device).eval()
    prediction = prediction_of(sde, model)
    x, trajectory = run_steps(fn(sde, prediction, x, ts, generator=gen, **options), trajectory_every)
    return Generated(x, prediction.nfe, trajectory)
