"""What PixelCNN and PixelRNN share: p(x) = prod_i p(x_i | x_<i) over sub-pixels in raster order,
a pixel's colours in turn (R, then G given R, then B given R and G: the colour masks of
`models.layers`).

Each sub-pixel gets a `levels`-way softmax, so `log_prob` is an exact discrete log-likelihood.
A subclass defines `forward(x, cond)` -> logits and `stepper(cond, batch)`, the same network run
one sub-pixel at a time (`Stepper`), which the sampler drives with as few tensor operations per
sub-pixel as it can.

Sampling is inverse-CDF on uniform noise drawn up front, so a sample is a deterministic function
of (noise, class, temperature): the same seed gives the same image alone or inside any batch, and
the fast and naive samplers can be compared pixel for pixel.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Callable, Protocol

import torch
import torch.nn.functional as F
from torch import nn

from models.contract import Family, defines
from models.families.masked_conv import colour_conv
from models.families.row_sampler import borrowed_row_graph, row_pass, sample_rows


def softmax_head(channels: int, head_channels: int, image_channels: int, levels: int) -> nn.Sequential:
    """Features [B, channels, H, W] -> `levels` logits per sub-pixel, [B, image_channels * levels, H, W],
    each colour's from its own features and the earlier colours' (type B masks)."""
    return nn.Sequential(nn.ReLU(), colour_conv(channels, head_channels, (1, 1), image_channels), nn.ReLU(),
                         colour_conv(head_channels, image_channels * levels, (1, 1), image_channels))


# Images per forward pass when a likelihood runs over every class (the class-marginal).
CLASS_PASS_IMAGES = 128


class AutoregressiveModel(Family):
    """Subclasses' configs have `image_shape`, `levels` and `n_classes` (0: unconditional); they
    define `forward(x, cond)` -> logits [B, C, levels, H, W] (or override `sub_pixel_log_probs`)
    and `stepper(cond, batch)`, whose `Stepper` declares `every_pixel`."""

    def __init_subclass__(cls, **kwargs) -> None:
        config = cls.__dict__.get("Config")
        if config is not None and not {"levels", "n_classes"} <= {f.name for f in dataclasses.fields(config)}:
            raise TypeError(f"{cls.__name__}: an autoregressive family's Config needs levels and n_classes fields")
        if "family" in cls.__dict__ and not defines(cls, "stepper", AutoregressiveModel):
            raise TypeError(f"{cls.__name__}: an autoregressive family defines stepper(cond, batch)")
        super().__init_subclass__(**kwargs)

    # "stream": samples are drawn a row at a time, so they can stream as events.
    capabilities = ("sample", "stream", "complete", "likelihood")
    sampling = "noise"  # a uniform per sub-pixel, turned into levels by inverse CDF
    progress_unit = "row"
    sequential_sampling = True  # one network step per pixel: the cost hint that caps request sizes
    likelihood = "exact"
    # The trained memory layout: a float change may flip a sampled pixel, and the incremental
    # sampler must match the naive one exactly.
    channels_last = False
    # On CUDA, replay each row of the cached sampler as a recorded CUDA graph (`models.families.row_sampler`);
    # false on an instance: the eager loop, e.g. to time one against the other.
    cuda_graphs = True
    likelihood_method = "exact autoregressive log-likelihood"

    @property
    def class_conditional(self) -> bool:
        """Whether sampling, completion and the likelihood take a class label."""
        return self.config.n_classes > 0

    def forward(self, x: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        """x: float [B, C, H, W] in [0, 1] -> logits [B, C, levels, H, W] of p(x_i | x_<i)."""
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
            per_class = self._every_class(x, lambda xs, ys: self.sub_pixel_log_probs(xs, ys).flatten(1).sum(1))
            return torch.logsumexp(per_class, dim=0) - math.log(self.config.n_classes)
        return self.sub_pixel_log_probs(x, cond).flatten(1).sum(1)

    def _every_class(self, x: torch.Tensor, fn) -> torch.Tensor:
        """fn(images, classes) for every class, [K, B, ...]: as many classes per pass as fit in
        `CLASS_PASS_IMAGES` images, since a pass's fixed costs (the Row LSTM's 28 row steps) are
        paid per pass, not per image."""
        k, b = self.config.n_classes, x.shape[0]
        per_pass = max(1, CLASS_PASS_IMAGES // b)
        out = []
        for first in range(0, k, per_pass):
            classes = torch.arange(first, min(k, first + per_pass), device=x.device)
            value = fn(x.repeat(len(classes), *[1] * (x.dim() - 1)), classes.repeat_interleave(b))
            out.append(value.view(len(classes), b, *value.shape[1:]))
        return torch.cat(out)

    def sub_pixel_log_probs(self, x: torch.Tensor, cond: torch.Tensor | None) -> torch.Tensor:
        """log p(x_i | x_<i) for every sub-pixel, [B, C, H, W]: training, the likelihood and the
        class posterior all build on it. By default from `forward`'s `levels` logits per
        sub-pixel; a family with a parametric head (a discretized logistic mixture, say: see
        models/families/discretized_logistic.py) overrides it to score each sub-pixel's own value
        from the head's few parameters, and trains at the speed of its arithmetic. Its sampler
        still asks its stepper for `levels` logits of one sub-pixel at a time."""
        logits = self(x, cond)  # [B, C, levels, H, W]
        return -F.cross_entropy(logits.transpose(1, 2), self._targets(x), reduction="none")

    @torch.no_grad()
    def class_posterior(self, x: torch.Tensor, known_mask: torch.Tensor) -> torch.Tensor:
        """p(class | the known pixels of x), [B, K], under the uniform class prior.

        It uses the known sub-pixels that come before the first unknown one in raster-then-colour
        order: their likelihood given a class needs no unknown one, so for a mask of top rows (a
        completion) the posterior is exact. Known sub-pixels after a gap are left out of it."""
        known = known_mask.expand_as(x).permute(0, 2, 3, 1)  # [B, H, W, C]: the sampling order
        prefix = known.flatten(1).long().cumprod(1).view_as(known).permute(0, 3, 1, 2)
        per_class = self._every_class(x, lambda xs, ys: (self.sub_pixel_log_probs(xs, ys)
                                                         * prefix.repeat(len(ys) // len(x), 1, 1, 1)).flatten(1).sum(1))
        return per_class.t().softmax(1)

    def class_from_uniform(self, x: torch.Tensor, known_mask: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        """Each image's class drawn from `class_posterior` by inverse CDF on u [B] in [0, 1)."""
        cdf = self.class_posterior(x, known_mask).cumsum(1)
        picked = torch.searchsorted(cdf, u.to(cdf)[:, None]).squeeze(1)
        return picked.clamp_(max=self.config.n_classes - 1)

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
    def complete_from_noise(self, images: torch.Tensor, known: torch.Tensor, noise: tuple,
                            temperature: float = 1.0) -> torch.Tensor:
        """`complete` from `completion_noise_for_seeds`'s (noise, cond, class_u): a conditional
        model given no class takes it from the known pixels (class_u picks from the posterior)."""
        noise, cond, class_u = noise
        if class_u is not None:
            cond = self.class_from_uniform(images, known, class_u)
        return self.sample_from_noise(noise, temperature, cond, x=images, known_mask=known)

    @torch.no_grad()
    def sample_from_noise(self, noise: torch.Tensor, temperature: float = 1.0, cond: torch.Tensor | None = None,
                          x: torch.Tensor | None = None, known_mask: torch.Tensor | None = None,
                          fast: bool = True, on_progress: Callable[[int, torch.Tensor], bool] | None = None) -> torch.Tensor:
        """Sample sub-pixel by sub-pixel in raster order, keeping `x` wherever `known_mask` is set.

        `on_progress(i, images)` is called after each row (the event stream shows it); returning False
        stops the sampling there, leaving the rows below as given.

        `fast` runs the family's `stepper`, which computes each pixel's activations once; the
        naive path reruns the whole network for every pixel. Both compute the same function (the
        network is causal), so they draw the same pixels up to the last bits of a float.
        """
        device = next(self.parameters()).device
        dtype = next(self.parameters()).dtype
        self._check_cond(cond)
        noise = noise.to(device=device, dtype=dtype)
        cond = cond.to(device) if cond is not None else None
        out = torch.zeros_like(noise) if x is None else x.to(device=device, dtype=dtype).clone()
        known = (torch.zeros_like(noise, dtype=torch.bool) if known_mask is None
                 else known_mask.to(device).expand_as(noise).clone())
        rows, on_row = noise.shape[2], on_progress
        if not fast:
            return self._sample_naive(out, noise, known, temperature, cond, rows, on_row)
        if noise.shape[0] == 1:
            # BLAS computes a single row by another kernel (gemv) than a batch, with other
            # rounding: two copies keep one image's pixels the same alone or in any batch.
            pair = self._sample_fast(out.repeat(2, 1, 1, 1), noise.repeat(2, 1, 1, 1), known.repeat(2, 1, 1, 1),
                                     temperature, None if cond is None else cond.repeat(2), rows,
                                     None if on_row is None else (lambda i, images: on_row(i, images[:1])))
            return pair[:1]
        return self._sample_fast(out, noise, known, temperature, cond, rows, on_row)

    def _sample_naive(self, out, noise, known, temperature, cond, rows, on_row) -> torch.Tensor:
        for i in range(rows):
            for j in range(out.shape[3]):
                for colour in range(out.shape[1]):
                    unknown = ~known[:, colour, i, j]
                    if not unknown.any():
                        continue
                    logits = self(out, cond)[:, colour, :, i, j]
                    value = self._inverse_cdf(logits, noise[:, colour, i, j], temperature)
                    out[:, colour, i, j] = torch.where(unknown, value, out[:, colour, i, j])
            if on_row is not None and on_row(i, out) is False:
                break
        return out

    def _sample_fast(self, out, noise, known, temperature, cond, rows, on_row) -> torch.Tensor:
        """The sub-pixel loop over `self.stepper` (`models.families.row_sampler`), with as few
        tensor operations per sub-pixel as it can; on CUDA each row is one replay of a recorded
        CUDA graph (unless `cuda_graphs` is false), the same pixels as the eager loop there."""
        batch = noise.shape[0]
        with borrowed_row_graph(self, batch, temperature, cond) as recorded:
            if recorded is not None:
                return sample_rows(recorded.stepper, recorded.row, out, noise, known, temperature, on_row,
                                   recorded.replay)
            stepper = self.stepper(cond, batch)
            return sample_rows(stepper, row_pass(self, stepper, batch), out, noise, known, temperature, on_row)

    def stepper(self, cond: torch.Tensor | None, batch: int) -> "Stepper":
        """The family's incremental network for `batch` images (see `Stepper`)."""
        raise NotImplementedError

    def _inverse_cdf(self, logits: torch.Tensor, u: torch.Tensor, temperature: float) -> torch.Tensor:
        """Pick the level whose CDF interval holds u; logits [B, levels], u [B] -> [B] in [0, 1]."""
        cdf = torch.softmax(logits / temperature, dim=-1).cumsum(-1)
        level = (cdf < u.unsqueeze(-1)).sum(-1).clamp_(max=self.config.levels - 1)
        return level.to(u.dtype) / (self.config.levels - 1)


