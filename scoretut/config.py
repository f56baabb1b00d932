"""Run-scale switch and device selection shared by the book, the CLI and the benchmarks.

Every chapter picks its settings with :func:`pick`, so one environment variable moves the
whole book between settings that finish in minutes on a laptop CPU (``fast``, the default and
what CI uses) and the full-scale settings meant for a GPU (``full``)::

    SCORETUT_SCALE=full jupyter-book build .
"""

from __future__ import annotations

import os
from typing import TypeVar

import torch

T = TypeVar("T")

SCALES = ("fast", "full")


class UsageError(ValueError):
    """Bad input from a user; the message is one line that names the fix."""


def run_scale() -> str:
    """Return ``"fast"`` or ``"full"`` from the ``SCORETUT_SCALE`` environment variable."""
    scale = os.environ.get("SCORETUT_SCALE", "fast").strip().lower()
    if scale not in SCALES:
        raise UsageError(f"SCORETUT_SCALE={scale!r} is not one of {SCALES}; unset it or pick one")
    return scale


def pick(fast: T, full: T) -> T:
    """Return ``fast`` or ``full`` according to :func:`run_scale`."""
    return full if run_scale() == "full" else fast


def device_from_arg(name: str = "auto") -> torch.device:
    """Map ``cpu`` / ``cuda`` / ``cuda:N`` / ``auto`` to a device; ``auto`` prefers CUDA."""
    name = (name or "auto").lower()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UsageError("--device cuda was asked for but no CUDA device is visible; use --device cpu")
    try:
        return torch.device(name)
    except RuntimeError:
        raise UsageError(f"unknown device {name!r}; use cpu, cuda, cuda:N or auto") from None
