"""Closed-form marginals of every SDE against an Euler–Maruyama simulation of ``sde()``."""

import importlib
import inspect
import math
import pkgutil

import pytest
import torch

from scoretut.errors import UsageError
import scoretut
from scoretut.schedules import GammaSDE
from scoretut.sde import EDMSDE, OU, SDE, SubVPSDE, VESDE, VPSDE, as_time, simulate
from scoretut.sde_registry import SDES as REGISTRY

SDES = {
    "ou": (OU(), [0.5, 2.0, 6.0]),
    "vp": (VPSDE(), [0.1, 0.3, 0.7, 1.0]),
    "subvp": (SubVPSDE(), [0.1, 0.3, 0.7, 1.0]),
    "ve": (VESDE(), [0.2, 0.5, 0.8, 1.0]),
    "edm": (EDMSDE(sigma_max=5.0), [0.5, 2.0, 5.0]),
}


@pytest.mark.parametrize("name", SDES)
def test_marginals_match_euler_maruyama(name):
    sde, times = SDES[name]
    n = 20_000
    x0 = torch.full((n, 1), 1.5, dtype=torch.float64)
    for k, t in enumerate(times):
        ts = torch.linspace(0, t, 1001, dtype=torch.float64)
        x = simulate(sde, x0, ts, torch.Generator().manual_seed(k))[-1, :, 0]
        mean, std = sde.marginal_prob(x0[:1], t)
        se_mean = x.std() / math.sqrt(n)
        assert abs(x.mean() - mean.item()) < 3 * se_mean + 1e-3 * abs(mean.item()), (name, t)
        var = std.item() ** 2
        se_var = var * math.sqrt(2 / (n - 1))  # standard error of a Gaussian sample variance
        # the EM bias of the variance is O(h); allow it on top of three standard errors
        assert abs(x.var() - var) < 3 * se_var + 2e-3 * var, (name, t, x.var().item(), var)


def test_simulate_path_follows_ou_marginals_at_every_time():
    """One OU path on a grid from two starting points: every recorded time has the closed-form
    mean x0 e^{-μt} and variance σ²/(2μ)(1 − e^{-2μt}); the first row is x0 itself."""
    ou, n = OU(mu=0.5, sigma=1.0), 10_000
    x0 = torch.cat([torch.full((n, 1), -2.0), torch.full((n, 1), 3.0)], dim=1).double()
    ts = torch.linspace(0.0, 4.0, 401, dtype=torch.float64)
    path = simulate(ou, x0, ts, torch.Generator().manual_seed(3))
    assert path.shape == (401, n, 2) and torch.equal(path[0], x0)
    for k in (50, 200, 400):
        t = float(ts[k])
        mean = x0[0] * math.exp(-0.5 * t)
        var = 1.0 - math.exp(-t)
        se_mean, se_var = math.sqrt(var / n), var * math.sqrt(2 / (n - 1))
        assert torch.all((path[k].mean(0) - mean).abs() < 3 * se_mean), t
        assert torch.all((path[k].var(0) - var).abs() < 3 * se_var + 5e-3 * var), t


def test_simulate_rejects_a_bad_grid():
    with pytest.raises(UsageError, match="increasing"):
        simulate(OU(), torch.zeros(3, 1), [1.0, 0.5, 0.0])


def test_ou_variance_tends_to_stationary():
    ou = OU(mu=0.5, sigma=1.0)
    for mu, sigma in [(0.5, 1.0), (2.0, 0.7)]:
        ou = OU(mu=mu, sigma=sigma)
        assert ou.std(torch.tensor(50.0, dtype=torch.float64)).item() ** 2 == pytest.approx(sigma**2 / (2 * mu), rel=1e-9)
        assert ou.prior_std() ** 2 == pytest.approx(sigma**2 / (2 * mu))
    ou = OU()
    assert ou.scale(torch.tensor(3.0)).item() == pytest.approx(math.exp(-1.5))


