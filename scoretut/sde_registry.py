"""Every forward SDE of the package by name: :data:`SDES` maps a name to a constructor.

The classes live where their mathematics is written — the continuous SDEs in
:mod:`scoretut.sde`, DDPM's chain (:class:`~scoretut.schedules.DiscreteVP`) and VDM's γ process
(:class:`~scoretut.schedules.GammaSDE`) beside their schedules in :mod:`scoretut.schedules`,
and the diffusion of a flow-matching path (:class:`~scoretut.flow.PathSDE`) in
:mod:`scoretut.flow` — so the list of them is kept here, in a module that imports all three and
that none of them imports (no cycle). ``SDES[name](**kwargs)`` builds one; with no arguments
each constructor gives the default of its paper.
"""

from __future__ import annotations

from typing import Callable

from scoretut.flow import PathSDE
from scoretut.schedules import DiscreteVP, GammaSDE
from scoretut.sde import EDMSDE, OU, SDE, SubVPSDE, VESDE, VPSDE

SDES: dict[str, Callable[..., SDE]] = {
    "ou": OU,
    "vp": VPSDE,
    "subvp": SubVPSDE,
    "ve": VESDE,
    "edm": EDMSDE,
    "ddpm-linear": DiscreteVP.linear,
    "ddpm-cosine": DiscreteVP.cosine,
    "vdm": GammaSDE.linear,
    "flow": PathSDE,
}
"""Name → constructor of every :class:`scoretut.sde.SDE` subclass: the Ornstein–Uhlenbeck
process, the VP, sub-VP and VE SDEs of Song et al. (2021), the EDM SDE (Karras et al. 2022),
DDPM's chain with the linear or cosine β schedule (Ho et al. 2020; Nichol & Dhariwal 2021), VDM's
process with its linear γ schedule (Kingma et al. 2021) and the diffusion of the straight
flow-matching path ``x_t = t x_1 + (1 − t) x_0``."""
