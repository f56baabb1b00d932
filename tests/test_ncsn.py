"""Langevin and annealed Langevin dynamics, and the NCSNv2 rules, against the math."""

import math

import pytest
import torch

from gaussian import COV, MEAN, w2_to_data
from scoretut.errors import UsageError
from scoretut.data.toy2d import GaussianMixture2D, gmm_example
from scoretut.losses import DSMLoss
from scoretut.sampling import annealed_langevin, langevin
from scoretut.schedules import (max_pairwise_distance, ncsnv2_ratio, ncsnv2_sigmas, ncsnv2_step_size,
                                ncsnv2_variance_ratio)
from scoretut.sampling import SAMPLERS, sample
from scoretut.nets import ScoreMLP
from scoretut.sde import EDMSDE
from scoretut.pipelines.toy2d import ToyScoreModel
from scoretut.train import TrainConfig, train


def gaussian_score(x, t):
    """Score of N(MEAN, COV), whatever t."""
    return -((x - MEAN) @ torch.linalg.inv(COV).T)


def test_langevin_with_the_exact_score_reaches_the_gaussian():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(20_000, 2, generator=g, dtype=torch.float64) * 3
    out = sample(langevin, None, gaussian_score, x, torch.zeros(1501), generator=g, step_size=0.01)
    assert w2_to_data(out) <= 0.03
    assert torch.allclose(out.mean(0), MEAN, atol=0.03)
    assert torch.allclose(torch.cov(out.T), COV, atol=0.05)


def test_unadjusted_langevin_bias_on_a_gaussian():
    """For N(0, 1) the chain x ← (1−α)x + √(2α) z has stationary variance 1/(1 − α/2)."""
    g = torch.Generator().manual_seed(1)
    x = torch.zeros(50_000, 1, dtype=torch.float64)
    out = sample(langevin, None, lambda x, t: -x, x, torch.zeros(201), generator=g, step_size=0.5)
    assert math.isclose(float(out.var()), 1 / (1 - 0.25), rel_tol=0.03)


def mode_fractions(gmm: GaussianMixture2D, x: torch.Tensor) -> torch.Tensor:
    """Fraction of points whose most responsible component is k, for each k."""
    best = gmm.responsibilities(x.double()).argmax(-1)
    return torch.bincount(best, minlength=gmm.num_components).double() / len(x)


def test_annealed_langevin_on_the_gmm_recovers_the_mode_weights():
    gmm = gmm_example()
    g = torch.Generator().manual_seed(0)
    sigmas = ncsnv2_sigmas(gmm.sample(5000, g, dtype=torch.float64))
    sde = EDMSDE(float(sigmas[-1]), float(sigmas[0]))  # t = σ

    def score(x, t):
        return gmm.perturbed_score(x, 1.0, t)

    # NCSN's ε = 2e-5 at σ_L = 0.01 (α_i = 0.2 σ_i²). Technique 4's ε (≈ 0.035 σ_L² here) only
    # contracts the variance level by level and leaves the weights off by ~0.03 in 2D.
    x = sde.prior_sampling((10_000, 2), generator=g, dtype=torch.float64)
    out = sample(annealed_langevin, sde, score, x, sigmas, generator=g, step_size=2e-5, n_steps_each=100)
    assert torch.allclose(mode_fractions(gmm, out), gmm.weights, atol=0.02)
    assert torch.allclose(out.mean(0), gmm.mean(), atol=0.05)


def test_noise_conditional_dsm_learns_the_perturbed_gmm_score():
    """DSM's optimum is ∇log p_σ: a briefly trained s_θ(x, σ) is within 10% (relative L2 error over
    x ~ p_σ, where the data live) of the exact perturbed score at each trained level."""
    gmm, sigmas = gmm_example(), [1.0, 0.5]
    data = gmm.sample(20_000, torch.Generator().manual_seed(0))
    sde = EDMSDE(0.5, 1.0)  # t = σ, so the NCSN loss is DSM over the grid of σ's with λ = σ²
    torch.manual_seed(0)
    model = ToyScoreModel(sde, ScoreMLP(dim=2, hidden=64, depth=2, emb_dim=32, cond_scale=10.0), param="score")
    cfg = TrainConfig(steps=1200, batch_size=512, lr=3e-3, warmup=20, ema_decay=0.99, progress=False)
    ema = train(model, DSMLoss(sde, t_grid=sigmas), data, cfg).ema
    g = torch.Generator().manual_seed(1)
    for sigma in sigmas:
        x = gmm.perturbed(sigma).sample(5000, g)
        with torch.no_grad():
            err = ema(x, torch.full((5000,), sigma)) - gmm.perturbed_score(x, 1.0, sigma)
        rel = err.pow(2).sum(1).mean().sqrt() / gmm.perturbed_score(x, 1.0, sigma).pow(2).sum(1).mean().sqrt()
        assert float(rel) < 0.10, (sigma, float(rel))


