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

from models.card import MAX_CLASSES
from models.families.latent import ClassCodedLatent
from models.families.unet import UNet

LOGSNR_MAX, LOGSNR_MIN = 15.0, -15.0
# Images for which training replaces the class code by the "no class" code (Ho & Salimans 2022).
UNCONDITIONAL_SHARE = 0.1
MAX_STEPS = 250  # the most DDIM steps a request may ask for
# RePaint (Lugmayr et al. 2022): each step of a completion is taken this many times, noised back
# in between, so that the drawn pixels come to agree with the kept ones.
RESAMPLINGS = 4
LEVELS = 256  # the data's gray levels, for the likelihood's discrete decoder


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


def time_of_logsnr(lam: torch.Tensor) -> torch.Tensor:
    """The inverse of `logsnr`."""
    return (torch.atan(torch.exp(-lam / 2)) - _T_FIRST) / _T_SPAN


def alpha_sigma(t) -> tuple[float, float]:
    """alpha_t and sigma_t at one time t (a float), computed in float64."""
    lam = logsnr(torch.tensor(float(t), dtype=torch.float64))
    return float(torch.sigmoid(lam).sqrt()), float(torch.sigmoid(-lam).sqrt())


def time_grid(steps: int) -> list[float]:
    """steps + 1 times from 1 (all noise) down to 0 (the image), evenly spaced."""
    return torch.linspace(1.0, 0.0, steps + 1, dtype=torch.float64).tolist()


# -- the family ---------------------------------------------------------------------------------

