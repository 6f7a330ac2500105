"""WGAN-GP (Gulrajani et al. 2017), written against models/contract.py alone, outside models/.

A critic with no sigmoid and no batchnorm (the gradient penalty is per image, which batchnorm
would break), a small batchnorm generator, and the paper's game: the Wasserstein loss, gradient
penalty 10, 5 critic steps per generator step, Adam betas (0, 0.9), lr 1e-4 (configs/wgan-gp.json).
The trainer plays the game `adversarial_game()` declares. With `n_classes` it is
class-conditional as the shipped DCGAN is (`ClassCodedLatent`: a class code ends the latent, the
critic scores the class by projection), so each class's latent is known without a search.
Registered by `GENSERVE_FAMILIES=tests.families.wgan_gp:WGANGP`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from models.card import MAX_CLASSES
from models.contract import AdversarialGame
from models.families.latent import ClassCodedLatent


@dataclass
class WGANGPConfig:
    image_shape: tuple[int, int, int] = (1, 28, 28)
    latent_dim: int = field(default=32, metadata={"bounds": (2, 1024)})
    width: int = field(default=16, metadata={"bounds": (1, 256)})  # channels at half size; twice that at a quarter
    n_classes: int = field(default=0, metadata={"bounds": (0, MAX_CLASSES)})  # > 0: class-conditional
    class_dim: int = field(default=8, metadata={"bounds": (1, 1023)})

    def __post_init__(self):
        self.image_shape = tuple(self.image_shape)
        if self.image_shape[1] % 4 or self.image_shape[2] % 4:
            raise ValueError("WGAN-GP image height and width must be multiples of 4")
        if self.n_classes and self.class_dim >= self.latent_dim:
            raise ValueError(f"class_dim ({self.class_dim}) must leave noise in the latent ({self.latent_dim})")

    @property
    def noise_dim(self) -> int:
        return self.latent_dim - self.class_dim if self.n_classes else self.latent_dim


class Generator(nn.Module):
    def __init__(self, config: WGANGPConfig):
        super().__init__()
        c, h, w = config.image_shape
        self.start = (2 * config.width, h // 4, w // 4)
        self.project = nn.Linear(config.latent_dim, 2 * config.width * (h // 4) * (w // 4))
        self.net = nn.Sequential(
            nn.BatchNorm2d(2 * config.width), nn.ReLU(),
            nn.ConvTranspose2d(2 * config.width, config.width, 4, 2, 1), nn.BatchNorm2d(config.width), nn.ReLU(),
            nn.ConvTranspose2d(config.width, c, 4, 2, 1), nn.Tanh())
        self.class_embedding = nn.Embedding(config.n_classes, config.class_dim) if config.n_classes else None

    def forward(self, z: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """z [B, latent_dim] (or the noise alone, with labels [B]) -> images in [-1, 1]."""
        if labels is not None:
            z = torch.cat([z, self.class_embedding(labels)], dim=1)
        return self.net(self.project(z).view(-1, *self.start))


class Critic(nn.Module):
    def __init__(self, config: WGANGPConfig):
        super().__init__()
        c, h, w = config.image_shape
        self.features = nn.Sequential(
            nn.Conv2d(c, config.width, 4, 2, 1), nn.LeakyReLU(0.2),
            nn.Conv2d(config.width, 2 * config.width, 4, 2, 1), nn.LeakyReLU(0.2))
        self.score = nn.Linear(2 * config.width * (h // 4) * (w // 4), 1)
        self.class_embedding = None
        if config.n_classes:  # the projection starts at zero: the game begins unconditional
            self.class_embedding = nn.Embedding(config.n_classes, 2 * config.width)
            nn.init.zeros_(self.class_embedding.weight)

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """Images in [0, 1] [B, C, H, W] -> raw scores [B] (no sigmoid: a Wasserstein critic)."""
        features = self.features(x * 2 - 1)
        scores = self.score(features.flatten(1)).squeeze(1)
        if labels is not None:
            scores = scores + (self.class_embedding(labels) * features.sum((2, 3))).sum(1)
        return scores


class WGANGP(ClassCodedLatent):
    family = "wgan-gp"
    Config = WGANGPConfig
    summary = "Adversarial, Wasserstein: a critic held near 1-Lipschitz by a gradient penalty (a test family)."
    capabilities = ("sample", "interpolate", "arithmetic", "traverse", "image_latent", "project", "reconstruct")
    objective = "adversarial"

    def __init__(self, config: WGANGPConfig):
        super().__init__()
        self.config = config
        self.generator = Generator(config)
        self.critic = Critic(config)
        if config.n_classes:  # the prior's class frequencies, counted by `fit_after_training`
            self.register_buffer("class_prior", torch.full((config.n_classes,), 1 / config.n_classes))

    def adversarial_parts(self) -> tuple[nn.Module, nn.Module]:
        return self.generator, self.critic

    def adversarial_inputs(self, labels: torch.Tensor,
                           noise: torch.Generator) -> tuple[torch.Tensor, torch.Tensor | None]:
        z = torch.randn(labels.shape[0], self.config.noise_dim, generator=noise)
        return z, (labels if self.config.n_classes else None)

    def adversarial_game(self) -> AdversarialGame:
        return AdversarialGame(loss="wasserstein", gradient_penalty=10.0, critic_steps=5, betas=(0.0, 0.9))

    def class_codes(self) -> torch.Tensor:
        return self.generator.class_embedding.weight.detach().cpu()

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return (self.generator(z) + 1) / 2
