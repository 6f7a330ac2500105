"""Convolutional VAE (Kingma & Welling 2014) with a discretized logistic decoder.

q(z|x) is a diagonal Gaussian, p(z) = N(0, I). p(x|z) puts a logistic of per-pixel mean and scale
on the 256 gray levels, integrated over each level's bin (the edge bins take the tails), so the
ELBO is a true lower bound on the log-probability of the 8-bit data and its bits/dim compare
directly with PixelCNN's. `decode` returns the decoder's mean image, which is what one shows.

With `second_stage_hidden > 0` it is a two-stage VAE (Dai & Wipf 2019): the aggregate posterior of
a trained VAE is not N(0, I), so prior draws land where the decoder never trained; a second, small
VAE learns the distribution of the first one's codes z, and the served latent u ~ N(0, I) is that
second VAE's. Sampling decodes u -> z -> x, encoding x -> z -> u, and the ELBO stays a true bound
with the second stage as the prior of z. `python -m models.train vae --init-from weights/vae
--set second_stage_hidden=1024 --train-only second_stage` fits the second stage to a trained VAE.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from models.latent import LatentModel


@dataclass
class VAEConfig:
    image_shape: tuple[int, int, int] = (1, 28, 28)
    latent_dim: int = 32
    width: int = 32  # channels of the first conv; doubled at each downsampling
    hidden: int = 512
    levels: int = 256
    second_stage_hidden: int = 0  # 0: the prior of z is N(0, I); else a two-stage VAE, this wide

    def __post_init__(self):
        self.image_shape = tuple(self.image_shape)
        if self.image_shape[1] % 4 or self.image_shape[2] % 4:
            raise ValueError("VAE image height and width must be multiples of 4")


def discretized_logistic_log_prob(x: torch.Tensor, mean: torch.Tensor, log_scale: torch.Tensor,
                                  levels: int = 256) -> torch.Tensor:
    """log P(x) per element for x on the grid {0, 1/(levels-1), ..., 1} under a logistic(mean, scale)
    binned into `levels` intervals; the first and last bins extend to -inf and +inf."""
    half_bin = 0.5 / (levels - 1)
    inv_scale = torch.exp(-log_scale)
    upper = inv_scale * (x - mean + half_bin)
    lower = inv_scale * (x - mean - half_bin)
    log_cdf_upper = F.logsigmoid(upper)  # log P(X <= x + half_bin)
    log_one_minus_cdf_lower = -F.softplus(lower)  # log P(X > x - half_bin)
    # sigmoid(u) - sigmoid(l) = sigmoid(u) * sigmoid(-l) * (1 - exp(l - u)): stable in log space.
    log_mass = (log_cdf_upper + log_one_minus_cdf_lower
                + torch.log(-torch.expm1(lower - upper).clamp(max=-1e-12)))
    return torch.where(x < half_bin, log_cdf_upper,
                       torch.where(x > 1 - half_bin, log_one_minus_cdf_lower, log_mass))


def gaussian_log_density(x: torch.Tensor, mean: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """log N(x; mean, diag(exp(logvar))), summed over the last axis."""
    return -0.5 * (math.log(2 * math.pi) + logvar + (x - mean).pow(2) * torch.exp(-logvar)).sum(-1)


class SecondStage(nn.Module):
    """A VAE over the first stage's codes z [B, d]: q(u|z) and p(z|u) are diagonal Gaussians from
    MLPs, u ~ N(0, I) of the same size, and p(z|u) has one learned variance gamma, which Dai & Wipf
    show must shrink for the second stage to match the codes' distribution."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.encoder = nn.Sequential(nn.Linear(dim, hidden), nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU(),
                                     nn.Linear(hidden, 2 * dim))
        self.decoder = nn.Sequential(nn.Linear(dim, hidden), nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU(),
                                     nn.Linear(hidden, dim))
        self.log_gamma = nn.Parameter(torch.zeros(()))

    def encode(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mu, logvar = self.encoder(z).chunk(2, dim=1)
        return mu, logvar.clamp(-12, 8)

    def elbo(self, z: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """A lower bound on log p(z) [B] (a density over z, in nats), one draw of u per code."""
        mu, logvar = self.encode(z)
        eps = torch.randn(mu.shape, generator=generator, device=mu.device, dtype=mu.dtype)
        u = mu + torch.exp(0.5 * logvar) * eps
        log_pz_u = gaussian_log_density(z, self.decoder(u), self.log_gamma.clamp(min=-16).expand_as(z))
        kl = 0.5 * (mu.pow(2) + logvar.exp() - 1 - logvar).sum(1)
        return log_pz_u - kl


class VAE(LatentModel):
    family = "vae"
    Config = VAEConfig

    def __init__(self, config: VAEConfig):
        super().__init__()
        self.config = config
        c, h, w = config.image_shape
        w1, w2 = config.width, config.width * 2
        self.feature_shape = (w2, h // 4, w // 4)
        flat = w2 * (h // 4) * (w // 4)
        self.encoder = nn.Sequential(
            nn.Conv2d(c, w1, 4, 2, 1), nn.SiLU(),
            nn.Conv2d(w1, w2, 4, 2, 1), nn.SiLU(),
            nn.Flatten(),
            nn.Linear(flat, config.hidden), nn.SiLU(),
            nn.Linear(config.hidden, 2 * config.latent_dim),
        )
        self.decoder_fc = nn.Sequential(
            nn.Linear(config.latent_dim, config.hidden), nn.SiLU(),
            nn.Linear(config.hidden, flat), nn.SiLU(),
        )
        self.decoder_conv = nn.Sequential(
            nn.ConvTranspose2d(w2, w1, 4, 2, 1), nn.SiLU(),
            nn.ConvTranspose2d(w1, w1, 4, 2, 1), nn.SiLU(),
            nn.Conv2d(w1, 2 * c, 3, 1, 1),  # mean and log-scale per sub-pixel
        )
        self.second_stage = (SecondStage(config.latent_dim, config.second_stage_hidden)
                             if config.second_stage_hidden else None)

    def encode_codes(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x: float [B, C, H, W] in [0, 1] -> (mu, logvar) of the first stage's q(z|x)."""
        mu, logvar = self.encoder(x * 2 - 1).chunk(2, dim=1)
        return mu, logvar.clamp(-12, 8)

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x -> (mu, logvar) of the posterior of the served latent, each [B, latent_dim]: q(z|x), or
        with a second stage q(u|z) at z = the mean of q(z|x)."""
        mu, logvar = self.encode_codes(x)
        return self.second_stage.encode(mu) if self.second_stage else (mu, logvar)

    def _decoder_params(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.decoder_conv(self.decoder_fc(z).view(-1, *self.feature_shape))
        mean, log_scale = out.chunk(2, dim=1)
        # mean in [0, 1] space; the scale is floored so a bin never gets all the mass by overflow.
        return torch.sigmoid(mean) * 1.1 - 0.05, log_scale.clamp(min=-7.0)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """The served latent [B, latent_dim] (z, or u with a second stage, whose decoder's mean is
        the code) -> the decoder's mean image, float [B, C, H, W] in [0, 1]."""
        if self.second_stage:
            z = self.second_stage.decoder(z)
        mean, _ = self._decoder_params(z)
        return mean.clamp(0, 1)

    def elbo(self, x: torch.Tensor, generator: torch.Generator | None = None,
             second_stage: bool = True) -> dict[str, torch.Tensor]:
        """The evidence lower bound on log p(x) in nats per image, with its two terms, each [B].

        x must lie on the 8-bit grid (k / 255). One reparameterised draw of z per image (and of u
        per z with a second stage, whose `kl` is then log q(z|x) minus the bound on log p(z)).
        `second_stage=False` gives the first stage's own bound, with the N(0, I) prior.
        """
        mu, logvar = self.encode_codes(x)
        eps = torch.randn(mu.shape, generator=generator, device=mu.device, dtype=mu.dtype)
        z = mu + torch.exp(0.5 * logvar) * eps
        mean, log_scale = self._decoder_params(z)
        log_px_z = discretized_logistic_log_prob(x, mean, log_scale, self.config.levels).flatten(1).sum(1)
        if self.second_stage and second_stage:
            kl = gaussian_log_density(z, mu, logvar) - self.second_stage.elbo(z, generator)
        else:
            kl = 0.5 * (mu.pow(2) + logvar.exp() - 1 - logvar).sum(1)
        return {"elbo": log_px_z - kl, "reconstruction": log_px_z, "kl": kl}

    @staticmethod
    def bits_per_dim(log_prob_nats: torch.Tensor, num_dims: int) -> torch.Tensor:
        return -log_prob_nats / (num_dims * math.log(2))
