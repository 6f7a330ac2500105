"""DCGAN (Radford et al. 2016): an implicit density, learnt by an adversarial game.

The paper's guidelines: strided (transposed) convolutions instead of pooling, batchnorm in both
nets (not on the generator's output nor the discriminator's input), ReLU in the generator with a
tanh output, LeakyReLU(0.2) in the discriminator; trained with Adam (lr 2e-4, beta1 0.5).
Sized for any height and width that are multiples of 4, one up/down-sampling stage per doubling
(28x28 starts from a 7x7 map in two stages, 32x32 from 4x4 in three, 64x64 in four).

With `n_classes > 0` it is class-conditional as BigGAN is (Brock et al. 2019): a learnt class
embedding joins the noise at the generator's input, and the discriminator scores the class by
projection (Miyato & Koyama 2018). The embedding is the latent's last `class_dim` numbers, so a
latent still decodes alone and everything served on latents (interpolation, arithmetic, traversal,
projection) moves through the classes as through the rest; the prior draws a class by the
training set's frequencies, then the noise.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from models.card import MAX_CLASSES, MAX_LATENT_DIM
from models.families.latent import ClassCodedLatent, check_resolution, resolution_stages


@dataclass
class DCGANConfig:
    image_shape: tuple[int, int, int] = (1, 28, 28)
    latent_dim: int = field(default=100, metadata={"bounds": (1, MAX_LATENT_DIM)})
    # channels of the last hidden layer; x2 and x4 further in
    generator_width: int = field(default=64, metadata={"bounds": (1, 1024)})
    discriminator_width: int = field(default=64, metadata={"bounds": (1, 1024)})
    # "batch": the paper's batchnorm; "spectral": spectral normalisation of every weight (Miyato et
    # al. 2018), which bounds the discriminator's Lipschitz constant and steadies the game.
    discriminator_norm: str = "batch"
    # > 0: class-conditional, the last `class_dim` of the latent's numbers being the class embedding
    n_classes: int = field(default=0, metadata={"bounds": (0, MAX_CLASSES)})
    class_dim: int = field(default=16, metadata={"bounds": (1, MAX_LATENT_DIM)})

    def __post_init__(self):
        self.image_shape = tuple(self.image_shape)
        check_resolution("DCGAN", self.image_shape)
        if self.n_classes and self.class_dim >= self.latent_dim:
            raise ValueError(f"class_dim ({self.class_dim}) must leave noise in the latent ({self.latent_dim} numbers)")
        if self.discriminator_norm not in ("batch", "spectral"):
            raise ValueError(f"discriminator_norm must be 'batch' or 'spectral', not {self.discriminator_norm!r}")

    @property
    def noise_dim(self) -> int:
        """The latent's numbers drawn from N(0, I): all of them, or those before the class embedding."""
        return self.latent_dim - self.class_dim if self.n_classes else self.latent_dim


def init_weights(module: nn.Module) -> None:
    """The paper's initialisation: N(0, 0.02) weights, batchnorm scales N(1, 0.02). Spectrally
    normalised layers keep PyTorch's default, as in Miyato et al.: their scale is normalised away."""
    if nn.utils.parametrize.is_parametrized(module):
        return
    if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d)):
        nn.init.normal_(module.weight, 0.0, 0.02)
    elif isinstance(module, nn.BatchNorm2d):
        nn.init.normal_(module.weight, 1.0, 0.02)
        nn.init.zeros_(module.bias)