class Diffusion(ClassCodedLatent):
    family = "diffusion"
    Config = DiffusionConfig
    summary = "Diffusion: an image denoised from noise step by step (DDPM trained, DDIM sampled)."
    # "invert": an upload's latent is the DDIM noise that decodes to it (DDIM inversion).
    capabilities = ("sample", "stream", "interpolate", "arithmetic", "traverse", "invert", "image_latent",
                    "reconstruct", "complete", "likelihood")
    progress_unit = "step"
    class_spread = 1.0  # a class's noise is the prior's: DDIM from shrunken noise draws flat images
    likelihood = "bound"
    likelihood_method = ("negative variational bound (Kingma et al. 2021's discrete-time form): the prior at "
                         "log-SNR -15, the config's bound_steps denoising steps evenly spaced in log-SNR, and a "
                         "discrete decoder over the 256 levels at log-SNR 15; one noise draw per step, fixed seed")
    likelihood_test_images = 500  # bound_steps passes an image: evaluation scores the first 500
    averaged_weights = True  # ships an exponential moving average of its weights (--ema)

    def __init__(self, config: DiffusionConfig):
        super().__init__()
        self.config = config
        self.unet = UNet(config)
        if config.n_classes:
            self.class_embedding = nn.Embedding(config.n_classes, config.class_dim)
            self.no_class = nn.Parameter(torch.zeros(config.class_dim))
            self.register_buffer("class_prior", torch.full((config.n_classes,), 1 / config.n_classes))

    @property
    def class_conditional(self) -> bool:
        """Completion and the likelihood take a class label (samples take a class's latent)."""
        return self.config.n_classes > 0

    def class_codes(self) -> torch.Tensor:
        return self.class_embedding.weight.detach().cpu()

    def sampling_steps(self) -> tuple[int, int]:
        return self.config.steps, MAX_STEPS

    # -- training -------------------------------------------------------------------------------

    def loss(self, x: torch.Tensor, y: torch.Tensor | None) -> tuple[torch.Tensor, dict]:
        """The v-prediction loss at a uniformly drawn time, x in [0, 1]."""
        x = x * 2 - 1
        t = torch.rand(x.shape[0], device=x.device)
        eps = torch.randn_like(x)
        lam = logsnr(t)[:, None, None, None]
        alpha, sigma = torch.sigmoid(lam).sqrt(), torch.sigmoid(-lam).sqrt()
        code = None
        if self.config.n_classes:
            keep = torch.rand(x.shape[0], 1, device=x.device) >= UNCONDITIONAL_SHARE
            code = torch.where(keep, self.class_embedding(y), self.no_class.expand(x.shape[0], -1))
        v = self.unet(alpha * x + sigma * eps, t, code)
        return F.mse_loss(v.float(), alpha * eps - sigma * x), {}

    # -- sampling: DDIM -------------------------------------------------------------------------

    def _split(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """A latent [B, latent_dim] -> (noise image [B, C, H, W], class code [B, class_dim] or None)."""
        noise = z[:, : self.config.noise_dim].reshape(-1, *self.config.image_shape)
        return noise, (z[:, self.config.noise_dim:] if self.config.n_classes else None)

    def _no_class(self, batch: int) -> torch.Tensor | None:
        return self.no_class.detach().expand(batch, -1) if self.config.n_classes else None

    def predict_image(self, z_t: torch.Tensor, t: float, code: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """(x, eps) predicted from z_t at time t, x clipped to [-1, 1] (eps recomputed from it), with
        classifier-free guidance when the model has classes and `guidance` > 0."""
        times = torch.full((z_t.shape[0],), t, device=z_t.device)
        if code is not None and self.config.guidance > 0:
            both = self.unet(torch.cat([z_t, z_t]), torch.cat([times, times]),
                             torch.cat([code, self._no_class(code.shape[0])]))
            conditional, unconditional = both.chunk(2)
            v = conditional + self.config.guidance * (conditional - unconditional)
        else:
            v = self.unet(z_t, times, code)
        alpha, sigma = alpha_sigma(t)
        x = (alpha * z_t - sigma * v).clamp(-1, 1)
        return x, (z_t - alpha * x) / sigma

    def ddim(self, z: torch.Tensor, code: torch.Tensor | None, times: list[float], on_progress=None) -> torch.Tensor:
        """Move z along the DDIM path through `times` (descending: denoise; ascending: invert);
        `on_progress(i, images)` sees each step's prediction of the image, and False stops there."""
        for step, (t, s) in enumerate(zip(times[:-1], times[1:])):
            # Inversion evaluates the model at the point it starts from, as DDIM inversion does.
            x, eps = self.predict_image(z, t, code)
            alpha_s, sigma_s = alpha_sigma(s)
            z = alpha_s * x + sigma_s * eps
            if on_progress is not None and on_progress(step, (x + 1) / 2) is False:
                return x
        return z

    def decode(self, z: torch.Tensor, steps: int | None = None, on_progress=None) -> torch.Tensor:
        """Latents [B, latent_dim] -> images [B, C, H, W] in [0, 1] by `steps` DDIM steps
        (the config's default when None)."""
        noise, code = self._split(z)
        x = self.ddim(noise, code, time_grid(steps or self.config.steps), on_progress)
        # The last step lands on t = 0, where z is the image itself.
        return ((x + 1) / 2).clamp(0, 1)

    def invert(self, images: torch.Tensor) -> torch.Tensor:
        """Images -> the latents that decode to them: DDIM run backwards from the image to the
        noise, without a class (a class model's latent ends in its "no class" code)."""
        code = self._no_class(images.shape[0])
        noise = self.ddim(images * 2 - 1, code, time_grid(self.config.steps)[::-1])
        return noise.flatten(1) if code is None else torch.cat([noise.flatten(1), code], dim=1)

    # -- completion: RePaint --------------------------------------------------------------------

    def completion_noise_for_seeds(self, seeds, cond: torch.Tensor | None = None) -> tuple:
        """Per seed: the starting noise, the class code (`cond`'s, or none: the kept pixels lead),
        and the seed of the generator that draws each step's fresh noise."""
        starts, fresh = [], []
        for seed in seeds:
            generator = torch.Generator().manual_seed(seed)
            starts.append(torch.randn(1, *self.config.image_shape, generator=generator))
            fresh.append(torch.randint(2**62, (1,), generator=generator))
        codes = None if cond is None else self.class_codes()[cond.expand(len(starts))]
        return torch.cat(starts), codes, torch.cat(fresh)

    @torch.no_grad()
    def complete_from_noise(self, images: torch.Tensor, known: torch.Tensor, noise: tuple,
                            temperature: float = 1.0) -> torch.Tensor:
        """The pixels where `known` is False drawn by RePaint: at each step the kept pixels are
        the image noised to that step, the others an ancestral (DDPM) step from the model's
        prediction; each step is taken `RESAMPLINGS` times, noised back in between."""
        start, codes, fresh_seeds = noise
        device = images.device
        generators = [torch.Generator().manual_seed(int(s)) for s in fresh_seeds]

        def fresh() -> torch.Tensor:  # one draw per image from its own generator: batch-proof
            return torch.cat([torch.randn(1, *self.config.image_shape, generator=g) for g in generators]).to(device)

        x0, known = images * 2 - 1, known.expand_as(images)
        code = codes.to(device) if codes is not None else self._no_class(images.shape[0])
        z = start.to(device) * temperature
        times = time_grid(self.config.steps)
        for t, s in zip(times[:-1], times[1:]):
            alpha_t, sigma_t = alpha_sigma(t)
            alpha_s, sigma_s = alpha_sigma(s)
            for resampling in range(RESAMPLINGS):
                x, eps = self.predict_image(z, t, code)
                # The ancestral step: the posterior q(z_s | z_t, x) with x predicted.
                ratio = (alpha_t / alpha_s) ** 2 * (sigma_s / sigma_t) ** 2 if s > 0 else 0.0
                posterior_std = sigma_s * math.sqrt(max(0.0, 1 - ratio))
                drawn = alpha_s * x + math.sqrt(max(0.0, sigma_s ** 2 - posterior_std ** 2)) * eps
                drawn = drawn + posterior_std * fresh()
                kept = alpha_s * x0 + sigma_s * fresh()
                z_s = torch.where(known, kept, drawn)
                if resampling == RESAMPLINGS - 1 or s == 0:
                    break
                # Noise back to t: q(z_t | z_s).
                step_alpha = alpha_t / alpha_s
                z = step_alpha * z_s + math.sqrt(max(0.0, sigma_t ** 2 - step_alpha ** 2 * sigma_s ** 2)) * fresh()
            z = z_s
        return torch.where(known, images, ((z + 1) / 2).clamp(0, 1))

    # -- likelihood: the variational bound ------------------------------------------------------

    def nll(self, x: torch.Tensor, cond: torch.Tensor | None = None,
            generator: torch.Generator | None = None) -> torch.Tensor:
        """An upper bound on -log p(x) in nats per image [B] (see `bound_terms`), given the class
        `cond` [B] or, without one, under the model without a class."""
        return -self.bound_terms(x, generator, cond)["bound"]

    @torch.no_grad()
    def bound_terms(self, x: torch.Tensor, generator: torch.Generator | None = None,
                    cond: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """log p(x) >= -(prior + diffusion + decoder) per image [B], x on the 8-bit grid in [0, 1]
        (Kingma et al. 2021, discrete time): the prior KL at log-SNR -15; over `bound_steps` steps
        s < t evenly spaced in log-SNR, 0.5 (SNR(s) - SNR(t)) |x - x_hat(z_t)|^2 with z_t drawn
        once per step; and -log p(x | z_0) under a Gaussian of z_0 / alpha_0 binned to the levels."""
        batch = x.shape[0]
        levels = torch.round(x * (LEVELS - 1))
        x = levels / (LEVELS - 1) * 2 - 1
        code = (self.class_embedding(cond.to(x.device)) if cond is not None and self.config.n_classes
                else self._no_class(batch))
        lams = torch.linspace(LOGSNR_MIN, LOGSNR_MAX, self.config.bound_steps + 1, dtype=torch.float64)
        snr = lams.exp()
        diffusion = torch.zeros(batch, device=x.device)
        for i in range(self.config.bound_steps):
            t = float(time_of_logsnr(lams[i]))
            alpha, sigma = alpha_sigma(t)
            eps = torch.randn(x.shape, generator=generator, device=x.device) if generator is not None \
                else torch.randn_like(x)
            x_hat, _ = self.predict_image(alpha * x + sigma * eps, t, code)
            diffusion += 0.5 * float(snr[i + 1] - snr[i]) * (x - x_hat).pow(2).flatten(1).sum(1)
        alpha_0, sigma_0 = alpha_sigma(0.0)
        alpha_1, sigma_1 = alpha_sigma(1.0)
        prior = 0.5 * (alpha_1 ** 2 * x.pow(2) + sigma_1 ** 2 - 1 - math.log(sigma_1 ** 2)).flatten(1).sum(1)
        # The decoder: z_0 = alpha_0 x + sigma_0 eps, p(level | z_0) a softmax over the levels.
        eps = torch.randn(x.shape, generator=generator, device=x.device) if generator is not None else torch.randn_like(x)
        z0 = (alpha_0 * x + sigma_0 * eps) / alpha_0
        grid = torch.linspace(-1, 1, LEVELS, device=x.device)
        logits = -(z0.unsqueeze(-1) - grid).pow(2) / (2 * (sigma_0 / alpha_0) ** 2)
        decoder = -(logits.gather(-1, levels.long().unsqueeze(-1)).squeeze(-1)
                    - logits.logsumexp(-1)).flatten(1).sum(1)
        return {"bound": -(prior + diffusion + decoder), "kl": prior + diffusion}
