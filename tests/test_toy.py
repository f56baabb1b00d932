"""The 2D pipeline (:mod:`scoretut.pipelines.toy2d`): recipes, the two parametrisations, generation.

The key fact used here: the residual MLP's output layer starts at zero, so an *untrained* EDM
model is the denoiser ``D(x̂; σ) = c_skip(σ) x̂ = σ_d²/(σ² + σ_d²) x̂`` — exactly the optimal
denoiser of data ``N(0, σ_d² I)``. Its score must therefore be the exact score of that
Gaussian under every SDE, ``−x / (s² σ_d² + std²)``, and sampling from it must return
``N(0, σ_d² I)``: a closed-form check of the whole model → score → sampler chain.
"""

from __future__ import annotations

import copy

import pytest
import torch
from gaussian import w2_to_data

from scoretut.errors import UsageError
from scoretut.sde import bcast
from scoretut.pipelines.toy2d import DEFAULT_RECIPE, SDE_NAMES, build, generate, make_loss, recipe_with
from scoretut.sampling import nfe_per_step


def exact_gaussian_score(sde, sigma_data):
    def score(x, t):
        s, std = bcast(sde.scale(t), x), bcast(sde.std(t), x)
        return -x / (s**2 * sigma_data**2 + std**2)

    return score


@pytest.mark.parametrize("sde", sorted(SDE_NAMES))
def test_untrained_edm_model_has_the_exact_gaussian_score_under_every_sde(sde):
    recipe = recipe_with({"sde": sde, "sde_args": {}, "sigma_data": 1.5})
    model = build(recipe).double()
    x = torch.randn(64, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0)) * 3
    exact = exact_gaussian_score(model.sde, 1.5)
    for frac in (0.01, 0.3, 0.9):
        t = torch.full((64,), frac * model.sde.T, dtype=torch.float64)
        assert torch.allclose(model(x, t), exact(x, t), rtol=1e-9, atol=1e-12)


def test_score_parametrisation_divides_the_network_by_std():
    recipe = recipe_with({"loss": "dsm", "loss_args": {}, "param": "score", "sde": "vp", "sde_args": {}})
    model = build(recipe).double()
    torch.nn.init.normal_(model.net.out[-1].weight)  # make the raw network non-zero
    x, t = torch.randn(8, 2, dtype=torch.float64), torch.linspace(0.1, 1.0, 8, dtype=torch.float64)
    assert torch.allclose(model(x, t), model.net(x, t) / model.sde.std(t)[:, None])


def test_sampling_the_untrained_model_returns_the_gaussian_it_encodes():
    model = build(recipe_with({"sigma_data": 2.0}))
    x, nfe, _ = generate(model, DEFAULT_RECIPE, 20_000, seed=0)
    assert nfe == 2 * DEFAULT_RECIPE["steps"] - 1  # Heun on the EDM grid: the last step is Euler
    target = dict(mean=torch.zeros(2, dtype=torch.float64), cov=4.0 * torch.eye(2, dtype=torch.float64))
    coarse = w2_to_data(x, **target)
    fine = w2_to_data(generate(model, DEFAULT_RECIPE, 20_000, seed=0, steps=100).x, **target)
    # 18 Heun steps overshoot the std by ~3% on this Gaussian; 100 steps reach Monte-Carlo noise
    assert coarse < 0.1 and fine < 0.04 and fine < coarse / 2, (coarse, fine)


@pytest.mark.parametrize("sampler", ["em", "pc", "ode_euler", "ode_heun", "ode_rk45"])
def test_generate_is_seeded_and_counts_network_evaluations(sampler):
    model = build(DEFAULT_RECIPE)
    a, nfe, none = generate(model, DEFAULT_RECIPE, 50, sampler=sampler, steps=6, seed=3)
    b = generate(model, DEFAULT_RECIPE, 50, sampler=sampler, steps=6, seed=3).x
    assert torch.equal(a, b) and a.shape == (50, 2) and torch.isfinite(a).all() and none is None
    if nfe_per_step(sampler) is not None:
        assert nfe <= nfe_per_step(sampler) * 6 and nfe >= 6
    every = generate(model, DEFAULT_RECIPE, 50, sampler=sampler, steps=6, seed=3, trajectory_every=1)
    assert torch.equal(every.x, a) and torch.equal(every.trajectory[-1][1], a) and every.nfe == nfe
    states = every.trajectory
    assert states[0][0] > states[-1][0]  # time runs backwards
    thinned = generate(model, DEFAULT_RECIPE, 50, sampler=sampler, steps=6, seed=3, trajectory_every=4).trajectory
    keep = states[::4] if (len(states) - 1) % 4 == 0 else states[::4] + states[-1:]
    assert [t for t, _ in thinned] == [t for t, _ in keep]  # every 4th state and the last
    assert all(torch.equal(x, y) for (_, x), (_, y) in zip(thinned, keep))


def test_a_copy_of_the_model_uses_its_own_weights():
    """The EMA is a deep copy; its score must come from its own (averaged) weights."""
    model = build(DEFAULT_RECIPE)
    twin = copy.deepcopy(model)
    torch.nn.init.normal_(twin.precond.net.out[-1].weight)
    x, t = torch.randn(10, 2), torch.full((10,), 1.0)
    assert not torch.allclose(model(x, t), twin(x, t))


def test_recipe_overrides_merge_the_net_and_replace_other_dicts():
    r = recipe_with({"net": {"hidden": 32}, "sde": "vp", "sde_args": {"beta_max": 10.0}})
    assert r["net"]["hidden"] == 32 and r["net"]["depth"] == DEFAULT_RECIPE["net"]["depth"]
    assert r["sde_args"] == {"beta_max": 10.0}
    assert DEFAULT_RECIPE["net"]["hidden"] != 32 or r is not DEFAULT_RECIPE  # the default is untouched
    with pytest.raises(UsageError, match="`param` edm"):
        recipe_with({"param": "score"})


def test_the_edm_loss_of_the_recipe_trains_the_denoiser():
    model = build(DEFAULT_RECIPE)
    loss = make_loss(DEFAULT_RECIPE, model.sde)
    x0 = torch.randn(256, 2)
    value = loss(model, x0, generator=torch.Generator().manual_seed(0))
    value.backward()
    assert model.precond.net.out[-1].weight.grad.abs().sum() > 0


def test_bad_generation_requests():
    model = build(DEFAULT_RECIPE)
    with pytest.raises(UsageError, match="positive"):
        generate(model, DEFAULT_RECIPE, 0)
    with pytest.raises(UsageError, match="choose one of"):
        generate(model, DEFAULT_RECIPE, 5, sampler="nope")
    with pytest.raises(UsageError, match="trajectory_every"):
        generate(model, DEFAULT_RECIPE, 5, trajectory_every=0)