class Stepper(Protocol):
    """A family's network run one sub-pixel at a time, each pixel's activations computed once
    (in colour, those of each colour's group of channels).

    The sampler calls, for each row i it draws: `start_row(i, images)` (rows < i of `images` are
    final), then for j = 0, 1, ... in order and for each colour in order, `step(j, colour)` ->
    the logits of sub-pixel (i, j, colour), [B, levels], and `emit(j, colour, level)` with its
    final level [B, 1] (drawn or given). `every_pixel`: whether known pixels must be stepped too
    (a state that runs through every row); otherwise rows given whole, and a row's columns after
    its last drawn one, are skipped.

    The memory `step` and `emit` touch is made once, and `start_row` rewrites what a row reads,
    so that a row's steps can be recorded once and replayed (a CUDA graph); `bind(cond)` takes
    the classes of another batch of the same size.
    """

    every_pixel: bool

    def start_row(self, i: int, images: torch.Tensor) -> None: ...

    def step(self, j: int, colour: int) -> torch.Tensor: ...

    def emit(self, j: int, colour: int, level: torch.Tensor) -> None: ...

    def bind(self, cond: torch.Tensor | None) -> None: ...


class RowConv:
    """A convolution that yields one output row, from channels-last rows [B, kh, W + kw - 1, C_in]
    to [B * W, C_out], as one matrix product over its patches: at a sampler's batch (2 to 16
    images) oneDNN's convolution costs up to twice its arithmetic in set-up; gathering channels-last
    patches costs a tenth, and the product runs at the machine's rate."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None):
        self.width = weight.shape[-1]
        self.weight = weight.permute(0, 2, 3, 1).reshape(weight.shape[0], -1).t()  # [kh * kw * C_in, C_out]
        self.bias = bias

    def __call__(self, rows: torch.Tensor) -> torch.Tensor:
        patches = rows.unfold(2, self.width, 1).permute(0, 2, 1, 4, 3).reshape(-1, self.weight.shape[0])
        return torch.mm(patches, self.weight) if self.bias is None else torch.addmm(self.bias, patches, self.weight)


class HeadStep:
    """`softmax_head` on one pixel's features [B, c] -> the logits of one colour [B, levels], into
    buffers made once: a column of ones carries each bias, so the head is three operations and a
    ReLU."""

    def __init__(self, head: nn.Sequential, batch: int, colours: int):
        first, last = head[1], head[3]
        new = dict(dtype=first.weight.dtype, device=first.weight.device)
        self.features = torch.ones(batch, first.in_channels + 1, **new)
        self.hidden = torch.ones(batch, first.out_channels + 1, **new)
        self.w_first = torch.cat([first.masked_weight[:, :, 0, 0].t(), first.bias[None]])
        w_last = torch.cat([last.masked_weight[:, :, 0, 0].t(), last.bias[None]])
        levels = last.out_channels // colours
        self.w_last = [w_last[:, k * levels:(k + 1) * levels].contiguous() for k in range(colours)]
        self.logits = torch.empty(batch, levels, **new)

    def __call__(self, h: torch.Tensor, colour: int) -> torch.Tensor:
        torch.clamp_min(h, 0, out=self.features[:, :-1])
        torch.mm(self.features, self.w_first, out=self.hidden[:, :-1]).clamp_min_(0)
        return torch.mm(self.hidden, self.w_last[colour], out=self.logits)


class PixelPush:
    """What a finished sub-pixel adds to later pre-activations through a linear map `push` [C, D]
    of the network's input (x * 2 - 1): one table per colour, a row per level, so a sub-pixel
    costs one lookup."""

    def __init__(self, push: torch.Tensor, levels: int):
        values = torch.arange(levels, dtype=push.dtype, device=push.device) / (levels - 1) * 2 - 1
        self.tables = [values[:, None] * row[None, :] for row in push]

    def add_to(self, into: torch.Tensor, colour: int, level: torch.Tensor) -> None:
        """`into` [B, D] += the push of sub-pixels of `colour` whose levels are `level` [B, 1]."""
        into.add_(torch.embedding(self.tables[colour], level.view(-1)))


def _concat(draws: list[tuple]) -> tuple:
    """Per-seed draws of (tensor or None, ...) -> each field concatenated over the seeds, or None."""
    return tuple(None if parts[0] is None else torch.cat(parts) for parts in zip(*draws))
