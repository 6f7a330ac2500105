"""Gated PixelCNN: an explicit density model, p(x) = prod_i p(x_i | x_<i) over sub-pixels in raster order.

Each sub-pixel gets a 256-way softmax, so `log_prob` is an exact discrete log-likelihood. With
several colour channels, the channels of one pixel are modelled as independent given all earlier
pixels (still a normalised density; simpler than the paper's R -> G -> B masking).

Sampling is inverse-CDF on uniform noise drawn up front, so a sample is a deterministic function
of (noise, class, temperature): the same seed gives the same image alone or inside any batch, and
the fast and naive samplers can be compared pixel for pixel.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from models.layers import GatedBlock


@dataclass
class PixelCNNConfig:
    image_shape: tuple[int, int, int] = (1, 28, 28)
    channels: int = 64
    n_layers: int = 7
    kernel_size: int = 7
    head_channels: int = 256
    n_classes: int = 0  # > 0: class-conditional
    levels: int = 256

    def __post_init__(self):
        self.image_shape = tuple(self.image_shape)  # JSON gives a list back


class PixelCNN(nn.Module):
    family = "pixelcnn"
    Config = PixelCNNConfig

    def __init__(self, config: PixelCNNConfig):
        super().__init__()
        if config.kernel_size < 3 or config.kernel_size % 2 == 0:
            raise ValueError("kernel_size must be odd and >= 3")
        self.config = config
        c_img = config.image_shape[0]
        self.blocks = nn.ModuleList(
            GatedBlock(c_img if i == 0 else config.channels, config.channels, config.kernel_size,
                       first=(i == 0), n_classes=config.n_classes)
            for i in range(config.n_layers)
        )
        self.head = nn.Sequential(
            nn.ReLU(),
            nn.Conv2d(config.channels, config.head_channels, 1),
            nn.ReLU(),
            nn.Conv2d(config.head_channels, c_img * config.levels, 1),
        )

    # -- the network -------------------------------------------------------------------------

    def _vertical_pass(self, x: torch.Tensor, biases: list) -> list[torch.Tensor]:
        """The vertical stack's contribution to each block of the horizontal stack."""
        v, contributions = x, []
        for block, bias in zip(self.blocks, biases):
            v, to_horizontal = block.vertical(v, bias)
            contributions.append(to_horizontal)
        return contributions

    def _horizontal_pass(self, x: torch.Tensor, contributions: list, biases: list) -> torch.Tensor:
        """Logits [B, C, levels, H, W] from the input and the vertical stack's contributions."""
        h = x
        for block, from_vertical, bias in zip(self.blocks, contributions, biases):
            h = block.horizontal(h, from_vertical, bias)
        logits = self.head(h)
        b, _, height, width = logits.shape
        return logits.view(b, self.config.image_shape[0], self.config.levels, height, width)

    def _biases(self, cond: torch.Tensor | None) -> list:
        if self.config.n_classes and cond is None:
            raise ValueError("this PixelCNN is class-conditional: pass cond")
        return [block.embed(cond) for block in self.blocks]

    def forward(self, x: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        """x: float [B, C, H, W] in [0, 1] -> logits [B, C, levels, H, W] of p(x_i | x_<i)."""
        inputs = x * 2 - 1
        biases = self._biases(cond)
        return self._horizontal_pass(inputs, self._vertical_pass(inputs, biases), biases)

    # -- likelihood --------------------------------------------------------------------------

    def _targets(self, x: torch.Tensor) -> torch.Tensor:
        return (x * (self.config.levels - 1)).round().long().clamp_(0, self.config.levels - 1)

    def log_prob(self, x: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        """log p(x) in nats per image, [B]. For a conditional model without `cond`, the exact
        marginal over a uniform class prior: log (1/K) sum_y p(x | y)."""
        if self.config.n_classes and cond is None:
            k = self.config.n_classes
            per_class = torch.stack([
                self.log_prob(x, torch.full((x.shape[0],), y, dtype=torch.long, device=x.device))
                for y in range(k)
            ])
            return torch.logsumexp(per_class, dim=0) - math.log(k)
        return self._sub_pixel_log_probs(x, cond).flatten(1).sum(1)

    def _sub_pixel_log_probs(self, x: torch.Tensor, cond: torch.Tensor | None) -> torch.Tensor:
        """log p(x_i | x_<i) for every sub-pixel, [B, C, H, W]."""
        logits = self(x, cond)  # [B, C, levels, H, W]
        return -F.cross_entropy(logits.transpose(1, 2), self._targets(x), reduction="none")

    @torch.no_grad()
    def class_posterior(self, x: torch.Tensor, known_mask: torch.Tensor) -> torch.Tensor:
        """p(class | the known pixels of x), [B, K], under the uniform class prior.

        It uses the known pixels that come before the first unknown one in raster order: their
        likelihood given a class needs no unknown pixel, so for a mask of top rows (a completion)
        the posterior is exact. Known pixels after a gap are left out of it."""
        known_pixels = known_mask.expand_as(x).all(1)  # [B, H, W]: a pixel's channels come together
        prefix = known_pixels.flatten(1).long().cumprod(1).view_as(known_pixels).unsqueeze(1)
        per_class = [(self._sub_pixel_log_probs(x, torch.full((x.shape[0],), y, device=x.device)) * prefix)
                     .flatten(1).sum(1) for y in range(self.config.n_classes)]
        return torch.stack(per_class, 1).softmax(1)

    def class_from_uniform(self, x: torch.Tensor, known_mask: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        """Each image's class drawn from `class_posterior` by inverse CDF on u [B] in [0, 1)."""
        cdf = self.class_posterior(x, known_mask).cumsum(1)
        picked = torch.searchsorted(cdf, u.to(cdf)[:, None]).squeeze(1)
        return picked.clamp_(max=self.config.n_classes - 1)

    @staticmethod
    def bits_per_dim(log_prob_nats: torch.Tensor, num_dims: int) -> torch.Tensor:
        """nats per image -> bits per sub-pixel: -log p / (dims * ln 2)."""
        return -log_prob_nats / (num_dims * math.log(2))

    # -- sampling ----------------------------------------------------------------------------

    def draw_noise(self, n: int, generator: torch.Generator | None = None,
                   cond: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The randomness of n samples: a uniform per sub-pixel, and a class per image for a
        conditional model when `cond` is not given (drawn first, from the same generator)."""
        if self.config.n_classes and cond is None:
            cond = torch.randint(self.config.n_classes, (n,), generator=generator)
        noise = torch.rand((n, *self.config.image_shape), generator=generator)
        return noise, cond

    def draw_completion_noise(self, n: int, generator: torch.Generator | None = None, cond: torch.Tensor | None = None
                              ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """The randomness of n completions: (noise, cond, class_u). A conditional model given no
        `cond` gets a uniform per image instead (drawn first), that picks its class from
        `class_posterior` once the known pixels are at hand."""
        class_u = torch.rand(n, generator=generator) if self.config.n_classes and cond is None else None
        noise = torch.rand((n, *self.config.image_shape), generator=generator)
        return noise, cond, class_u

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None, temperature: float = 1.0,
               cond: torch.Tensor | None = None, fast: bool = True) -> torch.Tensor:
        """n images, float [n, C, H, W] in [0, 1]."""
        noise, cond = self.draw_noise(n, generator, cond)
        return self.sample_from_noise(noise, temperature, cond, fast=fast)

    @torch.no_grad()
    def complete(self, x: torch.Tensor, known_mask: torch.Tensor, generator: torch.Generator | None = None,
                 temperature: float = 1.0, cond: torch.Tensor | None = None, fast: bool = True) -> torch.Tensor:
        """Fill in the pixels where `known_mask` [B, 1|C, H, W] is False, given the others.
        A conditional model given no `cond` draws each image's class from its posterior given the
        known pixels (`class_posterior`), so that the completion continues what it is shown."""
        noise, cond, class_u = self.draw_completion_noise(x.shape[0], generator, cond)
        if class_u is not None:
            weight = next(self.parameters())
            cond = self.class_from_uniform(x.to(weight), known_mask.to(weight.device), class_u)
        return self.sample_from_noise(noise, temperature, cond, x=x, known_mask=known_mask, fast=fast)

    @torch.no_grad()
    def sample_from_noise(self, noise: torch.Tensor, temperature: float = 1.0, cond: torch.Tensor | None = None,
                          x: torch.Tensor | None = None, known_mask: torch.Tensor | None = None,
                          fast: bool = True, stop_row: int | None = None) -> torch.Tensor:
        """Sample sub-pixel by sub-pixel in raster order, keeping `x` wherever `known_mask` is set.

        `stop_row` ends the sampling before that row (the rows below stay as given), so a caller
        can draw an image a row at a time: passing back the rows done so far as known draws
        exactly the pixels of the run in one go, since each pixel sees only the rows above it.

        `fast` runs the vertical stack once per row and the horizontal stack on one row per pixel,
        cut at the current column; the naive path reruns the whole network for every pixel.
        Both compute the same numbers (convolutions are causal), so they draw the same pixels.
        """
        device = next(self.parameters()).device
        dtype = next(self.parameters()).dtype
        noise = noise.to(device=device, dtype=dtype)
        cond = cond.to(device) if cond is not None else None
        b, c, height, width = noise.shape
        out = torch.zeros_like(noise) if x is None else x.to(device=device, dtype=dtype).clone()
        known = (torch.zeros_like(noise, dtype=torch.bool) if known_mask is None
                 else known_mask.to(device).expand_as(noise).clone())
        biases = self._biases(cond)
        for i in range(height if stop_row is None else min(stop_row, height)):
            row_unknown = ~known[:, :, i, :]
            if not row_unknown.any():
                continue
            if fast:
                # Rows <= i of the input are all the vertical stack needs for row i.
                contributions = [t[:, :, i:i + 1, :] for t in self._vertical_pass(out[:, :, : i + 1] * 2 - 1, biases)]
            for j in range(width):
                if not row_unknown[:, :, j].any():
                    continue
                if fast:
                    row = out[:, :, i:i + 1, : j + 1] * 2 - 1
                    logits = self._horizontal_pass(row, [t[..., : j + 1] for t in contributions], biases)[..., 0, j]
                else:
                    logits = self(out, cond)[..., i, j]
                value = self._inverse_cdf(logits, noise[:, :, i, j], temperature)
                fill = row_unknown[:, :, j]
                out[:, :, i, j] = torch.where(fill, value, out[:, :, i, j])
        return out

    def _inverse_cdf(self, logits: torch.Tensor, u: torch.Tensor, temperature: float) -> torch.Tensor:
        """Pick the level whose CDF interval holds u; logits [B, C, levels], u [B, C] -> [B, C] in [0, 1]."""
        cdf = torch.softmax(logits / temperature, dim=-1).cumsum(-1)
        level = (cdf < u.unsqueeze(-1)).sum(-1).clamp_(max=self.config.levels - 1)
        return level.to(u.dtype) / (self.config.levels - 1)
