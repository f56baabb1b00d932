"""Variational diffusion models: schedules, the continuous and discrete ELBO, conversions, sampling."""

import math

import pytest
import torch

from scoretut import schedules, vdm
from scoretut.errors import UsageError
from scoretut.losses import DSMLoss
from scoretut.nets import ScoreMLP
from scoretut.parametrisation import Prediction, noise_from_prediction, v_from_noise_x0, x0_from_v
from scoretut.pipelines import vdm2d

VAR, DIM = 1.5, 2
MEAN = torch.tensor([0.7, -0.4])


def gaussian_data(n, seed=0):
    g = torch.Generator().manual_seed(seed)
    return MEAN + math.sqrt(VAR) * torch.randn(n, DIM, generator=g)


def random_net(seed=0):
    """A ScoreMLP whose output layer is not zero (so ε̂ is a non-trivial function)."""
    torch.manual_seed(seed)
    net = ScoreMLP(dim=DIM, hidden=32, depth=1, emb_dim=16)
    torch.nn.init.normal_(net.out[-1].weight, std=0.3)
    return net


def randomise(schedule, seed, scale=3.0):
    """Draw every shape parameter of a schedule at random (weights of any sign and size)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in schedule.shape_parameters():
            p.copy_(scale * torch.randn(p.shape, generator=g))
    return schedule


# --------------------------------------------------------------------------- α, σ, schedules


def test_alpha_sigma_and_snr():
    gamma = torch.linspace(-15, 8, 101, dtype=torch.float64)
    alpha, sigma = schedules.alpha_sigma(gamma)
    torch.testing.assert_close(alpha**2 + sigma**2, torch.ones_like(gamma))
    torch.testing.assert_close(alpha**2 / sigma**2, schedules.snr(gamma))
    torch.testing.assert_close(torch.log(schedules.snr(gamma)), -gamma)


@pytest.mark.parametrize("positive", ["abs", "softplus"])
def test_monotone_schedule_is_monotone_for_random_weights(positive):
    t = torch.linspace(0, 1, 4001)
    for seed in range(20):
        sched = randomise(schedules.MonotoneSchedule(n_features=64, positive=positive), seed, scale=1.0 + seed)
        with torch.no_grad():
            gamma, dgamma = sched.gamma_and_derivative(t)
        assert bool((gamma[1:] > gamma[:-1]).all()), f"seed {seed}: γ not increasing"
        assert bool((dgamma > 0).all())
        assert float(gamma[0]) == pytest.approx(schedules.GAMMA_MIN, abs=1e-4)
        assert float(gamma[-1]) == pytest.approx(schedules.GAMMA_MAX, abs=1e-4)


def test_schedule_derivative_matches_finite_differences():
    sched = randomise(schedules.MonotoneSchedule(n_features=32).double(), 3, scale=2.0)
    t = torch.linspace(0.01, 0.99, 50, dtype=torch.float64)
    h = 1e-6
    fd = (sched(t + h) - sched(t - h)) / (2 * h)
    torch.testing.assert_close(sched.derivative(t), fd, rtol=1e-5, atol=1e-6)
    lin = schedules.LinearSchedule(-10.0, 4.0)
    torch.testing.assert_close(lin.derivative(t.float()), torch.full((50,), 14.0))
    torch.testing.assert_close(lin(torch.tensor([0.0, 0.5, 1.0])), torch.tensor([-10.0, -3.0, 4.0]))


def test_monotone_schedule_starts_close_to_linear():
    """w₁ = γ_max − γ_min dominates the sigmoid part at initialisation, as in VDM."""
    torch.manual_seed(0)
    sched = schedules.MonotoneSchedule()
    t = torch.linspace(0, 1, 101)
    with torch.no_grad():
        gap = (sched(t) - schedules.LinearSchedule()(t)).abs().max()
    assert 0 < float(gap) < 0.1 * (schedules.GAMMA_MAX - schedules.GAMMA_MIN)


def test_gamma_sde_is_the_vp_sde_of_the_schedule():
    sched = randomise(schedules.MonotoneSchedule(n_features=16).double(), 1)
    sde = schedules.GammaSDE(sched)
    t = torch.linspace(0.05, 0.95, 19, dtype=torch.float64)
    h = 1e-6
    s, std = sde.scale(t), sde.std(t)
    torch.testing.assert_close(s**2 + std**2, torch.ones_like(t))
    torch.testing.assert_close(sde.sigma(t), std / s)
    beta = sde.beta(t)
    dlog_s = (torch.log(sde.scale(t + h)) - torch.log(sde.scale(t - h))) / (2 * h)
    torch.testing.assert_close(dlog_s, -0.5 * beta, rtol=1e-5, atol=1e-7)
    dvar = (sde.std(t + h) ** 2 - sde.std(t - h) ** 2) / (2 * h)
    torch.testing.assert_close(dvar, beta * (1 - std**2), rtol=1e-5, atol=1e-7)
    x = torch.randn(19, 2, dtype=torch.float64)
    drift, g = sde.sde(x, t)
    torch.testing.assert_close(drift, -0.5 * beta[:, None] * x)
    torch.testing.assert_close(g**2, beta)


# --------------------------------------------------------------------------- the loss


@pytest.mark.parametrize("schedule", ["linear", "monotone"])
def test_continuous_loss_matches_gaussian_closed_form_and_only_endpoints_matter(schedule):
    torch.manual_seed(0)
    sched = schedules.LinearSchedule() if schedule == "linear" else randomise(schedules.MonotoneSchedule(n_features=64), 5)
    model = vdm.VDM(vdm.GaussianEps(MEAN, VAR), sched)
    x = gaussian_data(40000)
    with torch.no_grad():
        terms = vdm.VDMLoss(variance_trick=False).terms(model, x, torch.Generator().manual_seed(1))
    exact = vdm.gaussian_nelbo(schedules.GAMMA_MIN, schedules.GAMMA_MAX, VAR, DIM, mean_sq=float(MEAN.pow(2).mean()))
    d = terms["diffusion"]
    assert float(d.mean()) == pytest.approx(exact["diffusion"], abs=4 * float(d.std()) / math.sqrt(len(d)))
    assert float(terms["prior"].mean()) == pytest.approx(exact["prior"], rel=0.02)
    assert float(terms["recon"][0]) == pytest.approx(exact["recon"], rel=1e-6)


def test_discrete_loss_closed_form_decreases_to_continuous():
    span = schedules.GAMMA_MAX - schedules.GAMMA_MIN
    cont = vdm.gaussian_diffusion_loss(schedules.GAMMA_MIN, schedules.GAMMA_MAX, VAR, DIM)
    gaps = []
    for T in [10, 20, 40, 80, 160, 320, 640, 1280]:
        grid = schedules.GAMMA_MIN + span * torch.linspace(0, 1, T + 1, dtype=torch.float64)
        gaps.append(vdm.gaussian_discrete_loss(grid, VAR, DIM) - cont)
    assert all(g > 0 for g in gaps)  # L_T > L_∞ ...
    assert all(b < a for a, b in zip(gaps, gaps[1:]))  # ... and doubling T lowers it
    assert 1.8 < gaps[-2] / gaps[-1] < 2.2  # O(1/T)
    assert gaps[-1] < 1e-2 * cont


def test_discrete_loss_converges_to_continuous_with_common_random_numbers():
    """Monte Carlo, any network: the T-step estimate, with the same times u and noise ε as the
    continuous one, approaches it as T grows (here with a random, non-optimal network)."""
    model = vdm.VDM(random_net(1), schedules.LinearSchedule())
    x = gaussian_data(20000)

    def mean_diffusion(n_steps):
        with torch.no_grad():
            terms = vdm.VDMLoss(n_steps=n_steps, elbo_terms=False).terms(model, x, torch.Generator().manual_seed(7))
        return float(terms["diffusion"].mean())

    cont = mean_diffusion(0)
    gaps = [abs(mean_diffusion(T) - cont) for T in (10, 100, 1000, 10000)]
    assert all(b < a for a, b in zip(gaps, gaps[1:]))
    assert gaps[-2] < 0.01 * cont and gaps[-1] < 0.002 * cont


def test_nelbo_bounds_entropy_and_is_tight_in_the_limit():
    mean_sq = float(MEAN.pow(2).mean())
    prev = None
    for g0, g1 in [(-5, 2), (-10, 5), (-15, 8), (-20, 12), (-30, 20)]:  # both ends move out
        res = vdm.gaussian_nelbo(g0, g1, VAR, DIM, mean_sq)
        gap = res["total"] - res["entropy"]
        assert gap > 0
        if prev is not None:
            assert gap < prev
        prev = gap
    assert prev < 1e-6
    # Monte Carlo of the full bound with the optimal ε̂ agrees with the closed form
    model = vdm.VDM(vdm.GaussianEps(MEAN, VAR), schedules.LinearSchedule())
    res = vdm.nelbo_bpd(model, gaussian_data(20000), repeats=2)
    exact = vdm.gaussian_nelbo(schedules.GAMMA_MIN, schedules.GAMMA_MAX, VAR, DIM, mean_sq)["total"] / (DIM * math.log(2))
    assert res["total"] == pytest.approx(exact, abs=4 * res["total_se"])


def test_vdm_loss_is_dsm_with_likelihood_weighting():
    """½ γ'‖ε − ε̂‖² is DSM with λ(t) = ½ β(t) = ½ g(t)², with the same random numbers."""
    model = vdm.VDM(random_net(2), randomise(schedules.MonotoneSchedule(n_features=16), 2))
    sde = model.sde
    x = gaussian_data(4096)
    with torch.no_grad():
        loss = vdm.VDMLoss(time_sampling="uniform", elbo_terms=False)(model, x, torch.Generator().manual_seed(3))
        dsm = DSMLoss(sde, weighting=lambda t: vdm.dsm_weight("elbo", sde, t))(model, x, torch.Generator().manual_seed(3))
    assert float(loss) == pytest.approx(float(dsm) / (DIM * math.log(2)), rel=1e-5)


