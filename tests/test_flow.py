"""Flow matching: paths, the diffusion ↔ flow conversion, the loss's minimiser, sampling,
straightness, reflow pairs and a trained flow on a Gaussian."""

import math

import pytest
import torch

from scoretut import flow
from scoretut.pipelines import flow2d
from scoretut.sampling import ddim
from scoretut.errors import UsageError
from scoretut.data.toy2d import GaussianMixture2D, gmm_example
from scoretut.sampling import ode_euler, ode_heun, sample

PATHS = [flow.LinearPath(), flow.CosinePath()]
M = torch.tensor([1.0, -0.5], dtype=torch.float64)
C = torch.tensor([[0.6, 0.25], [0.25, 0.4]], dtype=torch.float64)
GAUSS = GaussianMixture2D(torch.ones(1), M[None], C[None])


def exact_score(gmm, path):
    """∇log p_t of x_t = α x₁ + σ x₀ with x₁ ~ gmm, x₀ ~ N(0, I): the perturbed mixture."""
    return lambda x, t: gmm.perturbed_score(x, path.alpha(t), path.sigma(t))


def exact_posterior(gmm, path):
    """E[x₁ | x_t] by Gaussian conditioning per component (no score involved)."""
    return lambda x, t: gmm.posterior_mean(x, path.alpha(t), path.sigma(t))


def gaussian_velocity(path):
    """The marginal velocity for x₁ ~ N(M, C), written out: v = A(x − μ_t) + α̇ M with
    A = (α̇α C + σ̇σ I) Σ_t⁻¹ and Σ_t = α² C + σ² I."""

    def v(x, t):
        t = t.double()
        a, s, da, ds = (f(t)[:, None, None] for f in (path.alpha, path.sigma, path.d_alpha, path.d_sigma))
        eye = torch.eye(2, dtype=torch.float64)
        cov = a**2 * C + s**2 * eye
        A = (da * a * C + ds * s * eye) @ torch.linalg.inv(cov)
        mu = a[:, :, 0] * M
        return (torch.einsum("bij,bj->bi", A, x.double() - mu) + da[:, :, 0] * M).to(x.dtype)

    return v


class Field(torch.nn.Module):
    """A velocity function as a module (the samplers call ``model(x, t)``)."""

    def __init__(self, fn):
        super().__init__()
        self.fn, self.dummy = fn, torch.nn.Parameter(torch.zeros(1, dtype=torch.float64))

    def forward(self, x, t):
        return self.fn(x, t)


# --------------------------------------------------------------------------- paths and conversion


@pytest.mark.parametrize("path", PATHS, ids=repr)
def test_conditional_velocity_is_the_time_derivative_of_the_path(path):
    g = torch.Generator().manual_seed(0)
    x0, x1 = (torch.randn(16, 2, generator=g, dtype=torch.float64) for _ in range(2))
    t = torch.linspace(0.05, 0.95, 16, dtype=torch.float64).requires_grad_(True)
    xt = path.sample(x0, x1, t)
    dxdt = torch.stack([torch.autograd.grad(xt[:, k].sum(), t, retain_graph=True)[0] for k in range(2)], 1)
    torch.testing.assert_close(path.velocity(x0, x1, t.detach()), dxdt)
    ends = torch.tensor([0.0, 1.0], dtype=torch.float64)
    torch.testing.assert_close(path.alpha(ends), torch.tensor([0.0, 1.0], dtype=torch.float64))
    torch.testing.assert_close(path.sigma(ends), torch.tensor([1.0, 0.0], dtype=torch.float64))


