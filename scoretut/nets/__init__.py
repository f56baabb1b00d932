"""Networks: conditioning embeddings, the residual MLP used for the 2D toys, the image U-Net."""

from __future__ import annotations

from typing import Any

from torch import nn

from scoretut.nets.embeddings import EMBEDDINGS, GaussianFourierEmbedding, SinusoidalEmbedding
from scoretut.nets.mlp import ACTIVATIONS, ScoreMLP
from scoretut.nets.unet import UNet

NETS: dict[str, type[nn.Module]] = {"mlp": ScoreMLP, "unet": UNet}
"""Network classes by the name stored in checkpoints."""


def net_config(name: str, net: nn.Module) -> dict[str, Any]:
    """``{"name": name, **net.config()}``: enough plain data to rebuild ``net`` with :func:`build_net`."""
    return {"name": name, **net.config()}


def build_net(config: dict[str, Any]) -> nn.Module:
    """Inverse of :func:`net_config`: a freshly initialised network of that architecture."""
    config = dict(config)
    name = config.pop("name", "mlp")
    if name not in NETS:
        raise ValueError(f"unknown network {name!r}; use one of {sorted(NETS)}")
    return NETS[name].from_config(config)


__all__ = [
    "ACTIVATIONS",
    "EMBEDDINGS",
    "NETS",
    "GaussianFourierEmbedding",
    "ScoreMLP",
    "SinusoidalEmbedding",
    "UNet",
    "build_net",
    "net_config",
]