@pytest.mark.parametrize("kind", ["eps", "v", "x0"])
def test_dsm_weights_reproduce_each_prediction_loss(kind):
    """λ(t) of dsm_weight turns DSM into ‖ε − ε̂‖², ‖v − v̂‖² or ‖x − x̂‖² per sample."""
    model = vdm.VDM(random_net(4), schedules.LinearSchedule(-6.0, 4.0))
    sde = model.sde
    x = gaussian_data(512)
    t = torch.rand(512, generator=torch.Generator().manual_seed(0))
    eps = torch.randn(512, DIM, generator=torch.Generator().manual_seed(1))
    alpha, sigma = sde.scale(t)[:, None], sde.std(t)[:, None]
    z = alpha * x + sigma * eps
    with torch.no_grad():
        eps_hat, x_hat = model.prediction_view().eps_x0(z, t)
        dsm = vdm.dsm_weight(kind, sde, t) / sigma[:, 0] ** 2 * (sigma * model(z, t) + eps).pow(2).sum(1)
    target, pred = {
        "eps": (eps, eps_hat),
        "v": (v_from_noise_x0(eps, x, alpha[:, 0], sigma[:, 0]), v_from_noise_x0(eps_hat, x_hat, alpha[:, 0], sigma[:, 0])),
        "x0": (x, x_hat),
    }[kind]
    torch.testing.assert_close(dsm, (target - pred).pow(2).sum(1), rtol=1e-4, atol=1e-5)


