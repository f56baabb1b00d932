"""Two-dimensional toy data sets, and Gaussian mixtures whose score is known exactly.

Point-cloud data sets (every one returns a ``float32`` tensor of shape ``(n, 2)``):

* :func:`swiss_roll` — the HelloScore evaluation target. Fixed spec: scikit-learn
  ``make_swiss_roll(n, noise=0.0, random_state=seed)``, columns ``[0, 2]``, then

  .. math::  x \\leftarrow 2\\,\\frac{x - \\bar x}{s},

  with :math:`\\bar x` the per-column mean and :math:`s` the single standard deviation of all
  coordinates of the centred array (``ddof=0``), both taken from the drawn set itself. So every
  draw has column means 0 and global standard deviation exactly 2.
* :func:`moons` — scikit-learn ``make_moons`` with noise 0.05, normalised like the roll.
* :func:`eight_gaussians` — eight isotropic Gaussians on a circle; an exact mixture
  (:func:`eight_gaussians_mixture`) whose global standard deviation is 2 by construction.
* :func:`checkerboard` — uniform on the dark squares of a 4×4 board covering ``[-4, 4]²``.
* ``"gmm"`` — draws from :func:`gmm_example`.

:class:`GaussianMixture2D` holds :math:`p(x)=\\sum_k w_k\\,\\mathcal N(x;\\mu_k,\\Sigma_k)` and gives
``log_prob``, the exact score :math:`\\nabla_x\\log p(x)` and, through :meth:`~GaussianMixture2D.perturbed`,
the exact law and score of :math:`s\\,x_0 + \\sigma z` — the marginal :math:`p_t` of any SDE with a
linear drift (``scale = s(t)``, ``std = s(t)σ(t)`` from ``SDE.marginal_prob``).
"""

from __future__ import annotations

import math
from typing import Callable

import numpy as np
import torch
from sklearn.datasets import make_moons, make_swiss_roll
from torch import Tensor

from scoretut.errors import UsageError

__all__ = [
    "DATASETS",
    "GaussianMixture2D",
    "checkerboard",
    "eight_gaussians",
    "eight_gaussians_mixture",
    "gmm_example",
    "moons",
    "normalise",
    "sample_dataset",
    "swiss_roll",
]

MOONS_NOISE = 0.05
"""Standard deviation of the Gaussian noise scikit-learn adds to the moons (before normalising)."""

_LOG_2PI = math.log(2.0 * math.pi)


# --------------------------------------------------------------------------- point clouds


def normalise(x: np.ndarray) -> np.ndarray:
    """Return ``2 (x - mean) / std``: per-column mean, one global std of the centred array.

    ``x`` has shape ``(n, 2)``; ``std`` is ``x_c.std()`` over all ``2n`` coordinates of the
    centred array ``x_c`` (numpy's default ``ddof=0``). The result has column means 0 and global
    standard deviation 2.
    """
    x = np.asarray(x, dtype=np.float64)
    centred = x - x.mean(axis=0)
    return 2.0 * centred / centred.std()


def _check_n(n: int) -> int:
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n <= 0:
        raise UsageError(f"number of points must be a positive integer, got {n!r}; pass e.g. n=10000")
    return int(n)


def _check_seed(seed: int) -> int:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or not 0 <= seed < 2**32:
        raise UsageError(f"seed must be an integer in [0, 2**32), got {seed!r}; pass e.g. seed=0")
    return int(seed)


def _to_tensor(x: np.ndarray) -> Tensor:
    return torch.from_numpy(np.ascontiguousarray(x)).to(torch.float32)


def _generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(_check_seed(seed))


def swiss_roll(n: int, seed: int = 0) -> Tensor:
    """Draw the normalised 2-D swiss roll of the HelloScore course; returns ``(n, 2)`` float32.

    ``make_swiss_roll(n, noise=0.0, random_state=seed)`` gives points
    :math:`(t\\cos t,\\ h,\\ t\\sin t)` with :math:`t\\sim U[1.5\\pi, 4.5\\pi]`; columns 0 and 2 are kept
    and passed through :func:`normalise`. Two calls with the same ``seed`` agree exactly.
    """
    n = _check_n(n)
    x, _ = make_swiss_roll(n, noise=0.0, random_state=_check_seed(seed))
    return _to_tensor(normalise(x[:, [0, 2]]))


