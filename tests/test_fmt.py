"""Tests of scoretut.fmt: one number format for the chapters."""

from __future__ import annotations

import math

import pytest

from scoretut.fmt import pm, sig


@pytest.mark.parametrize(("x", "digits", "text"), [
    (0.00028751, 3, "2.88×10⁻⁴"),
    (0.0012345, 3, "0.00123"),
    (2.332e-05, 3, "2.33×10⁻⁵"),
    (0.0001389, 3, "1.39×10⁻⁴"),
    (1234.5678, 3, "1235"),
    (123456.0, 3, "1.23×10⁵"),
    (-3.0, 3, "-3.00"),
    (-0.0, 3, "0"),
    (-1e-9, 3, "-1.00×10⁻⁹"),
    (float("inf"), 3, "∞"),
    (float("-inf"), 3, "−∞"),
    (float("nan"), 3, "–"),
])
def test_sig(x: float, digits: int, text: str) -> None:
    assert sig(x, digits) == text


def test_sig_keeps_the_value_to_its_digits() -> None:
    for x in (3.14159e-4, 2.71828, 612.5, -0.04321):
        for digits in (2, 3, 4):
            shown = float(sig(x, digits).replace("×10", "e").translate(
                str.maketrans("⁻⁰¹²³⁴⁵⁶⁷⁸⁹", "-0123456789")))
            assert shown == pytest.approx(x, rel=0.5 * 10 ** (1 - digits))


def test_sig_rejects_zero_digits() -> None:
    with pytest.raises(ValueError, match="digits"):
        sig(1.0, 0)


@pytest.mark.parametrize(("mean", "sd", "text"), [
    (-2.9634, 0.0671, "-2.963 ± 0.067"),
    (-0.00001, 0.00002, "-0.000010 ± 0.000020"),
    (-1e-9, 0.00002, "0.000000 ± 0.000020"),
    (-3.0, 0.0, "-3.000 ± 0"),
    (1.07, 0.12, "1.07 ± 0.12"),
    (12.3, 4.56, "12.3 ± 4.6"),
])
def test_pm_same_precision_both_sides(mean: float, sd: float, text: str) -> None:
    assert pm(mean, sd) == text


def test_pm_no_negative_zero() -> None:
    assert not pm(-1e-12, 1e-3).startswith("-")
    assert math.isclose(float(pm(-1e-12, 1e-3).split(" ± ")[0]), 0.0)