def test_variance_trick_gives_variance_gradient_to_shape_and_elbo_gradient_to_the_rest():
    torch.manual_seed(0)
    # float64: the two gradients are computed in different orders, and in float32 their
    # rounding differs by ~1e-4 relative on some CPUs.
    model = vdm.VDM(random_net(5), randomise(schedules.MonotoneSchedule(n_features=8), 4, scale=1.0)).double()
    x = gaussian_data(256).double()
    shape = model.schedule.shape_parameters()
    rest = [p for p in model.parameters() if all(p is not q for q in shape)]

    model.zero_grad()
    vdm.VDMLoss(variance_trick=True)(model, x, torch.Generator().manual_seed(9)).backward()
    trick = [p.grad.clone() for p in model.parameters()]

    plain = vdm.VDMLoss(variance_trick=False)
    model.zero_grad()
    terms = plain.terms(model, x, torch.Generator().manual_seed(9))
    elbo = (terms["diffusion"] + terms["prior"] + terms["recon"]).mean() / (DIM * math.log(2))
    g_rest = torch.autograd.grad(elbo, rest, retain_graph=True)
    g_shape = torch.autograd.grad(terms["diffusion"].pow(2).mean(), shape)
    expected = {id(p): g for p, g in zip(rest, g_rest)} | {id(p): g for p, g in zip(shape, g_shape)}
    for p, got in zip(model.parameters(), trick):
        torch.testing.assert_close(got, expected[id(p)], rtol=1e-8, atol=1e-10)
    assert model.schedule.ends.requires_grad and any(float(g.abs().sum()) > 0 for g in g_shape)


