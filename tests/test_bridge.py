"""Schrödinger bridge matching: couplings, OT costs, the Brownian bridge, integration, training."""

import numpy as np
import ot
import pytest
import torch

from scoretut import bridge
from scoretut.errors import UsageError
from scoretut.metrics import gaussian_w2
from scoretut.train import TrainConfig, train

M1, C1 = torch.tensor([-1.5, 0.5], dtype=torch.float64), torch.tensor([[0.6, 0.2], [0.2, 0.4]], dtype=torch.float64)
M2, C2 = torch.tensor([1.5, -0.5], dtype=torch.float64), torch.tensor([[0.3, -0.1], [-0.1, 0.8]], dtype=torch.float64)


def gaussian(n, mean, cov, seed):
    g = torch.Generator().manual_seed(seed)
    return mean + torch.randn(n, 2, generator=g, dtype=torch.float64) @ torch.linalg.cholesky(cov).T


def sqrtm(c):
    w, v = torch.linalg.eigh(c)
    return v @ torch.diag(w.sqrt()) @ v.T


def ot_matrix(c1=C1, c2=C2):
    """``A`` of the Gaussian OT map ``T(x) = m₂ + A(x − m₁)``: ``C₁^{-½}(C₁^{½} C₂ C₁^{½})^{½} C₁^{-½}``."""
    r = sqrtm(c1)
    ri = torch.linalg.inv(r)
    return ri @ sqrtm(r @ c2 @ r) @ ri


class ExactOTVelocity(torch.nn.Module):
    """The velocity of McCann's interpolation ``x_t = (1−t)x + tT(x)`` between the Gaussians:
    ``v_t(y) = (A − I)((1−t)I + tA)^{-1}(y − m_t) + m₂ − m₁``."""

    def __init__(self, scale=1.0):
        super().__init__()
        self.A, self.scale = ot_matrix(), scale

    def forward(self, y, t):
        t = t.double()[:, None, None]
        I = torch.eye(2, dtype=torch.float64)
        mt = (1 - t[:, :, 0]) * M1 + t[:, :, 0] * M2
        B = (self.A - I) @ torch.linalg.inv((1 - t) * I + t * self.A)  # (batch, 2, 2)
        v = torch.einsum("bij,bj->bi", B, y.double() - mt) + (M2 - M1)
        return (self.scale * v).to(y.dtype)


# --------------------------------------------------------------------------- couplings and costs


@pytest.mark.parametrize("reg", [0.0, 0.5])
def test_plan_has_the_right_marginals(reg):
    x0, x1 = gaussian(60, M1, C1, 0), gaussian(80, M2, C2, 1)
    plan = bridge.ot_plan(x0, x1, reg)
    assert plan.shape == (60, 80) and bool((plan >= 0).all())
    torch.testing.assert_close(plan.sum(1), torch.full((60,), 1 / 60, dtype=torch.float64), rtol=1e-5, atol=0)
    torch.testing.assert_close(plan.sum(0), torch.full((80,), 1 / 80, dtype=torch.float64), rtol=1e-5, atol=0)


def test_exact_coupling_of_equal_sets_is_a_permutation():
    x0, x1 = gaussian(50, M1, C1, 2), gaussian(50, M2, C2, 3)
    pairs = bridge.couple(x0, x1, 0.0, torch.Generator().manual_seed(0))
    torch.testing.assert_close(pairs[:, 0], x0)
    torch.testing.assert_close(pairs[:, 1].sort(0).values, x1.sort(0).values)
    # the exact plan's pairing costs exactly the empirical W2², and no other pairing costs less
    assert bridge.transport_cost(pairs[:, 0], pairs[:, 1]) == pytest.approx(bridge.ot_cost(x0, x1), rel=1e-9)
    assert bridge.transport_cost(x0, x1) > bridge.ot_cost(x0, x1)


