"""Denoising diffusion (Ho et al. 2020), sampled by DDIM (Song et al. 2021).

Continuous time t in [0, 1] with a cosine schedule written in log-SNR (Nichol & Dhariwal 2021,
shifted and clipped to [-15, 15] as in Hoogeboom et al. 2023): z_t = alpha_t x + sigma_t eps,
alpha_t^2 = sigmoid(logsnr(t)), sigma_t^2 = sigmoid(-logsnr(t)). The U-Net predicts
v = alpha_t eps - sigma_t x (Salimans & Ho 2022), whose loss weights every noise level usefully.

The latent of an image is the DDIM noise it starts from (a deterministic map: the same noise gives
the same image), so everything served on latents works here too: interpolation, traversal,
arithmetic, and image latents by DDIM inversion. With `n_classes > 0` it is class-conditional
with classifier-free guidance (Ho & Salimans 2022): the label's embedding is the latent's last
`class_dim` numbers, as in the DCGAN, and a learnt "no class" code (used for 10 % of training
images) gives the unconditional model that guidance extrapolates away from.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from models.card import MAX_CLASSES, MAX_LATENT_DIM
from models.families.latent import ClassCodedLatent

LOGSNR_MAX, LOGSNR_MIN = 15.0, -15.0
# Images for which training replaces the class code by the "no class" code (Ho & Salimans 2022).
UNCONDITIONAL_SHARE = 0.1


@dataclass
class DiffusionConfig:
    image_shape: tuple[int, int, int] = (1, 28, 28)
    # the U-Net's channels at full resolution, times `multipliers` at each halving
    width: int = field(default=64, metadata={"bounds": (8, 512)})
    multipliers: tuple[int, ...] = field(default=(1, 2, 2), metadata={"bounds": (1, 16)})
    blocks: int = field(default=2, metadata={"bounds": (1, 8)})  # residual blocks per resolution
    n_classes: int = field(default=0, metadata={"bounds": (0, MAX_CLASSES)})
    class_dim: int = field(default=16, metadata={"bounds": (1, 256)})
    # classifier-free guidance: eps = eps(class) + guidance * (eps(class) - eps(no class))
    guidance: float = field(default=0.0, metadata={"bounds": (0.0, 20.0)})
    steps: int = field(default=20, metadata={"bounds": (1, 1000)})  # DDIM steps when a request names none
    bound_steps: int = field(default=100, metadata={"bounds": (1, 1000)})  # steps of the likelihood bound

    def __post_init__(self):
        self.image_shape = tuple(self.image_shape)
        self.multipliers = tuple(self.multipliers)
        _, height, width = self.image_shape
        halvings = len(self.multipliers) - 1
        if height % (1 << halvings) or width % (1 << halvings):
            raise ValueError(f"diffusion: image height and width must be multiples of {1 << halvings}")

    @property
    def noise_dim(self) -> int:
        c, h, w = self.image_shape
        return c * h * w

    @property
    def latent_dim(self) -> int:
        return self.noise_dim + (self.class_dim if self.n_classes else 0)


# -- the schedule -------------------------------------------------------------------------------

_T_FIRST = math.atan(math.exp(-LOGSNR_MAX / 2))
_T_SPAN = math.atan(math.exp(-LOGSNR_MIN / 2)) - _T_FIRST


def logsnr(t: torch.Tensor) -> torch.Tensor:
    """The cosine schedule's log signal-to-noise ratio at t in [0, 1]: 15 at 0, -15 at 1."""
    return -2 * torch.log(torch.tan(_T_FIRST + t * _T_SPAN))