def test_annealed_langevin_yields_every_step_then_the_tweedie_denoised_state():
    sde = EDMSDE(0.1, 1.0)
    sigmas = torch.tensor([1.0, 0.3, 0.1], dtype=torch.float64)
    x = torch.randn(10, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    steps = list(annealed_langevin(sde, lambda x, t: -x, x, sigmas, generator=torch.Generator(), n_steps_each=4))
    assert len(steps) == 1 + 3 * 4 + 1
    assert [s.t for s in steps[1:5]] == [1.0] * 4 and steps[-1].t == 0.1
    # last step: x + σ_L² ∇log p(x) with ∇log p(x) = −x
    assert torch.allclose(steps[-1].x, steps[-2].x * (1 - 0.1**2))


def test_max_pairwise_distance_is_the_brute_force_maximum():
    x = torch.randn(57, 3, generator=torch.Generator().manual_seed(0))
    brute = max(float((x[i] - x[j]).norm()) for i in range(57) for j in range(57))
    assert math.isclose(max_pairwise_distance(x, chunk=7), brute, rel_tol=1e-6)


def test_ncsnv2_ratio_solves_the_overlap_equation():
    phi = lambda u: 0.5 * math.erfc(-u / math.sqrt(2))  # noqa: E731
    for dim in (5, 100, 3072):
        g = ncsnv2_ratio(dim)
        c = math.sqrt(2 * dim) * (g - 1)
        assert g > 1 and math.isclose(phi(c + 3 * g) - phi(c - 3 * g), 0.5, abs_tol=1e-9)
    # CIFAR-10 (D = 3072): NCSNv2 used 232 levels from σ = 50 to 0.01, a ratio of 1.0375
    assert abs(ncsnv2_ratio(3072) - (50 / 0.01) ** (1 / 231)) < 0.005
    assert ncsnv2_ratio(2) == math.inf and ncsnv2_ratio(4) == math.inf  # √(2D) ≤ 3: no constraint


def test_ncsnv2_sigmas_geometric_from_the_largest_distance():
    x = gmm_example().sample(2000, torch.Generator().manual_seed(0), dtype=torch.float64)
    s = ncsnv2_sigmas(x, sigma_min=0.01, max_ratio=2.0)
    assert math.isclose(float(s[0]), max_pairwise_distance(x), rel_tol=1e-9)
    assert math.isclose(float(s[-1]), 0.01, rel_tol=1e-9)
    ratios = s[:-1] / s[1:]
    assert torch.allclose(ratios, ratios[0].expand_as(ratios)) and float(ratios[0]) <= 2.0
    assert float(s[0] / s[1]) > 2.0 ** ((len(s) - 2) / (len(s) - 1))  # one level fewer would exceed 2


def test_ncsnv2_variance_ratio_matches_a_simulated_chain():
    """T Langevin steps on N(0, σ_i²) from N(0, (γσ_i)²) with α = ε σ_i²/σ_L² (NCSNv2, Prop. 3)."""
    gamma, sigma_L, sigma_i, T, eps = 1.5, 0.1, 0.7, 20, 2e-4
    g = torch.Generator().manual_seed(0)
    x = gamma * sigma_i * torch.randn(200_000, 1, generator=g, dtype=torch.float64)
    alpha = eps * sigma_i**2 / sigma_L**2
    out = sample(langevin, None, lambda x, t: -x / sigma_i**2, x, torch.zeros(T + 1), generator=g, step_size=alpha)
    predicted = float(ncsnv2_variance_ratio(eps, gamma, sigma_L, T))
    assert math.isclose(float(out.var()) / sigma_i**2, predicted, rel_tol=0.01)


def test_ncsnv2_step_size_minimises_the_variance_ratio():
    eps = ncsnv2_step_size(2.0, 0.01, 100)
    r = lambda e: float(ncsnv2_variance_ratio(e, 2.0, 0.01, 100))  # noqa: E731
    assert r(eps) > 1 and r(eps) <= min(r(0.9 * eps), r(1.1 * eps))


def test_bad_inputs_raise_usage_errors():
    with pytest.raises(UsageError):
        next(langevin(None, gaussian_score, torch.zeros(2, 2), torch.zeros(3), step_size=0))
    with pytest.raises(UsageError):
        next(annealed_langevin(EDMSDE(), gaussian_score, torch.zeros(2, 2), torch.ones(3), step_size=-1))
    with pytest.raises(UsageError):  # a grid ending at σ = 0 (e.g. the EDM grid) has no σ_L
        next(annealed_langevin(EDMSDE(), gaussian_score, torch.zeros(2, 2), torch.tensor([1.0, 0.0])))
    with pytest.raises(UsageError):
        max_pairwise_distance(torch.zeros(1, 2))
    with pytest.raises(UsageError):
        ncsnv2_sigmas(torch.zeros(5, 2))
    assert {"langevin", "annealed_langevin"} <= set(SAMPLERS)
