"""Run-scale switch and device selection shared by the book, the CLI and the benchmarks.

Every chapter picks its settings with :func:`pick`, so one environment variable moves the
whole book between settings that finish in minutes on a laptop CPU (``fast``, the default and
what CI uses) and the full-scale settings meant for a GPU (``full``)::

    SCORETUT_SCALE=full jupyter-book build .
"""

from __future__ import annotations

import os
import re
from typing import TypeVar

import torch

from scoretut.errors import UsageError

T = TypeVar("T")

SCALES = ("fast", "full")


def run_scale() -> str:
    """Return ``"fast"`` or ``"full"`` from the ``SCORETUT_SCALE`` environment variable."""
    scale = os.environ.get("SCORETUT_SCALE", "fast").strip().lower()
    if scale not in SCALES:
        raise UsageError(f"SCORETUT_SCALE={scale!r} is not one of {SCALES}; unset it or pick one")
    return scale


def pick(fast: T, full: T) -> T:
    """Return ``fast`` or ``full`` according to :func:`run_scale`."""
    return full if run_scale() == "full" else fast


def device_from_arg(name: str | None = "auto", *, setting: str = "device") -> torch.device:
    """Map ``cpu`` / ``cuda`` / ``cuda:N`` / ``auto`` to a device; ``auto`` prefers CUDA.

    ``setting`` names where the value came from, so that the one-line error points at it
    (the CLI passes its flag, :func:`default_device` the environment variable).
    """
    name = (name or "auto").strip().lower()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if not re.fullmatch(r"cpu|cuda(:\d+)?", name):
        raise UsageError(f"{setting}={name!r} is not a device; use auto, cpu, cuda or cuda:N")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise UsageError(f"{setting}={name!r} asks for CUDA but no CUDA device is visible; use {setting}=cpu or auto")
        index = int(name.split(":")[1]) if ":" in name else 0
        if index >= torch.cuda.device_count():
            raise UsageError(f"{setting}={name!r}: only {torch.cuda.device_count()} CUDA device(s) are visible")
    return torch.device(name)


def resolve_device(device: str | torch.device | None = None) -> torch.device:
    """``device`` as a :class:`torch.device`; ``None`` means :func:`default_device`.

    Every library entry point that creates tensors takes ``device=None`` and passes it here.
    """
    if device is None:
        return default_device()
    return device if isinstance(device, torch.device) else device_from_arg(device)


def default_device() -> torch.device:
    """The device every chapter and library entry point uses unless given one.

    Read from ``SCORETUT_DEVICE`` (``auto`` when unset: CUDA when visible, else CPU).
    """
    return device_from_arg(os.environ.get("SCORETUT_DEVICE", "auto"), setting="SCORETUT_DEVICE")
