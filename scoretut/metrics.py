"""Sample-quality metrics: Chamfer distance and EMD on 2-D point clouds, Fréchet distance.

Point-cloud protocol (HelloScore course, Task 1.4). Generated points ``x`` and target points
``y`` (both ``(n, 2)``, ``n = 10 000`` in the course) are split, in order, into ``n_chunks = 100``
chunks of ``m = n / n_chunks`` points; a metric is computed on each pair of chunks
``(x^{(c)}, y^{(c)})`` and averaged over the chunks.

* Chamfer distance (pytorch3d's ``chamfer_distance`` default reduction: the sum of the two
  directional means of squared nearest-neighbour distances)

  .. math::  \\mathrm{CD}(x, y) = \\frac1m\\sum_{i}\\min_j\\|x_i-y_j\\|^2 + \\frac1m\\sum_j\\min_i\\|x_i-y_j\\|^2.

* Earth mover's distance: the optimal-transport cost between the two uniform empirical
  measures, with the *Euclidean* ground cost (not squared; the course names POT but no cost, so
  this is the 1-Wasserstein distance :math:`W_1`):

  .. math::  \\mathrm{EMD}(x, y) = \\min_{P\\in U(m, m)} \\sum_{ij} P_{ij}\\|x_i-y_j\\|,
     \\qquad U = \\{P\\ge0: P\\mathbf 1 = \\mathbf 1/m,\\ P^T\\mathbf 1 = \\mathbf 1/m\\}.

Even a perfect sampler scores above zero, because two finite samples of the same law differ;
:func:`metric_floor` measures that floor and :func:`evaluate_samples` reports ratios to it. Both
metrics depend on the chunk size ``m`` (CD of smaller chunks is larger for the floor and for a
sampler alike, and their ratio closer to 1), so a ratio means something only at the protocol's
``m = 100`` (:data:`PROTOCOL_CHUNK`), which :func:`evaluate_samples` enforces unless asked not to.

Fréchet distance between Gaussians (Dowson & Landau 1982; the FID of Heusel et al. 2017):

.. math::  d^2 = \\|\\mu_1-\\mu_2\\|^2 + \\operatorname{tr}\\big(\\Sigma_1+\\Sigma_2-2(\\Sigma_1\\Sigma_2)^{1/2}\\big),

which is the squared 2-Wasserstein distance between :math:`\\mathcal N(\\mu_1,\\Sigma_1)` and
:math:`\\mathcal N(\\mu_2,\\Sigma_2)`.
"""

from __future__ import annotations

import functools

import numpy as np
import ot
import torch
from torch import Tensor

from scoretut.data.toy2d import sample_dataset
from scoretut.errors import UsageError

__all__ = [
    "chamfer_distance",
    "chamfer_terms",
    "emd",
    "evaluate_samples",
    "feature_stats",
    "frechet_distance",
    "gaussian_w2",
    "metric_floor",
    "PROTOCOL_CHUNK",
]

ArrayLike = Tensor | np.ndarray


# --------------------------------------------------------------------------- point clouds


def _points(x: ArrayLike, name: str) -> Tensor:
    """``x`` as a float64 CPU tensor of shape ``(n, d)``; UsageError if not 2-D or not finite."""
    t = torch.as_tensor(np.asarray(x) if not isinstance(x, Tensor) else x.detach())
    if t.ndim != 2 or t.shape[0] == 0:
        raise UsageError(f"{name} must have shape (n, d), e.g. (10000, 2); got {tuple(t.shape)}")
    t = t.cpu().to(torch.float64)  # the metrics run on the host (numpy, POT)
    if not bool(torch.isfinite(t).all()):
        raise UsageError(f"{name} contains NaN or inf values; check the sampler (step size, number of steps)")
    return t