def moons(n: int, seed: int = 0) -> Tensor:
    """Draw two interleaved half circles; returns ``(n, 2)`` float32.

    scikit-learn ``make_moons(n, noise=MOONS_NOISE, random_state=seed)`` (noise 0.05 in the
    original units, where each moon has radius 1), then :func:`normalise` like the swiss roll.
    """
    n = _check_n(n)
    x, _ = make_moons(n, noise=MOONS_NOISE, random_state=_check_seed(seed))
    return _to_tensor(normalise(x))


def eight_gaussians_mixture(mode_std: float = 0.2) -> "GaussianMixture2D":
    """Eight equal-weight isotropic Gaussians at angles :math:`2\\pi k/8` on a circle of radius R.

    The radius :math:`R=\\sqrt{2(4-\\sigma_m^2)}` makes the per-coordinate variance
    :math:`R^2/2+\\sigma_m^2` equal 4, i.e. global standard deviation 2 like the normalised roll
    (R ≈ 2.814 for the default mode std :math:`\\sigma_m = 0.2`).
    """
    if not 0.0 < mode_std < 2.0:
        raise UsageError(f"mode_std must lie in (0, 2), got {mode_std!r}")
    radius = math.sqrt(2.0 * (4.0 - mode_std**2))
    angles = torch.arange(8, dtype=torch.float64) * (2.0 * math.pi / 8)
    means = radius * torch.stack([torch.cos(angles), torch.sin(angles)], dim=1)
    covs = (mode_std**2) * torch.eye(2, dtype=torch.float64).expand(8, 2, 2)
    return GaussianMixture2D(torch.full((8,), 1.0 / 8, dtype=torch.float64), means, covs)


def eight_gaussians(n: int, seed: int = 0) -> Tensor:
    """Draw ``n`` points from :func:`eight_gaussians_mixture`; returns ``(n, 2)`` float32."""
    return eight_gaussians_mixture().sample(_check_n(n), _generator(seed), dtype=torch.float32)


def checkerboard(n: int, seed: int = 0) -> Tensor:
    """Uniform on the 8 dark squares of a 4×4 board of side-2 squares on ``[-4, 4]²``.

    A square with lower-left corner :math:`(2i-4, 2j-4)` is dark when :math:`i+j` is even. The
    density is 1/32 on the dark squares (global std :math:`4/\\sqrt3 \\approx 2.31`).
    Returns ``(n, 2)`` float32.
    """
    n = _check_n(n)
    g = _generator(seed)
    square = torch.randint(0, 8, (n,), generator=g)
    row = square // 2  # j = 0..3
    col = 2 * (square % 2) + (row % 2)  # i with i + j even
    corner = torch.stack([2.0 * col - 4.0, 2.0 * row - 4.0], dim=1)
    return (corner + 2.0 * torch.rand(n, 2, generator=g, dtype=torch.float64)).to(torch.float32)


# --------------------------------------------------------------------------- Gaussian mixtures


