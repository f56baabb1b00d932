"""The score-matching and denoising losses, checked on Gaussian data where everything is exact.

Data ``x0 ~ N(m, C)`` in 2D. Under an SDE with scale ``s(t)`` and std ``std(t)`` the perturbed
law is ``p_t = N(s m, s² C + std² I)`` with score ``−Σ_t⁻¹ (x − s m)``; the optimal denoiser at
noise level σ is ``D(x; σ) = m + C (C + σ² I)⁻¹ (x − m)``.

Comparisons of two models use common random numbers (the same generator seed) and are repeated
over independent chunks, so each is judged against its own Monte-Carlo standard error.
"""

from __future__ import annotations

import math
from typing import Callable

import pytest
import torch
from torch import Tensor, nn

from scoretut.losses import (DSMLoss, EDMLoss, ISMLoss, SSMLoss, divergence, log_sigma_density, min_snr_weighting,
                             sample_times)
from scoretut.parametrisation import EDMPrecond, edm_coefficients
from scoretut.sde import EDMSDE, VESDE, VPSDE, bcast

DT = torch.float64
M = torch.tensor([1.0, -0.5], dtype=DT)
C = torch.tensor([[1.0, 0.6], [0.6, 0.8]], dtype=DT)
L = torch.linalg.cholesky(C)
I2 = torch.eye(2, dtype=DT)
J = torch.tensor([[0.0, -1.0], [1.0, 0.0]], dtype=DT)  # a 90° rotation


def gaussian_data(n: int, seed: int) -> Tensor:
    """``n`` draws of ``N(m, C)``; data seeds are offset so they never coincide with loss seeds."""
    z = torch.randn(n, 2, generator=torch.Generator().manual_seed(10**6 + seed), dtype=DT)
    return M + z @ L.T


def gaussian_score(sde=None) -> Callable[[Tensor, Tensor], Tensor]:
    """Exact score of ``p_t`` (of the data itself when ``sde`` is None)."""

    def score(x: Tensor, t: Tensor) -> Tensor:
        if sde is None:
            s, var = torch.ones_like(t), torch.zeros_like(t)
        else:
            s, var = sde.scale(t), sde.std(t) ** 2
        cov = s[:, None, None] ** 2 * C + var[:, None, None] * I2  # (batch, 2, 2)
        return -torch.linalg.solve(cov, (x - bcast(s, x) * M).unsqueeze(-1)).squeeze(-1)

    return score


def gaussian_denoiser(x: Tensor, sigma: Tensor) -> Tensor:
    """``E[x0 | x0 + σ n = x] = m + C (C + σ² I)⁻¹ (x − m)``."""
    cov = C + sigma[:, None, None] ** 2 * I2
    return M + (C @ torch.linalg.solve(cov, (x - M).unsqueeze(-1))).squeeze(-1)


# Ways to spoil a model's output ``y`` (score or denoiser) at input ``x``.
PERTURBATIONS = {
    "shift": lambda y, x: y + torch.tensor([0.3, -0.2], dtype=DT),
    "scale": lambda y, x: 1.2 * y,
    "rotate": lambda y, x: y + 0.2 * y @ J.T,
    "linear-in-x": lambda y, x: y + 0.15 * x,
}


def perturbed(fn, how):
    return lambda x, t: PERTURBATIONS[how](fn(x, t), x)


def paired_losses(loss, fn_a, fn_b, n_chunks: int = 12, chunk: int = 4000) -> tuple[Tensor, Tensor]:
    """``(loss(fn_a), loss(fn_b))`` per chunk of fresh data, same data and noise within a chunk."""
    a, b = [], []
    for k in range(n_chunks):
        x0 = gaussian_data(chunk, seed=1000 + k)
        a.append(loss(fn_a, x0, generator=torch.Generator().manual_seed(k)))
        b.append(loss(fn_b, x0, generator=torch.Generator().manual_seed(k)))
    return torch.stack(a).detach(), torch.stack(b).detach()


