"""Couplings of two samples: which point of one set travels to which point of the other.

A coupling of ``p_0`` and ``p_1`` is a joint law ``π(x_0, x_1)`` with those marginals. Flow
matching (:mod:`scoretut.flow`) and the Schrödinger bridge (:mod:`scoretut.bridge`) both train
on pairs drawn from one:

* **independent**: ``π = p_0 ⊗ p_1`` — draw the two ends separately;
* **minibatch OT** (Tong et al. 2024, "Improving and generalizing flow-based generative models
  with minibatch optimal transport", OT-CFM): on minibatches of ``n`` points from each set,
  the plan of

  .. math::  \\min_{π ∈ U(n, n)} \\sum_{ij} π_{ij} \\|x_0^i - x_1^j\\|^2 - \\mathrm{reg}\\, H(π)

  (``reg = 0``: exact optimal transport, ``ot.emd``; ``reg = 2σ²``: the entropic plan of a
  Schrödinger bridge with noise ``σ``, ``ot.sinkhorn``), and pairs drawn from that plan.

Solving the plan at every optimiser step is the slow part on a CPU, so :func:`coupled_pairs`
draws the coupled pairs once, from many minibatch plans, and training draws minibatches of
pairs ``(N, 2, dim)`` from that set (:func:`scoretut.train.train`).
"""

from __future__ import annotations

import math

import numpy as np
import ot
import torch
from torch import Tensor

from scoretut.errors import UsageError


def _np(x: Tensor | np.ndarray) -> np.ndarray:
    return np.asarray(x.detach().cpu().double() if isinstance(x, Tensor) else x, dtype=np.float64)


def split_pairs(pairs: Tensor) -> tuple[Tensor, Tensor]:
    """``(x_0, x_1)`` from pairs ``(batch, 2, dim)``, with a clear error for any other shape."""
    if pairs.ndim != 3 or pairs.shape[1] != 2:
        raise UsageError(f"expected pairs of shape (batch, 2, dim), got {tuple(pairs.shape)}")
    return pairs[:, 0], pairs[:, 1]


def ot_plan(x0: Tensor, x1: Tensor, reg: float = 0.0, *, num_iter: int = 10_000, stop: float = 1e-6) -> Tensor:
    """The OT plan ``π`` ``(n, m)`` (float64, entries sum to 1) between the uniform empirical
    measures on ``x0`` ``(n, d)`` and ``x1`` ``(m, d)`` for the cost ``‖x0_i − x1_j‖²``.

    ``reg = 0``: the exact plan (``ot.emd``). ``reg > 0``: the entropic plan
    ``argmin ⟨π, C⟩ − reg·H(π)`` by Sinkhorn (``ot.sinkhorn``, stopping when the marginal error
    falls below ``stop``); for a Schrödinger bridge with noise ``σ``, ``reg = 2σ²``.
    """
    if reg < 0:
        raise UsageError(f"the entropic regularisation must be >= 0, got {reg}")
    a, b = _np(x0), _np(x1)
    cost = ot.dist(a, b)  # squared Euclidean
    wa, wb = np.full(len(a), 1.0 / len(a)), np.full(len(b), 1.0 / len(b))
    if reg == 0:
        plan = ot.emd(wa, wb, cost)
    else:
        plan = ot.sinkhorn(wa, wb, cost, reg, numItermax=num_iter, stopThr=stop)
    return torch.from_numpy(np.asarray(plan))


def couple(x0: Tensor, x1: Tensor, reg: float = 0.0, generator: torch.Generator | None = None) -> Tensor:
    """Pair every row of ``x0`` with a row of ``x1`` drawn from the plan's conditional
    ``π(j | i) = π_ij / Σ_j π_ij``; returns pairs ``(n, 2, d)``.

    The first marginal is exactly ``x0``; the second is ``x1``'s in expectation (and exactly, as
    a permutation, for the exact plan between sets of equal size).
    """
    j = sample_pairs(ot_plan(x0, x1, reg), generator)
    return torch.stack([x0, x1[j.to(x1.device)]], dim=1)


def sample_pairs(plan: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """For each row ``i`` of ``plan`` ``(n, m)``, one column ``j ~ π(j | i) = π_ij / Σ_j π_ij``;
    returns the indices ``(n,)``. With uniform rows, ``(i, j)`` is then distributed as ``π``."""
    return torch.multinomial(plan / plan.sum(1, keepdim=True), 1, generator=generator).squeeze(1)


def coupled_pairs(data0: Tensor, data1: Tensor, n_pairs: int, *, batch_size: int = 256, reg: float = 0.0,
                  seed: int = 0) -> Tensor:  # fmt: skip
    """``n_pairs`` coupled pairs ``(n_pairs, 2, d)``: minibatches of ``batch_size`` points drawn
    with replacement from each data set are coupled by :func:`couple` (minibatch OT)."""
    if n_pairs < 1 or batch_size < 1:
        raise UsageError(f"need n_pairs >= 1 and batch_size >= 1, got {n_pairs} and {batch_size}")
    gen = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(math.ceil(n_pairs / batch_size)):
        i = torch.randint(len(data0), (batch_size,), generator=gen)
        j = torch.randint(len(data1), (batch_size,), generator=gen)
        out.append(couple(data0[i], data1[j], reg, gen))
    return torch.cat(out)[:n_pairs]


def ot_cost(x0: Tensor, x1: Tensor) -> float:
    """Exact ``W₂²`` between the uniform empirical measures on ``x0`` and ``x1`` (``ot.emd2``,
    squared Euclidean cost)."""
    a, b = _np(x0), _np(x1)
    return float(ot.emd2(np.full(len(a), 1.0 / len(a)), np.full(len(b), 1.0 / len(b)), ot.dist(a, b)))


def transport_cost(x_start: Tensor, x_end: Tensor) -> float:
    """``E‖x_end − x_start‖²`` of a map or a coupling given as paired rows."""
    return float((x_end - x_start).double().pow(2).sum(1).mean())