def test_pairs_are_drawn_from_the_plan():
    """Row i keeps x0_i and draws j with π(j | i): joint frequencies → n·π_ij, so the second
    marginal is the plan's, i.e. uniform on x1."""
    x0, x1 = gaussian(20, M1, C1, 4), gaussian(30, M2, C2, 5)
    plan = bridge.ot_plan(x0, x1, 1.0)
    gen = torch.Generator().manual_seed(1)
    draws = 20000
    counts = torch.zeros(20, 30, dtype=torch.float64)
    for _ in range(draws // 1000):
        j = torch.stack([bridge.sample_pairs(plan, gen) for _ in range(1000)])  # (1000, 20)
        counts += torch.nn.functional.one_hot(j, 30).sum(0).double()
    joint = counts / (20 * draws)
    p = 20 * plan  # π(j | i): counts_ij ~ Binomial(draws, p_ij)
    se = (p * (1 - p) / draws).sqrt() / 20
    assert float(((joint - plan).abs() / se.clamp_min(1e-12)).max()) < 5
    torch.testing.assert_close(joint.sum(0), torch.full((30,), 1 / 30, dtype=torch.float64), atol=3e-3, rtol=0)
    pairs = bridge.couple(x0, x1, 1.0, gen)
    torch.testing.assert_close(pairs[:, 0], x0)


def test_exact_ot_cost_matches_the_gaussian_closed_form():
    exact = gaussian_w2(M1, C1, M2, C2) ** 2
    x0, x1 = gaussian(2000, M1, C1, 6), gaussian(2000, M2, C2, 7)
    assert bridge.ot_cost(x0, x1) == pytest.approx(exact, rel=0.03)


def test_entropic_cost_decreases_to_the_exact_cost():
    x0, x1 = gaussian(200, M1, C1, 8), gaussian(200, M2, C2, 9)
    cost = ot.dist(x0.numpy(), x1.numpy())
    exact = bridge.ot_cost(x0, x1)
    costs = [float((bridge.ot_plan(x0, x1, reg).numpy() * cost).sum()) for reg in (4.0, 1.0, 0.25, 0.05)]
    assert all(a > b for a, b in zip(costs, costs[1:])) and costs[-1] > exact
    assert costs[-1] == pytest.approx(exact, rel=0.02)


def test_coupled_pairs_draws_from_both_sets_reproducibly():
    data0, data1 = gaussian(500, M1, C1, 10).float(), gaussian(700, M2, C2, 11).float()
    pairs = bridge.coupled_pairs(data0, data1, 300, batch_size=64, reg=0.5, seed=3)
    assert pairs.shape == (300, 2, 2)
    exact = "donot_use_mm_for_euclid_dist"
    assert bool((torch.cdist(pairs[:, 0], data0, compute_mode=exact).min(1).values == 0).all())
    assert bool((torch.cdist(pairs[:, 1], data1, compute_mode=exact).min(1).values == 0).all())
    torch.testing.assert_close(pairs, bridge.coupled_pairs(data0, data1, 300, batch_size=64, reg=0.5, seed=3))
    # the coupling shortens the pairs: its cost lies nearer W2² than that of independent pairs
    w2sq, independent = gaussian_w2(M1, C1, M2, C2) ** 2, bridge.transport_cost(data0[:300], data1[:300])
    assert w2sq < bridge.transport_cost(pairs[:, 0], pairs[:, 1]) < (w2sq + independent) / 2


# --------------------------------------------------------------------------- the Brownian bridge


def test_brownian_bridge_velocity_and_score_are_those_of_the_path():
    path = bridge.BrownianBridge(0.7)
    g = torch.Generator().manual_seed(0)
    x0, x1, eps = (torch.randn(32, 2, generator=g, dtype=torch.float64) for _ in range(3))
    t = torch.linspace(0.05, 0.95, 32, dtype=torch.float64).requires_grad_(True)
    xt = path.sample(x0, x1, t, eps)
    dxdt = torch.stack([torch.autograd.grad(xt[:, k].sum(), t, retain_graph=True)[0] for k in range(2)], 1)
    torch.testing.assert_close(path.velocity(xt, x0, x1, t), dxdt)
    x = xt.detach().requires_grad_(True)
    mu = (1 - t[:, None]) * x0 + t[:, None] * x1
    logp = torch.distributions.Normal(mu.detach(), path.std(t.detach())[:, None]).log_prob(x).sum()
    torch.testing.assert_close(path.score(x, x0, x1, t.detach()), torch.autograd.grad(logp, x)[0])
    torch.testing.assert_close(path.std(t.detach()) ** 2, 0.49 * t.detach() * (1 - t.detach()))


def test_integrate_follows_an_exact_velocity_both_ways():
    model = bridge.BridgeModel(ExactOTVelocity(), None, 0.0)
    x = gaussian(200, M1, C1, 12)
    A, te = ot_matrix(), bridge.T_EPS
    T = M2 + (x - M1) @ A.T
    start, end = (1 - te) * x + te * T, te * x + (1 - te) * T
    steps = list(bridge.integrate(model, start, steps=50))
    assert len(steps) == 51 and steps[0].t == pytest.approx(te) and steps[-1].t == pytest.approx(1 - te)
    torch.testing.assert_close(steps[-1].x, end, atol=1e-5, rtol=0)
    torch.testing.assert_close(bridge.transport(model, end, reverse=True, steps=50), start, atol=1e-5, rtol=0)


def test_loss_vanishes_for_the_exact_field_on_exact_pairs():
    x = gaussian(256, M1, C1, 13)
    pairs = torch.stack([x, M2 + (x - M1) @ ot_matrix().T], 1)
    loss = bridge.BridgeLoss()
    exact = loss(bridge.BridgeModel(ExactOTVelocity(), None, 0.0), pairs, torch.Generator().manual_seed(0))
    wrong = loss(bridge.BridgeModel(ExactOTVelocity(1.1), None, 0.0), pairs, torch.Generator().manual_seed(0))
    assert float(exact) < 1e-20 and float(wrong) > 1e-3


# --------------------------------------------------------------------------- a learned bridge


def test_learned_bridge_moves_mean_and_covariance_to_the_target():
    sigma = 0.3
    data0, data1 = gaussian(8000, M1, C1, 20).float(), gaussian(8000, M2, C2, 21).float()
    pairs = bridge.coupled_pairs(data0, data1, 8192, batch_size=256, reg=2 * sigma**2, seed=0)
    torch.manual_seed(0)
    model = bridge.bridge_model(sigma, hidden=64, depth=2, emb_dim=32)
    cfg = TrainConfig(steps=400, batch_size=256, lr=3e-3, warmup=50, ema_decay=0.98, log_every=100, progress=False)
    model = train(model, bridge.BridgeLoss(), pairs, cfg).ema
    x0, x1 = gaussian(4000, M1, C1, 30).float(), gaussian(4000, M2, C2, 31).float()
    gen = torch.Generator().manual_seed(0)
    for stochastic in (False, True):
        fwd = bridge.transport(model, x0, steps=60, stochastic=stochastic, generator=gen).double()
        bwd = bridge.transport(model, x1, reverse=True, steps=60, stochastic=stochastic, generator=gen).double()
        for out, mean, cov in ((fwd, M2, C2), (bwd, M1, C1)):
            torch.testing.assert_close(out.mean(0), mean, atol=0.1, rtol=0)
            torch.testing.assert_close(torch.cov(out.T), cov, atol=0.12, rtol=0)
    # the ODE map is close to optimal: its cost is near W2² (and a map cannot beat W2² by much)
    fwd = bridge.transport(model, x0, steps=60).double()
    w2sq = gaussian_w2(M1, C1, M2, C2) ** 2
    assert bridge.transport_cost(x0.double(), fwd) == pytest.approx(w2sq, rel=0.1)


def test_bad_inputs_raise_usage_errors():
    x = torch.zeros(4, 2)
    with pytest.raises(UsageError):
        bridge.ot_plan(x, x, -1.0)
    with pytest.raises(UsageError):
        bridge.BrownianBridge(-0.1)
    with pytest.raises(UsageError):
        bridge.BridgeModel(torch.nn.Linear(2, 2), None, 0.5)
    with pytest.raises(UsageError):
        bridge.BridgeLoss(t_eps=0.7)
    with pytest.raises(UsageError):
        bridge.BridgeLoss()(bridge.bridge_model(0.5, hidden=8, depth=1, emb_dim=8), x, None)
    with pytest.raises(UsageError):
        list(bridge.integrate(bridge.bridge_model(0.0, hidden=8, depth=1, emb_dim=8), x, stochastic=True))
    with pytest.raises(UsageError):
        bridge.coupled_pairs(x, x, 0)
    assert isinstance(bridge.ot_plan(x.numpy() if False else x, x + 1), torch.Tensor)
    assert np.isfinite(bridge.ot_cost(x, x + 1))
