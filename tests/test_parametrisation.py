"""parametrisation.Prediction: every view of every kind of network output, against the closed
forms for Gaussian data, and the samplers taking the network's own output (no round trip)."""

import pytest
import torch

from scoretut.errors import UsageError
from scoretut.nets import ScoreMLP
from scoretut.parametrisation import KINDS, Prediction, prediction_of
from scoretut.pipelines.toy2d import ToyScoreModel
from scoretut.sampling import ddim, ddpm, edm_sampler, ode_heun, sample, timesteps
from scoretut.schedules import DiscreteVP, ddpm_timesteps
from scoretut.sde import EDMSDE, VESDE, VPSDE, as_time, bcast

MEAN, VAR = 0.6, 0.3  # data x₀ ~ N(MEAN, VAR·I) in 2-D


def exact(sde, x, t):
    """Closed forms for Gaussian data at x_t = α x₀ + σ_t ε: score, ε̂, x̂₀, v̂ and α, σ_t."""
    t = as_time(t, x)
    a, s = bcast(sde.scale(t), x), bcast(sde.std(t), x)
    score = -(x - a * MEAN) / (a**2 * VAR + s**2)
    x0 = MEAN + a * VAR / (a**2 * VAR + s**2) * (x - a * MEAN)
    eps = -s * score
    return {"score": score, "eps": eps, "x0": x0, "v": a * eps - s * x0}


def gaussian_denoiser(x_hat, sigma):
    """D(x̂; σ) = E[x₀ | x₀ + σ n = x̂] = m + VAR/(VAR + σ²)(x̂ − m), free of any SDE."""
    return MEAN + VAR / (VAR + bcast(sigma, x_hat) ** 2) * (x_hat - MEAN)


def oracle(sde, kind):
    """A Prediction whose network returns the exact output of ``kind``."""
    if kind == "denoiser":
        return Prediction(sde, gaussian_denoiser, kind)
    return Prediction(sde, lambda x, t: exact(sde, x, t)[kind], kind)


SDES = {"vp": VPSDE(), "ve": VESDE(), "edm": EDMSDE(), "ddpm-cosine": DiscreteVP.cosine(1000)}
TIMES = {"vp": 0.3, "ve": 0.4, "edm": 1.7, "ddpm-cosine": 420.0}


VP_ONLY = ("vp", "ddpm-cosine")  # v assumes α² + σ_t² = 1


