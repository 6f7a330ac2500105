"""Differentiable augmentation (Zhao et al. 2020, "Differentiable Augmentation for Data-Efficient
GAN Training"): the discriminator sees real and generated images through the same random colour
shifts, translations and cutouts, so on a few thousand images it cannot memorise the training
set, and the generator's gradients flow back through the (differentiable) transforms.

Works on images in [-1, 1] (the discriminator's input range), as the paper's reference code does.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

POLICIES = ("color", "translation", "cutout")


def parse_policy(text: str | None) -> tuple[str, ...]:
    """'color,translation' -> ('color', 'translation'); empty or None -> no augmentation."""
    names = tuple(name for name in (text or "").split(",") if name)
    unknown = [name for name in names if name not in POLICIES]
    if unknown:
        raise ValueError(f"unknown augmentation {unknown[0]!r}; known: {', '.join(POLICIES)}")
    return names


def _uniform(shape: tuple[int, ...], noise: torch.Generator, x: torch.Tensor) -> torch.Tensor:
    return torch.rand(shape, generator=noise).to(x.device, x.dtype)


def color(x: torch.Tensor, noise: torch.Generator) -> torch.Tensor:
    b = x.shape[0]
    x = x + (_uniform((b, 1, 1, 1), noise, x) - 0.5)  # brightness
    if x.shape[1] > 1:  # saturation: a gray image has none to change
        mean = x.mean(dim=1, keepdim=True)
        x = (x - mean) * (_uniform((b, 1, 1, 1), noise, x) * 2) + mean
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    return (x - mean) * (_uniform((b, 1, 1, 1), noise, x) + 0.5) + mean  # contrast


def translation(x: torch.Tensor, noise: torch.Generator, ratio: float = 0.125) -> torch.Tensor:
    """Shift each image by up to `ratio` of its size, filling with zeros."""
    b, _, h, w = x.shape
    dy, dx = int(h * ratio + 0.5), int(w * ratio + 0.5)
    shift_y = torch.randint(-dy, dy + 1, (b, 1, 1), generator=noise).to(x.device)
    shift_x = torch.randint(-dx, dx + 1, (b, 1, 1), generator=noise).to(x.device)
    rows = (torch.arange(h, device=x.device)[None, :, None] + shift_y + 1).clamp(0, h + 1).expand(b, h, w)
    cols = (torch.arange(w, device=x.device)[None, None, :] + shift_x + 1).clamp(0, w + 1).expand(b, h, w)
    padded = F.pad(x, [1, 1, 1, 1])  # the border of zeros that shifted-in pixels read
    index = torch.arange(b, device=x.device)[:, None, None]
    return padded.permute(0, 2, 3, 1)[index, rows, cols].permute(0, 3, 1, 2)


def cutout(x: torch.Tensor, noise: torch.Generator, ratio: float = 0.5) -> torch.Tensor:
    """Zero one square of `ratio` of the image's size per image, anywhere (clipped at the edges)."""
    b, _, h, w = x.shape
    size_y, size_x = int(h * ratio + 0.5), int(w * ratio + 0.5)
    top = torch.randint(0, h + (1 - size_y % 2), (b, 1, 1), generator=noise).to(x.device) - size_y // 2
    left = torch.randint(0, w + (1 - size_x % 2), (b, 1, 1), generator=noise).to(x.device) - size_x // 2
    rows = torch.arange(h, device=x.device)[None, :, None]
    cols = torch.arange(w, device=x.device)[None, None, :]
    inside = (rows >= top) & (rows < top + size_y) & (cols >= left) & (cols < left + size_x)
    return x * (~inside)[:, None].to(x.dtype)


TRANSFORMS = {"color": color, "translation": translation, "cutout": cutout}


def augment(x: torch.Tensor, policy: tuple[str, ...], noise: torch.Generator) -> torch.Tensor:
    for name in policy:
        x = TRANSFORMS[name](x, noise)
    return x
