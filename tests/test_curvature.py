"""Checks of scoretut/curvature.py against curves whose curvature is known in closed form."""

from __future__ import annotations

import math

import pytest
import torch

from scoretut.errors import UsageError
from scoretut.curvature import chord_deficit, time_nonlinearity


def _arc(theta: float, k: int = 2001) -> tuple[torch.Tensor, torch.Tensor]:
    """A unit circle arc of angle θ at constant angular speed, radius 3 shifted: (ts, xs)."""
    ts = torch.linspace(0.0, theta, k, dtype=torch.float64)
    xs = torch.stack([3 * ts.cos() + 1, 3 * ts.sin() - 2], -1)[:, None, :]
    return ts, xs


def test_a_straight_segment_has_zero_curvature_in_both_senses():
    ts = torch.linspace(0.0, 2.0, 11, dtype=torch.float64)
    direction = torch.tensor([0.6, -0.8, 2.0], dtype=torch.float64)
    xs = (torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64) + ts[:, None] * direction)[:, None]
    assert chord_deficit(xs).abs().max() < 1e-12
    assert time_nonlinearity(ts, xs).abs().max() < 1e-12
    # the same segment at a non-uniform speed is still straight, but not linear in t
    xs2 = (ts[:, None] ** 2 * direction)[:, None]
    assert chord_deficit(xs2).abs().max() < 1e-12
    assert time_nonlinearity(ts, xs2).item() == pytest.approx(0.25, abs=1e-12)  # max|u²−u|


@pytest.mark.parametrize("theta", [0.5, 1.0, math.pi / 2, 3.0])
def test_a_circle_arc_has_the_closed_form_values(theta):
    ts, xs = _arc(theta)
    half = theta / 2
    assert chord_deficit(xs).item() == pytest.approx(1 - math.sin(half) / half, rel=1e-5)
    assert time_nonlinearity(ts, xs).item() == pytest.approx(math.tan(theta / 4) / 2, rel=1e-9)


def test_time_nonlinearity_ignores_affine_clocks_and_batches_trajectories():
    ts, xs = _arc(1.0, 101)
    both = torch.cat([xs, 2 * xs], dim=1)  # a scaled copy has the same value
    out = time_nonlinearity(-5 * ts + 7, both)
    assert out.shape == (2,)
    assert torch.allclose(out, time_nonlinearity(ts, xs).expand(2))


def test_bad_shapes_are_usage_errors():
    with pytest.raises(UsageError, match="torch.stack"):
        chord_deficit(torch.zeros(5, 2))
    with pytest.raises(UsageError, match="one time per state"):
        time_nonlinearity(torch.zeros(3), torch.zeros(4, 1, 2))
