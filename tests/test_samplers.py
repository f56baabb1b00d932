"""Samplers driven by the exact score of Gaussian data must recover that Gaussian."""

import math

import pytest
import torch

from gaussian import exact_flow, exact_score, w2_to_data
from scoretut.errors import UsageError
from scoretut.sampling import (CountingScore, SAMPLERS, Step, gaussian_noise, get_sampler, ode_euler, ode_heun, ode_rk45,
                               run_steps, sample, timesteps)
from scoretut.schedules import edm_sigmas
from scoretut.sde import EDMSDE, SubVPSDE, VESDE, VPSDE

N = 50_000


def run(name, sde, n_steps, kind="uniform", n=N, seed=0, **opts):
    gen = torch.Generator().manual_seed(seed)
    x = sde.prior_sampling((n, 2), generator=gen, dtype=torch.float64)
    ts = timesteps(sde, n_steps, kind)
    return sample(name, sde, exact_score(sde), x, ts, generator=gen, **opts)


@pytest.mark.parametrize(
    "name,sde,steps,kind",
    [
        ("em", VPSDE(), 1000, "uniform"),
        ("em", VESDE(), 1000, "uniform"),
        ("pc", VPSDE(), 500, "uniform"),  # snr 0.08 below: the corrector's bias grows with snr
        ("pc", VESDE(), 500, "uniform"),
        ("ode_euler", VPSDE(), 500, "uniform"),
        ("ode_heun", VPSDE(), 50, "uniform"),
        ("ode_heun", SubVPSDE(), 50, "uniform"),
        ("ode_heun", EDMSDE(sigma_max=80.0), 64, "karras"),
        ("ode_rk45", VPSDE(), 1, "uniform"),
        # The ODE keeps the prior's error: N(0, σ_max²) misses the data mean m by |C^½ m|/σ_max
        # at the end (≈ 0.025 for σ_max = 50), so the deterministic VE test uses σ_max = 100.
        ("ode_rk45", VESDE(sigma_max=100.0), 1, "uniform"),
    ],
)
def test_sampler_recovers_gaussian(name, sde, steps, kind):
    x = run(name, sde, steps, kind, **({"snr": 0.08} if name == "pc" else {}))
    assert torch.isfinite(x).all()
    assert w2_to_data(x) <= 0.02, (name, sde)


def test_every_registered_sampler_is_covered():
    covered = {"em", "pc", "ode_euler", "ode_heun", "ode_rk45", "edm"}  # edm: tests/test_edm.py
    covered |= {"ddpm", "ddim", "langevin", "annealed_langevin"}  # test_schedules.py, test_ncsn.py
    assert covered == set(SAMPLERS)


def test_em_error_shrinks_with_steps():
    errs = [w2_to_data(run("em", VPSDE(), n)) for n in (10, 40, 160)]
    assert errs[0] > errs[1] > errs[2], errs


def flow_error(sampler, sde, n_steps, x_T):
    ts = timesteps(sde, n_steps)
    x = sample(sampler, sde, exact_score(sde), x_T, ts)
    return (x - exact_flow(sde, x_T, sde.T, sde.t_min)).norm(dim=1).mean().item()