def assert_clearly_lower(a: Tensor, b: Tensor, n_se: float = 5.0) -> None:
    """Mean of ``a`` below mean of ``b`` by ``n_se`` standard errors of the paired difference."""
    d = b - a
    se = d.std() / math.sqrt(len(d))
    assert d.mean() > n_se * se, f"difference {d.mean():.3g} is not {n_se} s.e. ({se:.3g}) above 0"


LOSSES_WITH_SCORES = {
    "dsm-vp": lambda: (DSMLoss(VPSDE()), gaussian_score(VPSDE())),
    "dsm-ve-stratified": lambda: (DSMLoss(VESDE(sigma_max=5.0), time_sampling="stratified"), gaussian_score(VESDE(sigma_max=5.0))),
    "dsm-vp-unweighted": lambda: (DSMLoss(VPSDE(), weighting="none", t_min=0.05), gaussian_score(VPSDE())),
    "ism-data": lambda: (ISMLoss(), gaussian_score()),
    "ism-vp": lambda: (ISMLoss(VPSDE()), gaussian_score(VPSDE())),
    "ssm-data": lambda: (SSMLoss(n_projections=2), gaussian_score()),
    "ssm-vp-gaussian": lambda: (SSMLoss(VPSDE(), projection="gaussian"), gaussian_score(VPSDE())),
    "ssm-vr-data": lambda: (SSMLoss(variance_reduced=True), gaussian_score()),
}


@pytest.mark.parametrize("name", list(LOSSES_WITH_SCORES))
def test_exact_score_beats_perturbed_scores(name):
    loss, score = LOSSES_WITH_SCORES[name]()
    for how in PERTURBATIONS:
        exact, spoiled = paired_losses(loss, score, perturbed(score, how))
        assert_clearly_lower(exact, spoiled)


def test_exact_denoiser_beats_perturbed_denoisers_under_edm_loss():
    for loss in (EDMLoss(), EDMLoss(P_mean=-0.5, P_std=1.0, sigma_data=1.0)):
        for how in PERTURBATIONS:
            exact, spoiled = paired_losses(loss, gaussian_denoiser, perturbed(gaussian_denoiser, how))
            assert_clearly_lower(exact, spoiled)


def test_edm_loss_of_exact_denoiser_is_its_expected_value():
    # E‖D*(x) − x0‖² = tr Cov[x0 | x] = tr(σ² C (C + σ²I)⁻¹); EDM weights it by λ(σ).
    loss = EDMLoss(P_mean=-0.5, P_std=0.8, sigma_data=0.9)
    values, _ = paired_losses(loss, gaussian_denoiser, gaussian_denoiser, n_chunks=4, chunk=20000)
    sigma = loss.sample_sigma(400_000, torch.Generator().manual_seed(0), None, DT)
    post = sigma[:, None, None] ** 2 * C @ torch.linalg.inv(C + sigma[:, None, None] ** 2 * I2)
    expected = (loss.weight(sigma) * post.diagonal(dim1=1, dim2=2).sum(1)).mean()
    assert values.mean().item() == pytest.approx(expected.item(), rel=0.03)


def test_edm_preconditioning_tends_to_the_identity_at_small_sigma():
    c_skip, c_out, c_in, _ = edm_coefficients(torch.tensor([1e-8, 1e-4, 1e4]), sigma_data=0.5)
    assert c_skip[0] == pytest.approx(1.0) and c_out[0] == pytest.approx(0.0, abs=1e-7)
    assert c_skip[2] == pytest.approx(0.0, abs=1e-8) and c_out[2] == pytest.approx(0.5, rel=1e-6)
    class Raw(nn.Module):  # any network with a non-zero output
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(2, 2)

        def forward(self, x, c):
            return self.lin(x) + c[:, None]

    torch.manual_seed(0)
    D = EDMPrecond(Raw(), sigma_data=0.5)
    x = torch.randn(5, 2)
    assert torch.allclose(D(x, torch.full((5,), 1e-6)), x, atol=1e-5)
    assert not torch.allclose(D(x, torch.full((5,), 1.0)), x, atol=1e-2)


