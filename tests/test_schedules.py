"""DDPM schedules, the posterior q(x_{t−1} | x_t, x_0), and the DDPM/DDIM samplers, against the math."""

import math

import pytest
import torch

from gaussian import exact_score, w2_to_data
from scoretut.sampling import ddim, ddpm
from scoretut.errors import UsageError
from scoretut.losses import DSMLoss
from scoretut.sampling import SAMPLERS, sample
from scoretut.parametrisation import Prediction
from scoretut.schedules import (DiscreteVP, alpha_bars, cosine_alpha_bar, cosine_betas, ddpm_timesteps,
                                gaussian_posterior, linear_betas, log_snr)
from scoretut.sde import VESDE, VPSDE

SCHEDULES = [DiscreteVP.linear(), DiscreteVP.cosine()]


# -- schedules -------------------------------------------------------------------------------
def test_linear_betas_endpoints_and_alpha_bar_product():
    betas = linear_betas(1000)
    assert betas.shape == (1000,) and betas[0] == 1e-4 and abs(float(betas[-1]) - 0.02) < 1e-15
    ab = alpha_bars(betas)
    assert ab[0] == 1.0
    prod = 1.0
    for t in (1, 2, 3):  # ᾱ_t = ∏_{s≤t} (1 − β_s) by hand
        prod *= 1 - float(betas[t - 1])
        assert math.isclose(float(ab[t]), prod, rel_tol=1e-14)


def test_linear_schedule_is_the_vp_sde_at_t_over_T():
    """Σ_{k≤t} −log(1−β_k) ≈ ∫_0^{t/T} β(u) du of VPSDE(0.1, 20) (the DDPM ↔ VP SDE link)."""
    sde, vp = DiscreteVP.linear(), VPSDE(0.1, 20.0)
    t = torch.arange(100, 1001, 100, dtype=torch.float64)
    rel = (-sde.log_alpha_bar(t) / vp.int_beta(t / 1000) - 1).abs()
    assert float(rel.max()) < 0.02


def test_cosine_alpha_bar_closed_form_away_from_the_clip():
    sde = DiscreteVP.cosine()
    t = torch.arange(0, 1000, dtype=torch.float64)  # the clip only bites at t = T
    assert torch.allclose(sde.alpha_bars()[:-1], cosine_alpha_bar(t), rtol=1e-10, atol=1e-14)
    betas = cosine_betas(1000)
    assert float(betas.max()) == 0.999 and int((betas == 0.999).sum()) == 1


def test_discrete_vp_matches_the_table_at_integers_and_is_a_vp_sde_between():
    for sde in SCHEDULES:
        k = torch.arange(0, 1001, dtype=torch.float64)
        assert torch.allclose(sde.scale(k) ** 2, sde.alpha_bars(), rtol=1e-12)
        assert torch.allclose(sde.std(k) ** 2, 1 - sde.alpha_bars(), rtol=1e-10, atol=1e-15)
        assert torch.allclose(sde.sigma(k[1:]), sde.std(k[1:]) / sde.scale(k[1:]), rtol=1e-10)
        # d log s/dt = −½ β(t) (the drift of the VP SDE), checked by central differences
        t, h = torch.tensor([3.3, 250.5, 777.7], dtype=torch.float64), 1e-4
        dlog = (torch.log(sde.scale(t + h)) - torch.log(sde.scale(t - h))) / (2 * h)
        assert torch.allclose(dlog, -0.5 * sde.beta(t), rtol=1e-6)
        x = torch.ones(3, 2, dtype=torch.float64)
        drift, g = sde.sde(x, t)
        assert torch.allclose(drift, -0.5 * sde.beta(t)[:, None] * x) and torch.allclose(g**2, sde.beta(t))


def test_log_snr_definition_and_monotone():
    for sde in SCHEDULES:
        t = torch.arange(1, 1001, dtype=torch.float64)
        ab = sde.alpha_bars()[1:]
        lam = sde.log_snr(t)
        assert torch.allclose(lam, torch.log(ab / (1 - ab)), rtol=1e-9, atol=1e-9)
        assert torch.allclose(lam, log_snr(ab), rtol=1e-9, atol=1e-9)
        assert bool((lam[1:] < lam[:-1]).all())


# -- posterior ---------------------------------------------------------------------------------
def bayes_posterior(prior_mean, prior_var, x_t, a, b, n=400_001):
    """Mean and variance of p(y | x_t) ∝ N(y; prior) N(x_t; a y, b) by quadrature on a grid."""
    sd = math.sqrt(prior_var)
    y = torch.linspace(prior_mean - 14 * sd, prior_mean + 14 * sd, n, dtype=torch.float64)
    logw = -((y - prior_mean) ** 2) / (2 * prior_var) - (x_t - a * y) ** 2 / (2 * b)
    w = torch.softmax(logw, 0)
    mean = float((w * y).sum())
    return mean, float((w * (y - mean) ** 2).sum())


