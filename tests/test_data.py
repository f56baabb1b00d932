"""Checks of scoretut/data/toy2d.py: the swiss-roll spec and the exact Gaussian-mixture score."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from sklearn.datasets import make_swiss_roll

from scoretut.errors import UsageError
from scoretut.data.toy2d import (
    DATASETS,
    GaussianMixture2D,
    eight_gaussians_mixture,
    gmm_example,
    sample_dataset,
    swiss_roll,
)


def _autograd_score(log_prob, x: torch.Tensor) -> torch.Tensor:
    x = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(log_prob(x).sum(), x)
    return grad


def _assert_moments(x: torch.Tensor, mean: torch.Tensor, cov: torch.Tensor, n_se: float = 3.0) -> None:
    """Sample mean and covariance of ``x`` (n, 2) within ``n_se`` standard errors of ``mean``, ``cov``."""
    x = x.to(torch.float64)
    n = x.shape[0]
    centred = x - mean
    mean_se = x.std(dim=0) / math.sqrt(n)
    assert torch.all((x.mean(0) - mean).abs() < n_se * mean_se), (x.mean(0), mean)
    products = centred[:, :, None] * centred[:, None, :]  # (n, 2, 2); its mean estimates cov
    cov_se = products.std(dim=0) / math.sqrt(n)
    assert torch.all((products.mean(0) - cov).abs() < n_se * cov_se), (products.mean(0), cov)


# --------------------------------------------------------------------------- swiss roll spec


def test_swiss_roll_follows_the_fixed_spec():
    n, seed = 2000, 7
    x = swiss_roll(n, seed=seed)
    assert x.shape == (n, 2) and x.dtype == torch.float32
    raw = make_swiss_roll(n, noise=0.0, random_state=seed)[0][:, [0, 2]]
    centred = raw - raw.mean(axis=0)
    expected = 2.0 * centred / centred.std()
    np.testing.assert_allclose(x.numpy(), expected, rtol=0, atol=1e-5)


def test_swiss_roll_is_centred_with_global_std_two():
    x = swiss_roll(10000, seed=3).to(torch.float64)
    assert torch.all(x.mean(0).abs() < 1e-6)
    assert abs(float(x.std(unbiased=False)) - 2.0) < 1e-6  # one std over all 2n coordinates


def test_swiss_roll_is_deterministic_by_seed():
    assert torch.equal(swiss_roll(500, seed=11), swiss_roll(500, seed=11))
    assert not torch.equal(swiss_roll(500, seed=11), swiss_roll(500, seed=12))


@pytest.mark.parametrize("name", sorted(DATASETS))
def test_every_data_set_has_shape_dtype_and_seeded_draws(name):
    x = sample_dataset(name, 1000, seed=5)
    assert x.shape == (1000, 2) and x.dtype == torch.float32
    assert torch.isfinite(x).all()
    assert torch.equal(x, sample_dataset(name, 1000, seed=5))
    assert not torch.equal(x, sample_dataset(name, 1000, seed=6))


@pytest.mark.parametrize("name", ["swiss_roll", "moons"])
def test_normalised_data_sets_have_mean_zero_and_std_two(name):
    x = sample_dataset(name, 3001, seed=1).to(torch.float64)
    assert torch.all(x.mean(0).abs() < 1e-6)
    assert abs(float(x.std(unbiased=False)) - 2.0) < 1e-6


def test_eight_gaussians_has_global_std_two_by_construction():
    mix = eight_gaussians_mixture()
    torch.testing.assert_close(mix.mean(), torch.zeros(2, dtype=torch.float64), atol=1e-12, rtol=0)
    torch.testing.assert_close(mix.covariance(), 4.0 * torch.eye(2, dtype=torch.float64))


@pytest.mark.parametrize("bad", ["foo", "Swiss_Roll", ""])
def test_unknown_data_set_names_the_choices(bad):
    with pytest.raises(UsageError, match="choose one of: swiss_roll"):
        sample_dataset(bad, 10, 0)


@pytest.mark.parametrize("n", [0, -3, 2.5, True])
def test_bad_n_is_a_usage_error(n):
    with pytest.raises(UsageError, match="positive integer"):
        sample_dataset("swiss_roll", n, 0)


def test_bad_seed_is_a_usage_error():
    with pytest.raises(UsageError, match="seed"):
        sample_dataset("moons", 10, -1)


# --------------------------------------------------------------------------- Gaussian mixture


def _random_points(n: int = 4000, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return 4.0 * torch.randn(n, 2, generator=g, dtype=torch.float64)


def test_gmm_score_equals_autograd_of_log_prob():
    mix = gmm_example()
    x = _random_points()
    torch.testing.assert_close(mix.score(x), _autograd_score(mix.log_prob, x), rtol=1e-10, atol=1e-12)


def test_gmm_score_is_stable_far_from_all_modes():
    mix = gmm_example()
    x = torch.tensor([[60.0, -80.0], [-200.0, 5.0]], dtype=torch.float64)
    score, log_p = mix.score(x), mix.log_prob(x)
    assert torch.isfinite(score).all() and torch.isfinite(log_p).all()
    torch.testing.assert_close(score, _autograd_score(mix.log_prob, x), rtol=1e-9, atol=1e-12)


def test_single_gaussian_score_is_linear():
    cov = torch.tensor([[[1.5, -0.4], [-0.4, 0.7]]], dtype=torch.float64)
    mu = torch.tensor([[0.3, -1.0]], dtype=torch.float64)
    gauss = GaussianMixture2D(torch.ones(1), mu, cov)
    x = _random_points(100)
    expected = -(x - mu) @ torch.linalg.inv(cov[0]).T
    torch.testing.assert_close(gauss.score(x), expected, rtol=1e-12, atol=1e-12)


def test_gmm_log_prob_integrates_to_one():
    mix = gmm_example()
    h = 0.05  # the Riemann sum of a smooth Gaussian converges exponentially fast in 1/h
    grid = torch.arange(-9.0, 9.0 + h / 2, h, dtype=torch.float64)
    xx, yy = torch.meshgrid(grid, grid, indexing="ij")
    total = mix.log_prob(torch.stack([xx, yy], dim=-1)).exp().sum() * h * h
    assert abs(float(total) - 1.0) < 1e-6


def test_gmm_keeps_the_input_dtype():
    mix = gmm_example()
    x = torch.zeros(3, 2)
    assert mix.score(x).dtype == torch.float32 and mix.log_prob(x).dtype == torch.float32


def test_gmm_sample_moments_match_the_mixture():
    mix = gmm_example()
    x = mix.sample(200_000, torch.Generator().manual_seed(1), dtype=torch.float64)
    assert x.shape == (200_000, 2)
    _assert_moments(x, mix.mean(), mix.covariance())


def test_gmm_sample_weights_match():
    mix = gmm_example()
    x = mix.sample(100_000, torch.Generator().manual_seed(2), dtype=torch.float64)
    nearest = torch.cdist(x, mix.means).argmin(dim=1)
    freq = torch.bincount(nearest, minlength=3).double() / x.shape[0]
    torch.testing.assert_close(freq, mix.weights, atol=0.01, rtol=0)


@pytest.mark.parametrize("scale,std", [(1.0, 0.5), (0.6, 0.8), (0.05, 0.999)])
def test_perturbed_matches_monte_carlo_of_scaled_noisy_data(scale, std):
    mix = gmm_example()
    g = torch.Generator().manual_seed(3)
    x0 = mix.sample(200_000, g, dtype=torch.float64)
    xt = scale * x0 + std * torch.randn(x0.shape, generator=g, dtype=torch.float64)
    pert = mix.perturbed((scale, std))
    torch.testing.assert_close(pert.means, scale * mix.means)
    torch.testing.assert_close(pert.covariances, scale**2 * mix.covariances + std**2 * torch.eye(2, dtype=torch.float64))
    _assert_moments(xt, pert.mean(), pert.covariance())


@pytest.mark.parametrize("scale,std", [(1.0, 0.3), (0.5, 0.9), (1.0, 5.0)])
def test_perturbed_score_equals_autograd(scale, std):
    pert = gmm_example().perturbed(scale=scale, std=std)
    x = _random_points(2000, seed=4)
    torch.testing.assert_close(pert.score(x), _autograd_score(pert.log_prob, x), rtol=1e-10, atol=1e-12)


def test_perturbed_call_forms_agree_and_zero_noise_is_identity():
    mix = gmm_example()
    x = _random_points(50, seed=5)
    torch.testing.assert_close(mix.perturbed(0.7).score(x), mix.perturbed((1.0, 0.7)).score(x))
    torch.testing.assert_close(mix.perturbed(0.7).score(x), mix.perturbed(std=0.7).score(x))
    torch.testing.assert_close(mix.perturbed(0.0).log_prob(x), mix.log_prob(x))


def test_per_point_perturbed_score_matches_scalar_mixtures():
    mix = gmm_example()
    x = _random_points(6, seed=6)
    scale = torch.tensor([1.0, 0.9, 0.5, 0.2, 0.1, 1.0], dtype=torch.float64)
    std = torch.tensor([0.0, 0.2, 0.7, 0.9, 1.0, 3.0], dtype=torch.float64)
    batched = mix.perturbed_score(x, scale, std)
    batched_lp = mix.perturbed_log_prob(x, scale, std)
    for i in range(6):
        pert = mix.perturbed((float(scale[i]), float(std[i])))
        torch.testing.assert_close(batched[i], pert.score(x[i]))
        torch.testing.assert_close(batched_lp[i], pert.log_prob(x[i]))


def test_large_noise_score_tends_to_the_gaussian_prior():
    x = _random_points(100, seed=7)
    std = 1e3
    torch.testing.assert_close(gmm_example().perturbed(std).score(x) * std**2, -x, atol=10.0, rtol=0.01)


def test_bad_mixtures_are_usage_errors():
    mu, cov = torch.zeros(1, 2), torch.eye(2)[None]
    with pytest.raises(UsageError):
        GaussianMixture2D(torch.ones(2), mu, cov)
    with pytest.raises(UsageError, match="positive definite"):
        GaussianMixture2D(torch.ones(1), mu, -cov)
    with pytest.raises(UsageError, match="positive"):
        GaussianMixture2D(-torch.ones(1), mu, cov)
    with pytest.raises(UsageError, match="std"):
        gmm_example().perturbed(-1.0)


def test_gmm_responsibilities_are_bayes_rule_over_components():
    """r_k(x) = w_k N(x; μ_k, Σ_k) / p(x), each component's density from a one-component mixture."""
    gmm = gmm_example()
    x = gmm.sample(500, torch.Generator().manual_seed(0), dtype=torch.float64)
    r = gmm.responsibilities(x)
    parts = [GaussianMixture2D(gmm.weights[k : k + 1], gmm.means[k : k + 1], gmm.covariances[k : k + 1])
             for k in range(gmm.num_components)]  # fmt: skip
    by_hand = torch.stack([gmm.weights[k] * parts[k].log_prob(x).exp() for k in range(3)], -1) / gmm.log_prob(x).exp()[:, None]
    assert r.shape == (500, 3) and torch.allclose(r.sum(-1), torch.ones(500, dtype=torch.float64))
    assert torch.allclose(r, by_hand, rtol=1e-10, atol=1e-12)
