"""Convolutional VAE (Kingma & Welling 2014) with a discretized logistic decoder.

q(z|x) is a diagonal Gaussian, p(z) = N(0, I). p(x|z) puts a logistic of per-pixel mean and scale
on the 256 gray levels, integrated over each level's bin (the edge bins take the tails), so the
ELBO is a true lower bound on the log-probability of the 8-bit data and its bits/dim compare
directly with PixelCNN's. `decode` returns the decoder's mean image, which is what one shows.

With `prior_components > 0` the prior of z is a mixture of up to that many full-covariance
Gaussians, fitted by EM to the encoder's codes of the training set once gradient training is done
(`fit_after_training`, called by `models.train`): samples then come from where the codes are, and
the ELBO, with the mixture as p(z), stays a true bound. A tenth of the training images is held out
to choose it: the mixture (of 1, 4, 16 ... up to `prior_components` Gaussians) whose held-out codes
score best is kept only if it beats N(0, I) on them; else the prior stays N(0, I) (the card's
config then says `prior_components: 0`, and `training.after_training` which was kept and why).
`python -m models.train vae --init-from weights/vae --set prior_components=50` fits one to a
trained VAE.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

import torch
from torch import nn

from models.card import MAX_LATENT_DIM
from models.data import to_float
from models.families.discretized_logistic import discretized_logistic_log_prob
from models.families.latent import LatentModel, check_resolution, resolution_stages
from models.families.mixture import STANDARD, GaussianMixture, choose_prior

PRIOR_HELD_OUT = 0.1  # of the training images, to choose the prior on
MIN_PRIOR_IMAGES = 10  # held out, and to fit on, at least
HELD_OUT_DRAWS = 8  # posterior draws per held-out image: a steadier score on a small folder


@dataclass
class VAEConfig:
    image_shape: tuple[int, int, int] = (1, 28, 28)
    latent_dim: int = field(default=32, metadata={"bounds": (1, MAX_LATENT_DIM)})
    # channels of the first conv; doubled at each downsampling
    width: int = field(default=32, metadata={"bounds": (1, 1024)})
    hidden: int = field(default=512, metadata={"bounds": (1, 8192)})
    levels: int = field(default=256, metadata={"bounds": (2, 256)})
    # 0: the prior of z is N(0, I); else a Gaussian mixture of this many, each holding a
    # latent_dim x latent_dim covariance factor
    prior_components: int = field(default=0, metadata={"bounds": (0, 256)})

    def __post_init__(self):
        self.image_shape = tuple(self.image_shape)
        check_resolution("VAE", self.image_shape)


class VAE(LatentModel):
    family = "vae"
    Config = VAEConfig
    summary = "Variational autoencoder: encodes and decodes through a smooth latent space."
    # "encoder": `encode(images)` gives the approximate posterior; it is also how uploads become latents.
    capabilities = ("sample", "interpolate", "arithmetic", "traverse", "encoder", "image_latent", "reconstruct",
                    "likelihood")
    likelihood = "bound"
    likelihood_method = "negative ELBO: an upper bound on -log p(x), one posterior sample, fixed seed"

    def __init__(self, config: VAEConfig):
        super().__init__()
        self.config = config
        c, h, w = config.image_shape
        # One down-sampling stage per doubling of the side (two at 28x28, three at 32x32), the width
        # doubling at each: w, 2w, 4w ...
        stages = resolution_stages(h, w)
        widths = [config.width * 2 ** i for i in range(stages)]
        self.feature_shape = (widths[-1], h >> stages, w >> stages)
        flat = widths[-1] * (h >> stages) * (w >> stages)
        down = []
        for c_in, c_out in zip([c, *widths], widths):
            down += [nn.Conv2d(c_in, c_out, 4, 2, 1), nn.SiLU()]
        self.encoder = nn.Sequential(
            *down,
            nn.Flatten(),
            nn.Linear(flat, config.hidden), nn.SiLU(),
            nn.Linear(config.hidden, 2 * config.latent_dim),
        )
        self.decoder_fc = nn.Sequential(
            nn.Linear(config.latent_dim, config.hidden), nn.SiLU(),
            nn.Linear(config.hidden, flat), nn.SiLU(),
        )
        up = []
        for c_in, c_out in zip(widths[::-1], [*widths[-2::-1], widths[0]]):  # ... 2w -> w, then w -> w
            up += [nn.ConvTranspose2d(c_in, c_out, 4, 2, 1), nn.SiLU()]
        self.decoder_conv = nn.Sequential(
            *up,
            nn.Conv2d(widths[0], 2 * c, 3, 1, 1),  # mean and log-scale per sub-pixel
        )
        self.prior = GaussianMixture(config.latent_dim, config.prior_components) if config.prior_components else None

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x: float [B, C, H, W] in [0, 1] -> (mu, logvar) of q(z|x), each [B, latent_dim]."""
        mu, logvar = self.encoder(x * 2 - 1).chunk(2, dim=1)
        return mu, logvar.clamp(-12, 8)

    def sample_latents(self, n: int, generator: torch.Generator | None = None, temperature: float = 1.0) -> torch.Tensor:
        if self.prior is None:
            return super().sample_latents(n, generator, temperature)
        return self.prior.sample(n, generator, temperature)

    def _decoder_params(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.decoder_conv(self.decoder_fc(z).view(-1, *self.feature_shape))
        mean, log_scale = out.chunk(2, dim=1)
        # mean in [0, 1] space; the scale is floored so a bin never gets all the mass by overflow.
        return torch.sigmoid(mean) * 1.1 - 0.05, log_scale.clamp(min=-7.0)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """z [B, latent_dim] -> the decoder's mean image, float [B, C, H, W] in [0, 1]."""
        mean, _ = self._decoder_params(z)
        return mean.clamp(0, 1)

    def elbo(self, x: torch.Tensor, generator: torch.Generator | None = None,
             learned_prior: bool = True) -> dict[str, torch.Tensor]:
        """The evidence lower bound on log p(x) in nats per image, with its two terms, each [B].

        x must lie on the 8-bit grid (k / 255). One reparameterised draw of z per image. With a
        mixture prior the KL term is its one-draw estimate, log q(z|x) - log p(z);
        `learned_prior=False` gives the bound under N(0, I), in closed form.
        """
        mu, logvar = self.encode(x)
        eps = torch.randn(mu.shape, generator=generator, device=mu.device, dtype=mu.dtype)
        z = mu + torch.exp(0.5 * logvar) * eps
        mean, log_scale = self._decoder_params(z)
        log_px_z = discretized_logistic_log_prob(x, mean, log_scale, self.config.levels).flatten(1).sum(1)
        if self.prior is not None and learned_prior:
            log_qz_x = -0.5 * (math.log(2 * math.pi) + logvar + eps.pow(2)).sum(1)
            kl = log_qz_x - self.prior.log_prob(z)
        else:
            kl = 0.5 * (mu.pow(2) + logvar.exp() - 1 - logvar).sum(1)
        return {"elbo": log_px_z - kl, "reconstruction": log_px_z, "kl": kl}

    def loss(self, x: torch.Tensor, y: torch.Tensor | None = None) -> tuple[torch.Tensor, dict]:
        """What `models.train` minimises: the negative ELBO in nats per sub-pixel (labels unused),
        under N(0, I): a mixture prior is fitted to the codes after training, not during it."""
        terms = self.elbo(x, learned_prior=False)
        loss, dims = -terms["elbo"].mean(), x[0].numel()
        return loss / dims, {"bits_per_dim": (loss / (dims * math.log(2))).item(), "kl": terms["kl"].mean().item()}

    def nll(self, x: torch.Tensor, cond: None = None, generator: torch.Generator | None = None) -> torch.Tensor:
        """-ELBO in nats per image [B]: a bound on -log p(x), from one posterior draw per image."""
        if cond is not None:
            raise ValueError("the VAE's likelihood bound takes no class")
        return -self.elbo(x, generator)["elbo"]

    def bound_terms(self, x: torch.Tensor, generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        """The ELBO and its KL; with a mixture prior also the ELBO under N(0, I) from the same
        posterior draws (`standard_prior`), which the fitted prior is to improve on."""
        state = generator.get_state() if generator is not None else None
        terms = self.elbo(x, generator)
        out = {"bound": terms["elbo"], "kl": terms["kl"]}
        if self.prior is not None:
            if generator is not None:
                generator.set_state(state)
            out["standard_prior"] = self.elbo(x, generator, learned_prior=False)["elbo"]
        return out

    @torch.no_grad()
    def fit_after_training(self, images: torch.Tensor, labels: torch.Tensor, quiet: bool = False, seed: int = 0) -> dict:
        """Fit the mixture prior (if the config has one) to the aggregate posterior q(z) = E_x q(z|x)
        of the training images (uint8 [N, C, H, W]), and keep it only if it beats N(0, I) on held-out
        images (`mixture.choose_prior`); the config's `prior_components` becomes the number kept
        (0: N(0, I)). Fitted to posterior draws, one per image, rather than to the means, a mixture
        tightens the ELBO (the prior that maximises it is q(z) itself). Returns what was kept and why."""
        if self.prior is None:
            return {}
        configured = self.config.prior_components
        record = {"configured_components": configured}
        fit_codes, held_codes = self.prior_codes(images, seed)
        if len(held_codes) == 0:
            self._keep_prior(None)
            return {"prior": STANDARD, **record, "why": f"{len(images)} training images are too few to hold out "
                    f"{MIN_PRIOR_IMAGES} and fit a mixture to {MIN_PRIOR_IMAGES} more: a fit could not be checked"}
        prior, scores = choose_prior(fit_codes, held_codes, configured, quiet)
        self._keep_prior(prior)
        kept = STANDARD if prior is None else f"mixture of {len(prior.means)}"
        return {"prior": kept, **record, "fitted_images": len(fit_codes),
                "held_out_images": len(held_codes) // HELD_OUT_DRAWS, "held_out_mean_log_prior": scores,
                "why": f"the best held-out mean log prior density of {len(scores)} candidates (nats per code, "
                       f"{HELD_OUT_DRAWS} posterior draws per held-out image)"}

    @torch.no_grad()
    def prior_codes(self, images: torch.Tensor, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        """Posterior draws of z for choosing the prior: (one per image to fit it on [N, d],
        HELD_OUT_DRAWS per held-out image [M * HELD_OUT_DRAWS, d]), the held-out images a random
        tenth (at least MIN_PRIOR_IMAGES; none when fewer than twice that are given)."""
        device = next(self.parameters()).device
        generator = torch.Generator().manual_seed(seed)
        n = len(images)
        held = max(MIN_PRIOR_IMAGES, round(PRIOR_HELD_OUT * n)) if n >= 2 * MIN_PRIOR_IMAGES else 0
        order = torch.randperm(n, generator=generator)
        mus, stds = [], []
        for start in range(0, n, 1000):
            mu, logvar = (t.cpu() for t in self.encode(to_float(images[start:start + 1000]).to(device)))
            mus.append(mu)
            stds.append(torch.exp(0.5 * logvar))
        mu, std = torch.cat(mus)[order], torch.cat(stds)[order]
        fit = mu[held:] + std[held:] * torch.randn(mu[held:].shape, generator=generator)
        draws = torch.randn(HELD_OUT_DRAWS, *mu[:held].shape, generator=generator)
        return fit, (mu[:held] + std[:held] * draws).flatten(0, 1)

    def _keep_prior(self, prior: GaussianMixture | None) -> None:
        """Make `prior` (None: N(0, I)) this model's, its size in the config that rebuilds it."""
        device = next(self.parameters()).device
        self.prior = None if prior is None else prior.to(device)
        self.config = dataclasses.replace(self.config, prior_components=0 if prior is None else len(prior.means))
