"""Log-likelihoods through the probability-flow ODE, checked against exact Gaussian densities."""

import math

import pytest
import torch

from gaussian import COV, MEAN, exact_score, marginal_cov
from scoretut.errors import UsageError
from scoretut.likelihood import bits_per_dim, exact_divergence, hutchinson_divergence, ode_likelihood, probes
from scoretut.sde import EDMSDE, VESDE, VPSDE, SubVPSDE


def gaussian_logpdf(x, mean=MEAN, cov=COV):
    return torch.distributions.MultivariateNormal(mean, cov).log_prob(x)


def data(n, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return MEAN + torch.randn(n, 2, generator=gen, dtype=torch.float64) @ torch.linalg.cholesky(COV).T


# VE-type priors N(0, σ_max² I) ignore the data mean m, which costs about |m|·|x_T|/σ_max² ≈
# |m|/σ_max nats (0.011 at σ_max = 100 for this m): σ_max = 500 keeps that term well below the
# 0.01 nats/dim being tested, so what is checked is the ODE and its divergence integral.
@pytest.mark.parametrize("sde", [VPSDE(), SubVPSDE(), VESDE(sigma_max=500.0), EDMSDE(sigma_max=500.0)],
                         ids=["vp", "subvp", "ve", "edm"])  # fmt: skip
def test_ode_likelihood_matches_the_gaussian_density(sde):
    x = data(64)
    res = ode_likelihood(sde, exact_score(sde), x)
    err_per_dim = (res.logp - gaussian_logpdf(x)).abs() / 2
    assert err_per_dim.max() < 0.01, err_per_dim.max()
    assert torch.allclose(res.logp, res.prior_logp + res.delta_logp)
    # With the exact law of x_T in place of the prior, only the ODE and its divergence integral
    # remain: they are far more accurate than the 0.01 nats/dim the prior's mismatch leaves.
    T = torch.tensor([sde.T], dtype=torch.float64)
    p_T = gaussian_logpdf(res.z, sde.scale(T) * MEAN, marginal_cov(sde, T)[0])
    assert ((p_T + res.delta_logp - gaussian_logpdf(x)).abs() / 2).max() < 1e-3
    assert res.nfe > 0 and res.z.shape == x.shape


def nonlinear_field(dim, seed=0):
    """A small random tanh network R^dim → R^dim (a Jacobian that varies with x)."""
    gen = torch.Generator().manual_seed(seed)
    w1 = torch.randn(dim, 16, generator=gen, dtype=torch.float64)
    w2 = torch.randn(16, dim, generator=gen, dtype=torch.float64) / 4
    return lambda x: torch.tanh(x @ w1) @ w2 + x.flip(-1)


@pytest.mark.parametrize("kind", ["rademacher", "gaussian"])
@pytest.mark.parametrize("dim", [2, 8])
def test_hutchinson_is_unbiased(kind, dim):
    fn = nonlinear_field(dim)
    x = torch.randn(5, dim, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    _, exact = exact_divergence(fn, x)
    m = 4000
    z = probes((m, *x.shape), kind, torch.Generator().manual_seed(2), torch.float64)
    # one estimate per probe; their mean must sit within 5 standard errors of the trace
    single = torch.stack([hutchinson_divergence(fn, x, z[k : k + 1])[1] for k in range(m)])
    _, mean_all = hutchinson_divergence(fn, x, z)
    assert torch.allclose(mean_all, single.mean(0))
    se = single.std(0) / math.sqrt(m)
    assert torch.all(se > 0)  # a real estimator, not the trace itself
    assert torch.all((mean_all - exact).abs() < 5 * se), (mean_all, exact, se)


def test_rademacher_and_gaussian_probes_have_identity_covariance():
    for kind in ("rademacher", "gaussian"):
        z = probes((200_000, 3), kind, torch.Generator().manual_seed(0), torch.float64)
        assert torch.allclose(z.T @ z / len(z), torch.eye(3, dtype=torch.float64), atol=0.02)
    assert set(probes((1000,), "rademacher").unique().tolist()) == {-1.0, 1.0}


def test_hutchinson_likelihood_is_unbiased():
    # 400 copies of one point, each with its own Rademacher probe fixed along the path.
    sde = VPSDE()
    x = data(1, seed=3).repeat(400, 1)
    res = ode_likelihood(sde, exact_score(sde), x, divergence="hutchinson", generator=torch.Generator().manual_seed(4))
    exact = gaussian_logpdf(x[:1])
    se = res.logp.std() / math.sqrt(len(x))
    assert res.logp.std() > 0
    assert (res.logp.mean() - exact).abs() < 5 * se, (res.logp.mean(), exact, se)


def test_bits_per_dim_and_the_dequantisation_offset():
    D = 12
    # Uniform data on [-1, 1]^D has density 2^-D: 1 continuous bit per dimension, and 8 bits per
    # dimension for the 256 pixel levels it came from (the offset is 7 for [-1, 1]).
    logp = torch.tensor([-D * math.log(2)])
    assert bits_per_dim(logp, D).item() == pytest.approx(1.0)
    assert bits_per_dim(logp, D, data_range=(-1.0, 1.0)).item() == pytest.approx(8.0)
    assert bits_per_dim(torch.zeros(1), D, data_range=(0.0, 1.0)).item() == pytest.approx(8.0)
    with pytest.raises(UsageError):
        bits_per_dim(logp, 0)
    with pytest.raises(UsageError):
        bits_per_dim(logp, D, data_range=(1.0, -1.0))


def test_bad_options():
    sde, x = VPSDE(), torch.zeros(2, 2)
    for kw, msg in [({"divergence": "trace"}, "exact"), ({"n_probes": 0}, "positive"), ({"t_min": 2.0}, "t_min")]:
        with pytest.raises(UsageError, match=msg):
            ode_likelihood(sde, exact_score(sde), x, **kw)
    with pytest.raises(UsageError, match="rademacher"):
        probes((3,), "sphere")
