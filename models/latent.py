"""Paths through a latent space: linear and spherical interpolation."""

from __future__ import annotations

import torch
from torch import nn


def lerp(a: torch.Tensor, b: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Straight line from a to b [d] at fractions t [n] -> [n, d]."""
    return a + (b - a) * t[:, None].to(a.dtype)


def slerp(a: torch.Tensor, b: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Great-circle path from a to b [d] at fractions t [n] -> [n, d] (White 2016, "Sampling
    Generative Networks"): it keeps the norm typical of Gaussian latents, which lerp shrinks."""
    a64, b64, t64 = a.double(), b.double(), t.double()[:, None]
    cos = torch.dot(a64, b64) / (a64.norm() * b64.norm()).clamp(min=1e-12)
    omega = torch.arccos(cos.clamp(-1, 1))
    if omega.abs() < 1e-6 or (torch.pi - omega).abs() < 1e-6:
        return lerp(a, b, t)  # (anti)parallel: the great circle is not unique, fall back to a line
    out = (torch.sin((1 - t64) * omega) * a64 + torch.sin(t64 * omega) * b64) / torch.sin(omega)
    return out.to(a.dtype)


class LatentModel(nn.Module):
    """What the VAE and the DCGAN share: a N(0, I) prior over z and a decoder from z to images.

    Subclasses set `config.latent_dim` and define `decode(z)`."""

    @property
    def latent_dim(self) -> int:
        return self.config.latent_dim

    def sample_latents(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """n draws of z ~ N(0, I), on the CPU so that a seed means the same z on every device."""
        return torch.randn(n, self.config.latent_dim, generator=generator)

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """n images, float [n, C, H, W] in [0, 1], decoded from prior draws."""
        z = self.sample_latents(n, generator).to(next(self.parameters()).device)
        return self.decode(z)