class GaussianMixture2D:
    """A mixture :math:`p(x) = \\sum_{k=1}^K w_k\\,\\mathcal N(x;\\mu_k,\\Sigma_k)` in two dimensions.

    Args:
        weights: ``(K,)`` positive mixture weights (normalised to sum to 1).
        means: ``(K, 2)`` component means :math:`\\mu_k`.
        covariances: ``(K, 2, 2)`` symmetric positive-definite :math:`\\Sigma_k`.

    Parameters are stored in float64. ``log_prob`` and ``score`` compute in float64 and return
    the dtype of their input. A single Gaussian is the case ``K = 1``.
    """

    def __init__(self, weights: Tensor, means: Tensor, covariances: Tensor):
        w = torch.as_tensor(weights, dtype=torch.float64).detach().clone()
        mu = torch.as_tensor(means, dtype=torch.float64).detach().clone()
        cov = torch.as_tensor(covariances, dtype=torch.float64).detach().clone()
        if w.ndim != 1 or mu.shape != (w.shape[0], 2) or cov.shape != (w.shape[0], 2, 2) or w.shape[0] == 0:
            raise UsageError(
                "GaussianMixture2D needs weights (K,), means (K, 2) and covariances (K, 2, 2); got "
                f"{tuple(w.shape)}, {tuple(mu.shape)}, {tuple(cov.shape)}"
            )
        if not bool(torch.all(w > 0)) or not bool(torch.isfinite(w).all()):
            raise UsageError("mixture weights must be positive and finite")
        if not bool(torch.allclose(cov, cov.transpose(1, 2))):
            raise UsageError("mixture covariances must be symmetric")
        det = cov[:, 0, 0] * cov[:, 1, 1] - cov[:, 0, 1] ** 2
        if not bool(torch.all(cov[:, 0, 0] > 0)) or not bool(torch.all(det > 0)):
            raise UsageError("mixture covariances must be positive definite")
        self.weights = w / w.sum()
        self.means = mu
        self.covariances = cov

    @property
    def num_components(self) -> int:
        """Number of components ``K``."""
        return self.weights.shape[0]

    def __repr__(self) -> str:
        return f"GaussianMixture2D(K={self.num_components}, weights={self.weights.tolist()})"

    # ------------------------------------------------------------------ moments and sampling

    def mean(self) -> Tensor:
        """Mixture mean :math:`\\sum_k w_k\\mu_k`, shape ``(2,)`` float64."""
        return self.weights @ self.means

    def covariance(self) -> Tensor:
        """Mixture covariance :math:`\\sum_k w_k(\\Sigma_k + \\mu_k\\mu_k^T) - \\bar\\mu\\bar\\mu^T`, ``(2, 2)``."""
        m = self.mean()
        second = torch.einsum("k,kij->ij", self.weights, self.covariances + self.means[:, :, None] * self.means[:, None, :])
        return second - torch.outer(m, m)

    def sample(self, n: int, generator: torch.Generator | None = None, dtype: torch.dtype = torch.float32) -> Tensor:
        """Draw ``n`` points, shape ``(n, 2)``: pick :math:`k\\sim w`, then :math:`x=\\mu_k+L_k z`, :math:`L_kL_k^T=\\Sigma_k`."""
        n = _check_n(n)
        k = torch.multinomial(self.weights, n, replacement=True, generator=generator)
        z = torch.randn(n, 2, generator=generator, dtype=torch.float64)
        chol = torch.linalg.cholesky(self.covariances)
        x = self.means[k] + torch.einsum("nij,nj->ni", chol[k], z)
        return x.to(dtype)

    # ------------------------------------------------------------------ density and score

    def _log_prob_and_score(
        self, x: Tensor, scale: float | Tensor, std: float | Tensor
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Log-density and score of the law of :math:`s\\,x_0+\\sigma z` (this mixture when s=1, σ=0).

        That law is the mixture with means :math:`s\\mu_k` and covariances
        :math:`C_k = s^2\\Sigma_k+\\sigma^2 I`. With responsibilities
        :math:`r_k(x) = \\mathrm{softmax}_k(\\log w_k + \\log\\mathcal N(x; s\\mu_k, C_k))` (a
        log-sum-exp, so far-away points do not underflow),

        .. math::  \\nabla_x\\log p(x) = -\\sum_k r_k(x)\\,C_k^{-1}(x - s\\mu_k).

        ``x`` is ``(..., 2)``; ``scale`` and ``std`` are scalars or tensors broadcastable to
        ``x.shape[:-1]`` (one time per point). Returns ``(...)``, ``(..., 2)`` and the
        responsibilities ``(..., K)``, in float64.
        """
        x = torch.as_tensor(x)
        if x.shape[-1:] != (2,):
            raise UsageError(f"points must have shape (..., 2), got {tuple(x.shape)}")
        xd = x.to(torch.float64)
        s = torch.as_tensor(scale, dtype=torch.float64, device=xd.device)[..., None]  # (..., 1) vs K
        v = torch.as_tensor(std, dtype=torch.float64, device=xd.device)[..., None] ** 2
        w, mu, cov = (t.to(xd.device) for t in (self.weights, self.means, self.covariances))
        a = s**2 * cov[:, 0, 0] + v  # C_k = [[a, b], [b, d]], shape (..., K)
        b = s**2 * cov[:, 0, 1]
        d = s**2 * cov[:, 1, 1] + v
        det = a * d - b**2
        diff = xd[..., None, :] - s[..., None] * mu  # (..., K, 2)
        u, y = diff[..., 0], diff[..., 1]
        prec_u = (d * u - b * y) / det  # C_k^{-1} (x - s mu_k), closed-form 2x2 inverse
        prec_y = (a * y - b * u) / det
        log_normal = -0.5 * (u * prec_u + y * prec_y) - 0.5 * torch.log(det) - _LOG_2PI
        logits = torch.log(w) + log_normal
        log_p = torch.logsumexp(logits, dim=-1)
        resp = torch.softmax(logits, dim=-1)
        score = -torch.stack([(resp * prec_u).sum(-1), (resp * prec_y).sum(-1)], dim=-1)
        return log_p, score, resp

    def responsibilities(self, x: Tensor) -> Tensor:
        """Posterior probability of each component, :math:`r_k(x) = w_k\\,\\mathcal N(x;\\mu_k,\\Sigma_k)/p(x)`; ``(..., 2) -> (..., K)``."""
        return self._log_prob_and_score(x, 1.0, 0.0)[2].to(_float_dtype(x))

    def log_prob(self, x: Tensor) -> Tensor:
        """:math:`\\log p(x) = \\operatorname{logsumexp}_k[\\log w_k + \\log\\mathcal N(x;\\mu_k,\\Sigma_k)]`; ``(..., 2) -> (...)``."""
        return self._log_prob_and_score(x, 1.0, 0.0)[0].to(_float_dtype(x))

    def score(self, x: Tensor) -> Tensor:
        """Exact score :math:`\\nabla_x\\log p(x) = -\\sum_k r_k(x)\\Sigma_k^{-1}(x-\\mu_k)`; ``(..., 2) -> (..., 2)``."""
        return self._log_prob_and_score(x, 1.0, 0.0)[1].to(_float_dtype(x))

    def perturbed_log_prob(self, x: Tensor, scale: float | Tensor, std: float | Tensor) -> Tensor:
        """:math:`\\log p_t(x)` for :math:`x_t = s\\,x_0+\\sigma z`; ``scale``/``std`` may vary per point (shape ``x.shape[:-1]``)."""
        return self._log_prob_and_score(x, scale, std)[0].to(_float_dtype(x))

    def perturbed_score(self, x: Tensor, scale: float | Tensor, std: float | Tensor) -> Tensor:
        """:math:`\\nabla_x\\log p_t(x)` for :math:`x_t = s\\,x_0+\\sigma z`; ``(..., 2) -> (..., 2)``.

        ``scale`` and ``std`` are scalars or per-point tensors of shape ``x.shape[:-1]``, e.g. the
        ``s(t)`` and ``std(t)`` of an SDE evaluated at a batch of times ``t`` of shape ``(batch,)``.
        """
        return self._log_prob_and_score(x, scale, std)[1].to(_float_dtype(x))

    def posterior_mean(self, x: Tensor, scale: float | Tensor, std: float | Tensor) -> Tensor:
        """:math:`\\mathbb E[x_0 \\mid s\\,x_0 + \\sigma z = x]` by Gaussian conditioning per component:

        .. math::  \\mathbb E[x_0 \\mid x] = \\sum_k r_k(x)\\,\\big(\\mu_k + s\\,\\Sigma_k C_k^{-1}(x - s\\mu_k)\\big),
                   \\qquad C_k = s^2\\Sigma_k + \\sigma^2 I,

        with the responsibilities :math:`r_k` of the perturbed mixture. It uses no score, so it
        checks Tweedie's formula :math:`\\mathbb E[x_0 \\mid x] = (x + \\sigma^2\\nabla\\log p(x))/s`.
        ``x`` is ``(..., 2)``; ``scale``/``std`` are scalars or per-point tensors of shape ``x.shape[:-1]``.
        """
        xd = torch.as_tensor(x).to(torch.float64)
        s = torch.as_tensor(scale, dtype=torch.float64)[..., None, None]  # (..., 1, 1) vs (K, 2)
        v = torch.as_tensor(std, dtype=torch.float64)[..., None, None, None] ** 2
        resp = self._log_prob_and_score(xd, scale, std)[2]  # (..., K)
        cov = s[..., None] ** 2 * self.covariances + v * torch.eye(2, dtype=torch.float64)  # (..., K, 2, 2)
        diff = xd[..., None, :] - s * self.means  # (..., K, 2)
        solved = torch.linalg.solve(cov, diff[..., None])[..., 0]
        cond = self.means + s * torch.einsum("kij,...kj->...ki", self.covariances, solved)
        return (resp[..., None] * cond).sum(-2).to(_float_dtype(x))

    def perturbed(
        self,
        noise: float | Tensor | tuple[float | Tensor, float | Tensor] = 0.0,
        *,
        scale: float | Tensor | None = None,
        std: float | Tensor | None = None,
    ) -> "GaussianMixture2D":
        """The law of :math:`s\\,x_0 + \\sigma z` with :math:`x_0\\sim p`, :math:`z\\sim\\mathcal N(0,I)`.

        It is again a mixture with the same weights, means :math:`s\\mu_k` and covariances
        :math:`s^2\\Sigma_k + \\sigma^2 I`. Call as ``perturbed(sigma)`` (``s = 1``, the VE case),
        ``perturbed((s, sigma))`` or ``perturbed(scale=s, std=sigma)`` — e.g. with
        ``s, sigma = s(t), std(t)`` of a linear-drift SDE at a scalar time ``t``.
        """
        if isinstance(noise, tuple):
            if len(noise) != 2:
                raise UsageError("perturbed((scale, std)) needs a pair; or call perturbed(sigma)")
            s, sigma = noise
        else:
            s, sigma = 1.0, noise
        s = s if scale is None else scale
        sigma = sigma if std is None else std
        s, sigma = _scalar(s, "scale"), _scalar(sigma, "std")
        if sigma < 0:
            raise UsageError(f"noise std must be >= 0, got {sigma}")
        eye = torch.eye(2, dtype=torch.float64)
        return GaussianMixture2D(self.weights, s * self.means, s**2 * self.covariances + sigma**2 * eye)


def _float_dtype(x: Tensor) -> torch.dtype:
    dtype = torch.as_tensor(x).dtype
    return dtype if dtype.is_floating_point else torch.get_default_dtype()


def _scalar(v: float | Tensor, name: str) -> float:
    if isinstance(v, (int, float, np.number)):
        return float(v)
    t = torch.as_tensor(v)
    if t.numel() != 1:
        raise UsageError(
            f"perturbed() takes a scalar {name}, got shape {tuple(t.shape)}; use perturbed_score(x, scale, std) per point"
        )
    return t.item()


def gmm_example() -> GaussianMixture2D:
    """Three unequal-weight modes (weights 0.6, 0.3, 0.1) used by the Langevin chapter.

    Means :math:`(-2.5,-1.5)`, :math:`(2,2)`, :math:`(2.5,-2.5)`; one correlated, one elongated and
    one small isotropic covariance, so plain Langevin dynamics visibly gets the weights wrong.
    """
    weights = torch.tensor([0.6, 0.3, 0.1], dtype=torch.float64)
    means = torch.tensor([[-2.5, -1.5], [2.0, 2.0], [2.5, -2.5]], dtype=torch.float64)
    covs = torch.tensor(
        [
            [[0.6, 0.3], [0.3, 0.5]],
            [[0.8, 0.0], [0.0, 0.2]],
            [[0.15, 0.0], [0.0, 0.15]],
        ],
        dtype=torch.float64,
    )
    return GaussianMixture2D(weights, means, covs)


def _gmm(n: int, seed: int = 0) -> Tensor:
    """Draw ``n`` points from :func:`gmm_example`; returns ``(n, 2)`` float32."""
    return gmm_example().sample(_check_n(n), _generator(seed), dtype=torch.float32)


# --------------------------------------------------------------------------- registry

DATASETS: dict[str, Callable[[int, int], Tensor]] = {
    "swiss_roll": swiss_roll,
    "moons": moons,
    "eight_gaussians": eight_gaussians,
    "checkerboard": checkerboard,
    "gmm": _gmm,
}
"""Name → ``sampler(n, seed) -> Tensor (n, 2) float32``."""


def sample_dataset(name: str, n: int, seed: int = 0) -> Tensor:
    """Draw ``n`` points of the named data set with ``seed``; returns ``(n, 2)`` float32.

    Raises :class:`~scoretut.errors.UsageError` for an unknown name, ``n <= 0`` or a bad seed.
    """
    if name not in DATASETS:
        raise UsageError(f"unknown data set {name!r}; choose one of: {', '.join(DATASETS)}")
    return DATASETS[name](_check_n(n), _check_seed(seed))
