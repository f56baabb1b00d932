"""Analytic Gaussian data under a linear-Gaussian SDE: exact scores and exact ODE flows.

For data ``x_0 ~ N(m, C)`` the diffused marginal is ``p_t = N(s m, s² C + std² I)``, so the
score is ``−(s² C + std² I)^{-1}(x − s m)`` and the probability-flow ODE maps ``x_T`` to
``x_t = s_t m + A_t A_T^{-1}(x_T − s_T m)`` with ``A_t = (s_t² C + std_t² I)^{1/2}`` (the
eigen-coordinates are only rescaled, since all covariances share ``C``'s eigenvectors).
"""

import torch

from scoretut.sde import SDE, as_time

MEAN = torch.tensor([1.0, -0.5], dtype=torch.float64)
COV = torch.tensor([[1.5, 0.6], [0.6, 0.8]], dtype=torch.float64)


def marginal_cov(sde: SDE, t: torch.Tensor, cov=COV) -> torch.Tensor:
    s, std = sde.scale(t), sde.std(t)
    return s[:, None, None] ** 2 * cov + std[:, None, None] ** 2 * torch.eye(len(cov), dtype=cov.dtype)


def exact_score(sde: SDE, mean=MEAN, cov=COV):
    def score_fn(x, t):
        t = as_time(t, x).to(torch.float64)
        if torch.all(t == t[0]):  # one time for the whole batch: one 2×2 inverse
            prec = torch.linalg.inv(marginal_cov(sde, t[:1], cov))[0]
            return -((x.double() - sde.scale(t[:1]) * mean) @ prec.T).to(x.dtype)
        prec = torch.linalg.inv(marginal_cov(sde, t, cov))
        s = sde.scale(t)[:, None]
        return -torch.einsum("bij,bj->bi", prec, x.double() - s * mean).to(x.dtype)

    return score_fn


def sqrtm_psd(a: torch.Tensor) -> torch.Tensor:
    w, v = torch.linalg.eigh(a)
    return v @ torch.diag_embed(w.clamp_min(0).sqrt()) @ v.transpose(-1, -2)


def exact_flow(sde: SDE, x_T: torch.Tensor, t_from: float, t_to: float, mean=MEAN, cov=COV) -> torch.Tensor:
    """Exact solution of the probability-flow ODE from ``t_from`` to ``t_to``."""
    tf = torch.tensor([t_from], dtype=torch.float64)
    tt = torch.tensor([t_to], dtype=torch.float64)
    a_from, a_to = sqrtm_psd(marginal_cov(sde, tf, cov))[0], sqrtm_psd(marginal_cov(sde, tt, cov))[0]
    m = torch.linalg.solve(a_from, (x_T - sde.scale(tf) * mean).T).T
    return (sde.scale(tt) * mean + m @ a_to.T).to(x_T.dtype)


def w2_to_data(x: torch.Tensor, mean=MEAN, cov=COV) -> float:
    """2-Wasserstein distance between the Gaussian fitted to ``x`` and ``N(mean, cov)``."""
    x = x.double()
    m, c = x.mean(0), torch.cov(x.T)
    root = sqrtm_psd(cov)
    cross = sqrtm_psd(root @ c @ root)
    d2 = (m - mean).pow(2).sum() + torch.trace(c + cov - 2 * cross)
    return float(d2.clamp_min(0).sqrt())
