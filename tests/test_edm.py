"""The EDM sampler (Karras et al. 2022, Alg. 2) and its ρ-grid, driven by exact Gaussian denoisers."""

import math

import pytest
import torch

from gaussian import COV, MEAN, exact_flow, exact_score, w2_to_data
from scoretut.errors import UsageError
from scoretut.sampling import CountingScore, edm_sampler, ode_euler, ode_heun, sample, timesteps
from scoretut.schedules import edm_sigmas
from scoretut.sde import EDMSDE, VPSDE

N = 50_000


def prior(sde, n=N, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return sde.prior_sampling((n, 2), generator=gen, dtype=torch.float64), gen


def test_edm_sigmas():
    s = edm_sigmas(18, 0.002, 80.0, 7.0)
    assert edm_sigmas is edm_sigmas
    assert s[0].item() == pytest.approx(80.0) and s[-1].item() == pytest.approx(0.002)
    assert torch.allclose(s ** (1 / 7), torch.linspace(80 ** (1 / 7), 0.002 ** (1 / 7), 18, dtype=torch.float64))
    uniform = edm_sigmas(5, 1.0, 9.0, rho=1.0)
    assert torch.allclose(uniform, torch.tensor([9.0, 7.0, 5.0, 3.0, 1.0], dtype=torch.float64))
    ratios = (lambda g: g[:-1] / g[1:])(edm_sigmas(6, 0.01, 100.0, rho=1e4))  # ρ → ∞: geometric
    assert torch.allclose(ratios, torch.full_like(ratios, 10 ** (4 / 5)), rtol=1e-3)
    for bad in [(1, 0.002, 80.0), (5, 80.0, 0.002), (5, 0.0, 1.0)]:
        with pytest.raises(UsageError):
            edm_sigmas(*bad)


def test_without_churn_it_is_heun_and_euler_on_the_pf_ode():
    sde = EDMSDE(sigma_max=80.0)
    x, _ = prior(sde, 500)
    ts = timesteps(sde, 12, "karras")
    score = exact_score(sde)
    assert torch.allclose(sample("edm", sde, score, x, ts), sample(ode_heun, sde, score, x, ts), atol=1e-12)
    assert torch.allclose(
        sample("edm", sde, score, x, ts, solver="euler"), sample(ode_euler, sde, score, x, ts), atol=1e-12
    )


def axis_std_ratios(y):
    """Sample std along each principal axis of C divided by the data's √λ (1 = exact)."""
    lam, vec = torch.linalg.eigh(COV)
    return ((y - y.mean(0)) @ vec).std(0) / lam.sqrt()


def test_heun_18_steps_recovers_gaussian_data():
    """35 NFE on the ρ = 7 grid land within 6 % of the data's std on both principal axes.

    The residual is Heun's truncation error: on Gaussian data with variance λ the linear flow
    is overshot by 4–5.5 % at 18 steps whatever λ (the ρ = 7 steps near σ ≈ √λ have the same
    relative size for every λ); 32 steps bring it to 1.5 %. The same 35 NFE spent on Euler steps
    land farther from the data.
    """
    sde = EDMSDE(sigma_max=80.0)
    x, _ = prior(sde, 20_000)
    score = CountingScore(exact_score(sde))
    y = sample(edm_sampler, sde, score, x, timesteps(sde, 18, "karras"))
    assert score.nfe == 35
    assert (y.mean(0) - MEAN).norm() < 0.03
    ratios = axis_std_ratios(y)
    assert torch.all((ratios > 0.98) & (ratios < 1.06)), ratios
    y32 = sample(edm_sampler, sde, exact_score(sde), x, timesteps(sde, 32, "karras"))
    assert torch.all((axis_std_ratios(y32) - 1).abs() < (ratios - 1).abs())
    euler = sample(edm_sampler, sde, exact_score(sde), x, timesteps(sde, 35, "karras"), solver="euler")
    assert w2_to_data(euler) > w2_to_data(y)


def test_heun_18_steps_on_the_vp_sde():
    # The sampler works on x̂ = x/s(t) at σ(t), so any SDE runs on its own ρ-grid.
    sde = VPSDE()
    x, _ = prior(sde, 20_000)
    score = CountingScore(exact_score(sde))
    y = sample("edm", sde, score, x, timesteps(sde, 18, "karras"))
    assert score.nfe == 36  # the grid ends at eps (σ > 0), so the last step is Heun too
    assert (y.mean(0) - MEAN).norm() < 0.03
    ratios = axis_std_ratios(y)
    assert torch.all((ratios > 0.98) & (ratios < 1.06)), ratios


def fitted_order(solver, steps=(8, 16, 32, 64)):
    """Slope of log(error) against log(step size) from σ_max to σ_min, against the exact flow."""
    sde = EDMSDE(sigma_max=80.0)
    x, _ = prior(sde, 2000, seed=1)
    errs = []
    for n in steps:
        ts = timesteps(sde, n, "karras")[:-1]  # stop at σ_min: no final Euler jump to 0
        y = sample("edm", sde, exact_score(sde), x, ts, solver=solver)
        errs.append((y - exact_flow(sde, x, float(ts[0]), float(ts[-1]))).norm(dim=1).mean())
    log_h = -torch.log(torch.tensor(steps, dtype=torch.float64))
    log_e = torch.log(torch.stack(errs))
    slope = ((log_h - log_h.mean()) * (log_e - log_e.mean())).sum() / ((log_h - log_h.mean()) ** 2).sum()
    return float(slope), errs


def test_heun_error_falls_at_second_order():
    heun, h_err = fitted_order("heun")
    euler, e_err = fitted_order("euler")
    assert 1.8 < heun < 2.4, (heun, h_err)
    assert 0.85 < euler < 1.15, (euler, e_err)


def test_churn_with_exact_score_still_recovers_data():
    sde = EDMSDE(sigma_max=80.0)
    x, gen = prior(sde)
    opts = dict(S_churn=10.0, S_tmin=0.05, S_tmax=50.0, S_noise=1.0)
    y = sample("edm", sde, exact_score(sde), x, timesteps(sde, 64, "karras"), generator=gen, **opts)
    assert w2_to_data(y) < 0.03
    runs = [sample("edm", sde, exact_score(sde), *prior(sde, 100, seed=3)[:1], timesteps(sde, 4, "karras"),
                   generator=torch.Generator().manual_seed(5), **opts) for _ in range(2)]  # fmt: skip
    assert torch.equal(*runs)  # seeded: reproducible


@pytest.mark.parametrize("S_churn,S_tmin,S_tmax,S_noise", [(4.0, 0.0, math.inf, 1.0), (100.0, 0.5, 5.0, 1.1)])
def test_churn_adds_the_noise_of_algorithm_2(S_churn, S_tmin, S_tmax, S_noise):
    """With a zero score D(x̂; σ) = x̂, so only the churn moves x: each step adds variance
    S_noise² σ_i² ((1 + γ)² − 1) with γ = min(S_churn/N, √2 − 1) inside [S_tmin, S_tmax]."""
    sde = EDMSDE(sigma_max=10.0)
    n = 10
    ts = timesteps(sde, n, "karras")
    x = torch.zeros(200_000, 1, dtype=torch.float64)
    y = sample("edm", sde, lambda x, t: torch.zeros_like(x), x, ts, generator=torch.Generator().manual_seed(0),
               S_churn=S_churn, S_tmin=S_tmin, S_tmax=S_tmax, S_noise=S_noise)  # fmt: skip
    gamma = min(S_churn / n, math.sqrt(2) - 1)
    churned = [s for s in ts[:-1].tolist() if S_tmin <= s <= S_tmax]
    expected = sum(S_noise**2 * s**2 * ((1 + gamma) ** 2 - 1) for s in churned)
    assert y.var().item() == pytest.approx(expected, rel=0.02)


def test_nfe_and_bad_options():
    sde = EDMSDE()
    for solver, n, nfe in [("heun", 18, 35), ("euler", 18, 18)]:
        score = CountingScore(exact_score(sde))
        sample("edm", sde, score, torch.zeros(3, 2), timesteps(sde, n, "karras"), solver=solver)
        assert score.nfe == nfe
    with pytest.raises(UsageError, match="heun"):
        sample("edm", sde, exact_score(sde), torch.zeros(3, 2), timesteps(sde, 4, "karras"), solver="rk4")
    with pytest.raises(UsageError, match="S_churn"):
        sample("edm", sde, exact_score(sde), torch.zeros(3, 2), timesteps(sde, 4, "karras"), S_churn=-1.0)
