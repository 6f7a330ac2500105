"""The U-Net of the diffusion family (Ho et al. 2020's, small): residual blocks whose inputs the
time-and-class embedding scales and shifts, stride-2 convolutions down, nearest-neighbour doubling
up, skip connections across, self-attention at the coarsest level. Every block starts as the
identity (its last layer zeroed), so an untrained net passes its input through."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def group_norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(math.gcd(8, channels), channels)


class ResBlock(nn.Module):
    """Two 3x3 convolutions; the time-and-class embedding scales and shifts the second's input."""

    def __init__(self, c_in: int, c_out: int, embed_dim: int):
        super().__init__()
        self.norm1, self.conv1 = group_norm(c_in), nn.Conv2d(c_in, c_out, 3, padding=1)
        self.embed = nn.Linear(embed_dim, 2 * c_out)
        self.norm2, self.conv2 = group_norm(c_out), nn.Conv2d(c_out, c_out, 3, padding=1)
        nn.init.zeros_(self.conv2.weight)  # each block starts as the identity
        nn.init.zeros_(self.conv2.bias)
        self.skip = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x: torch.Tensor, embedding: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        scale, shift = self.embed(embedding)[:, :, None, None].chunk(2, dim=1)
        h = self.conv2(F.silu(self.norm2(h) * (1 + scale) + shift))
        return self.skip(x) + h


class Attention(nn.Module):
    """Self-attention over the positions of the coarsest map (7 x 7 for 28 x 28 images)."""

    def __init__(self, channels: int, heads: int = 4):
        super().__init__()
        self.norm, self.heads = group_norm(channels), heads
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.out = nn.Conv2d(channels, channels, 1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        q, k, v = self.qkv(self.norm(x)).reshape(b, 3, self.heads, c // self.heads, h * w).transpose(-1, -2).unbind(1)
        attended = F.scaled_dot_product_attention(q, k, v)  # [b, heads, hw, c / heads]
        return x + self.out(attended.transpose(-1, -2).reshape(b, c, h, w))


class UNet(nn.Module):
    """A small DDPM U-Net: `blocks` residual blocks per resolution, stride-2 convolutions down,
    nearest-neighbour doubling up, skip connections across, attention at the coarsest level."""

    def __init__(self, config):
        super().__init__()
        channels = config.image_shape[0]
        widths = [config.width * m for m in config.multipliers]
        embed_dim = 4 * config.width
        self.time_mlp = nn.Sequential(nn.Linear(config.width, embed_dim), nn.SiLU(), nn.Linear(embed_dim, embed_dim))
        self.class_mlp = nn.Linear(config.class_dim, embed_dim, bias=False) if config.n_classes else None
        self.stem = nn.Conv2d(channels, widths[0], 3, padding=1)
        self.down, self.downsample = nn.ModuleList(), nn.ModuleList()
        skips, c = [widths[0]], widths[0]
        for level, width in enumerate(widths):
            for _ in range(config.blocks):
                self.down.append(ResBlock(c, width, embed_dim))
                c = width
                skips.append(c)
            if level < len(widths) - 1:
                self.downsample.append(nn.Conv2d(c, c, 3, stride=2, padding=1))
                skips.append(c)
        self.middle = nn.ModuleList([ResBlock(c, c, embed_dim), ResBlock(c, c, embed_dim)])
        self.attention = Attention(c)
        self.up, self.upsample = nn.ModuleList(), nn.ModuleList()
        for level, width in reversed(list(enumerate(widths))):
            for _ in range(config.blocks + 1):
                self.up.append(ResBlock(c + skips.pop(), width, embed_dim))
                c = width
            if level > 0:
                self.upsample.append(nn.Conv2d(c, c, 3, padding=1))
        self.head = nn.Sequential(group_norm(c), nn.SiLU(), nn.Conv2d(c, channels, 3, padding=1))
        nn.init.zeros_(self.head[-1].weight)
        nn.init.zeros_(self.head[-1].bias)
        self.levels, self.blocks = len(widths), config.blocks

    def time_embedding(self, t: torch.Tensor) -> torch.Tensor:
        half = self.time_mlp[0].in_features // 2
        frequencies = torch.exp(-math.log(10_000) * torch.arange(half, device=t.device) / half)
        angles = 1000 * t.float()[:, None] * frequencies[None]
        return self.time_mlp(torch.cat([angles.sin(), angles.cos()], dim=1))

    def forward(self, z: torch.Tensor, t: torch.Tensor, code: torch.Tensor | None) -> torch.Tensor:
        embedding = self.time_embedding(t)
        if self.class_mlp is not None:
            embedding = embedding + self.class_mlp(code)
        h = self.stem(z)
        skips = [h]
        blocks = iter(self.down)
        for level in range(self.levels):
            for _ in range(self.blocks):
                h = next(blocks)(h, embedding)
                skips.append(h)
            if level < self.levels - 1:
                h = self.downsample[level](h)
                skips.append(h)
        h = self.middle[0](h, embedding)
        h = self.middle[1](self.attention(h), embedding)
        blocks = iter(self.up)
        for level in range(self.levels):
            for _ in range(self.blocks + 1):
                h = next(blocks)(torch.cat([h, skips.pop()], dim=1), embedding)
            if level < self.levels - 1:
                h = self.upsample[level](F.interpolate(h, scale_factor=2.0, mode="nearest"))
        return self.head(h)