def alpha_sigma(t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    lam = logsnr(t)
    return torch.sigmoid(lam).sqrt(), torch.sigmoid(-lam).sqrt()


def time_grid(steps: int) -> torch.Tensor:
    """steps + 1 times from 1 (all noise) down to 0 (the image), evenly spaced."""
    return torch.linspace(1.0, 0.0, steps + 1, dtype=torch.float64)


# -- the U-Net ----------------------------------------------------------------------------------

def group_norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(math.gcd(8, channels), channels)


class ResBlock(nn.Module):
    """Two 3x3 convolutions; the time-and-class embedding scales and shifts the second's input."""

    def __init__(self, c_in: int, c_out: int, embed_dim: int):
        super().__init__()
        self.norm1, self.conv1 = group_norm(c_in), nn.Conv2d(c_in, c_out, 3, padding=1)
        self.embed = nn.Linear(embed_dim, 2 * c_out)
        self.norm2, self.conv2 = group_norm(c_out), nn.Conv2d(c_out, c_out, 3, padding=1)
        nn.init.zeros_(self.conv2.weight)  # each block starts as the identity
        nn.init.zeros_(self.conv2.bias)
        self.skip = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x: torch.Tensor, embedding: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        scale, shift = self.embed(embedding)[:, :, None, None].chunk(2, dim=1)
        h = self.conv2(F.silu(self.norm2(h) * (1 + scale) + shift))
        return self.skip(x) + h


class Attention(nn.Module):
    """Self-attention over the positions of the coarsest map (7 x 7 for 28 x 28 images)."""

    def __init__(self, channels: int, heads: int = 4):
        super().__init__()
        self.norm, self.heads = group_norm(channels), heads
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.out = nn.Conv2d(channels, channels, 1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        q, k, v = self.qkv(self.norm(x)).reshape(b, 3, self.heads, c // self.heads, h * w).transpose(-1, -2).unbind(1)
        attended = F.scaled_dot_product_attention(q, k, v)  # [b, heads, hw, c / heads]
        return x + self.out(attended.transpose(-1, -2).reshape(b, c, h, w))


class UNet(nn.Module):
    """A small DDPM U-Net: `blocks` residual blocks per resolution, stride-2 convolutions down,
    nearest-neighbour doubling up, skip connections across, attention at the coarsest level."""

    def __init__(self, config: DiffusionConfig):
        super().__init__()
        channels = config.image_shape[0]
        widths = [config.width * m for m in config.multipliers]
        embed_dim = 4 * config.width
        self.time_mlp = nn.Sequential(nn.Linear(config.width, embed_dim), nn.SiLU(), nn.Linear(embed_dim, embed_dim))
        self.class_mlp = nn.Linear(config.class_dim, embed_dim, bias=False) if config.n_classes else None
        self.stem = nn.Conv2d(channels, widths[0], 3, padding=1)
        self.down, self.downsample = nn.ModuleList(), nn.ModuleList()
        skips, c = [widths[0]], widths[0]
        for level, width in enumerate(widths):
            for _ in range(config.blocks):
                self.down.append(ResBlock(c, width, embed_dim))
                c = width
                skips.append(c)
            if level < len(widths) - 1:
                self.downsample.append(nn.Conv2d(c, c, 3, stride=2, padding=1))
                skips.append(c)
        self.middle = nn.ModuleList([ResBlock(c, c, embed_dim), ResBlock(c, c, embed_dim)])
        self.attention = Attention(c)
        self.up, self.upsample = nn.ModuleList(), nn.ModuleList()
        for level, width in reversed(list(enumerate(widths))):
            for _ in range(config.blocks + 1):
                self.up.append(ResBlock(c + skips.pop(), width, embed_dim))
                c = width
            if level > 0:
                self.upsample.append(nn.Conv2d(c, c, 3, padding=1))
        self.head = nn.Sequential(group_norm(c), nn.SiLU(), nn.Conv2d(c, channels, 3, padding=1))
        nn.init.zeros_(self.head[-1].weight)
        nn.init.zeros_(self.head[-1].bias)
        self.levels, self.blocks = len(widths), config.blocks

    def time_embedding(self, t: torch.Tensor) -> torch.Tensor:
        half = self.time_mlp[0].in_features // 2
        frequencies = torch.exp(-math.log(10_000) * torch.arange(half, device=t.device) / half)
        angles = 1000 * t.float()[:, None] * frequencies[None]
        return self.time_mlp(torch.cat([angles.sin(), angles.cos()], dim=1))

    def forward(self, z: torch.Tensor, t: torch.Tensor, code: torch.Tensor | None) -> torch.Tensor:
        embedding = self.time_embedding(t)
        if self.class_mlp is not None:
            embedding = embedding + self.class_mlp(code)
        h = self.stem(z)
        skips = [h]
        blocks = iter(self.down)
        for level in range(self.levels):
            for _ in range(self.blocks):
                h = next(blocks)(h, embedding)
                skips.append(h)
            if level < self.levels - 1:
                h = self.downsample[level](h)
                skips.append(h)
        h = self.middle[0](h, embedding)
        h = self.middle[1](self.attention(h), embedding)
        blocks = iter(self.up)
        for level in range(self.levels):
            for _ in range(self.blocks + 1):
                h = next(blocks)(torch.cat([h, skips.pop()], dim=1), embedding)
            if level < self.levels - 1:
                h = self.upsample[level](F.interpolate(h, scale_factor=2.0, mode="nearest"))
        return self.head(h)


# -- the family ---------------------------------------------------------------------------------

class Diffusion(ClassCodedLatent):
    family = "diffusion"
    Config = DiffusionConfig
    summary = "Diffusion: an image denoised from noise step by step (DDPM trained, DDIM sampled)."
    capabilities = ("sample", "interpolate", "arithmetic", "traverse")
    averaged_weights = True  # ships an exponential moving average of its weights (--ema)

    def __init__(self, config: DiffusionConfig):
        super().__init__()
        self.config = config
        self.unet = UNet(config)
        if config.n_classes:
            self.class_embedding = nn.Embedding(config.n_classes, config.class_dim)
            self.no_class = nn.Parameter(torch.zeros(config.class_dim))
            self.register_buffer("class_prior", torch.full((config.n_classes,), 1 / config.n_classes))

    def class_codes(self) -> torch.Tensor:
        return self.class_embedding.weight.detach().cpu()

    # -- training -------------------------------------------------------------------------------

    def loss(self, x: torch.Tensor, y: torch.Tensor | None) -> tuple[torch.Tensor, dict]:
        """The v-prediction loss at a uniformly drawn time, x in [0, 1]."""
        x = x * 2 - 1
        t = torch.rand(x.shape[0], device=x.device)
        eps = torch.randn_like(x)
        alpha, sigma = (a[:, None, None, None] for a in alpha_sigma(t))
        code = None
        if self.config.n_classes:
            keep = torch.rand(x.shape[0], 1, device=x.device) >= UNCONDITIONAL_SHARE
            code = torch.where(keep, self.class_embedding(y), self.no_class.expand(x.shape[0], -1))
        v = self.unet(alpha * x + sigma * eps, t, code)
        loss = F.mse_loss(v.float(), alpha * eps - sigma * x)
        return loss, {}

    # -- sampling -------------------------------------------------------------------------------

    def _split(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """A latent [B, latent_dim] -> (noise image [B, C, H, W], class code [B, class_dim] or None)."""
        noise = z[:, : self.config.noise_dim].reshape(-1, *self.config.image_shape)
        return noise, (z[:, self.config.noise_dim:] if self.config.n_classes else None)

    def predict_image(self, z_t: torch.Tensor, t: float, code: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """(x, eps) predicted from z_t at time t, x clipped to [-1, 1] (eps recomputed from it), with
        classifier-free guidance when the model has classes and `guidance` > 0."""
        times = torch.full((z_t.shape[0],), t, device=z_t.device)
        if code is not None and self.config.guidance > 0:
            both = self.unet(torch.cat([z_t, z_t]), torch.cat([times, times]),
                             torch.cat([code, self.no_class.expand_as(code)]))
            conditional, unconditional = both.chunk(2)
            v = conditional + self.config.guidance * (conditional - unconditional)
        else:
            v = self.unet(z_t, times, code)
        alpha, sigma = (float(a) for a in alpha_sigma(torch.tensor(t, dtype=torch.float64)))
        x = (alpha * z_t - sigma * v).clamp(-1, 1)
        return x, (z_t - alpha * x) / sigma

    def ddim(self, z: torch.Tensor, code: torch.Tensor | None, times: torch.Tensor, on_step=None) -> torch.Tensor:
        """Move z along the DDIM path through `times` (descending: denoise; ascending: invert)."""
        for step, (t, s) in enumerate(zip(times[:-1].tolist(), times[1:].tolist())):
            # Inversion evaluates the model at the point it starts from, as DDIM inversion does.
            x, eps = self.predict_image(z, t, code)
            alpha_s, sigma_s = (float(a) for a in alpha_sigma(torch.tensor(s, dtype=torch.float64)))
            z = alpha_s * x + sigma_s * eps
            if on_step is not None:
                on_step(step, x)
        return z

    def decode(self, z: torch.Tensor, steps: int | None = None, on_step=None) -> torch.Tensor:
        """Latents [B, latent_dim] -> images [B, C, H, W] in [0, 1] by `steps` DDIM steps
        (the config's default when None)."""
        noise, code = self._split(z)
        x = self.ddim(noise, code, time_grid(steps or self.config.steps).to(noise.device), on_step)
        # The last step lands on t = 0, where the prediction is the image itself.
        return ((x + 1) / 2).clamp(0, 1)