@pytest.mark.parametrize("sde", SCHEDULES, ids=lambda s: s.name)
@pytest.mark.parametrize("t", [2, 3, 10, 500, 999, 1000])
def test_posterior_matches_bayes_rule(sde, t):
    x0, z = 0.8, 0.7
    ab = sde.alpha_bars()
    ab_t, ab_s = float(ab[t]), float(ab[t - 1])
    beta_t = float(sde.betas[t - 1])
    x_t = math.sqrt(ab_t) * x0 + math.sqrt(1 - ab_t) * z
    # q(x_{t−1} | x_0) = N(√ᾱ_{t−1} x_0, 1 − ᾱ_{t−1});  q(x_t | x_{t−1}) = N(√(1−β_t) x_{t−1}, β_t)
    mean, var = bayes_posterior(math.sqrt(ab_s) * x0, 1 - ab_s, x_t, math.sqrt(1 - beta_t), beta_t)
    c0, ct, beta_tilde = (float(v) for v in sde.posterior(t))
    assert math.isclose(c0 * x0 + ct * x_t, mean, rel_tol=1e-6, abs_tol=1e-8)
    assert math.isclose(beta_tilde, var, rel_tol=1e-5)
    assert math.isclose(beta_tilde, (1 - ab_s) / (1 - ab_t) * beta_t, rel_tol=1e-9)


@pytest.mark.parametrize("sde", SCHEDULES, ids=lambda s: s.name)
def test_posterior_at_t_equals_1_uses_alpha_bar_0_equals_1(sde):
    """With ᾱ_0 = 1, x_0 is known exactly given itself: μ̃_1 = x_0 and β̃_1 = 0 (no off-by-one)."""
    c0, ct, var = (float(v) for v in sde.posterior(1))
    assert (c0, ct, var) == pytest.approx((1.0, 0.0, 0.0), abs=1e-12)
    # t = 2 uses ᾱ_1 = 1 − β_1, not ᾱ_2: β̃_2 = β_1 β_2/(1 − ᾱ_2)
    b1, b2 = float(sde.betas[0]), float(sde.betas[1])
    assert math.isclose(float(sde.posterior(2)[2]), b1 * b2 / (1 - (1 - b1) * (1 - b2)), rel_tol=1e-10)
    with pytest.raises(UsageError):
        sde.posterior(0)


@pytest.mark.parametrize("sde,t,s", [(DiscreteVP.linear(), 500.0, 300.0), (VESDE(), 0.8, 0.3), (VPSDE(), 0.6, 0.1)])
def test_gaussian_posterior_over_a_jump(sde, t, s):
    """q(x_s | x_t, x_0) for s < t far apart, any linear-Gaussian SDE, against quadrature."""
    tt = torch.tensor([t, s], dtype=torch.float64)
    (a_t, a_s), (sd_t, sd_s) = sde.scale(tt).tolist(), sde.std(tt).tolist()
    x0 = -0.4
    x_t = a_t * x0 + sd_t * 1.1
    a = a_t / a_s
    mean, var = bayes_posterior(a_s * x0, sd_s**2, x_t, a, sd_t**2 - a**2 * sd_s**2)
    c0, ct, v = (float(u) for u in gaussian_posterior(a_t, sd_t, a_s, sd_s))
    assert math.isclose(c0 * x0 + ct * x_t, mean, rel_tol=1e-6, abs_tol=1e-8)
    assert math.isclose(v, var, rel_tol=1e-5)


