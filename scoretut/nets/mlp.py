"""A residual MLP ``F(x, c)`` conditioned on a per-sample scalar, for low-dimensional data.

The network does not know what its output means: called with the raw time ``t`` it is a
score network ``s_θ(x, t)`` (Song et al. 2021), wrapped in
:class:`scoretut.parametrisation.EDMPrecond` it is the raw network ``F_θ(c_in x, c_noise)`` of
Karras et al. (2022, Eq. 7). Layout (pre-norm residual MLP with an additive conditioning
projection per block, as the time embedding enters each ResNet block of DDPM, Ho et al. 2020,
App. B):

.. math::  e &= \\mathrm{act}(W_{e2}\\,\\mathrm{act}(W_{e1}\\,\\mathrm{emb}(c)))\\\\
           h_0 &= W_\\text{in} x,\\qquad
           h_{k+1} = h_k + W_{k,2}\\,\\mathrm{act}\\big(W_{k,1}\\,\\mathrm{norm}(h_k) + P_k e\\big)\\\\
           F(x, c) &= W_\\text{out}\\,\\mathrm{act}(\\mathrm{norm}(h_\\text{depth}))

``W_out`` is zero-initialised, so the untrained network outputs 0 (score 0, or under EDMPrecond
the denoiser ``c_skip x``), and every residual branch starts as a small perturbation.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from scoretut.nets.embeddings import EMBEDDINGS, GaussianFourierEmbedding

ACTIVATIONS: dict[str, type[nn.Module]] = {"silu": nn.SiLU, "gelu": nn.GELU, "relu": nn.ReLU, "tanh": nn.Tanh}
"""Activations by config name. Keep a smooth one (SiLU) for implicit/sliced score matching,
whose gradients go through the second derivatives of the network."""


class ResidualBlock(nn.Module):
    """``h ← h + W₂ act(W₁ norm(h) + P e)`` on features ``h`` ``(batch, hidden)``, ``e`` ``(batch, emb_dim)``."""

    def __init__(self, hidden: int, emb_dim: int, act: type[nn.Module], norm: bool):
        super().__init__()
        self.norm = nn.LayerNorm(hidden) if norm else nn.Identity()
        self.fc1 = nn.Linear(hidden, hidden)
        self.cond = nn.Linear(emb_dim, hidden)
        self.act = act()
        self.fc2 = nn.Linear(hidden, hidden)

    def forward(self, h: Tensor, e: Tensor) -> Tensor:
        return h + self.fc2(self.act(self.fc1(self.norm(h)) + self.cond(e)))


class ScoreMLP(nn.Module):
    """Residual MLP ``F(x, c)``: ``x`` ``(batch, dim)`` and scalar ``c`` ``(batch,)`` → ``(batch, dim)``.

    Args:
        dim: data dimension.
        hidden: width of the residual stream.
        depth: number of residual blocks.
        emb_dim: size of the conditioning embedding.
        embedding: ``"sinusoidal"`` (:class:`SinusoidalEmbedding`) or ``"fourier"``
            (:class:`GaussianFourierEmbedding`).
        act: activation name, a key of :data:`ACTIVATIONS`.
        norm: LayerNorm at the start of each block (and before the output) if true.
        cond_scale: the conditioning is multiplied by this before the embedding. The sinusoidal
            frequencies span ``[1/max_period, 1]``, so a conditioning that varies over ``[0, 1]``
            (a raw SDE time) resolves better with e.g. ``cond_scale=1000`` (DDPM's step index),
            while EDM's ``c_noise = ¼ ln σ`` already spans a few units and needs none.
        fourier_scale: frequency scale of the Fourier embedding (ignored for ``"sinusoidal"``).

    All arguments are plain values, returned by :meth:`config` and accepted by
    :meth:`from_config`, so a checkpoint can store how to rebuild the network.
    """

    def __init__(
        self,
        dim: int = 2,
        hidden: int = 128,
        depth: int = 3,
        emb_dim: int = 64,
        embedding: str = "sinusoidal",
        act: str = "silu",
        norm: bool = True,
        cond_scale: float = 1.0,
        fourier_scale: float = 16.0,
    ):
        super().__init__()
        if embedding not in EMBEDDINGS:
            raise ValueError(f"unknown embedding {embedding!r}; use one of {sorted(EMBEDDINGS)}")
        if act not in ACTIVATIONS:
            raise ValueError(f"unknown activation {act!r}; use one of {sorted(ACTIVATIONS)}")
        self._config: dict[str, Any] = dict(
            dim=dim, hidden=hidden, depth=depth, emb_dim=emb_dim, embedding=embedding,
            act=act, norm=bool(norm), cond_scale=float(cond_scale), fourier_scale=float(fourier_scale),
        )  # fmt: skip
        Act = ACTIVATIONS[act]
        emb_cls = EMBEDDINGS[embedding]
        emb = emb_cls(emb_dim, scale=fourier_scale) if emb_cls is GaussianFourierEmbedding else emb_cls(emb_dim)
        self.cond_scale = float(cond_scale)
        self.embed = nn.Sequential(emb, nn.Linear(emb_dim, emb_dim), Act(), nn.Linear(emb_dim, emb_dim), Act())
        self.inp = nn.Linear(dim, hidden)
        self.blocks = nn.ModuleList(ResidualBlock(hidden, emb_dim, Act, norm) for _ in range(depth))
        self.out = nn.Sequential(nn.LayerNorm(hidden) if norm else nn.Identity(), Act(), nn.Linear(hidden, dim))
        nn.init.zeros_(self.out[-1].weight)
        nn.init.zeros_(self.out[-1].bias)

    def forward(self, x: Tensor, c: Tensor) -> Tensor:
        """``x`` ``(batch, dim)``, ``c`` ``(batch,)`` (or a scalar tensor) → ``(batch, dim)``."""
        if c.ndim == 0:
            c = c.expand(x.shape[0])
        e = self.embed(c.to(x.dtype) * self.cond_scale)  # (batch, emb_dim)
        h = self.inp(x)  # (batch, hidden)
        for block in self.blocks:
            h = block(h, e)
        return self.out(h)

    def config(self) -> dict[str, Any]:
        """The constructor arguments (plain types), for checkpoints."""
        return dict(self._config)

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> "ScoreMLP":
        """Rebuild from :meth:`config` (weights are not included)."""
        return cls(**config)