def observed_order(sampler, sde, steps=(8, 16, 32)):
    x_T = sde.prior_sampling((2000, 2), generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    errs = [flow_error(sampler, sde, n, x_T) for n in steps]
    return [math.log2(a / b) for a, b in zip(errs, errs[1:])], errs


def test_ode_orders_euler_first_heun_second():
    sde = VPSDE()
    euler, e_err = observed_order(ode_euler, sde)
    heun, h_err = observed_order(ode_heun, sde, steps=(16, 32, 64))
    assert all(0.7 < p < 1.4 for p in euler), (euler, e_err)
    assert all(p > 1.7 for p in heun), (heun, h_err)
    assert h_err[0] < e_err[1]  # Heun at 16 steps (32 NFE) beats Euler at 16 steps


def test_heun_on_edm_grid_converges_at_second_order():
    sde = EDMSDE(sigma_max=80.0)
    x_T = sde.prior_sampling((2000, 2), generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    target = exact_flow(sde, x_T, sde.T, 0.0)
    errs = []
    for n in (16, 32, 64):
        x = sample(ode_heun, sde, exact_score(sde), x_T, timesteps(sde, n, "karras"))
        errs.append((x - target).norm(dim=1).mean().item())
    orders = [math.log2(a / b) for a, b in zip(errs, errs[1:])]
    assert all(p > 1.7 for p in orders), (orders, errs)


def test_rk45_tolerance_controls_error_and_nfe():
    sde = VPSDE()
    x_T = sde.prior_sampling((2000, 2), generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    target = exact_flow(sde, x_T, sde.T, sde.t_min)
    results = []
    for tol in (1e-3, 1e-6):
        score = CountingScore(exact_score(sde))
        x = sample(ode_rk45, sde, score, x_T, timesteps(sde, 1), rtol=tol, atol=tol)
        results.append(((x - target).abs().max().item(), score.nfe))
    (err_loose, nfe_loose), (err_tight, nfe_tight) = results
    assert err_tight < 1e-4 and err_tight < err_loose and nfe_tight > nfe_loose, results


def test_generators_yield_every_step_with_times():
    sde = VPSDE()
    x = torch.zeros(4, 2)
    ts = timesteps(sde, 5)
    steps = list(get_sampler("pc")(sde, exact_score(sde), x, ts, generator=torch.Generator().manual_seed(0)))
    assert [s.i for s in steps] == list(range(6))
    assert [s.t for s in steps] == pytest.approx(ts.tolist())
    assert torch.equal(steps[0].x, x)


def test_nfe_budgets():
    for name, per_step in [("em", 1), ("pc", 2), ("ode_euler", 1), ("ode_heun", 2)]:
        score = CountingScore(exact_score(VPSDE()))
        sample(name, VPSDE(), score, torch.zeros(3, 2), timesteps(VPSDE(), 10))
        assert score.nfe == 10 * per_step, name
    score = CountingScore(exact_score(EDMSDE()))
    sample("ode_heun", EDMSDE(), score, torch.zeros(3, 2), timesteps(EDMSDE(), 18, "karras"))
    assert score.nfe == 35  # Karras et al.: N levels cost 2N − 1 evaluations


def test_karras_sigmas_endpoints_and_spacing():
    s = edm_sigmas(18, 0.002, 80.0, 7.0)
    assert s[0].item() == pytest.approx(80.0) and s[-1].item() == pytest.approx(0.002)
    assert torch.all(s[1:] < s[:-1])
    ts = timesteps(VPSDE(), 10, "karras")
    assert ts[0].item() == pytest.approx(1.0) and ts[-1].item() == pytest.approx(1e-3)


def test_bad_names_and_steps():
    with pytest.raises(UsageError, match="choose one of"):
        get_sampler("nope")
    with pytest.raises(UsageError, match="positive"):
        timesteps(VPSDE(), 0)
    with pytest.raises(UsageError, match="uniform"):
        timesteps(VPSDE(), 3, "cubic")


def test_rk45_on_the_edm_grid_ends_with_the_jump_to_sigma_zero():
    sde = EDMSDE(sigma_max=80.0)
    x_T = sde.prior_sampling((2000, 2), generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    for n in (1, 18):  # the two-point grid [T, 0] too: the velocity is singular at σ = 0
        steps = list(ode_rk45(sde, exact_score(sde), x_T, timesteps(sde, n, "karras"), rtol=1e-6, atol=1e-6))
        assert steps[-1].t == 0.0 and steps[-2].t == pytest.approx(sde.t_min)
        # The last Euler step from σ_min lands on D(x; σ_min), within O(σ_min²) of the exact flow to σ = 0.
        assert (steps[-1].x - exact_flow(sde, x_T, sde.T, 0.0)).abs().max().item() < 1e-4, n


def test_rk45_lands_exactly_on_the_end_time():
    sde = VPSDE()
    x_T = sde.prior_sampling((500, 2), generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    for tol in (1e-2, 1e-3, 1e-5):
        steps = list(ode_rk45(sde, exact_score(sde), x_T, timesteps(sde, 1), rtol=tol, atol=tol))
        assert steps[-1].t == sde.t_min
        sizes = [a.t - b.t for a, b in zip(steps, steps[1:])]
        assert min(sizes) > 1e-6, (tol, min(sizes))  # no sliver of a step at the end


def test_corrector_alpha_is_one_minus_beta_of_the_ddpm_chain_and_one_for_ve():
    """Song et al. (2021) Alg. 5: α_i = 1 − β_i on the DDPM chain; Alg. 4 (VE) has no α."""
    from scoretut.sampling import corrector_alpha
    from scoretut.schedules import DiscreteVP

    chain = DiscreteVP.linear(T=1000)
    for i in (1, 2, 500, 1000):
        expected = 1 - float(chain.betas[i - 1])
        assert corrector_alpha(chain, float(i), float(i - 1)) == pytest.approx(expected, rel=1e-9)
    assert corrector_alpha(VESDE(), 0.7, 0.69) == 1.0
    vp = VPSDE()  # continuous VP: α = exp(−∫β) over the step ≈ 1 − β(t) h
    assert corrector_alpha(vp, 1.0, 0.999) == pytest.approx(math.exp(-float(vp.int_beta(1.0) - vp.int_beta(0.999))))


def test_langevin_corrector_step_is_scaled_by_alpha():
    """ε = 2α(snr‖z‖/‖g‖)²: α scales ε exactly as snr² does, on the same noise."""
    from scoretut.sampling import langevin_correct

    x = torch.randn(64, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    t = torch.zeros(64, dtype=torch.float64)
    score = lambda x, t: -x  # noqa: E731  (standard normal)
    a = langevin_correct(score, x, t, 0.16, 2, torch.Generator().manual_seed(1), alpha=0.25)
    b = langevin_correct(score, x, t, 0.08, 2, torch.Generator().manual_seed(1))
    c = langevin_correct(score, x, t, 0.16, 2, torch.Generator().manual_seed(1))
    assert torch.allclose(a, b, rtol=0, atol=1e-12)
    assert not torch.allclose(a, c)


def test_gaussian_noise_is_a_standard_normal_draw_shaped_like_x():
    x = torch.zeros(50_000, 2, dtype=torch.float64)
    z = gaussian_noise(x, torch.Generator().manual_seed(0))
    assert z.shape == x.shape and z.dtype == x.dtype
    assert torch.equal(z, torch.randn(x.shape, generator=torch.Generator().manual_seed(0), dtype=x.dtype))
    n = x.numel()
    assert abs(z.mean().item()) < 4 / math.sqrt(n) and abs(z.var().item() - 1) < 4 * math.sqrt(2 / n)


def test_run_steps_keeps_every_kth_state_and_the_last():
    steps = lambda: (Step(i, 1.0 - i / 6, torch.full((2,), float(i))) for i in range(7))  # noqa: E731
    x, none = run_steps(steps())
    assert torch.equal(x, torch.full((2,), 6.0)) and none is None
    for every, kept in ((1, range(7)), (3, (0, 3, 6)), (4, (0, 4, 6)), (10, (0, 6))):
        x, trajectory = run_steps(steps(), every)
        assert [float(x[0]) for _, x in trajectory] == list(map(float, kept))
        assert [t for t, _ in trajectory] == [1.0 - i / 6 for i in kept]
    with pytest.raises(UsageError, match="trajectory_every"):
        run_steps(steps(), 0)