class Generator(nn.Module):
    def __init__(self, config: DCGANConfig):
        super().__init__()
        c, h, w = config.image_shape
        stages = resolution_stages(h, w)
        widths = [config.generator_width * 2 ** (stages - i) for i in range(stages + 1)]  # ... 4g, 2g, g
        # z as a 1x1 map -> the first map: a "projection and reshape" done as one transposed conv.
        layers = [nn.ConvTranspose2d(config.latent_dim, widths[0], (h >> stages, w >> stages), 1, 0, bias=False),
                  nn.BatchNorm2d(widths[0]), nn.ReLU(True)]
        for c_in, c_out in zip(widths, widths[1:]):
            layers += [nn.ConvTranspose2d(c_in, c_out, 4, 2, 1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(True)]
        self.net = nn.Sequential(*layers, nn.Conv2d(widths[-1], c, 3, 1, 1), nn.Tanh())
        # N(0, 1) rows (nn.Embedding's own initialisation): the scale of the noise beside them
        self.class_embedding = nn.Embedding(config.n_classes, config.class_dim) if config.n_classes else None

    def forward(self, z: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """z [B, latent_dim] -> images in [-1, 1]; with labels [B], z is the noise alone and the
        labels' embeddings complete the latent."""
        if labels is not None:
            z = torch.cat([z, self.class_embedding(labels)], dim=1)
        return self.net(z[:, :, None, None])


class Discriminator(nn.Module):
    def __init__(self, config: DCGANConfig):
        super().__init__()
        c, h, w = config.image_shape
        stages = resolution_stages(h, w)
        widths = [config.discriminator_width * 2 ** i for i in range(stages + 1)]  # d, 2d, 4d ...
        spectral = config.discriminator_norm == "spectral"

        def conv(c_in: int, c_out: int, kernel, stride: int, padding: int, normed: bool) -> list[nn.Module]:
            layer = nn.Conv2d(c_in, c_out, kernel, stride, padding, bias=spectral or not normed)
            if spectral:
                return [nn.utils.parametrizations.spectral_norm(layer)]
            return [layer, nn.BatchNorm2d(c_out)] if normed else [layer]

        # Halve the map once per stage, widen once more at the last size, then score the whole map.
        layers = [*conv(c, widths[0], 4, 2, 1, normed=False), nn.LeakyReLU(0.2, True)]
        for i, (c_in, c_out) in enumerate(zip(widths, widths[1:])):
            last = i == stages - 1
            layers += [*conv(c_in, c_out, 3 if last else 4, 1 if last else 2, 1, normed=True), nn.LeakyReLU(0.2, True)]
        self.net = nn.Sequential(*layers, *conv(widths[-1], 1, (h >> stages, w >> stages), 1, 0, normed=False))
        self.class_embedding = None
        if config.n_classes:
            # The projection starts at zero: the game begins unconditional and learns the classes.
            self.class_embedding = nn.Embedding(config.n_classes, widths[-1])
            nn.init.zeros_(self.class_embedding.weight)

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """x: float [B, C, H, W] in [0, 1] -> real/fake logits [B]; with labels [B], plus the
        projection of the last features' spatial sum on the labels' embeddings."""
        features = self.net[:-1](x * 2 - 1)
        logits = self.net[-1](features).flatten()
        if labels is not None:
            logits = logits + (self.class_embedding(labels) * features.sum((2, 3))).sum(1)
        return logits


class DCGAN(ClassCodedLatent):
    """Both nets; only the generator is needed to serve, and it is all `decode` and `sample` use."""

    family = "dcgan"
    Config = DCGANConfig
    summary = "Adversarial: a generator trained to fool a critic; sharp samples."
    # "image_latent" by "project": uploads become latents by optimising z against decode, as there
    # is no encoder.
    capabilities = ("sample", "interpolate", "arithmetic", "traverse", "image_latent", "project", "reconstruct")
    objective = "adversarial"  # models.train plays the GAN game between adversarial_parts()

    def __init__(self, config: DCGANConfig):
        super().__init__()
        self.config = config
        self.generator = Generator(config)
        self.discriminator = Discriminator(config)
        self.apply(init_weights)
        if config.n_classes:
            # p(class) for the prior's draws: uniform until `fit_after_training` counts the labels
            self.register_buffer("class_prior", torch.full((config.n_classes,), 1 / config.n_classes))

    def adversarial_parts(self) -> tuple[nn.Module, nn.Module]:
        return self.generator, self.discriminator

    def adversarial_inputs(self, labels: torch.Tensor, noise: torch.Generator) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Fakes beside real images of `labels`: N(0, I) noise, and (conditional) the same labels,
        so that both sides of the game hold the classes in the data's proportions."""
        z = torch.randn(labels.shape[0], self.config.noise_dim, generator=noise)
        return z, (labels if self.config.n_classes else None)

    def class_codes(self) -> torch.Tensor:
        return self.generator.class_embedding.weight.detach().cpu()

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """z [B, latent_dim] -> images, float [B, C, H, W] in [0, 1]."""
        return (self.generator(z) + 1) / 2