@pytest.mark.parametrize("name, kind", [(n, k) for n in SDES for k in KINDS if k != "v" or n in VP_ONLY])
def test_every_view_of_every_kind_is_the_gaussian_closed_form(name, kind):
    sde, t = SDES[name], TIMES[name]
    x = torch.randn(256, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 2
    want, model = exact(sde, x, t), oracle(sde, kind)
    tol = dict(rtol=1e-9, atol=1e-11)
    torch.testing.assert_close(model.score(x, t), want["score"], **tol)
    torch.testing.assert_close(model(x, t), want["score"], **tol)
    eps, x0 = model.eps_x0(x, t)
    torch.testing.assert_close(eps, want["eps"], **tol)
    torch.testing.assert_close(x0, want["x0"], **tol)
    torch.testing.assert_close(model.eps(x, t), want["eps"], **tol)
    torch.testing.assert_close(model.x0(x, t), want["x0"], **tol)
    if name in VP_ONLY:
        torch.testing.assert_close(model.v(x, t), want["v"], **tol)
    # D(x̂; σ(t)) of the rescaled state x̂ = x/s(t) is the posterior mean at x.
    s = float(sde.scale(torch.tensor(t, dtype=torch.float64)))
    torch.testing.assert_close(model.denoise(x / s, t), want["x0"], **tol)
    torch.testing.assert_close(model.denoise(x / s, t), gaussian_denoiser(x / s, sde.sigma(as_time(t, x))), **tol)
    # the probability-flow velocity f − ½ g² ∇log p_t
    f, g = sde.sde(x, as_time(t, x))
    torch.testing.assert_close(model.velocity(x, t), f - 0.5 * bcast(g, x) ** 2 * want["score"], **tol)


def test_each_view_costs_one_evaluation_and_returns_the_network_output_itself():
    sde = DiscreteVP.linear(1000)
    x = torch.randn(8, 2, generator=torch.Generator().manual_seed(1))
    out = torch.randn(8, 2, generator=torch.Generator().manual_seed(2))
    eps_model = Prediction(sde, lambda x, t: out, "eps")
    assert eps_model.eps(x, 300.0) is out  # no round trip through the score
    x0_model = Prediction(sde, lambda x, t: out, "x0")
    assert x0_model.x0(x, 300.0) is out
    den = Prediction(EDMSDE(), lambda x_hat, sigma: out, "denoiser")
    assert den.denoise(x, 2.0) is out
    for view in ("score", "eps", "x0", "v", "denoise", "velocity"):
        before = eps_model.nfe
        getattr(eps_model, view)(x, 300.0)
        assert eps_model.nfe == before + 1, view


def test_ddim_takes_the_x0_of_an_x0_network_exactly():
    # The last DDIM step lands on t = 0, where α = 1 and σ = 0: x = x̂₀. An x₀-network's output
    # must come back bit for bit; through the score (x₀ → score → x₀) it would not.
    sde = DiscreteVP.linear(1000)
    x = torch.randn(64, 2, generator=torch.Generator().manual_seed(3))
    target = torch.randn(64, 2, generator=torch.Generator().manual_seed(4)) * 3
    ts = torch.tensor([700.0, 0.0], dtype=torch.float64)
    out = sample(ddim, sde, Prediction(sde, lambda x, t: target, "x0"), x, ts)
    assert torch.equal(out, target)
    out = sample(ddpm, sde, Prediction(sde, lambda x, t: target, "x0"), x, ts)
    assert torch.equal(out, target)


def test_samplers_agree_whatever_the_network_predicts():
    # The same exact Gaussian model given as ε, x₀, v, score or denoiser: DDIM, the EDM sampler
    # and Heun on the PF-ODE each reach the same samples whatever the kind (to rounding), and
    # DDIM's samples have the data's mean and variance.
    sde = DiscreteVP.cosine(1000)
    x_T = torch.randn(20_000, 2, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    ts = ddpm_timesteps(sde, 50)
    ref = sample(ddim, sde, oracle(sde, "score"), x_T, ts)
    for kind in KINDS:
        torch.testing.assert_close(sample(ddim, sde, oracle(sde, kind), x_T, ts), ref, rtol=1e-7, atol=1e-9)
    assert abs(float(ref.mean()) - MEAN) < 0.02 and abs(float(ref.var()) - VAR) < 0.02
    vp, grid = VPSDE(), timesteps(VPSDE(), 30)
    x_vp = x_T[:2000]
    for sampler in (edm_sampler, ode_heun):
        ref = sample(sampler, vp, oracle(vp, "score"), x_vp, grid)
        for kind in KINDS:
            torch.testing.assert_close(sample(sampler, vp, oracle(vp, kind), x_vp, grid), ref, rtol=1e-7, atol=1e-9)


def test_prediction_of():
    sde = VPSDE()
    model = Prediction(sde, lambda x, t: x, "eps")
    assert prediction_of(sde, model) is model
    plain = prediction_of(sde, lambda x, t: -x)
    assert plain.kind == "score" and plain.sde is sde
    torch.manual_seed(0)
    toy = ToyScoreModel(sde, ScoreMLP(dim=2, hidden=16, depth=1, emb_dim=8), param="score")
    view = prediction_of(sde, toy)
    x, t = torch.randn(16, 2), torch.rand(16)
    assert view.kind == "eps"
    assert torch.equal(view.eps(x, t), -toy.net(x, t))
    assert torch.equal(view.score(x, t), toy(x, t))
    edm = ToyScoreModel(EDMSDE(), ScoreMLP(dim=2, hidden=16, depth=1, emb_dim=8), param="edm", sigma_data=0.5)
    view = prediction_of(EDMSDE(), edm)
    sigma = torch.rand(16) + 0.1
    assert view.kind == "denoiser" and torch.equal(view.denoise(x, sigma), edm.denoiser(x, sigma))


def test_unknown_kind_is_a_usage_error():
    with pytest.raises(UsageError, match="choose one of: eps, x0, v, score, denoiser"):
        Prediction(VPSDE(), lambda x, t: x, "noise")
