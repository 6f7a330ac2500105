"""What PixelCNN and PixelRNN share: p(x) = prod_i p(x_i | x_<i) over sub-pixels in raster order.

Each sub-pixel gets a `levels`-way softmax, so `log_prob` is an exact discrete log-likelihood.
With several colour channels, the channels of one pixel are modelled as independent given all
earlier pixels (still a normalised density). A subclass defines `forward(x, cond)` -> logits and
`incremental_sampler(cond)`, its fast way to get the logits of one sub-pixel after another.

Sampling is inverse-CDF on uniform noise drawn up front, so a sample is a deterministic function
of (noise, class, temperature): the same seed gives the same image alone or inside any batch, and
the fast and naive samplers can be compared pixel for pixel.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def softmax_head(channels: int, head_channels: int, image_channels: int, levels: int) -> nn.Sequential:
    """Features [B, channels, H, W] -> `levels` logits per sub-pixel, [B, image_channels * levels, H, W]."""
    return nn.Sequential(nn.ReLU(), nn.Conv2d(channels, head_channels, 1), nn.ReLU(),
                         nn.Conv2d(head_channels, image_channels * levels, 1))


class AutoregressiveModel(nn.Module):
    """Subclasses set `config.image_shape`, `config.levels`, `config.n_classes` (0: unconditional)."""

    # "stream": samples are drawn a row at a time, so they can stream as events.
    capabilities = ("sample", "stream", "complete", "likelihood")
    sequential_sampling = True  # one network step per pixel: the cost hint that caps request sizes
    exact_likelihood = True
    # The trained memory layout: a float change may flip a sampled pixel, and the incremental
    # sampler must match the naive one exactly.
    channels_last = False
    likelihood_method = "exact autoregressive log-likelihood"

    @property
    def class_conditional(self) -> bool:
        """Whether sampling, completion and the likelihood take a class label."""
        return self.config.n_classes > 0

    def forward(self, x: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        """x: float [B, C, H, W] in [0, 1] -> logits [B, C, levels, H, W] of p(x_i | x_<i)."""
        raise NotImplementedError

    def incremental_sampler(self, cond: torch.Tensor | None):
        """An object whose `logits(out, i, j)` [B, C, levels] equal `self(out, cond)[..., i, j]`,
        called in raster order with every pixel before (i, j) of `out` final."""
        raise NotImplementedError

    def _logits(self, h: torch.Tensor) -> torch.Tensor:
        """`self.head` (a `softmax_head`) on features -> logits [B, C, levels, H, W]."""
        logits = self.head(h)
        b, _, height, width = logits.shape
        return logits.view(b, self.config.image_shape[0], self.config.levels, height, width)

    def _check_cond(self, cond: torch.Tensor | None) -> None:
        if self.config.n_classes and cond is None:
            raise ValueError(f"this {type(self).__name__} is class-conditional: pass cond")

    # -- likelihood --------------------------------------------------------------------------

    def loss(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, dict]:
        """What `models.train` minimises: the NLL in nats per sub-pixel (given the class, if any)."""
        nll = -self.log_prob(x, y if self.config.n_classes else None).mean()
        dims = x[0].numel()
        return nll / dims, {"bits_per_dim": (nll / (dims * math.log(2))).item()}

    def nll(self, x: torch.Tensor, cond: torch.Tensor | None = None,
            generator: torch.Generator | None = None) -> torch.Tensor:
        """-log p(x) in nats per image [B], exact (`generator` is unused: nothing is drawn)."""
        return -self.log_prob(x, cond)

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

    def noise_for_seeds(self, seeds, cond: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """`draw_noise` of one image per seed, each from its own generator, concatenated: the rule
        the API, the evaluation and the showcase share, so any picture can be redrawn by seed."""
        return _concat([self.draw_noise(1, torch.Generator().manual_seed(s), cond) for s in seeds])

    def completion_noise_for_seeds(self, seeds, cond: torch.Tensor | None = None) -> tuple:
        """`draw_completion_noise` of one image per seed, each from its own generator."""
        return _concat([self.draw_completion_noise(1, torch.Generator().manual_seed(s), cond) for s in seeds])

    @torch.no_grad()
    def sample_for_seeds(self, seeds, temperature: float = 1.0) -> torch.Tensor:
        """The images of these seeds [len(seeds), C, H, W], as `POST .../samples` draws them."""
        noise, cond = self.noise_for_seeds(seeds)
        return self.sample_from_noise(noise, temperature, cond)

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
        exactly the pixels of the run in one go, since each pixel sees only the pixels before it.

        `fast` takes the logits from `incremental_sampler`; the naive path reruns the whole
        network for every pixel. Both compute the same numbers (the network is causal), so they
        draw the same pixels.
        """
        device = next(self.parameters()).device
        dtype = next(self.parameters()).dtype
        self._check_cond(cond)
        noise = noise.to(device=device, dtype=dtype)
        cond = cond.to(device) if cond is not None else None
        _, _, height, width = noise.shape
        out = torch.zeros_like(noise) if x is None else x.to(device=device, dtype=dtype).clone()
        known = (torch.zeros_like(noise, dtype=torch.bool) if known_mask is None
                 else known_mask.to(device).expand_as(noise).clone())
        sampler = self.incremental_sampler(cond) if fast else None
        for i in range(height if stop_row is None else min(stop_row, height)):
            row_unknown = ~known[:, :, i, :]
            if not row_unknown.any():
                continue
            for j in range(width):
                if not row_unknown[:, :, j].any():
                    continue
                logits = sampler.logits(out, i, j) if fast else self(out, cond)[..., i, j]
                value = self._inverse_cdf(logits, noise[:, :, i, j], temperature)
                fill = row_unknown[:, :, j]
                out[:, :, i, j] = torch.where(fill, value, out[:, :, i, j])
        return out

    def _inverse_cdf(self, logits: torch.Tensor, u: torch.Tensor, temperature: float) -> torch.Tensor:
        """Pick the level whose CDF interval holds u; logits [B, C, levels], u [B, C] -> [B, C] in [0, 1]."""
        cdf = torch.softmax(logits / temperature, dim=-1).cumsum(-1)
        level = (cdf < u.unsqueeze(-1)).sum(-1).clamp_(max=self.config.levels - 1)
        return level.to(u.dtype) / (self.config.levels - 1)


def _concat(draws: list[tuple]) -> tuple:
    """Per-seed draws of (tensor or None, ...) -> each field concatenated over the seeds, or None."""
    return tuple(None if parts[0] is None else torch.cat(parts) for parts in zip(*draws))
