"""One number format for everything the chapters print.

* :func:`sig` — ``digits`` significant digits, plain notation for magnitudes from 1e-3 to
  1e5 and ``a×10ⁿ`` outside, never a negative zero, ``∞``/``−∞``/``–`` for inf and nan.
* :func:`pm` — ``mean ± sd`` with the sd at two significant digits and the mean rounded to
  the same decimal place, so both halves have the same precision: ``-2.963 ± 0.067``.
"""

from __future__ import annotations

import math

__all__ = ["pm", "sig"]

_SUPERSCRIPT = str.maketrans("-0123456789", "⁻⁰¹²³⁴⁵⁶⁷⁸⁹")


def _clean(text: str) -> str:
    """Drop a minus sign in front of a number that reads as zero ("-0.000" -> "0.000")."""
    if text.startswith("-") and not any(c in "123456789" for c in text.split("e")[0]):
        return text[1:]
    return text


def sig(x: float, digits: int = 3) -> str:
    """``x`` with ``digits`` significant digits (see the module docstring)."""
    if digits < 1:
        raise ValueError(f"digits must be >= 1, got {digits}")
    x = float(x)
    if math.isnan(x):
        return "–"
    if math.isinf(x):
        return "∞" if x > 0 else "−∞"
    if x == 0:
        return "0"
    exponent = math.floor(math.log10(abs(x)))
    if -3 <= exponent < 5:
        decimals = max(digits - 1 - exponent, 0)
        return _clean(f"{x:.{decimals}f}")
    mantissa, _, power = f"{x:.{digits - 1}e}".partition("e")
    return f"{_clean(mantissa)}×10{str(int(power)).translate(_SUPERSCRIPT)}"


def pm(mean: float, sd: float) -> str:
    """``"mean ± sd"``: sd to two significant digits, mean to the same decimal place."""
    mean, sd = float(mean), float(sd)
    if not (math.isfinite(mean) and math.isfinite(sd)) or sd < 0:
        return f"{sig(mean)} ± {sig(abs(sd)) if not math.isnan(sd) else '–'}"
    if sd == 0:
        return f"{sig(mean, 4)} ± 0"
    decimals = max(1 - math.floor(math.log10(sd)), 0)
    return f"{_clean(f'{mean:.{decimals}f}')} ± {sd:.{decimals}f}"
