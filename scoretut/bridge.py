"""Schrödinger bridges between two data sets by simulation-free score and flow matching.

The Schrödinger bridge (SB) between ``p_0`` and ``p_1`` is the process closest in KL to a
Brownian motion ``σ W`` that starts in ``p_0`` and ends in ``p_1``. Its law on the endpoints is
the entropic optimal-transport plan ``π_{2σ²}`` (squared Euclidean cost, regularisation
``2σ²``), and given its endpoints it is a Brownian bridge (Léonard 2014). So, following
Tong et al. (2024, "Simulation-free Schrödinger bridges via score and flow matching", SB-CFM):

.. math::  (x_0, x_1) \\sim π_{2σ^2}, \\quad t \\sim U(0,1), \\quad
           x_t = (1-t)\\,x_0 + t\\,x_1 + σ\\sqrt{t(1-t)}\\,ε,

whose conditional velocity and score are

.. math::  u_t = x_1 - x_0 + \\frac{1-2t}{2t(1-t)}\\big(x_t - μ_t\\big), \\qquad
           \\nabla\\log p_t(x_t \\mid x_0, x_1) = -\\frac{x_t - μ_t}{σ^2 t(1-t)} = -\\frac{ε}{λ(t)},

with ``μ_t = (1−t)x_0 + t x_1`` and ``λ(t) = σ√(t(1−t))``. Regressing a velocity network on
``u_t`` and a noise network ``e_θ ≈ ε`` (the score loss ``λ² ‖s_θ − ∇log p‖²`` with
``s_θ = −e_θ/λ``) gives the marginal fields of the bridge. Its marginals then follow

* the ODE ``dx/dt = v_θ(x, t)`` in either direction, and
* the SDEs ``dx = [v_θ + ½σ² s_θ] dt + σ dW`` forward and ``dx = [−v_θ + ½σ² s_θ] dτ + σ dW``
  backward in ``τ = 1 − t``.

With ``σ → 0`` this is OT-CFM (Tong et al. 2024, "Improving and generalizing flow-based
generative models with minibatch optimal transport"), whose ODE map approaches the OT map:
the mean path ``μ_t`` is :class:`scoretut.flow.LinearPath` and the couplings are those of
:mod:`scoretut.couplings` (minibatch plans from POT, ``ot.sinkhorn``, or ``ot.emd`` for
``σ = 0``), both shared with flow matching. The coupling functions are re-exported here
(``bridge.couple``, ``bridge.coupled_pairs``...).
"""

from __future__ import annotations

import math
from typing import Iterator

import torch
from torch import Tensor, nn

from scoretut.couplings import (  # noqa: F401  (the bridge's couplings, re-exported)
    couple, coupled_pairs, ot_cost, ot_plan, sample_pairs, split_pairs, transport_cost)
from scoretut.errors import UsageError
from scoretut.flow import LinearPath, velocity_net
from scoretut.losses import sample_times
from scoretut.sampling import Step, gaussian_noise, heun_steps
from scoretut.sde import bcast

T_EPS = 1e-3
"""Training and integration use ``t ∈ [T_EPS, 1 − T_EPS]``: the conditional velocity and score
are singular at the two ends (``∝ 1/√(t(1−t))``)."""


# --------------------------------------------------------------------------- the bridge


class BrownianBridge:
    """The conditional path ``x_t = μ_t + λ(t) ε`` of a Brownian bridge of noise ``σ`` from
    ``x_0`` to ``x_1`` (module docstring), with its velocity and score. The mean path
    ``μ_t = (1−t) x_0 + t x_1`` is flow matching's :class:`~scoretut.flow.LinearPath`."""

    def __init__(self, sigma: float):
        if sigma < 0:
            raise UsageError(f"the bridge noise sigma must be >= 0, got {sigma}")
        self.sigma = float(sigma)
        self.mean_path = LinearPath()

    def std(self, t: Tensor) -> Tensor:
        """``λ(t) = σ√(t(1−t))``."""
        return self.sigma * torch.sqrt(t * (1 - t))

    def sample(self, x0: Tensor, x1: Tensor, t: Tensor, eps: Tensor) -> Tensor:
        """``x_t = (1−t) x_0 + t x_1 + λ(t) ε``."""
        return self.mean_path.sample(x0, x1, t) + bcast(self.std(t), x0) * eps

    def velocity(self, x: Tensor, x0: Tensor, x1: Tensor, t: Tensor) -> Tensor:
        """``u_t = x_1 − x_0 + (1−2t)/(2t(1−t)) (x − μ_t)``."""
        t_ = bcast(t, x)
        mu = self.mean_path.sample(x0, x1, t)
        return self.mean_path.velocity(x0, x1, t) + (1 - 2 * t_) / (2 * t_ * (1 - t_)) * (x - mu)

    def score(self, x: Tensor, x0: Tensor, x1: Tensor, t: Tensor) -> Tensor:
        """``∇log p_t(x | x_0, x_1) = −(x − μ_t)/(σ² t(1−t))``."""
        t_ = bcast(t, x)
        return -(x - self.mean_path.sample(x0, x1, t)) / (self.sigma**2 * t_ * (1 - t_))