def test_time_sampling_variances_match_their_decomposition():
    """Per example, Var L = E_t Var(L|t) + Var_t m(t) with m(t) = E[L|t] (closed form for the
    optimal ε̂). A batch of n independent times has variance Var L / n; the stratified set removes
    the Var_t m(t) part; antithetic pairs add Cov(m(t), m(1 − t)) < 0 instead of it."""
    model = vdm.VDM(vdm.GaussianEps(MEAN, VAR), schedules.LinearSchedule())
    x = gaussian_data(10000)
    n, batches = 64, 3000
    res = {s: vdm.loss_variance(model, x, s, batch_size=n, n_batches=batches) for s in vdm.TIME_SCHEMES}
    span = schedules.GAMMA_MAX - schedules.GAMMA_MIN
    t = torch.linspace(0, 1, 200001, dtype=torch.float64)
    m = 0.5 * span * DIM * VAR / (VAR + torch.exp(schedules.GAMMA_MIN + span * t)) / (DIM * math.log(2))
    var_t, cov_anti = float(m.var()), float(((m - m.mean()) * (m.flip(0) - m.mean())).mean())
    per_example = res["uniform"]["per_example_var"]
    se = per_example * math.sqrt(2 / batches)  # standard error of n × (a variance estimate)
    for r in res.values():  # all unbiased
        assert r["mean"] == pytest.approx(float(m.mean()), abs=5 * math.sqrt(r["var"] / batches))
    assert n * res["uniform"]["var"] == pytest.approx(per_example, abs=4 * se)
    assert n * res["stratified"]["var"] == pytest.approx(per_example - var_t, abs=4 * se)
    assert n * res["antithetic"]["var"] == pytest.approx(per_example + cov_anti, abs=4 * se)
    assert cov_anti < 0 and var_t > 4 * se  # the test can tell the schemes apart


def test_time_schemes_are_uniform_on_the_unit_interval():
    g = torch.Generator().manual_seed(0)
    for scheme in vdm.TIME_SCHEMES:
        t = torch.cat([vdm.vdm_times(64, scheme, g) for _ in range(400)])
        assert 0 <= float(t.min()) and float(t.max()) < 1
        hist = torch.histc(t, bins=10, min=0, max=1) / len(t)
        torch.testing.assert_close(hist, torch.full((10,), 0.1), atol=0.01, rtol=0)


# --------------------------------------------------------------------------- conversions


def test_eps_x0_v_score_conversions_agree():
    g = torch.Generator().manual_seed(0)
    x0, eps = torch.randn(64, 2, generator=g, dtype=torch.float64), torch.randn(64, 2, generator=g, dtype=torch.float64)
    alpha, sigma = schedules.alpha_sigma(torch.linspace(-12, 6, 64, dtype=torch.float64))
    z = alpha[:, None] * x0 + sigma[:, None] * eps
    v = v_from_noise_x0(eps, x0, alpha, sigma)
    for kind, pred in [("eps", eps), ("x0", x0), ("v", v), ("score", -eps / sigma[:, None])]:
        torch.testing.assert_close(noise_from_prediction(kind, pred, z, alpha, sigma), eps)
    torch.testing.assert_close(x0_from_v(z, v, alpha, sigma), x0)
    with pytest.raises(UsageError):
        noise_from_prediction("noise", eps, z, alpha, sigma)


