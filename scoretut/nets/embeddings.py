"""Embeddings of a per-sample scalar (a time ``t`` or a noise level ``c_noise``) into ``R^dim``.

A score network must know *which* noise level it is denoising. Feeding the raw scalar to an MLP
works poorly: the network then has to build every frequency it needs out of one input. Both
embeddings below hand it a bank of sines and cosines instead.

* :class:`SinusoidalEmbedding`: the Transformer positional encoding (Vaswani et al. 2017,
  Sec. 3.5), used for the time step by DDPM (Ho et al. 2020, App. B) — fixed, geometrically
  spaced frequencies.
* :class:`GaussianFourierEmbedding`: random Fourier features (Tancik et al. 2020, Eq. 5;
  Song et al. 2021, the score-SDE tutorial) — fixed frequencies drawn once from ``N(0, scale²)``.

Both map a tensor of shape ``(batch,)`` to ``(batch, dim)``.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn


class SinusoidalEmbedding(nn.Module):
    """Transformer / DDPM positional encoding of a scalar.

    .. math::  \\mathrm{emb}(t) = \\big[\\cos(\\omega_0 t), …, \\cos(\\omega_{h-1} t),\\;
               \\sin(\\omega_0 t), …, \\sin(\\omega_{h-1} t)\\big], \\qquad
               \\omega_k = \\text{max\\_period}^{-k/h},\\; h = \\lfloor \\text{dim}/2 \\rfloor

    (Vaswani et al. 2017, Sec. 3.5; Ho et al. 2020, App. B). Frequencies run from 1 down to
    about ``1/max_period``; an odd ``dim`` gets one trailing zero feature.

    Args:
        dim: output size.
        max_period: the longest period ``2π·max_period`` among the features.
    """

    def __init__(self, dim: int, max_period: float = 10000.0):
        super().__init__()
        if dim < 2:
            raise ValueError("SinusoidalEmbedding needs dim >= 2")
        self.dim, self.max_period = dim, float(max_period)
        half = dim // 2
        freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32) / half)
        self.register_buffer("freqs", freqs, persistent=False)  # (half,), a function of the args

    def forward(self, t: Tensor) -> Tensor:
        """``t`` of shape ``(batch,)`` → embedding of shape ``(batch, dim)``."""
        args = t.to(self.freqs.dtype)[:, None] * self.freqs[None, :]  # (batch, half)
        emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)  # (batch, 2·half)
        if self.dim % 2:
            emb = nn.functional.pad(emb, (0, 1))
        return emb

    def extra_repr(self) -> str:
        return f"dim={self.dim}, max_period={self.max_period:g}"


class GaussianFourierEmbedding(nn.Module):
    """Random Fourier features of a scalar with fixed (non-trained) Gaussian frequencies.

    .. math::  \\mathrm{emb}(t) = \\big[\\sin(2\\pi W t),\\; \\cos(2\\pi W t)\\big],
               \\qquad W \\in \\mathbb R^{\\lfloor \\text{dim}/2 \\rfloor},\\; W_k \\sim \\mathcal N(0, \\text{scale}^2)

    (Tancik et al. 2020, Eq. 5 with ``B ~ N(0, scale²)``; the time embedding of the score-SDE
    tutorial of Song et al. 2021). ``W`` is drawn once at construction from the global torch RNG
    (seed it for reproducibility) and stored in the state dict, so a checkpoint restores it.
    A larger ``scale`` lets the network resolve faster changes in ``t``. An odd ``dim`` gets one
    trailing zero feature.

    Args:
        dim: output size.
        scale: standard deviation of the frequencies.
    """

    def __init__(self, dim: int, scale: float = 16.0):
        super().__init__()
        if dim < 2:
            raise ValueError("GaussianFourierEmbedding needs dim >= 2")
        self.dim, self.scale = dim, float(scale)
        self.register_buffer("W", torch.randn(dim // 2) * scale)  # (dim//2,), fixed

    def forward(self, t: Tensor) -> Tensor:
        """``t`` of shape ``(batch,)`` → embedding of shape ``(batch, dim)``."""
        args = 2 * math.pi * t.to(self.W.dtype)[:, None] * self.W[None, :]  # (batch, dim//2)
        emb = torch.cat([torch.sin(args), torch.cos(args)], dim=-1)
        if self.dim % 2:
            emb = nn.functional.pad(emb, (0, 1))
        return emb

    def extra_repr(self) -> str:
        return f"dim={self.dim}, scale={self.scale:g}"


EMBEDDINGS: dict[str, type[nn.Module]] = {
    "sinusoidal": SinusoidalEmbedding,
    "fourier": GaussianFourierEmbedding,
}
"""Embeddings by the name used in model configs."""
