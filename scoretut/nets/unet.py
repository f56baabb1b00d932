"""The DDPM U-Net ``ε_θ(x_t, t, y)`` for images (Ho et al. 2020, App. B; Ronneberger et al. 2015).

A convolutional encoder–decoder with skip connections between levels of equal resolution.
At 64×64 with the default ``ch_mult = (1, 2, 2, 2)`` the levels run at 64, 32, 16 and 8 pixels
with 128, 256, 256 and 256 channels. Every level has ``num_res_blocks`` residual blocks on the
way down and ``num_res_blocks + 1`` on the way up (the extra one consumes the skip of the
downsampling layer); levels listed in ``attn_levels`` (default level 1, i.e. 32×32 at 64×64
input) add a self-attention block after each residual block, and the middle runs
ResBlock → attention → ResBlock at the lowest resolution.

Conditioning. The step index ``t`` goes through the sinusoidal embedding (Vaswani et al. 2017)
and a two-layer MLP to a vector ``e`` of width ``4·ch``; with ``num_classes = K > 0`` a learned
embedding of the label ``y ∈ {0, …, K}`` is added to it (``y = 0`` is the "null" label that
classifier-free guidance trains by dropping labels; Ho & Salimans 2022):

.. math::  e = W_2\\,\\mathrm{SiLU}(W_1\\,\\mathrm{emb}(t)) + E[y]

Residual block with dropout ``p`` (Ho et al. 2020, after Zagoruyko & Komodakis 2016):

.. math::  h = \\mathrm{conv}(\\mathrm{SiLU}(\\mathrm{GN}(x))) + P\\,\\mathrm{SiLU}(e),\\qquad
           \\mathrm{out} = S x + \\mathrm{conv}(\\mathrm{drop}_p(\\mathrm{SiLU}(\\mathrm{GN}(h))))

with ``S`` the identity or a 1×1 convolution when the width changes. The attention block is
single-head dot-product attention over the ``H·W`` positions, ``x + W_o\\,\\mathrm{softmax}(QK^T/\\sqrt C)V``
on group-normalised features. The last convolution of every residual branch, of every attention
block and of the output layer starts at zero, so the untrained network outputs 0 and every
block starts as its skip path ``S x`` (the identity unless the width changes).
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from scoretut.nets.embeddings import SinusoidalEmbedding

__all__ = ["AttentionBlock", "ResBlock", "UNet"]


def _zero(module: nn.Module) -> nn.Module:
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


class ResBlock(nn.Module):
    """Residual block with an additive projection of the embedding (module docstring)."""

    def __init__(self, c_in: int, c_out: int, emb_dim: int, dropout: float, groups: int):
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, c_in)
        self.conv1 = nn.Conv2d(c_in, c_out, 3, padding=1)
        self.emb = nn.Linear(emb_dim, c_out)
        self.norm2 = nn.GroupNorm(groups, c_out)
        self.drop = nn.Dropout(dropout)
        self.conv2 = _zero(nn.Conv2d(c_out, c_out, 3, padding=1))
        self.skip = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x: Tensor, e: Tensor) -> Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = h + self.emb(F.silu(e))[:, :, None, None]
        h = self.conv2(self.drop(F.silu(self.norm2(h))))
        return self.skip(x) + h


class AttentionBlock(nn.Module):
    """``x + W_o softmax(QKᵀ/√C) V`` over the ``H·W`` positions (single head)."""

    def __init__(self, channels: int, groups: int):
        super().__init__()
        self.norm = nn.GroupNorm(groups, channels)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.out = _zero(nn.Conv2d(channels, channels, 1))

    def forward(self, x: Tensor) -> Tensor:
        b, c, h, w = x.shape
        q, k, v = self.qkv(self.norm(x)).reshape(b, 3, c, h * w).transpose(-1, -2).unbind(1)  # (b, hw, c) each
        a = F.scaled_dot_product_attention(q, k, v)  # softmax(q kᵀ / √c) v
        return x + self.out(a.transpose(-1, -2).reshape(b, c, h, w))


class _Level(nn.Module):
    """Residual blocks (each optionally followed by attention) at one resolution."""

    def __init__(self, blocks: Sequence[ResBlock], attn: Sequence[nn.Module]):
        super().__init__()
        self.blocks, self.attn = nn.ModuleList(blocks), nn.ModuleList(attn)


class UNet(nn.Module):
    """DDPM U-Net ``ε_θ(x, t, y)``: images ``(B, C, H, W)`` → same shape (module docstring).

    Args:
        channels: image channels (3 for RGB), in and out.
        ch: base width; level ``i`` has ``ch·ch_mult[i]`` channels.
        ch_mult: width multipliers; ``len(ch_mult) − 1`` halvings of the resolution, so ``H`` and
            ``W`` must be divisible by ``2^(len(ch_mult) − 1)``.
        num_res_blocks: residual blocks per level on the way down.
        attn_levels: levels (0 = full resolution) with self-attention.
        dropout: dropout probability inside the residual blocks.
        num_classes: ``K`` labelled classes (labels ``1..K``, ``0`` = null); 0 for an
            unconditional network.
        groups: groups of every GroupNorm (must divide every width).
        max_period: of the sinusoidal step embedding (the step index runs over ``0..T−1``).

    The defaults are the course's 64×64 AFHQ network. All arguments are plain values returned
    by :meth:`config` and accepted by :meth:`from_config`.
    """

    def __init__(
        self,
        channels: int = 3,
        ch: int = 128,
        ch_mult: Sequence[int] = (1, 2, 2, 2),
        num_res_blocks: int = 4,
        attn_levels: Sequence[int] = (1,),
        dropout: float = 0.1,
        num_classes: int = 0,
        groups: int = 32,
        max_period: float = 10000.0,
    ):
        super().__init__()
        ch_mult, attn_levels = [int(m) for m in ch_mult], sorted(int(a) for a in attn_levels)
        widths = [ch * m for m in ch_mult]
        if not ch_mult or num_res_blocks < 1 or any(w % groups for w in widths):
            raise ValueError(f"need a non-empty ch_mult, num_res_blocks >= 1 and every width {widths} "
                             f"divisible by groups={groups}")  # fmt: skip
        if any(not 0 <= a < len(ch_mult) for a in attn_levels):
            raise ValueError(f"attn_levels {attn_levels} must be level indices in 0..{len(ch_mult) - 1}")
        self._config: dict[str, Any] = dict(
            channels=channels, ch=ch, ch_mult=ch_mult, num_res_blocks=num_res_blocks, attn_levels=attn_levels,
            dropout=float(dropout), num_classes=int(num_classes), groups=groups, max_period=float(max_period),
        )  # fmt: skip
        emb_dim = 4 * ch
        self.num_classes = int(num_classes)
        self.time_embed = nn.Sequential(
            SinusoidalEmbedding(ch, max_period), nn.Linear(ch, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim)
        )
        self.class_embed = nn.Embedding(num_classes + 1, emb_dim) if num_classes > 0 else None
        self.head = nn.Conv2d(channels, ch, 3, padding=1)

        def level(c_ins: list[int], c_out: int, i: int) -> _Level:
            blocks = [ResBlock(c, c_out, emb_dim, dropout, groups) for c in c_ins]
            attn = [AttentionBlock(c_out, groups) if i in attn_levels else nn.Identity() for _ in c_ins]
            return _Level(blocks, attn)

        skips, now = [ch], ch
        self.down, self.downsample = nn.ModuleList(), nn.ModuleList()
        for i, w in enumerate(widths):
            self.down.append(level([now] + [w] * (num_res_blocks - 1), w, i))
            now = w
            skips += [w] * num_res_blocks
            last = i == len(widths) - 1
            self.downsample.append(nn.Identity() if last else nn.Conv2d(w, w, 3, stride=2, padding=1))
            if not last:
                skips.append(w)
        self.mid1 = ResBlock(now, now, emb_dim, dropout, groups)
        self.mid_attn = AttentionBlock(now, groups)
        self.mid2 = ResBlock(now, now, emb_dim, dropout, groups)
        self.up, self.upsample = nn.ModuleList(), nn.ModuleList()
        for i, w in reversed(list(enumerate(widths))):
            c_ins = []
            for _ in range(num_res_blocks + 1):
                c_ins.append(now + skips.pop())
                now = w
            self.up.append(level(c_ins, w, i))
            self.upsample.append(nn.Conv2d(w, w, 3, padding=1) if i > 0 else nn.Identity())
        self.out = nn.Sequential(nn.GroupNorm(groups, now), nn.SiLU(), _zero(nn.Conv2d(now, channels, 3, padding=1)))

    def embedding(self, t: Tensor, y: Tensor | None, batch: int) -> Tensor:
        """``e = MLP(emb(t)) + E[y]`` ``(batch, 4·ch)``; ``y = None`` means the null label 0."""
        if t.ndim == 0:
            t = t.expand(batch)
        e = self.time_embed(t)
        if self.class_embed is not None:
            if y is None:
                y = torch.zeros(batch, dtype=torch.long, device=e.device)
            elif y.ndim == 0:
                y = y.expand(batch)
            e = e + self.class_embed(y.long())
        elif y is not None:
            raise ValueError("this U-Net has no class embedding (num_classes=0); pass y=None")
        return e

    def forward(self, x: Tensor, t: Tensor, y: Tensor | None = None) -> Tensor:
        """``x`` ``(B, C, H, W)``, step ``t`` ``(B,)`` or scalar, label ``y`` ``(B,)`` or ``None`` → ``ε̂``."""
        factor = 2 ** (len(self._config["ch_mult"]) - 1)
        if x.shape[-1] % factor or x.shape[-2] % factor:
            raise ValueError(f"image size {tuple(x.shape[-2:])} must be divisible by {factor} for this U-Net")
        e = self.embedding(t, y, x.shape[0]).to(x.dtype)
        h = self.head(x)
        hs = [h]
        for lvl, down in zip(self.down, self.downsample):
            for block, attn in zip(lvl.blocks, lvl.attn):
                h = attn(block(h, e))
                hs.append(h)
            if not isinstance(down, nn.Identity):
                h = down(h)
                hs.append(h)
        h = self.mid2(self.mid_attn(self.mid1(h, e)), e)
        for lvl, up in zip(self.up, self.upsample):
            for block, attn in zip(lvl.blocks, lvl.attn):
                h = attn(block(torch.cat([h, hs.pop()], dim=1), e))
            if not isinstance(up, nn.Identity):
                h = up(F.interpolate(h, scale_factor=2.0, mode="nearest"))
        return self.out(h)

    def config(self) -> dict[str, Any]:
        """The constructor arguments (plain types), for checkpoints."""
        return {k: (list(v) if isinstance(v, list) else v) for k, v in self._config.items()}

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> "UNet":
        """Rebuild from :meth:`config` (weights are not included)."""
        return cls(**config)