class BridgeModel(nn.Module):
    """Velocity ``v_θ(x, t)`` and, for ``σ > 0``, noise ``e_θ(x, t)`` networks of a bridge of
    noise ``sigma``; ``score(x, t) = −e_θ/λ(t)``. Both networks are called as ``net(x, t)``
    with ``t`` of shape ``(batch,)``."""

    def __init__(self, velocity_net: nn.Module, noise_net: nn.Module | None, sigma: float):
        super().__init__()
        if sigma > 0 and noise_net is None:
            raise UsageError("a bridge with sigma > 0 needs a noise network for its score")
        self.velocity_net, self.noise_net, self.sigma = velocity_net, noise_net, float(sigma)
        self.path = BrownianBridge(sigma)

    def velocity(self, x: Tensor, t: Tensor) -> Tensor:
        return self.velocity_net(x, t)

    def score(self, x: Tensor, t: Tensor) -> Tensor:
        if self.noise_net is None:
            raise UsageError("this bridge has sigma = 0 and no score; integrate it as an ODE")
        return -self.noise_net(x, t) / bcast(self.path.std(t), x)

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        return self.velocity(x, t)


def bridge_model(sigma: float, hidden: int = 128, depth: int = 3, emb_dim: int = 64) -> BridgeModel:
    """A :class:`BridgeModel` with two :func:`scoretut.flow.velocity_net` networks (time
    embedded with ``cond_scale = 1000``, since ``t ∈ [0, 1]``); seed torch before calling."""
    make = lambda: velocity_net(dim=2, hidden=hidden, depth=depth, emb_dim=emb_dim)  # noqa: E731
    return BridgeModel(make(), make() if sigma > 0 else None, sigma)


class BridgeLoss:
    """SB-CFM loss (Tong et al. 2024): ``loss_fn(model, pairs, generator)`` for
    :func:`scoretut.train.train`, with ``pairs`` ``(batch, 2, d)`` from :func:`coupled_pairs`.

    .. math::  \\mathcal L = \\mathbb E\\big[\\|v_θ(x_t, t) - u_t\\|^2 + \\|e_θ(x_t, t) - ε\\|^2\\big],
               \\quad t \\sim U(t_ε, 1 - t_ε)

    (the second term is ``λ(t)² ‖s_θ − ∇log p_t(x_t | x_0, x_1)‖²``; it is dropped for ``σ = 0``).
    ``time_sampling`` is ``"uniform"`` or ``"stratified"`` (:func:`scoretut.losses.sample_times`).
    """

    def __init__(self, t_eps: float = T_EPS, time_sampling: str = "uniform"):
        if not 0 < t_eps < 0.5:
            raise UsageError(f"t_eps must lie in (0, 0.5), got {t_eps}")
        if time_sampling not in ("uniform", "stratified"):
            raise UsageError(f"time_sampling must be 'uniform' or 'stratified', got {time_sampling!r}")
        self.t_eps, self.stratified = float(t_eps), time_sampling == "stratified"

    def __call__(self, model: BridgeModel, pairs: Tensor, generator: torch.Generator | None = None) -> Tensor:
        x0, x1 = split_pairs(pairs)
        t = sample_times(len(x0), self.t_eps, 1 - self.t_eps, stratified=self.stratified,
                         generator=generator, device=x0.device, dtype=x0.dtype)  # fmt: skip
        eps = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
        path = model.path
        x_t = path.sample(x0, x1, t, eps)
        loss = (model.velocity(x_t, t) - path.velocity(x_t, x0, x1, t)).pow(2).sum(1)
        if model.noise_net is not None:
            loss = loss + (model.noise_net(x_t, t) - eps).pow(2).sum(1)
        return loss.mean()


@torch.no_grad()
def integrate(model: BridgeModel, x: Tensor, *, reverse: bool = False, steps: int = 100, stochastic: bool = False,
              generator: torch.Generator | None = None, t_eps: float = T_EPS) -> Iterator[Step]:  # fmt: skip
    """Carry samples ``x`` of one end of the bridge to the other over ``t ∈ [t_ε, 1 − t_ε]``
    (forward from ``t_ε``, or ``reverse`` from ``1 − t_ε``) in ``steps`` uniform steps,
    yielding a :class:`~scoretut.sampling.Step` after each (the first is the start).

    ODE (``stochastic=False``): Heun's method on ``dx/dt = v_θ``
    (:func:`scoretut.sampling.heun_steps`). SDE: Euler–Maruyama with drift
    ``v_θ ± ½σ² s_θ`` (``+`` forward, ``−`` in reverse, where ``dt < 0``) and noise ``σ√|h| z``;
    the last step adds no noise.
    """
    if steps < 1:
        raise UsageError(f"the number of integration steps must be positive, got {steps}")
    if stochastic and model.noise_net is None:
        raise UsageError("a bridge with sigma = 0 has no SDE; integrate it with stochastic=False")
    ts = torch.linspace(t_eps, 1 - t_eps, steps + 1, dtype=torch.float64)
    if reverse:
        ts = ts.flip(0)
    tt = lambda t: torch.full((x.shape[0],), t, dtype=x.dtype, device=x.device)  # noqa: E731
    if not stochastic:
        yield from heun_steps(lambda y, t: model.velocity(y, tt(t)), x, ts)
        return
    sign = -1.0 if reverse else 1.0
    yield Step(0, float(ts[0]), x)
    for i in range(steps):
        t, t_next = float(ts[i]), float(ts[i + 1])
        h = t_next - t
        drift = model.velocity(x, tt(t)) + sign * 0.5 * model.sigma**2 * model.score(x, tt(t))
        x = x + h * drift
        if i < steps - 1:
            x = x + model.sigma * math.sqrt(abs(h)) * gaussian_noise(x, generator)
        yield Step(i + 1, t_next, x)


def transport(model: BridgeModel, x: Tensor, **options) -> Tensor:
    """The end state of :func:`integrate` (same options)."""
    for step in integrate(model, x, **options):
        x = step.x
    return x
