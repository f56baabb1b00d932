"""Conditional sampling and imputation, against Gaussian cases whose conditionals are closed-form."""

import pytest
import torch

from gaussian import COV, MEAN, exact_score, w2_to_data
from scoretut.errors import UsageError
from scoretut.data.toy2d import GaussianMixture2D, gmm_example
from scoretut.guidance import (
    guided_score,
    likelihood_score,
    mixture_classifier,
    mixture_conditional,
    replacement_imputation,
)
from scoretut.sampling import sample, timesteps
from scoretut.sde import VESDE, VPSDE, as_time


def gmm_score(gmm, sde):
    def score(x, t):
        t = as_time(t, x)
        return gmm.perturbed_score(x, sde.scale(t), sde.std(t))

    return score


def component(gmm, k):
    return GaussianMixture2D(gmm.weights[k : k + 1], gmm.means[k : k + 1], gmm.covariances[k : k + 1])


@pytest.mark.parametrize("sde", [VPSDE(), VESDE(sigma_max=20.0)], ids=["vp", "ve"])
@pytest.mark.parametrize("k", [0, 2])
def test_exact_classifier_guidance_is_the_component_score(sde, k):
    # ∇log p_t(x) + ∇log p_t(k|x) = ∇log p_t(x|k): the score of component k alone.
    gmm = gmm_example()
    gen = torch.Generator().manual_seed(0)
    x = 3 * torch.randn(200, 2, generator=gen, dtype=torch.float64)
    t = sde.t_min + (sde.T - sde.t_min) * torch.rand(200, generator=gen, dtype=torch.float64)
    guided = guided_score(gmm_score(gmm, sde), mixture_classifier(gmm, sde, k))(x, t)
    target = component(gmm, k).perturbed_score(x, sde.scale(t), sde.std(t))
    assert torch.allclose(guided, target, atol=1e-9)


def test_guided_sampling_draws_the_chosen_component():
    gmm, sde, k = gmm_example(), VPSDE(), 2  # the 10 % mode
    gen = torch.Generator().manual_seed(1)
    x = sde.prior_sampling((20_000, 2), generator=gen, dtype=torch.float64)
    score = guided_score(gmm_score(gmm, sde), mixture_classifier(gmm, sde, k))
    y = sample("em", sde, score, x, timesteps(sde, 500), generator=gen)
    assert w2_to_data(y, gmm.means[k], gmm.covariances[k]) < 0.03


def test_guidance_scale_and_likelihood_gradient():
    # log N(y; A x, τ²): gradient Aᵀ(y − A x)/τ², and the guided score is affine in the scale.
    A, y, tau = torch.tensor([[1.0, -2.0]], dtype=torch.float64), torch.tensor([0.5], dtype=torch.float64), 0.3
    log_lik = lambda x, t: -((y - x @ A.T) ** 2).sum(1) / (2 * tau**2)  # noqa: E731
    x = torch.randn(7, 2, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    t = torch.full((7,), 0.5, dtype=torch.float64)
    assert torch.allclose(likelihood_score(log_lik)(x, t), (y - x @ A.T) @ A / tau**2)
    base = exact_score(VPSDE())
    g0, g1, g3 = (guided_score(base, log_lik, s)(x, t) for s in (0.0, 1.0, 3.0))
    assert torch.allclose(g0, base(x, t)) and torch.allclose(g3 - g0, 3 * (g1 - g0))


def test_mixture_conditional_against_numerical_integration():
    gmm = gmm_example()
    u = torch.linspace(-12, 12, 20_001, dtype=torch.float64)
    for known, value in [(0, 2.0), (0, -2.5), (1, 0.3)]:
        pts = torch.stack([torch.full_like(u, value), u], 1) if known == 0 else torch.stack([u, torch.full_like(u, value)], 1)
        dens = gmm.log_prob(pts).exp()
        dens = dens / torch.trapezoid(dens, u)
        w, m, s = mixture_conditional(gmm, known, value)
        mean = torch.trapezoid(dens * u, u)
        var = torch.trapezoid(dens * u**2, u) - mean**2
        assert torch.allclose((w * m).sum(), mean, atol=1e-6)
        assert torch.allclose((w * (s**2 + m**2)).sum() - (w * m).sum() ** 2, var, atol=1e-6)


def test_replacement_imputation_on_a_correlated_gaussian():
    """N(m, C), x_0 known: the exact conditional of x_1 is N(m_1 + C_10/C_00 (y − m_0), C_11 − C_10²/C_00).

    Replacement with one Langevin corrector per step lands within 0.05 of its mean and 5 % of its
    std; without the corrector the imputations are pulled back towards the unconditional marginal.
    """
    sde, value = VPSDE(), 2.0
    mean = MEAN[1] + COV[0, 1] / COV[0, 0] * (value - MEAN[0])
    std = torch.sqrt(COV[1, 1] - COV[0, 1] ** 2 / COV[0, 0])
    mask, known = torch.tensor([1.0, 0.0], dtype=torch.float64), torch.tensor([value, 0.0], dtype=torch.float64)
    out = {}
    for n_corrector in (0, 1):
        gen = torch.Generator().manual_seed(3)
        x = sde.prior_sampling((20_000, 2), generator=gen, dtype=torch.float64)
        y = sample(replacement_imputation, sde, exact_score(sde), x, timesteps(sde, 200), mask=mask, known=known,
                   generator=gen, n_corrector=n_corrector)  # fmt: skip
        assert torch.allclose(y[:, 0], torch.full_like(y[:, 0], value), atol=1e-3)
        out[n_corrector] = y[:, 1]
    assert (out[1].mean() - mean).abs() < 0.05 and (out[1].std() / std - 1).abs() < 0.05
    assert (out[0].mean() - mean).abs() > 2 * (out[1].mean() - mean).abs()
    assert out[0].mean() < mean  # towards the marginal mean m_1 = −0.5


def test_bad_inputs():
    gmm, sde = gmm_example(), VPSDE()
    with pytest.raises(UsageError, match="component"):
        mixture_classifier(gmm, sde, 3)
    with pytest.raises(UsageError, match="scale"):
        guided_score(exact_score(sde), mixture_classifier(gmm, sde, 0), -1.0)
    with pytest.raises(UsageError, match="coordinate"):
        mixture_conditional(gmm, 2, 0.0)
    with pytest.raises(UsageError, match="mask"):
        list(replacement_imputation(sde, exact_score(sde), torch.zeros(2, 2), timesteps(sde, 2),
                                    mask=torch.tensor([0.5, 0.0]), known=torch.zeros(2)))  # fmt: skip