@pytest.mark.parametrize("path", PATHS, ids=repr)
def test_marginal_velocity_from_the_score_equals_the_one_from_the_posterior_on_a_gmm(path):
    """v from the closed-form score (Tweedie) and v = α̇E[x₁|x] + σ̇E[x₀|x] from the closed-form
    conditional expectation agree to rounding; and the score round-trips through v."""
    gmm = gmm_example()
    g = torch.Generator().manual_seed(1)
    x = 4 * torch.randn(4000, 2, generator=g, dtype=torch.float64)
    t = torch.rand(4000, generator=g, dtype=torch.float64) * 0.98 + 0.01
    from_score = flow.velocity_from_score(path, exact_score(gmm, path))(x, t)
    from_posterior = flow.velocity_from_posterior(path, exact_posterior(gmm, path))(x, t)
    torch.testing.assert_close(from_score, from_posterior, rtol=1e-9, atol=1e-9)
    score = flow.score_from_velocity(path, lambda y, s: from_posterior)(x, t)
    torch.testing.assert_close(score, exact_score(gmm, path)(x, t), rtol=1e-8, atol=1e-8)


def test_regressing_on_the_conditional_velocity_is_minimised_by_the_marginal_one():
    """L(v) = E‖v(x_t, t) − u_t‖² = E‖v − v*‖² + const, so shifting the exact marginal field v*
    by a constant c raises the loss by exactly ‖c‖² (the cross term E⟨c, v* − u⟩ vanishes,
    which is the statement E[u_t | x_t] = v*). Monte Carlo with common random numbers."""
    path, gmm = flow.LinearPath(), gmm_example()
    v_star = flow.velocity_from_posterior(path, exact_posterior(gmm, path))
    x1 = gmm.sample(200_000, torch.Generator().manual_seed(2), dtype=torch.float64)
    loss = flow.FlowMatchingLoss(path, t_max=0.99)
    c = torch.tensor([0.3, -0.2], dtype=torch.float64)
    base = loss(lambda x, t: v_star(x, t), x1, torch.Generator().manual_seed(3))
    shifted = loss(lambda x, t: v_star(x, t) + c, x1, torch.Generator().manual_seed(3))
    assert float(shifted - base) == pytest.approx(float(c @ c), abs=0.01)
    # the conditional velocity itself is a much worse regressor: the loss of v* is the variance
    wrong = loss(lambda x, t: torch.zeros_like(x), x1, torch.Generator().manual_seed(3))
    assert float(wrong) > float(base) + 1.0