# -- losses on the discrete chain ---------------------------------------------------------------
def test_dsm_on_discrete_steps_is_the_simple_eps_loss():
    """DSMLoss(DiscreteVP, t_grid = 1..T) with λ = std² is Ho et al.'s ‖ε − ε̂(x_t, t)‖²."""
    sde = DiscreteVP.linear()
    eps_model = lambda x, t: 0.3 * x + 1e-3 * t[:, None]  # noqa: E731
    x0 = torch.randn(64, 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    loss = DSMLoss(sde, t_grid=sde.train_grid())(Prediction(sde, eps_model, "eps"), x0, torch.Generator().manual_seed(2))
    g = torch.Generator().manual_seed(2)
    t = sde.train_grid()[torch.randint(1000, (64,), generator=g)]
    eps = torch.randn(64, 2, generator=g, dtype=torch.float64)
    ab = sde.alpha_bars()[t.long()][:, None]
    x_t = ab.sqrt() * x0 + (1 - ab).sqrt() * eps
    by_hand = (eps - eps_model(x_t, t)).pow(2).sum(1).mean()
    assert torch.isclose(loss, by_hand, rtol=1e-10)
    assert bool((t == t.round()).all()) and 1 <= float(t.min()) and float(t.max()) <= 1000


# -- samplers ------------------------------------------------------------------------------------
def test_ddpm_timesteps():
    sde = DiscreteVP.linear()
    assert ddpm_timesteps(sde, 10).tolist() == [1000.0 - 100 * i for i in range(11)]
    full = ddpm_timesteps(sde, 1000)
    assert full.tolist() == list(map(float, range(1000, -1, -1)))
    with pytest.raises(UsageError):
        ddpm_timesteps(sde, 0)


def run(name, sde, n_steps, n=50_000, seed=0, **opts):
    gen = torch.Generator().manual_seed(seed)
    x = sde.prior_sampling((n, 2), generator=gen, dtype=torch.float64)
    return sample(name, sde, exact_score(sde), x, ddpm_timesteps(sde, n_steps), generator=gen, **opts)


@pytest.mark.parametrize("sde,steps", [(DiscreteVP.cosine(), 100), (DiscreteVP.linear(), 200)], ids=["cosine", "linear"])
def test_ddim_eta0_with_exact_eps_recovers_gaussian_data(sde, steps):
    x = run("ddim", sde, steps)
    assert w2_to_data(x) <= 0.02


@pytest.mark.parametrize("variance", ["beta_tilde", "beta"])
def test_ddpm_ancestral_with_exact_eps_recovers_gaussian_data(variance):
    x = run("ddpm", DiscreteVP.linear(), 1000, n=20_000, variance=variance)
    assert w2_to_data(x) <= 0.03


def test_ddim_eta1_is_ddpm_with_beta_tilde():
    sde = DiscreteVP.cosine()
    ts = ddpm_timesteps(sde, 25)
    x = sde.prior_sampling((500, 2), generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    a = sample(ddim, sde, exact_score(sde), x, ts, generator=torch.Generator().manual_seed(4), eta=1.0)
    b = sample(ddpm, sde, exact_score(sde), x, ts, generator=torch.Generator().manual_seed(4))
    assert torch.allclose(a, b, rtol=1e-9, atol=1e-9)


def test_ddim_eta0_is_deterministic_and_the_last_step_adds_no_noise():
    sde = DiscreteVP.linear()
    ts = ddpm_timesteps(sde, 20)
    x = sde.prior_sampling((300, 2), generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    a = sample("ddim", sde, exact_score(sde), x, ts, generator=torch.Generator().manual_seed(1))
    b = sample("ddim", sde, exact_score(sde), x, ts, generator=torch.Generator().manual_seed(2))
    assert torch.equal(a, b)
    # DDPM's last step returns x̂_0 = (x_1 − std_1 ε̂)/s_1 with no noise, whatever the variance choice
    steps = list(ddpm(sde, exact_score(sde), x, ts, generator=torch.Generator().manual_seed(5), variance="beta"))
    x1, t1 = steps[-2].x, steps[-2].t
    tt = torch.tensor(t1, dtype=torch.float64)
    x0_hat = (x1 + sde.std(tt) ** 2 * exact_score(sde)(x1, t1)) / sde.scale(tt)
    assert steps[-1].t == 0.0 and torch.allclose(steps[-1].x, x0_hat, rtol=1e-10, atol=1e-12)


def test_samplers_take_image_batches_and_an_eps_model():
    """(B, C, H, W) with pixels i.i.d. N(m, v): exact ε-model → DDIM/DDPM recover m and v per pixel."""
    sde = DiscreteVP.cosine()
    m, v = 0.5, 0.09

    def eps_model(x, t):  # exact ε̂ = −std · score of N(s m, s² v + std²)
        s, std = sde.scale(t)[:, None, None, None], sde.std(t)[:, None, None, None]
        return std * (x - s * m) / (s**2 * v + std**2)

    gen = torch.Generator().manual_seed(0)
    x = sde.prior_sampling((1500, 3, 4, 4), generator=gen, dtype=torch.float64)
    for name in ("ddim", "ddpm"):  # the variance deficit shrinks like 1/steps: 9% (DDIM), 17% (DDPM) at 50
        out = sample(name, sde, Prediction(sde, eps_model, "eps"), x, ddpm_timesteps(sde, 500), generator=gen)
        assert out.shape == x.shape
        assert abs(float(out.mean()) - m) < 0.01 and abs(float(out.var()) / v - 1) < 0.05, name
    clipped = sample("ddim", sde, Prediction(sde, eps_model, "eps"), x, ddpm_timesteps(sde, 10), clip_x0=0.6)
    assert float(clipped.max()) <= 0.6 + 1e-12 and float(clipped.min()) >= -0.6 - 1e-12


def test_bad_options_raise_usage_errors():
    sde = DiscreteVP.linear()
    x = torch.zeros(2, 2)
    with pytest.raises(UsageError):
        next(ddpm(sde, exact_score(sde), x, ddpm_timesteps(sde, 5), variance="big"))
    with pytest.raises(UsageError):
        next(ddim(sde, exact_score(sde), x, ddpm_timesteps(sde, 5), eta=-1))
    with pytest.raises(UsageError):
        next(ddim(sde, exact_score(sde), x, torch.tensor([0.0, 10.0])))
    with pytest.raises(UsageError):
        DiscreteVP(torch.tensor([0.5, 1.0]))
    assert {"ddpm", "ddim"} <= set(SAMPLERS)