def _chunks(x: ArrayLike, y: ArrayLike, n_chunks: int) -> tuple[Tensor, Tensor]:
    """Split ``x`` and ``y`` ``(n, d)`` in order into ``(n_chunks, n / n_chunks, d)`` float64."""
    xt, yt = _points(x, "x"), _points(y, "y")
    if xt.shape != yt.shape:
        raise UsageError(f"x and y must have the same shape, got {tuple(xt.shape)} and {tuple(yt.shape)}")
    n = xt.shape[0]
    if isinstance(n_chunks, bool) or not isinstance(n_chunks, int) or n_chunks <= 0 or n % n_chunks:
        raise UsageError(f"the number of points ({n}) must be divisible by n_chunks ({n_chunks!r}); use e.g. 10000 points")
    return xt.reshape(n_chunks, n // n_chunks, -1), yt.reshape(n_chunks, n // n_chunks, -1)


def chamfer_terms(x: ArrayLike, y: ArrayLike, n_chunks: int = 100) -> tuple[Tensor, Tensor]:
    """The two halves of the chunked Chamfer distance, point by point.

    Returns ``(to_y, to_x)``, each ``(n,)`` float64: ``to_y[i] = min_j ‖x_i − y_j‖²`` over the
    points ``y_j`` of the chunk of ``x_i`` (how far each sample lies from the data: strays), and
    ``to_x[j] = min_i ‖x_i − y_j‖²`` (how far each data point lies from the samples: coverage).
    ``CD = to_y.mean() + to_x.mean()``. Squared distances come from ``torch.cdist`` in float64
    (without the matrix-product shortcut, so ``CD(x, x) == 0``).
    """
    xc, yc = _chunks(x, y, n_chunks)
    d2 = torch.cdist(xc, yc, compute_mode="donot_use_mm_for_euclid_dist") ** 2  # (C, m, m)
    return d2.min(dim=2).values.flatten(), d2.min(dim=1).values.flatten()


def chamfer_distance(x: ArrayLike, y: ArrayLike, n_chunks: int = 100) -> float:
    """Chunked Chamfer distance (module docstring) between ``x`` and ``y``, both ``(n, d)``;
    ``n`` must be divisible by ``n_chunks``. The mean of the two :func:`chamfer_terms`."""
    to_y, to_x = chamfer_terms(x, y, n_chunks)
    return float(to_y.mean() + to_x.mean())


def emd(x: ArrayLike, y: ArrayLike, n_chunks: int = 100) -> float:
    """Chunked earth mover's distance (module docstring) with POT's exact ``ot.emd2``.

    Uniform weights ``1/m`` on both sides, ground cost ``‖x_i − y_j‖`` (Euclidean, not squared),
    averaged over the ``n_chunks`` chunks. ``x`` and ``y`` are ``(n, d)``.
    """
    xc, yc = _chunks(x, y, n_chunks)
    cost = torch.cdist(xc, yc, compute_mode="donot_use_mm_for_euclid_dist").numpy()  # (C, m, m)
    m = cost.shape[1]
    weights = np.full(m, 1.0 / m)
    return float(np.mean([ot.emd2(weights, weights, c) for c in cost]))


@functools.lru_cache(maxsize=64)
def _floor(data_name: str, n: int, pairs: int, seed: int, n_chunks: int) -> tuple[float, float, float, float]:
    cds, emds = [], []
    for i in range(pairs):
        a = sample_dataset(data_name, n, seed + 1 + 2 * i)
        b = sample_dataset(data_name, n, seed + 2 + 2 * i)
        cds.append(chamfer_distance(a, b, n_chunks))
        emds.append(emd(a, b, n_chunks))
    ddof = 1 if pairs > 1 else 0
    return float(np.mean(cds)), float(np.mean(emds)), float(np.std(cds, ddof=ddof)), float(np.std(emds, ddof=ddof))


def metric_floor(data_name: str, n: int = 10000, pairs: int = 3, seed: int = 0, n_chunks: int = 100) -> dict[str, float]:
    """CD and EMD between independent exact draws of a data set: what a perfect sampler scores.

    Pair ``i`` compares the draws with seeds ``seed + 1 + 2i`` and ``seed + 2 + 2i`` (never
    ``seed`` itself, which :func:`evaluate_samples` uses for the target). Returns
    ``{"cd", "emd", "cd_std", "emd_std"}``: means over ``pairs`` pairs and their sample standard
    deviations (0 when ``pairs == 1``). Results are cached per argument tuple.
    """
    if isinstance(pairs, bool) or not isinstance(pairs, int) or pairs < 1:
        raise UsageError(f"pairs must be a positive integer, got {pairs!r}")
    cd, e, cd_std, e_std = _floor(data_name, n, pairs, seed, n_chunks)
    return {"cd": cd, "emd": e, "cd_std": cd_std, "emd_std": e_std}


PROTOCOL_CHUNK = 100
"""Points per chunk in the course protocol (10,000 samples in 100 chunks of 100 points)."""


def evaluate_samples(
    samples: ArrayLike,
    data_name: str,
    seed: int = 0,
    n_chunks: int | None = None,
    pairs: int = 3,
    *,
    other_chunk_size: bool = False,
) -> dict[str, float]:
    """Score ``samples`` ``(n, 2)`` against ``n`` exact points of ``data_name`` drawn with ``seed``.

    The samples are split into ``n_chunks`` chunks of ``m = n / n_chunks`` points (default
    ``n_chunks = n / 100``, the protocol's ``m = 100``). CD and EMD per chunk depend on ``m``
    (smaller chunks pull the CD ratio towards 1), so another ``m`` is refused unless the caller
    passes ``other_chunk_size=True`` — and then compares the ratio only with ratios at that ``m``.

    Returns ``cd`` and ``emd``, the floors ``cd_floor``/``emd_floor`` (with
    ``cd_floor_std``/``emd_floor_std``) from :func:`metric_floor` at the same ``n`` and ``m``,
    the ratios ``cd_ratio = cd / cd_floor`` and ``emd_ratio = emd / emd_floor`` (1 is perfect),
    and ``n`` and ``chunk_size`` (``m``) so that a table can state them.
    """
    t = torch.as_tensor(np.asarray(samples) if not isinstance(samples, Tensor) else samples.detach())
    n = t.shape[0] if t.ndim >= 1 else 0
    if n_chunks is None:
        n_chunks = max(n // PROTOCOL_CHUNK, 1)
    if isinstance(n_chunks, bool) or not isinstance(n_chunks, int) or n_chunks <= 0:
        raise UsageError(f"n_chunks must be a positive integer, got {n_chunks!r}; leave it out for chunks of 100")
    if t.ndim != 2 or t.shape[1] != 2 or n == 0 or n % n_chunks:
        raise UsageError(
            f"samples must have shape (n, 2) with n divisible by {n_chunks} chunks, e.g. (10000, 2);"
            f" got {tuple(t.shape)}"
        )
    if n // n_chunks != PROTOCOL_CHUNK and not other_chunk_size:
        raise UsageError(
            f"{n} samples in {n_chunks} chunks are chunks of {n // n_chunks} points, not the protocol's"
            f" {PROTOCOL_CHUNK}; leave n_chunks out (it defaults to n // {PROTOCOL_CHUNK}), or pass"
            " other_chunk_size=True and compare only with ratios at the same chunk size"
        )
    x = _points(t, "samples")
    target = sample_dataset(data_name, n, seed)
    floor = metric_floor(data_name, n=n, pairs=pairs, seed=seed, n_chunks=n_chunks)
    cd, e = chamfer_distance(x, target, n_chunks), emd(x, target, n_chunks)
    return {
        "cd": cd,
        "emd": e,
        "cd_floor": floor["cd"],
        "emd_floor": floor["emd"],
        "cd_floor_std": floor["cd_std"],
        "emd_floor_std": floor["emd_std"],
        "cd_ratio": cd / floor["cd"],
        "emd_ratio": e / floor["emd"],
        "n": n,
        "chunk_size": n // n_chunks,
    }


# --------------------------------------------------------------------------- Gaussians


def _gaussian(mu: ArrayLike | float, cov: ArrayLike | float, name: str) -> tuple[np.ndarray, np.ndarray]:
    """``mu`` as ``(d,)`` and ``cov`` as ``(d, d)`` float64 arrays (scalars mean d = 1)."""
    m = np.atleast_1d(np.asarray(mu.detach().cpu() if isinstance(mu, Tensor) else mu, dtype=np.float64))
    c = np.atleast_2d(np.asarray(cov.detach().cpu() if isinstance(cov, Tensor) else cov, dtype=np.float64))
    if m.ndim != 1 or c.shape != (m.shape[0], m.shape[0]):
        raise UsageError(f"{name}: mean must be (d,) and covariance (d, d); got {m.shape} and {c.shape}")
    if not (np.isfinite(m).all() and np.isfinite(c).all()):
        raise UsageError(f"{name}: mean or covariance contains NaN or inf")
    return m, 0.5 * (c + c.T)


def _psd_sqrt(c: np.ndarray) -> np.ndarray:
    """Symmetric square root of a PSD matrix via ``eigh`` (negative round-off eigenvalues → 0)."""
    vals, vecs = np.linalg.eigh(c)
    return (vecs * np.sqrt(np.clip(vals, 0.0, None))) @ vecs.T


def frechet_distance(
    mu1: ArrayLike | float, cov1: ArrayLike | float, mu2: ArrayLike | float, cov2: ArrayLike | float
) -> float:
    """Squared Fréchet / 2-Wasserstein distance between two Gaussians (module docstring).

    ``mu`` are ``(d,)`` and ``cov`` ``(d, d)`` (scalars for ``d = 1``, where ``cov`` is the
    variance). Computed in float64 with the symmetric form
    :math:`\\operatorname{tr}(\\Sigma_1\\Sigma_2)^{1/2} = \\operatorname{tr}(\\Sigma_1^{1/2}\\Sigma_2\\Sigma_1^{1/2})^{1/2}`,
    whose eigenvalues are real and non-negative; the result is clipped at 0.
    """
    m1, c1 = _gaussian(mu1, cov1, "first Gaussian")
    m2, c2 = _gaussian(mu2, cov2, "second Gaussian")
    if m1.shape != m2.shape:
        raise UsageError(f"the two Gaussians must have the same dimension, got {m1.shape[0]} and {m2.shape[0]}")
    root1 = _psd_sqrt(c1)
    cross = root1 @ c2 @ root1
    tr_sqrt = np.sqrt(np.clip(np.linalg.eigvalsh(0.5 * (cross + cross.T)), 0.0, None)).sum()
    d2 = float(np.sum((m1 - m2) ** 2) + np.trace(c1) + np.trace(c2) - 2.0 * tr_sqrt)
    return max(d2, 0.0)


def gaussian_w2(
    mu1: ArrayLike | float, cov1: ArrayLike | float, mu2: ArrayLike | float, cov2: ArrayLike | float
) -> float:
    """2-Wasserstein distance :math:`W_2(\\mathcal N(\\mu_1,\\Sigma_1), \\mathcal N(\\mu_2,\\Sigma_2)) = \\sqrt{d^2}`."""
    return float(np.sqrt(frechet_distance(mu1, cov1, mu2, cov2)))


def feature_stats(feats: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """Sample mean ``(d,)`` and unbiased sample covariance ``(d, d)`` (float64) of ``feats`` ``(n, d)``.

    :math:`\\hat\\mu = \\frac1n\\sum_i f_i`, :math:`\\hat\\Sigma = \\frac1{n-1}\\sum_i (f_i-\\hat\\mu)(f_i-\\hat\\mu)^T`.
    """
    f = _points(feats, "feats").numpy()
    if f.shape[0] < 2:
        raise UsageError(f"feature_stats needs at least 2 rows to estimate a covariance, got {f.shape[0]}")
    return f.mean(axis=0), np.cov(f, rowvar=False).reshape(f.shape[1], f.shape[1])
