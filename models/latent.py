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
    """What the VAE and the DCGAN share: a prior over z (N(0, I) unless a subclass fits one) and a
    decoder from z to images.

    Subclasses set `config.latent_dim` and `capabilities`, and define `decode(z)`."""

    channels_last = True  # convolutional decoders run faster in that memory format on the CPU
    class_conditional = False  # classes come from the card's class latents, not from a label input

    @property
    def latent_dim(self) -> int:
        return self.config.latent_dim

    def sample_latents(self, n: int, generator: torch.Generator | None = None, temperature: float = 1.0) -> torch.Tensor:
        """n prior draws of z, scaled by `temperature` about the prior's centre: N(0, T^2 I) here.
        On the CPU, so that a seed means the same z on every device."""
        return torch.randn(n, self.config.latent_dim, generator=generator) * temperature

    def noise_for_seeds(self, seeds) -> torch.Tensor:
        """One N(0, I) draw [len(seeds), latent_dim] per seed, from its own generator: the spread
        around a class's mean latent."""
        return torch.cat([torch.randn(1, self.config.latent_dim, generator=torch.Generator().manual_seed(s))
                          for s in seeds])

    def latents_for_seeds(self, seeds, temperature: float = 1.0) -> torch.Tensor:
        """The prior draw of each seed [len(seeds), latent_dim], from its own generator: the rule
        the API, the evaluation and the showcase share, so any picture can be redrawn by seed."""
        return torch.cat([self.sample_latents(1, torch.Generator().manual_seed(s), temperature) for s in seeds])

    def declared_class_latents(self) -> list[tuple[torch.Tensor, torch.Tensor]] | None:
        """Each class's (mean, std) latent, where the prior itself knows the classes (a
        class-conditional generator); None: evaluation finds them, from the encoder or from samples."""
        return None

    @torch.no_grad()
    def sample_for_seeds(self, seeds, temperature: float = 1.0) -> torch.Tensor:
        """The images of these seeds [len(seeds), C, H, W], as `POST .../samples` draws them."""
        return self.decode(self.latents_for_seeds(seeds, temperature).to(next(self.parameters()).device))


# -- projection: an image's latent for a model that has only a decoder ------------------------------
#
# A GAN has no encoder, so an image becomes a latent by optimisation (Zhu et al. 2016, "Generative
# Visual Manipulation on the Natural Image Manifold"): minimise the per-pixel squared error of
# decode(z) against the image, plus a small pull towards the prior's typical set, with Adam from a
# fixed start for a fixed number of steps. No randomness: the same image gives the same z. Each
# image's loss is summed, not averaged, over the batch, so one image's z never depends on the
# others'. The state (z and Adam's two moments) is explicit, so that a caller can run the steps
# in slices and let other work in between.

PROJECTION_STEPS = 100
PROJECTION_LR = 0.1
PROJECTION_PRIOR_WEIGHT = 1e-3  # times mean(z^2): keeps z near the N(0, I) shell decode was trained on
_BETAS = (0.9, 0.999)
_EPS = 1e-8


def projection_state(start: torch.Tensor) -> torch.Tensor:
    """The state of a projection from latents `start` [B, d]: [B, 3d] = (z, Adam m, Adam v)."""
    return torch.cat([start, torch.zeros_like(start), torch.zeros_like(start)], dim=1)


def projection_latents(state: torch.Tensor) -> torch.Tensor:
    """The latents [B, d] of a projection state [B, 3d]."""
    return state[:, : state.shape[1] // 3]


def projection_steps(decode, images: torch.Tensor, state: torch.Tensor, first_step: int, steps: int) -> torch.Tensor:
    """Advance a projection of `images` [B, C, H, W] in [0, 1] by `steps` Adam steps, the first of
    which is step `first_step` (0-based) of the whole run; returns the new state. Needs autograd
    (works inside torch.inference_mode: it leaves it) and only ever calls decode(z)."""
    with torch.inference_mode(False), torch.enable_grad():
        target = images.clone()
        z, m, v = (part.clone() for part in state.chunk(3, dim=1))
        for step in range(first_step + 1, first_step + steps + 1):
            z.requires_grad_(True)
            loss = projection_loss(decode(z), target, z).sum()
            (grad,) = torch.autograd.grad(loss, z)
            z = z.detach()
            m = _BETAS[0] * m + (1 - _BETAS[0]) * grad
            v = _BETAS[1] * v + (1 - _BETAS[1]) * grad * grad
            m_hat, v_hat = m / (1 - _BETAS[0] ** step), v / (1 - _BETAS[1] ** step)
            z = z - PROJECTION_LR * m_hat / (v_hat.sqrt() + _EPS)
        return torch.cat([z, m, v], dim=1).detach()


def projection_loss(decoded: torch.Tensor, images: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """Per image [B]: mean squared pixel error, plus the prior pull."""
    return (decoded - images).pow(2).flatten(1).mean(1) + PROJECTION_PRIOR_WEIGHT * z.pow(2).mean(1)