# -- gradients agree in expectation -----------------------------------------------------------
class LinearScore(nn.Module):
    """``s(x) = A x + b`` (ignores t), a model whose gradients are easy to reason about."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(2, 2).double()
        with torch.no_grad():
            self.lin.weight.copy_(torch.tensor([[-0.5, 0.2], [0.1, -1.2]]))
            self.lin.bias.copy_(torch.tensor([0.3, 0.1]))

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        return self.lin(x)


def grad_of(loss_value: Tensor, model: nn.Module) -> Tensor:
    grads = torch.autograd.grad(loss_value, list(model.parameters()))
    return torch.cat([g.flatten() for g in grads])  # (6,): dA (row-major), db


def mean_and_se(rows: list[Tensor]) -> tuple[Tensor, Tensor]:
    g = torch.stack(rows)
    return g.mean(0), g.std(0) / math.sqrt(len(rows))


def test_ism_on_perturbed_data_matches_dsm_gradient_and_closed_form():
    """At one noise level σ: DSM (Song et al. 2021 Eq. 7, λ = 1) = 2·ISM on p_σ + const."""
    sigma, n_chunks, chunk = 0.5, 30, 4000
    model = LinearScore()
    dsm = DSMLoss(EDMSDE(), weighting="none", t_min=sigma, T=sigma)  # x_t = x0 + σ z, t = σ fixed
    ism = ISMLoss(None, fixed_t=sigma)
    g_dsm, g_ism = [], []
    for k in range(n_chunks):
        x0 = gaussian_data(chunk, seed=k)
        g_dsm.append(grad_of(dsm(model, x0, generator=torch.Generator().manual_seed(k)), model))
        x_sigma = gaussian_data(chunk, seed=10_000 + k)
        x_sigma = x_sigma + sigma * torch.randn(x_sigma.shape, dtype=DT, generator=torch.Generator().manual_seed(20_000 + k))
        g_ism.append(grad_of(ism(model, x_sigma), model))
    m_dsm, se_dsm = mean_and_se(g_dsm)
    m_ism, se_ism = mean_and_se(g_ism)
    assert (m_dsm.abs() > 10 * se_dsm).sum() >= 4  # the gradients are resolved, not noise
    se = torch.sqrt(se_dsm**2 + 4 * se_ism**2)
    assert torch.all((m_dsm - 2 * m_ism).abs() < 4 * se + 1e-9), (m_dsm, 2 * m_ism, se)
    # closed form: ∇_A ISM = A E[xxᵀ] + b mᵀ + I, ∇_b ISM = A m + b, with x ~ N(m, C + σ²I)
    A, b = model.lin.weight.detach(), model.lin.bias.detach()
    second = C + sigma**2 * I2 + torch.outer(M, M)
    exact = torch.cat([(A @ second + torch.outer(b, M) + I2).flatten(), A @ M + b])
    assert torch.all((m_ism - exact).abs() < 4 * se_ism + 1e-9), (m_ism, exact, se_ism)


@pytest.mark.parametrize(
    "ssm",
    [SSMLoss(), SSMLoss(projection="gaussian"), SSMLoss(variance_reduced=True), SSMLoss(n_projections=3)],
    ids=["rademacher", "gaussian", "vr", "3-projections"],
)
def test_ssm_gradient_matches_ism_in_expectation(ssm):
    """``E_v[vᵀ∇(vᵀs) + ½(vᵀs)²] = tr ∇s + ½‖s‖²`` (Song et al. 2019), so the gradients agree."""
    model, ism = LinearScore(), ISMLoss()
    diffs = []
    for k in range(30):
        x = gaussian_data(2000, seed=k)  # the same points for both: only v differs
        g_ssm = grad_of(ssm(model, x, generator=torch.Generator().manual_seed(k)), model)
        diffs.append(g_ssm - grad_of(ism(model, x), model))
    mean, se = mean_and_se(diffs)
    assert torch.all(mean.abs() < 4 * se + 1e-9), (mean, se)


def test_ssm_and_ism_agree_for_a_nonlinear_network_with_an_sde():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(3, 32), nn.SiLU(), nn.Linear(32, 2)).double()

    def score(x, t):
        return net(torch.cat([x, t[:, None]], 1))

    sde = VPSDE()
    a, b = [], []
    for k in range(20):
        x0 = gaussian_data(2000, seed=k)
        a.append(ISMLoss(sde)(score, x0, generator=torch.Generator().manual_seed(k)).detach())
        b.append(SSMLoss(sde, n_projections=4)(score, x0, generator=torch.Generator().manual_seed(k)).detach())
    d = torch.stack(b) - torch.stack(a)  # same t and x_t (same generator draws them first)
    assert d.mean().abs() < 4 * d.std() / math.sqrt(len(d)) + 1e-9


# -- small pieces -------------------------------------------------------------------------------
def test_divergence_is_exact():
    x = torch.randn(7, 3, dtype=DT, requires_grad=True)
    A = torch.randn(3, 3, dtype=DT)
    assert torch.allclose(divergence(x @ A.T, x), torch.full((7,), A.trace().item(), dtype=DT))
    assert torch.allclose(divergence(torch.sin(x) * x[:, :1], x), (torch.cos(x) * x[:, :1]).sum(1) + torch.sin(x[:, 0]))


def test_stratified_times_cover_every_bin_once():
    t = sample_times(64, 0.1, 0.9, stratified=True, generator=torch.Generator().manual_seed(0), dtype=DT)
    bins = torch.floor((t - 0.1) / 0.8 * 64).long()
    assert sorted(bins.tolist()) == list(range(64))
    u = sample_times(64, 0.1, 0.9, generator=torch.Generator().manual_seed(0))
    assert u.min() >= 0.1 and u.max() <= 0.9
    assert torch.equal(sample_times(5, 0.3, 0.3), torch.full((5,), 0.3))


@pytest.mark.parametrize(
    "make",
    [lambda: DSMLoss(VPSDE()), lambda: ISMLoss(VPSDE()), lambda: SSMLoss(VPSDE()), lambda: EDMLoss()],
    ids=["dsm", "ism", "ssm", "edm"],
)
def test_losses_are_reproducible_with_a_generator_and_give_gradients(make):
    loss = make()
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(3, 16), nn.SiLU(), nn.Linear(16, 2))

    def model(x, t):
        return net(torch.cat([x, t[:, None]], 1))

    x0 = gaussian_data(256, seed=0).float()
    a = loss(model, x0, generator=torch.Generator().manual_seed(1))
    b = loss(model, x0, generator=torch.Generator().manual_seed(1))
    c = loss(model, x0, generator=torch.Generator().manual_seed(2))
    assert a.ndim == 0 and torch.isfinite(a)
    assert torch.equal(a, b) and not torch.equal(a, c)
    a.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in net.parameters())
    with torch.no_grad():  # evaluation only: no graph is kept
        assert not loss(model, x0, generator=torch.Generator().manual_seed(1)).requires_grad


def test_bad_loss_options_are_rejected():
    with pytest.raises(ValueError):
        DSMLoss(VPSDE(), weighting="nope")
    with pytest.raises(ValueError):
        DSMLoss(VPSDE(), time_sampling="nope")
    with pytest.raises(ValueError):
        DSMLoss(VPSDE(), t_min=0.5, T=0.1)
    with pytest.raises(ValueError):
        SSMLoss(projection="nope")
    with pytest.raises(ValueError):
        EDMLoss(sigma_data=0.0)


def test_dsm_weighting_options():
    """``λ = std²`` and ``λ = 1`` differ by exactly the factor std² at a single noise level."""
    sde, t0 = VPSDE(), 0.3
    x0, score = gaussian_data(500, 0), perturbed(gaussian_score(VPSDE()), "shift")
    g = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    weighted = DSMLoss(sde, t_min=t0, T=t0)(score, x0, generator=g())
    plain = DSMLoss(sde, weighting="none", t_min=t0, T=t0)(score, x0, generator=g())
    custom = DSMLoss(sde, weighting=lambda t: 3 * torch.ones_like(t), t_min=t0, T=t0)(score, x0, generator=g())
    std2 = sde.std(torch.tensor(t0, dtype=DT)) ** 2
    assert weighted.item() == pytest.approx((std2 * plain).item(), rel=1e-6)
    assert custom.item() == pytest.approx(3 * plain.item(), rel=1e-6)


# -- the EDM loss at fixed noise levels ---------------------------------------------------------
class ZeroNet(nn.Module):
    """``F = 0``: the preconditioned denoiser is ``D = c_skip x``."""

    def forward(self, x: Tensor, c_noise: Tensor) -> Tensor:
        return torch.zeros_like(x)


def test_edm_loss_at_sigma_of_the_zero_network_is_the_dimension():
    """λ E‖c_skip x − x0‖² = λ dim [(1 − c_skip)² σ_d² + c_skip² σ²] = λ dim c_out² = dim
    for data with E‖x0‖² = dim σ_d² (here ±σ_d in every coordinate, not Gaussian)."""
    sd, dim = 1.5, 3
    signs = 2 * torch.randint(0, 2, (40_000, dim), generator=torch.Generator().manual_seed(0)) - 1
    x0 = sd * signs.to(DT)
    sigma = torch.tensor([0.01, 0.3, 1.5, 7.0, 80.0], dtype=DT)
    values = EDMLoss(sigma_data=sd).at_sigma(EDMPrecond(ZeroNet(), sd), x0, sigma,
                                              generator=torch.Generator().manual_seed(1))
    assert values.shape == sigma.shape
    assert torch.allclose(values, torch.full_like(sigma, float(dim)), rtol=0.02)


def test_edm_loss_at_sigma_of_the_exact_denoiser():
    # E‖D*(x) − x0‖² = tr(σ² C (C + σ² I)⁻¹), weighted by λ(σ).
    loss = EDMLoss(sigma_data=0.9)
    sigma = torch.tensor([0.05, 0.5, 2.0, 20.0], dtype=DT)
    values = loss.at_sigma(gaussian_denoiser, gaussian_data(100_000, 3), sigma,
                           generator=torch.Generator().manual_seed(2))
    post = sigma[:, None, None] ** 2 * C @ torch.linalg.inv(C + sigma[:, None, None] ** 2 * I2)
    expected = loss.weight(sigma) * post.diagonal(dim1=1, dim2=2).sum(1)
    assert torch.allclose(values, expected, rtol=0.02)
    # P_std = 0 puts all training at σ = exp(P_mean): the loss is the curve at that σ.
    fixed = EDMLoss(P_mean=math.log(0.5), P_std=0.0, sigma_data=0.9)
    x0 = gaussian_data(100_000, 4)
    full = fixed(gaussian_denoiser, x0, generator=torch.Generator().manual_seed(3))
    assert full.item() == pytest.approx(float(expected[1]), rel=0.02)


def test_log_sigma_density_of_uniform_times():
    """VP: d ln σ/dt = β(t)(1 + σ²)/(2σ²), a density in ln σ that integrates to 1 and matches a
    histogram of ln σ(t) for t ~ U(eps, T); VE: d ln σ/dt ≈ ln(σ_max/σ_min)."""
    vp = VPSDE()
    t = torch.linspace(vp.t_min, vp.T, 2001, dtype=DT)
    log_s, p = log_sigma_density(vp, t)
    s = log_s.exp()
    assert torch.allclose(p, 2 * s**2 / ((vp.T - vp.t_min) * vp.beta(t) * (1 + s**2)), rtol=1e-9)
    assert torch.trapezoid(p, log_s).item() == pytest.approx(1.0, rel=1e-4)
    # A histogram of ln σ(t) for uniform t, against P(a ≤ ln σ ≤ b) = (t(e^b) − t(e^a))/(T − eps).
    u = sample_times(400_000, vp.t_min, vp.T, generator=torch.Generator().manual_seed(0), dtype=DT)
    edges = torch.linspace(-3.0, 4.0, 8, dtype=DT)
    hist = torch.histogram(torch.log(vp.sigma(u)), bins=edges).hist / len(u)
    cdf = vp.t_from_sigma(edges.exp()) / (vp.T - vp.t_min)
    assert torch.allclose(hist, cdf[1:] - cdf[:-1], atol=3e-3)
    # VE: σ(t)² = g(t)² − σ_min² with g the geometric schedule, so d ln σ/dt = ln(σ_max/σ_min) g²/σ²,
    # which tends to the constant ln(σ_max/σ_min) once g ≫ σ_min.
    ve = VESDE()
    t = torch.linspace(0.02, 1.0, 50, dtype=DT)
    log_s, p = log_sigma_density(ve, t)
    g2 = ve.geometric_sigma(t) ** 2
    assert torch.allclose(p, log_s.exp() ** 2 / (g2 * (ve.T - ve.t_min) * math.log(5000.0)), rtol=1e-9)
    assert p[-1].item() == pytest.approx(1 / math.log(5000.0), rel=1e-4)


def test_min_snr_weighting_is_min_snr_gamma_on_the_x0_residual():
    """Hang et al. 2023: DSM with min_snr_weighting(γ) equals E[min(SNR, γ)·‖x̂₀ − x₀‖²], where
    x̂₀ is the Tweedie estimate of the same score model; for SNR ≤ γ it is the plain ε-loss."""
    from scoretut.schedules import DiscreteVP

    sde = DiscreteVP.linear(1000)
    weight = min_snr_weighting(sde, 5.0)
    t = torch.arange(1.0, 1001.0, dtype=torch.float64)
    snr = sde.scale(t) ** 2 / sde.std(t) ** 2
    assert torch.allclose(weight(t)[snr <= 5], sde.std(t)[snr <= 5] ** 2, rtol=1e-12)
    assert torch.allclose(weight(t)[snr > 5], 5 * sde.std(t)[snr > 5] ** 2 / snr[snr > 5],
                          rtol=1e-12)  # fmt: skip
    torch.manual_seed(0)
    A = torch.randn(4, 4, dtype=torch.float64) * 0.1

    def score(x, t):  # any model: a time-dependent linear map
        return -(x + x @ A) / bcast(sde.std(t), x)

    x0 = torch.randn(4096, 4, dtype=torch.float64)
    loss = DSMLoss(sde, weighting=weight, t_grid=sde.train_grid())
    got = loss(score, x0, torch.Generator().manual_seed(3))
    g = torch.Generator().manual_seed(3)  # the same draws: times, then the noise
    tt = loss.times(x0, g)
    x_t, _ = sde.perturb(x0, tt, g)
    a, s = bcast(sde.scale(tt), x0), bcast(sde.std(tt), x0)
    x0_hat = (x_t + s**2 * score(x_t, tt)) / a
    snr_t = sde.scale(tt) ** 2 / sde.std(tt) ** 2
    want = (snr_t.clamp(max=5.0) * (x0_hat - x0).pow(2).sum(1)).mean()
    assert torch.allclose(got, want, rtol=1e-9)
    with pytest.raises(ValueError, match="gamma > 0"):
        min_snr_weighting(sde, 0.0)
