"""Paths through a latent space: linear and spherical interpolation."""

from __future__ import annotations

import torch

from models.contract import Family


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


def resolution_stages(height: int, width: int) -> int:
    """How many times a convolutional decoder doubles its map to reach height x width (and an
    encoder halves it): halve while both sides stay even and at least 4, so 28 starts from 7x7 in
    two stages, 32 from 4x4 in three, 64 from 4x4 in four: one more stage per doubling."""
    stages = 0
    while height % 2 == 0 and width % 2 == 0 and min(height, width) // 2 >= 4:
        height, width, stages = height // 2, width // 2, stages + 1
    return stages


def check_resolution(family: str, image_shape: tuple[int, int, int]) -> None:
    _, height, width = image_shape
    if height % 4 or width % 4 or resolution_stages(height, width) < 2:
        raise ValueError(f"{family} image height and width must be multiples of 4, at least 16")


class LatentModel(Family):
    """What the latent families (VAE, DCGAN, diffusion) share: a prior over z (N(0, I) unless a
    subclass fits one) and a decoder from z to images.

    Subclasses set `config.latent_dim` and `capabilities`, and define `decode(z)`."""

    sampling = "latent"
    channels_last = True  # convolutional decoders run faster in that memory format on the CPU
    class_conditional = False  # classes come from the card's class latents, not from a label input

    @property
    def latent_dim(self) -> int:
        return self.config.latent_dim

    def sample_latents(self, n: int, generator: torch.Generator | None = None, temperature: float = 1.0) -> torch.Tensor:
        """n prior draws of z, scaled by `temperature` about the prior's centre: N(0, T^2 I) here.
        On the CPU, so that a seed means the same z on every device."""
        return torch.randn(n, self.config.latent_dim, generator=generator) * temperature

    def latent_noise_for_seeds(self, seeds) -> torch.Tensor:
        """One N(0, I) draw [len(seeds), latent_dim] per seed, from its own generator: the spread
        around a class's mean latent."""
        return torch.cat([torch.randn(1, self.config.latent_dim, generator=torch.Generator().manual_seed(s))
                          for s in seeds])

    def latents_for_seeds(self, seeds, temperature: float = 1.0) -> torch.Tensor:
        """The prior draw of each seed [len(seeds), latent_dim], from its own generator: the rule
        the API, the evaluation and the showcase share, so any picture can be redrawn by seed."""
        return torch.cat([self.sample_latents(1, torch.Generator().manual_seed(s), temperature) for s in seeds])


class ClassCodedLatent(LatentModel):
    """A latent model whose latent ends in a class code (BigGAN's shared embedding): with
    `config.n_classes > 0` the latent is `config.noise_dim` N(0, I) numbers, then the
    `config.class_dim` numbers of the class's code, `class_codes()[k]`; the prior draws a class by
    `class_prior` (a buffer the subclass registers, counted from the training labels)."""

    def class_codes(self) -> torch.Tensor:
        """The class codes [n_classes, class_dim], on the CPU (where latents are drawn)."""
        raise NotImplementedError

    def sample_latents(self, n: int, generator: torch.Generator | None = None, temperature: float = 1.0) -> torch.Tensor:
        """Unconditional: N(0, T^2 I). Conditional: the noise N(0, T^2 I), then a class drawn by
        `class_prior`, whose code completes the latent."""
        if not self.config.n_classes:
            return super().sample_latents(n, generator, temperature)
        noise = torch.randn(n, self.config.noise_dim, generator=generator) * temperature
        labels = torch.multinomial(self.class_prior.cpu(), n, replacement=True, generator=generator)
        return torch.cat([noise, self.class_codes()[labels]], dim=1)

    def declared_class_latents(self) -> list[tuple[torch.Tensor, torch.Tensor]] | None:
        """Conditional: class k's latents are exactly (noise ~ N(0, I), code k)."""
        if not self.config.n_classes:
            return None
        noise_dim = self.config.noise_dim
        std = torch.cat([torch.ones(noise_dim), torch.zeros(self.config.class_dim)])
        return [(torch.cat([torch.zeros(noise_dim), code]), std) for code in self.class_codes()]

    def fit_after_training(self, images: torch.Tensor, labels: torch.Tensor, quiet: bool = False) -> dict:
        """Conditional: the prior's class frequencies, counted in the training labels."""
        if not self.config.n_classes:
            return {}
        counts = torch.bincount(labels, minlength=self.config.n_classes).double()
        self.class_prior.copy_((counts / counts.sum()).to(self.class_prior))
        return {"class_prior": [round(float(p), 4) for p in self.class_prior]}
