"""Projection: an image's latent for a model that has only a decoder.

A GAN has no encoder, so an image becomes a latent by optimisation (Zhu et al. 2016, "Generative
Visual Manipulation on the Natural Image Manifold"): minimise the per-pixel squared error of
decode(z) against the image, plus a small pull towards the prior's typical set, with Adam from a
fixed start for a fixed number of steps. No randomness: the same image gives the same z. Each
image's loss is summed, not averaged, over the batch, so one image's z never depends on the
others'. The state (z and Adam's two moments) is explicit, so that a caller can run the steps
in slices and let other work in between.
"""

from __future__ import annotations

import torch

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