@pytest.mark.parametrize("kind", ["eps", "x0", "v"])
def test_optimal_predictors_give_the_exact_gaussian_score(kind):
    """The Gaussian-optimal ε̂ rewritten as an x₀- or v-predictor gives the same (exact) score,
    through VDM and through parametrisation.Prediction."""
    oracle = vdm.GaussianEps(MEAN, VAR)

    class Oracle(torch.nn.Module):
        def forward(self, z, gamma):
            alpha, sigma = (v[:, None] for v in schedules.alpha_sigma(gamma))
            e = oracle(z, gamma)
            x = (z - sigma * e) / alpha
            return {"eps": e, "x0": x, "v": alpha * e - sigma * x}[kind]

    model = vdm.VDM(Oracle(), schedules.LinearSchedule(-8.0, 4.0), prediction=kind)
    sde = model.sde
    z = torch.randn(128, 2, generator=torch.Generator().manual_seed(0))
    t = torch.linspace(0.02, 0.98, 128)
    alpha, sigma = sde.scale(t)[:, None], sde.std(t)[:, None]
    exact = -(z - alpha * MEAN) / (alpha**2 * VAR + sigma**2)
    torch.testing.assert_close(model(z, t), exact, rtol=2e-3, atol=1e-4)
    net_t = lambda x, tt: Oracle()(x, sde.schedule(tt))  # noqa: E731
    torch.testing.assert_close(Prediction(sde, net_t, kind).score(z, t), exact, rtol=2e-3, atol=1e-4)


# --------------------------------------------------------------------------- sampling, input checks


def test_generate_with_the_optimal_denoiser_reaches_the_gaussian():
    # The deterministic sampler carries the prior mismatch N(0, I) vs q(z_1) (SNR(1) = e^{-5})
    # through to the data, so it gets a schedule with a smaller SNR(1).
    for sampler, gamma_max in (("em", schedules.GAMMA_MAX), ("ode_heun", 10.0)):
        model = vdm.VDM(vdm.GaussianEps(MEAN, VAR), schedules.LinearSchedule(schedules.GAMMA_MIN, gamma_max))
        x = vdm2d.generate(model, vdm2d.DEFAULT_RECIPE, 8000, steps=200, sampler=sampler, seed=0).x
        torch.testing.assert_close(x.mean(0), MEAN, atol=0.06, rtol=0)
        torch.testing.assert_close(torch.cov(x.T), VAR * torch.eye(2), atol=0.12, rtol=0)
    out = vdm2d.generate(model, vdm2d.DEFAULT_RECIPE, 100, steps=10, trajectory_every=1)
    traj = out.trajectory
    assert len(traj) == 11 and traj[0][0] == 1.0 and traj[-1][0] == 0.0 and out.nfe == 10  # em: 1 per step
    assert torch.equal(traj[-1][1], out.x)


def test_bad_inputs_raise_usage_errors():
    with pytest.raises(UsageError):
        schedules.LinearSchedule(5.0, -13.0)
    with pytest.raises(UsageError):
        vdm.VDM(random_net(), schedules.LinearSchedule(), prediction="score")
    with pytest.raises(UsageError):
        vdm.VDMLoss(time_sampling="sobol")
    with pytest.raises(UsageError):
        vdm.vdm_times(7, "antithetic")
    with pytest.raises(UsageError):
        schedules.MonotoneSchedule(positive="square")
    with pytest.raises(UsageError):
        vdm.dsm_weight("edm", schedules.GammaSDE(schedules.LinearSchedule()), torch.rand(3))


def test_diffusion_integrand_integrates_to_the_diffusion_loss():
    model = vdm.VDM(vdm.GaussianEps(MEAN, VAR), randomise(schedules.MonotoneSchedule(n_features=16), 6))
    ts = (torch.arange(400) + 0.5) / 400  # midpoint rule
    integrand = vdm.diffusion_integrand(model, gaussian_data(2000), ts)
    exact = vdm.gaussian_diffusion_loss(schedules.GAMMA_MIN, schedules.GAMMA_MAX, VAR, DIM) / (DIM * math.log(2))
    assert float(integrand.mean()) == pytest.approx(exact, rel=0.02)
