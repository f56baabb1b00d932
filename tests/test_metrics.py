"""Checks of scoretut/metrics.py: the chunked Chamfer/EMD protocol and the Fréchet distance."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from scoretut.errors import UsageError
from scoretut.data.toy2d import sample_dataset
from scoretut.metrics import (
    chamfer_distance,
    chamfer_terms,
    emd,
    evaluate_samples,
    feature_stats,
    frechet_distance,
    gaussian_w2,
    metric_floor,
)


def _brute_force_chamfer(x: np.ndarray, y: np.ndarray, n_chunks: int) -> float:
    """The protocol written as plain loops: per chunk, both directional nearest-neighbour means."""
    m = len(x) // n_chunks
    total = 0.0
    for c in range(n_chunks):
        xc, yc = x[c * m : (c + 1) * m], y[c * m : (c + 1) * m]
        x_to_y = [min(float(np.sum((p - q) ** 2)) for q in yc) for p in xc]
        y_to_x = [min(float(np.sum((p - q) ** 2)) for p in xc) for q in yc]
        total += np.mean(x_to_y) + np.mean(y_to_x)
    return total / n_chunks


@pytest.fixture(scope="module")
def rolls() -> tuple[torch.Tensor, torch.Tensor]:
    return sample_dataset("swiss_roll", 10000, 101), sample_dataset("swiss_roll", 10000, 202)


# --------------------------------------------------------------------------- Chamfer


@pytest.mark.parametrize("n_chunks", [1, 3, 4])
def test_chamfer_matches_brute_force_loops(n_chunks):
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(24, 2)), rng.normal(size=(24, 2)) + 0.3
    assert chamfer_distance(x, y, n_chunks) == pytest.approx(_brute_force_chamfer(x, y, n_chunks), rel=1e-12)


def test_chamfer_uses_chunks_in_order():
    x = np.array([[0.0, 0.0], [10.0, 0.0]])
    y = np.array([[10.0, 0.0], [0.0, 0.0]])
    assert chamfer_distance(x, y, n_chunks=1) == 0.0
    assert chamfer_distance(x, y, n_chunks=2) == pytest.approx(200.0)  # each chunk: 100 + 100


def test_chamfer_of_identical_sets_is_zero_and_symmetric(rolls):
    a, b = rolls
    assert chamfer_distance(a, a) == 0.0
    assert chamfer_distance(a, b) == pytest.approx(chamfer_distance(b, a), rel=1e-12)


def test_chamfer_floor_of_two_exact_swiss_roll_draws(rolls):
    cd = chamfer_distance(*rolls)
    assert 0.06 <= cd <= 0.10, cd


def test_chamfer_of_standard_normal_against_the_roll(rolls):
    noise = torch.randn(10000, 2, generator=torch.Generator().manual_seed(0))
    cd = chamfer_distance(noise, rolls[0])
    assert 1.4 <= cd <= 2.0, cd


@pytest.mark.parametrize(
    "x,y,n_chunks,match",
    [
        (np.zeros((10, 2)), np.zeros((12, 2)), 2, "same shape"),
        (np.zeros((10, 2)), np.zeros((10, 2)), 3, "divisible"),
        (np.zeros(10), np.zeros(10), 1, r"\(n, d\)"),
        (np.full((10, 2), np.nan), np.zeros((10, 2)), 1, "NaN"),
    ],
)
def test_chamfer_and_emd_reject_bad_inputs(x, y, n_chunks, match):
    for metric in (chamfer_distance, emd):
        with pytest.raises(UsageError, match=match):
            metric(x, y, n_chunks)


# --------------------------------------------------------------------------- EMD


def test_emd_of_identical_sets_is_zero(rolls):
    assert emd(rolls[0][:2000], rolls[0][:2000], n_chunks=20) == pytest.approx(0.0, abs=1e-12)


def test_emd_of_a_translate_is_the_translation_length(rolls):
    x = rolls[0][:2000].double()
    v = torch.tensor([0.3, -0.4], dtype=torch.float64)
    assert emd(x, x + v, n_chunks=20) == pytest.approx(float(v.norm()), rel=1e-9)


def test_chamfer_terms_separate_strays_from_coverage():
    # x = y except one sample moved by 3: only that sample's distance to y grows (9), while the
    # data point it left behind is now 1 away from its nearest sample (its neighbour at +1).
    y = np.stack([np.arange(10.0), np.zeros(10)], axis=1)
    x = y.copy()
    x[4, 1] = 3.0
    to_y, to_x = chamfer_terms(x, y, n_chunks=1)
    assert to_y.tolist() == [0.0] * 4 + [9.0] + [0.0] * 5
    assert to_x.tolist() == [0.0] * 4 + [1.0] + [0.0] * 5
    assert chamfer_distance(x, y, n_chunks=1) == pytest.approx(float(to_y.mean() + to_x.mean()))


def test_emd_matches_an_assignment_on_a_tiny_case():
    # Points 0 and 2 against 1 and 3 on a line: the optimal matching moves each by 1.
    x = np.array([[0.0, 0.0], [2.0, 0.0]])
    y = np.array([[3.0, 0.0], [1.0, 0.0]])
    assert emd(x, y, n_chunks=1) == pytest.approx(1.0)


# --------------------------------------------------------------------------- floors and evaluation


def test_metric_floor_is_small_and_evaluation_of_exact_draws_is_near_one():
    floor = metric_floor("moons", n=2000, pairs=2, seed=0, n_chunks=20)
    assert set(floor) == {"cd", "emd", "cd_std", "emd_std"}
    assert 0 < floor["cd"] < 0.2 and floor["cd_std"] >= 0
    exact = sample_dataset("moons", 2000, seed=99)
    report = evaluate_samples(exact, "moons", seed=0, n_chunks=20, pairs=2)
    assert 0.7 < report["cd_ratio"] < 1.3 and 0.7 < report["emd_ratio"] < 1.3
    assert report["cd_floor"] == floor["cd"]
    bad = evaluate_samples(0.5 * exact, "moons", seed=0, n_chunks=20, pairs=2)
    assert bad["cd_ratio"] > 2 and bad["emd_ratio"] > 2


@pytest.mark.parametrize(
    "samples", [np.zeros((100, 3)), np.zeros(100), np.zeros((99, 2)), np.full((100, 2), np.nan)]
)
def test_evaluate_samples_rejects_bad_samples(samples):
    with pytest.raises(UsageError, match=r"samples"):
        evaluate_samples(samples, "swiss_roll")


def test_evaluate_samples_rejects_unknown_data_set():
    with pytest.raises(UsageError, match="unknown data set"):
        evaluate_samples(np.zeros((100, 2)), "foo")


def test_evaluate_samples_uses_chunks_of_100_by_default():
    x = sample_dataset("moons", 2000, seed=5)
    report = evaluate_samples(x, "moons", pairs=1)
    assert (report["n"], report["chunk_size"]) == (2000, 100)
    assert report["cd"] == chamfer_distance(x, sample_dataset("moons", 2000, seed=0), n_chunks=20)
    assert report == evaluate_samples(x, "moons", n_chunks=20, pairs=1)


@pytest.mark.parametrize("n_chunks", [40, 10, 100])
def test_evaluate_samples_refuses_other_chunk_sizes_unless_asked(n_chunks):
    x = sample_dataset("moons", 2000, seed=5)
    with pytest.raises(UsageError, match=r"chunks of \d+ points, not the protocol's 100.*other_chunk_size=True") as err:
        evaluate_samples(x, "moons", n_chunks=n_chunks, pairs=1)
    assert "\n" not in str(err.value)
    report = evaluate_samples(x, "moons", n_chunks=n_chunks, pairs=1, other_chunk_size=True)
    assert report["chunk_size"] == 2000 // n_chunks
    assert report["cd_floor"] == metric_floor("moons", n=2000, pairs=1, n_chunks=n_chunks)["cd"]


def test_smaller_chunks_pull_the_cd_ratio_of_strays_towards_one():
    # 1 % of the points moved far away: at any chunk size they add about 0.01 * 9² to the
    # sample-to-target term, but the floor grows as the chunks shrink (nearest neighbours are
    # further apart), so the ratio falls — the reason a ratio is quoted at one chunk size only.
    x = sample_dataset("moons", 4000, seed=5).clone()
    x[::100] += 9.0
    ratio = {m: evaluate_samples(x, "moons", n_chunks=4000 // m, pairs=1, other_chunk_size=True)["cd_ratio"]
             for m in (20, 50, 100)}  # fmt: skip
    assert ratio[20] < ratio[50] < ratio[100]


@pytest.mark.parametrize("n_chunks", [0, -5, 2.5, True])
def test_evaluate_samples_rejects_a_bad_n_chunks(n_chunks):
    with pytest.raises(UsageError, match="n_chunks must be a positive integer"):
        evaluate_samples(np.zeros((100, 2)), "moons", n_chunks=n_chunks)


# --------------------------------------------------------------------------- Fréchet / W2


def test_frechet_of_diagonal_covariances_has_the_closed_form():
    mu1, mu2 = np.array([1.0, -2.0, 0.5]), np.array([0.0, 1.0, 0.5])
    v1, v2 = np.array([0.5, 2.0, 3.0]), np.array([1.5, 0.1, 3.0])
    expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(v1) - np.sqrt(v2)) ** 2)
    assert frechet_distance(mu1, np.diag(v1), mu2, np.diag(v2)) == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("m1,s1,m2,s2", [(0.0, 1.0, 0.0, 1.0), (1.0, 2.0, -0.5, 0.3), (3.0, 1e-3, 3.0, 10.0)])
def test_frechet_of_one_dimensional_gaussians(m1, s1, m2, s2):
    expected = (m1 - m2) ** 2 + (s1 - s2) ** 2
    assert frechet_distance(m1, s1**2, m2, s2**2) == pytest.approx(expected, rel=1e-10, abs=1e-12)
    assert gaussian_w2(m1, s1**2, m2, s2**2) == pytest.approx(abs(complex(m1 - m2, s1 - s2)), rel=1e-10, abs=1e-9)


def test_frechet_of_non_commuting_covariances_matches_scipy_sqrtm():
    from scipy.linalg import sqrtm

    rng = np.random.default_rng(1)
    a, b = rng.normal(size=(4, 4)), rng.normal(size=(4, 4))
    c1, c2 = a @ a.T + 0.1 * np.eye(4), b @ b.T + 0.1 * np.eye(4)
    mu1, mu2 = rng.normal(size=4), rng.normal(size=4)
    expected = np.sum((mu1 - mu2) ** 2) + np.trace(c1 + c2 - 2 * np.real(sqrtm(c1 @ c2)))
    assert frechet_distance(mu1, c1, mu2, c2) == pytest.approx(expected, rel=1e-9)


def test_gaussian_w2_is_symmetric_and_zero_for_identical():
    rng = np.random.default_rng(2)
    a, b = rng.normal(size=(3, 3)), rng.normal(size=(3, 3))
    c1, c2 = a @ a.T, b @ b.T + np.eye(3)
    mu1, mu2 = rng.normal(size=3), rng.normal(size=3)
    assert gaussian_w2(mu1, c1, mu2, c2) == pytest.approx(gaussian_w2(mu2, c2, mu1, c1), rel=1e-10)
    assert gaussian_w2(mu1, c1, mu1, c1) == pytest.approx(0.0, abs=1e-6)
    assert gaussian_w2(torch.tensor(mu1), torch.tensor(c1), mu2, c2) == pytest.approx(gaussian_w2(mu1, c1, mu2, c2))


def test_frechet_rejects_mismatched_shapes():
    with pytest.raises(UsageError, match="dimension"):
        frechet_distance(np.zeros(2), np.eye(2), np.zeros(3), np.eye(3))
    with pytest.raises(UsageError, match=r"\(d, d\)"):
        frechet_distance(np.zeros(2), np.eye(3), np.zeros(2), np.eye(2))


def test_frechet_of_sample_stats_approaches_the_closed_form():
    rng = np.random.default_rng(3)
    mu1, mu2 = np.array([0.0, 1.0]), np.array([1.0, -1.0])
    c1, c2 = np.array([[2.0, 0.6], [0.6, 1.0]]), np.array([[0.5, -0.2], [-0.2, 1.5]])
    exact = frechet_distance(mu1, c1, mu2, c2)
    errors = []
    for n in (1_000, 100_000):
        f1, f2 = rng.multivariate_normal(mu1, c1, size=n), rng.multivariate_normal(mu2, c2, size=n)
        errors.append(abs(frechet_distance(*feature_stats(f1), *feature_stats(f2)) - exact))
    assert errors[1] < 0.02 * exact and errors[1] < errors[0] + 1e-3


def test_feature_stats_are_mean_and_unbiased_covariance():
    f = np.array([[1.0, 2.0], [3.0, 0.0], [2.0, 1.0]])
    mu, cov = feature_stats(f)
    np.testing.assert_allclose(mu, [2.0, 1.0])
    np.testing.assert_allclose(cov, np.cov(f.T))
    with pytest.raises(UsageError, match="at least 2"):
        feature_stats(f[:1])
