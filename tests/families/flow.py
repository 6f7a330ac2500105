"""A family of a third kind, neither a GAN-like decoder nor an autoregressive model: a tiny
affine-coupling flow (Dinh et al. 2017), with an exact likelihood and an invertible latent,
written against models/contract.py alone, outside models/. Registered by
`GENSERVE_FAMILIES=tests.families.flow:TinyFlow`."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import nn

from models.families.latent import LatentModel

ALPHA = 0.05  # the logit transform's margin: y = logit(ALPHA + (1 - 2 ALPHA) v)


@dataclass
class TinyFlowConfig:
    image_shape: tuple[int, int, int] = (1, 28, 28)
    latent_dim: int = 784  # a flow's latent is the image's size
    couplings: int = field(default=4, metadata={"bounds": (2, 16)})
    hidden: int = field(default=32, metadata={"bounds": (1, 512)})

    def __post_init__(self):
        self.image_shape = tuple(self.image_shape)
        if self.latent_dim != math.prod(self.image_shape):
            raise ValueError("a flow's latent_dim is C * H * W")


class TinyFlow(LatentModel):
    """Gray levels -> the midpoints of their bins in (0, 1) -> logit space -> affine couplings on
    alternating halves of the pixels -> z ~ N(0, I). Invertible, so z is the image's latent."""

    family = "tiny-flow"
    Config = TinyFlowConfig
    summary = "A tiny affine-coupling flow: an exact likelihood and an invertible latent (a test family)."
    # "encoder": a point-mass q(z | x), so evaluation finds the class latents by encoding the
    # train images; the service also reaches them through it for uploads and reconstructions.
    capabilities = ("sample", "interpolate", "arithmetic", "likelihood", "encoder", "image_latent", "reconstruct")
    likelihood = "exact"
    likelihood_method = "exact change of variables at the gray levels' bin midpoints"
    channels_last = False

    def __init__(self, config: TinyFlowConfig):
        super().__init__()
        self.config = config
        d = config.latent_dim
        half = (torch.arange(d) % 2).float()
        self.register_buffer("masks", torch.stack([half if i % 2 else 1 - half for i in range(config.couplings)]))
        self.nets = nn.ModuleList(nn.Sequential(nn.Linear(d, config.hidden), nn.Tanh(), nn.Linear(config.hidden, 2 * d))
                                  for _ in range(config.couplings))
        for net in self.nets:  # each coupling starts as the identity
            nn.init.zeros_(net[-1].weight)
            nn.init.zeros_(net[-1].bias)

    def _coupling(self, i: int, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        scale, shift = self.nets[i](y * self.masks[i]).chunk(2, dim=1)
        return torch.tanh(scale) * (1 - self.masks[i]), shift * (1 - self.masks[i])

    def _forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Images [B, C, H, W] on the 8-bit grid -> (z [B, d], log p(x) [B] in nats)."""
        v = (x.flatten(1) * 255 + 0.5) / 256
        u = ALPHA + (1 - 2 * ALPHA) * v
        y = torch.log(u) - torch.log1p(-u)
        log_det = (math.log(1 - 2 * ALPHA) - torch.log(u) - torch.log1p(-u)).sum(1) - y.shape[1] * math.log(256)
        for i in range(self.config.couplings):
            scale, shift = self._coupling(i, y)
            y = y * torch.exp(scale) + shift
            log_det = log_det + scale.sum(1)
        log_prior = -0.5 * (y.pow(2) + math.log(2 * math.pi)).sum(1)
        return y, log_prior + log_det

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        y = z
        for i in reversed(range(self.config.couplings)):
            scale, shift = self._coupling(i, y)  # the masked half is unchanged, so this is exact
            y = (y - shift) * torch.exp(-scale)
        v = (torch.sigmoid(y) - ALPHA) / (1 - 2 * ALPHA)
        return ((v * 256 - 0.5) / 255).clamp(0, 1).view(-1, *self.config.image_shape)

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        z, _ = self._forward(x)
        return z, torch.full_like(z, -math.inf)  # a point mass: no spread

    def nll(self, x: torch.Tensor, cond: torch.Tensor | None = None,
            generator: torch.Generator | None = None) -> torch.Tensor:
        return -self._forward(x)[1]

    def loss(self, x: torch.Tensor, y: torch.Tensor | None = None) -> tuple[torch.Tensor, dict]:
        bits = self.nll(x).mean() / (x[0].numel() * math.log(2))
        return bits, {"bits_per_dim": bits.item()}