def test_closed_forms_of_the_design_reference():
    vp, t = VPSDE(), torch.tensor(0.4, dtype=torch.float64)
    ib = 0.1 * 0.4 + 0.5 * 0.4**2 * 19.9
    assert vp.std(t).item() ** 2 == pytest.approx(1 - math.exp(-ib))
    assert vp.scale(t).item() == pytest.approx(math.exp(-ib / 2))
    assert SubVPSDE().std(t).item() == pytest.approx(1 - math.exp(-ib))
    ve = VESDE(0.01, 50.0)
    assert ve.std(t).item() ** 2 == pytest.approx((0.01 * 5000**0.4) ** 2 - 0.01**2)
    assert (SubVPSDE().std(t) <= vp.std(t)).item()


@pytest.mark.parametrize("sde", [VPSDE(), SubVPSDE(), VESDE(), EDMSDE(), OU()])
def test_t_from_sigma_inverts_sigma(sde):
    t = torch.linspace(0.05, 0.95, 7, dtype=torch.float64) * sde.T
    assert torch.allclose(sde.t_from_sigma(sde.sigma(t)), t, rtol=1e-6, atol=1e-8)


def test_perturb_and_prior_shapes():
    sde, gen = VPSDE(), torch.Generator().manual_seed(1)
    x0 = torch.randn(5, 3, 4, 4)
    xt, z = sde.perturb(x0, torch.rand(5), generator=gen)
    assert xt.shape == z.shape == x0.shape
    t = as_time(0.3, x0)
    mean, std = sde.marginal_prob(x0, t)
    assert torch.allclose(mean, sde.scale(t)[:, None, None, None] * x0)
    assert std.shape == (5,)
    p = VESDE().prior_sampling((4000, 2), generator=gen)
    assert p.std().item() == pytest.approx(50.0, rel=0.05)
    lp = VPSDE().prior_logp(torch.zeros(2, 2))
    assert lp[0].item() == pytest.approx(-math.log(2 * math.pi * VPSDE().prior_std() ** 2))


def test_reverse_drift_and_probability_flow():
    sde = VPSDE()
    score = lambda x, t: -x  # noqa: E731
    x, t = torch.randn(3, 2), torch.full((3,), 0.5)
    f, g = sde.sde(x, t)
    drift, diff = sde.reverse(score).sde(x, t)
    assert torch.allclose(drift, f - g[:, None] ** 2 * score(x, t))
    assert torch.equal(diff, g)
    drift, diff = sde.reverse(score, probability_flow=True).sde(x, t)
    assert torch.allclose(drift, f - 0.5 * g[:, None] ** 2 * score(x, t))
    assert torch.all(diff == 0)


def test_the_registry_builds_every_sde_subclass_of_the_package():
    for module in pkgutil.walk_packages(scoretut.__path__, "scoretut."):
        if not module.name.endswith("__main__"):
            importlib.import_module(module.name)

    def subclasses(cls):
        return {c for sub in cls.__subclasses__() for c in (sub, *subclasses(sub))}

    defined = {c for c in subclasses(SDE) if c.__module__.startswith("scoretut.") and not inspect.isabstract(c)}
    built = {name: make() for name, make in REGISTRY.items()}
    assert all(isinstance(sde, SDE) for sde in built.values())
    assert len(defined) >= 8 and defined <= {type(sde) for sde in built.values()}, defined


def test_gamma_sde_linear_is_vdm_linear_schedule():
    """``std² = sigmoid(γ)`` and ``scale² = sigmoid(−γ)`` with ``γ(t) = γ₀ + (γ₁ − γ₀) t``."""
    sde, t = GammaSDE.linear(-5.0, 7.0), torch.linspace(0, 1, 11, dtype=torch.float64)
    gamma = -5.0 + 12.0 * t
    assert torch.allclose(sde.std(t) ** 2, torch.sigmoid(gamma), rtol=1e-6)
    assert torch.allclose(sde.scale(t) ** 2, torch.sigmoid(-gamma), rtol=1e-6)