@pytest.mark.parametrize("path", PATHS, ids=repr)
def test_velocity_from_score_transports_gaussians_exactly(path):
    """For x₁ ~ N(M, C) the marginals are N(αM, α²C + σ²I). The field from the exact score is
    affine, v = A(x − μ_t) + b, and must satisfy the moment equations of the continuity
    equation: b = dμ_t/dt and AΣ_t + Σ_t Aᵀ = dΣ_t/dt; it also equals the field written out."""
    eye = torch.eye(2, dtype=torch.float64)
    v = flow.velocity_from_score(path, exact_score(GAUSS, path))
    for t0 in (0.1, 0.35, 0.6, 0.9):
        t = torch.tensor([t0], dtype=torch.float64)
        a, s, da, ds = (float(f(t)) for f in (path.alpha, path.sigma, path.d_alpha, path.d_sigma))
        mu, cov = a * M, a**2 * C + s**2 * eye
        b = v(mu[None], t)[0]
        A = torch.stack([v((mu + e)[None], t)[0] - b for e in eye], 1)
        torch.testing.assert_close(b, da * M)
        torch.testing.assert_close(A @ cov + cov @ A.T, 2 * a * da * C + 2 * s * ds * eye)
    x = torch.randn(64, 2, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    tt = torch.linspace(0.02, 0.98, 64, dtype=torch.float64)
    torch.testing.assert_close(v(x, tt), gaussian_velocity(path)(x, tt))


@pytest.mark.parametrize("path", PATHS, ids=repr)
def test_path_sde_has_the_path_marginals_and_its_ode_is_minus_the_velocity(path):
    sde = flow.PathSDE(path, t_start=1e-3)
    tau = torch.linspace(0.05, 0.95, 10, dtype=torch.float64)
    x = torch.randn(10, 2, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    # linear SDE moments: d ln s/dτ = f/x and d std²/dτ = 2(f/x) std² + g²
    f, g = sde.sde(x, tau)
    h = 1e-6
    dlog_s = (sde.scale(tau + h).log() - sde.scale(tau - h).log()) / (2 * h)
    dvar = (sde.std(tau + h) ** 2 - sde.std(tau - h) ** 2) / (2 * h)
    torch.testing.assert_close(f, dlog_s[:, None] * x, rtol=1e-6, atol=1e-8)
    torch.testing.assert_close(dvar, 2 * dlog_s * sde.std(tau) ** 2 + g**2, rtol=1e-6, atol=1e-8)
    v = gaussian_velocity(path)
    score = flow.diffusion_score(path, v)
    drift = sde.reverse(score, probability_flow=True).sde(x, tau)[0]
    torch.testing.assert_close(drift, -v(x, 1 - tau))


# --------------------------------------------------------------------------- sampling


def test_flow_euler_is_ddim_and_ode_euler_on_the_path_sde():
    """Euler in t on dx/dt = v equals, step for step, ode_euler and DDIM on PathSDE (τ = 1 − t)
    with the score converted from v: DDIM is Euler on a flow with the linear path."""
    path, n = flow.LinearPath(), 7
    model = Field(gaussian_velocity(path))
    x = torch.randn(500, 2, generator=torch.Generator().manual_seed(6), dtype=torch.float64)
    t_min = 0.02
    euler = [s.x for s in flow.integrate(model, x, n, "euler", t_start=t_min)]
    sde = flow.PathSDE(path, t_start=t_min)
    taus = 1 - flow.time_grid(n, t_min)
    score = flow.diffusion_score(path, model)
    for sampler in (ode_euler, ddim):
        states = [s.x for s in sampler(sde, score, x, taus)]
        for a, b in zip(states, euler):
            torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9)
    # Heun through the path SDE: the same, except that its last step, which ends at std = 0,
    # stays an Euler step
    heun = sample(ode_heun, sde, score, x, taus)
    before_last = list(flow.integrate(model, x, n, "heun", t_start=t_min))[-2]
    t = before_last.t
    y = before_last.x + (1 - t) * model(before_last.x, torch.full((500,), t, dtype=x.dtype))
    torch.testing.assert_close(heun, y, rtol=1e-9, atol=1e-9)


def test_heun_transports_a_gaussian_exactly_and_euler_converges():
    """The exact Gaussian field carries N(0, I) at t = 0 to N(M, C) at t = 1 (linear path)."""
    model = Field(gaussian_velocity(flow.LinearPath()))
    x0 = torch.randn(20_000, 2, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    x0 = (x0 - x0.mean(0)) @ torch.linalg.inv(torch.linalg.cholesky(torch.cov(x0.T))).T  # whiten
    x1 = flow.transport(model, x0, 100, "heun")
    torch.testing.assert_close(x1.mean(0), M, atol=1e-6, rtol=0)
    torch.testing.assert_close(torch.cov(x1.T), C, atol=1e-4, rtol=0)
    errs = [float((flow.transport(model, x0, n, "euler") - x1).norm(dim=1).mean()) for n in (10, 20, 40)]
    assert errs[0] / errs[1] == pytest.approx(2, rel=0.15) and errs[1] / errs[2] == pytest.approx(2, rel=0.15)
    x0, exact = x0[:500], flow.transport(model, x0[:500], 200, "heun")
    errs = [float((flow.transport(model, x0, n, "heun") - exact).norm(dim=1).mean()) for n in (5, 10, 20)]
    assert errs[0] / errs[1] == pytest.approx(4, rel=0.25) and errs[1] / errs[2] == pytest.approx(4, rel=0.25)


# --------------------------------------------------------------------------- straightness and reflow


def test_straightness_is_zero_for_straight_fields_and_exact_for_a_rotation():
    x0 = torch.randn(1000, 2, generator=torch.Generator().manual_seed(8), dtype=torch.float64)
    const = Field(lambda x, t: torch.tensor([1.5, -0.5], dtype=x.dtype).expand_as(x))
    assert flow.straightness(const, x0, steps=10) == pytest.approx(0.0, abs=1e-20)
    assert flow.straightness(const, x0, steps=10, solver="euler") == pytest.approx(0.0, abs=1e-20)
    # the Gaussian field of the linear path is not straight in general (marginal, not conditional)
    curved = flow.straightness(Field(gaussian_velocity(flow.LinearPath())), x0, steps=100)
    assert curved > 1e-3
    # rotation v = ωJx from points spaced evenly on the unit circle: trajectories are arcs and
    # S = ½‖R(ω) − I − ωJR(ωt)‖²_F integrated = ω² − 2(1 − cos ω)
    omega = 1.3
    J = torch.tensor([[0.0, -1.0], [1.0, 0.0]], dtype=torch.float64)
    angles = torch.arange(12, dtype=torch.float64) * 2 * math.pi / 12
    circle = torch.stack([angles.cos(), angles.sin()], 1)
    s = flow.straightness(Field(lambda x, t: omega * x @ J.T), circle, steps=400)
    assert s == pytest.approx(omega**2 - 2 * (1 - math.cos(omega)), rel=1e-4)


def test_reflow_pairs_are_deterministic_given_a_seed():
    torch.manual_seed(0)
    model = flow.velocity_net(hidden=16, depth=1, emb_dim=8)
    torch.nn.init.normal_(model.out[-1].weight, std=0.3)  # a non-zero field
    a = flow.reflow_pairs(model, 300, seed=3, steps=5)
    b = flow.reflow_pairs(model, 300, seed=3, steps=5, batch_size=128)
    c = flow.reflow_pairs(model, 300, seed=4, steps=5)
    assert a.shape == (300, 2, 2)
    torch.testing.assert_close(a, b, rtol=0, atol=1e-6)
    assert not torch.allclose(a, c)
    torch.testing.assert_close(a[:, 0], flow.noise(300, 3, device="cpu"))
    torch.testing.assert_close(a[:, 1], flow.transport(model, a[:, 0], 5, "heun"))
    assert float((a[:, 1] - a[:, 0]).abs().max()) > 1e-3


# --------------------------------------------------------------------------- a learned flow


@pytest.mark.parametrize("coupled", [False, True], ids=["independent", "pairs"])
def test_flow_trained_on_a_gaussian_moves_mean_and_covariance(coupled):
    data = GAUSS.sample(20_000, torch.Generator().manual_seed(10))
    if coupled:  # minibatch OT pairs (OT-CFM): the same marginal target
        from scoretut.couplings import coupled_pairs

        data = coupled_pairs(flow.noise(8192, 11, device="cpu"), data, 8192, batch_size=256, seed=0)
    recipe = flow2d.recipe_with({"net": {"hidden": 64, "depth": 2, "emb_dim": 32}})
    res = flow2d.fit(data, 400, recipe=recipe, seed=0, batch_size=256, lr=3e-3, ema_decay=0.98, device="cpu")
    x, nfe, _ = flow2d.generate(res.ema, recipe, 8000, nfe=40, solver="heun", seed=1)
    x = x.double()
    assert nfe == 40
    torch.testing.assert_close(x.mean(0), M, atol=0.08, rtol=0)
    torch.testing.assert_close(torch.cov(x.T), C, atol=0.08, rtol=0)


def test_bad_inputs_raise_usage_errors():
    x = torch.zeros(4, 2)
    model = flow.velocity_net(hidden=8, depth=1, emb_dim=8)
    with pytest.raises(UsageError):
        flow.FlowMatchingLoss(t_min=0.5, t_max=0.2)
    with pytest.raises(UsageError):
        flow.FlowMatchingLoss(time_sampling="sobol")
    with pytest.raises(UsageError):
        flow.FlowMatchingLoss()(model, torch.zeros(4, 3, 2, 2))
    with pytest.raises(UsageError):
        flow.FlowMatchingLoss()(model, torch.zeros(4, 3, 2))
    with pytest.raises(UsageError):
        list(flow.integrate(model, x, 4, "rk4"))
    with pytest.raises(UsageError):
        flow.time_grid(0)
    with pytest.raises(UsageError):
        flow.PathSDE(t_start=0.0)
    with pytest.raises(UsageError):
        flow.noise(0, 0)
    with pytest.raises(UsageError, match="no heun step"):
        flow2d.generate(model, flow2d.DEFAULT_RECIPE, 10, nfe=1, solver="heun")
