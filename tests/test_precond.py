"""Preconditioning of Karras et al. (2022, Table 1): the four coefficients of VP, VE, iDDPM, EDM."""

import math

import pytest
import torch

from scoretut.parametrisation import (EDMPrecond, IDDPMPrecond, PRECONDS, VEPrecond, VPPrecond, edm_coefficients,
                                      iddpm_coefficients, ve_coefficients, vp_coefficients)
from scoretut.schedules import iddpm_sigmas
from scoretut.sde import VPSDE

SIGMAS = torch.tensor([0.002, 0.05, 0.5, 1.0, 3.0, 20.0, 80.0], dtype=torch.float64)
LAMBDA = 0.7  # variance of the 1-D Gaussian data used below


def exact_denoiser(x_hat, sigma):
    """E[x0 | x0 + σ n] for x0 ~ N(0, λ): λ/(λ + σ²) x̂."""
    return LAMBDA / (LAMBDA + sigma**2) * x_hat


def test_vp_row():
    beta_d, beta_min, M = 19.9, 0.1, 1000
    t = torch.tensor([1e-5, 1e-3, 0.1, 0.5, 1.0], dtype=torch.float64)
    sigma = torch.sqrt(torch.exp(0.5 * beta_d * t**2 + beta_min * t) - 1)  # Table 1, σ(t) of VP
    c_skip, c_out, c_in, c_noise = vp_coefficients(sigma, beta_d, beta_min, M)
    assert torch.all(c_skip == 1)
    assert torch.allclose(c_out, -sigma)
    assert torch.allclose(c_in, 1 / torch.sqrt(sigma**2 + 1))
    assert torch.allclose(c_noise, (M - 1) * t, rtol=1e-9, atol=1e-9)


def test_vp_network_sees_the_ddpm_input():
    # c_in x̂ = x̂/√(σ²+1) is s(t) x̂ = x_t: the VP network gets exactly the DDPM/VP state.
    sde = VPSDE(0.1, 20.0)
    t = torch.tensor([1e-3, 0.2, 0.7, 1.0], dtype=torch.float64)
    c_in = vp_coefficients(sde.sigma(t), 19.9, 0.1)[2]
    assert torch.allclose(c_in, sde.scale(t), rtol=1e-12)


def test_ve_row():
    c_skip, c_out, c_in, c_noise = ve_coefficients(SIGMAS)
    assert torch.all(c_skip == 1) and torch.all(c_in == 1)
    assert torch.allclose(c_out, SIGMAS)
    assert torch.allclose(c_noise, torch.log(0.5 * SIGMAS))


def test_edm_row_and_unit_variances():
    sd = 0.5
    c_skip, c_out, c_in, c_noise = edm_coefficients(SIGMAS, sd)
    assert torch.allclose(c_skip, sd**2 / (SIGMAS**2 + sd**2))
    assert torch.allclose(c_out, SIGMAS * sd / torch.sqrt(SIGMAS**2 + sd**2))
    assert torch.allclose(c_in, 1 / torch.sqrt(SIGMAS**2 + sd**2))
    assert torch.allclose(c_noise, 0.25 * torch.log(SIGMAS))
    # For data of std σ_d: Var[c_in (x0 + σn)] = 1 and the target (x0 − c_skip(x0 + σn))/c_out has
    # variance ((1 − c_skip)² σ_d² + c_skip² σ²)/c_out² = 1 at every σ (Karras et al. App. B.6).
    assert torch.allclose(c_in**2 * (sd**2 + SIGMAS**2), torch.ones_like(SIGMAS))
    target_var = ((1 - c_skip) ** 2 * sd**2 + c_skip**2 * SIGMAS**2) / c_out**2
    assert torch.allclose(target_var, torch.ones_like(SIGMAS))


def test_iddpm_levels():
    M, C_2 = 1000, 0.008
    u = iddpm_sigmas(M, 0.001, C_2)
    assert u.shape == (M + 1,) and u[M] == 0 and torch.all(u[1:] < u[:-1])
    # Where the clip is inactive (j ≥ 1) the recursion telescopes: u_j² + 1 = ᾱ_M / ᾱ_j.
    j = torch.arange(1, M + 1, dtype=torch.float64)
    alpha_bar = torch.sin(0.5 * math.pi * j / (M * (C_2 + 1))) ** 2
    assert torch.allclose(u[1:] ** 2 + 1, alpha_bar[-1] / alpha_bar, rtol=1e-9)
    # c_noise at a tabulated level u_j is the DDPM step index M − 1 − j.
    idx = torch.tensor([0, 1, 10, 500, 998])
    c_skip, c_out, c_in, c_noise = iddpm_coefficients(u[idx], u)
    assert torch.equal(c_noise, (M - 1 - idx).to(torch.float64))
    assert torch.allclose(c_out, -u[idx]) and torch.allclose(c_in, 1 / torch.sqrt(u[idx] ** 2 + 1))


class Oracle(torch.nn.Module):
    """A "network" that knows the exact Gaussian denoiser and reads σ back from c_noise and c_in.

    It returns what each parametrisation should predict: ε (VP, iDDPM), −ε (VE), or EDM's
    F-target. Wrapped in the matching preconditioner it must give the exact denoiser back, which
    checks c_in, c_noise, c_skip and c_out together.
    """

    def __init__(self, kind):
        super().__init__()
        self.kind = kind
        self.u = iddpm_sigmas()

    def forward(self, x_in, c_noise):
        c_noise = c_noise.to(torch.float64)
        if self.kind == "vp":
            sigma = VPSDE(0.1, 20.0).sigma(c_noise / 999)
            x_hat = x_in * torch.sqrt(sigma**2 + 1)[:, None]
        elif self.kind == "iddpm":
            sigma = self.u[999 - c_noise.long()]
            x_hat = x_in * torch.sqrt(sigma**2 + 1)[:, None]
        elif self.kind == "ve":
            sigma = 2 * torch.exp(c_noise)
            x_hat = x_in
        else:
            sigma = torch.exp(4 * c_noise)
            x_hat = x_in * torch.sqrt(sigma**2 + 0.25)[:, None]
        s = sigma[:, None]
        d = exact_denoiser(x_hat, s)
        if self.kind in ("vp", "iddpm"):
            return (x_hat - d) / s  # ε̂
        if self.kind == "ve":
            return (d - x_hat) / s  # −ε̂
        c_skip, c_out = 0.25 / (s**2 + 0.25), s * 0.5 / torch.sqrt(s**2 + 0.25)
        return (d - c_skip * x_hat) / c_out


@pytest.mark.parametrize("kind", ["vp", "ve", "iddpm", "edm"])
def test_wrappers_with_an_oracle_give_the_exact_denoiser(kind):
    net = Oracle(kind)
    wrapper = {"vp": VPPrecond(net), "ve": VEPrecond(net), "iddpm": IDDPMPrecond(net), "edm": EDMPrecond(net, 0.5)}[kind]
    assert isinstance(wrapper, PRECONDS[kind])
    sigma = iddpm_sigmas()[torch.tensor([5, 100, 400, 800, 990])] if kind == "iddpm" else SIGMAS[1:]
    x_hat = torch.randn(len(sigma), 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 2
    out = wrapper(x_hat, sigma)
    assert torch.allclose(out, exact_denoiser(x_hat, sigma[:, None]), rtol=1e-9, atol=1e-9)
