"""The contract every model family declares, in code: all a family must have is here.

A family is a subclass of `Family` (usually through a mix-in: `LatentModel` in
models/families/latent.py samples by decoding a latent, `AutoregressiveModel` in
models/families/autoregressive.py pixel by pixel) with a `Config` dataclass, found by a spec
"package.module:Class" (models/families/__init__.py: GENSERVE_FAMILIES, or the `genserve.families`
entry points). Training, evaluation, the showcase, the Python API and the service read what it
declares and never test a family's name or class:

- `family`: its name in cards and URLs. `Config`: a dataclass with an `image_shape` field
  ([C, H, W]) and, for a class-conditional family, `n_classes` (the preset may say "dataset":
  the number of class folders). The config is saved beside the weights and rebuilds the module.
- `capabilities`: what the service offers for it (`CAPABILITIES`, each naming the methods it needs
  in `NEEDS`); none: not served (a classifier).
- `sampling`: how it draws samples, and so what the service and evaluation call:
  "latent": a latent per seed (`latents_for_seeds`, on the CPU) through `decode(z)`; everything
  served on latents (interpolate, traverse, arithmetic, uploads' latents) needs it.
  "noise": its own randomness per seed (`noise_for_seeds`, on the CPU) turned into images by its
  own procedure (`sample_from_noise`): pixel by pixel, a Markov chain, anything.
  None: it does not sample.
- `sampling_steps()`: (default, most) where a request may choose how many steps its sampler
  takes (a diffusion model's denoising steps); None where it takes none.
- `progress_unit` ("row", "step"): with "stream", what its sampler reports as it goes:
  `progress_count(steps)` of them, each by calling `on_progress(i, images_so_far)` (False stops it).
- `likelihood`: "exact" (`nll` is -log p(x)), "bound" (`nll` is an upper bound on it, and
  `bound_terms` gives the bound's terms), or "none"; `likelihood_method` says what it computes.
- `objective`: how `models.train` trains it: "loss" (it minimises `loss(x, y)`, nanoGPT's
  forward-returns-the-loss; `averaged_weights`: an EMA of the weights ships), or "adversarial"
  (a game between the two nets of `adversarial_parts()`, whose rules `adversarial_game()` gives:
  its losses, critic steps and optimisers), or None (served, never trained here: weights from elsewhere).
- `class_spread`: how far a class's samples stray from its mean latent (sampling "latent").
- `sequential_sampling` (one network step per pixel: a lower per-request cap, fewer evaluation
  samples), `channels_last` (the worker's memory format), `class_conditional` (requests take a
  class label), `latent_dim` (None without a latent space), `summary` (the card's one line).
- `preset_path()`: its defaults for `models.train` ({"model": {...}, "train": {...}}), by default
  configs/FAMILY.json beside the file that defines it.
`__init_subclass__` checks the declarations when a concrete family (one that sets `family`) is
defined, so a family that breaks the contract fails on import, not on a user's request.
"""

from __future__ import annotations

import dataclasses
import inspect
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

CAPABILITIES = frozenset({
    "sample",        # samples from seeds
    "stream",        # samples reported as they are drawn (rows, denoising steps), sent as events
    "complete",      # the missing pixels of an image, given the others
    "likelihood",    # log p(x), exact or bounded: see `likelihood`
    "interpolate", "traverse", "arithmetic",  # paths and sums in a latent space
    "encoder",       # an encoder network: encode(images) -> (mean, log-variance) of q(z | x)
    "invert",        # a deterministic inversion of the sampler: invert(images) -> latents
    "image_latent",  # uploads become latents: by the encoder, by inversion, or by "project"
    "project",       # an image's latent by optimisation through the decoder (no encoder)
    "reconstruct",   # an image beside the decoding of its latent
})
LIKELIHOODS = ("exact", "bound", "none")
OBJECTIVES = ("loss", "adversarial", None)
SAMPLINGS = ("latent", "noise", None)
# The methods a declaration promises, beyond those every family has.
NEEDS = {
    "latent": ("decode", "latents_for_seeds", "sample_latents"),
    "noise": ("noise_for_seeds", "sample_from_noise"),
    "complete": ("completion_noise_for_seeds", "complete_from_noise"),
    "likelihood": ("nll",),
    "bound": ("bound_terms",),
    "encoder": ("encode",),
    "invert": ("invert",),
    "loss": ("loss",),
    "adversarial": ("adversarial_parts", "adversarial_inputs"),
}
LATENT_CAPABILITIES = {"interpolate", "traverse", "arithmetic", "image_latent", "project", "encoder", "invert"}
Progress = Callable[[int, torch.Tensor], "bool | None"]


@dataclass(frozen=True)
class AdversarialGame:
    """The rules of an adversarial family's game, which `models.train` plays (`GANTrainer`).

    `loss`: "bce" (the non-saturating GAN), "hinge" or "wasserstein" (the critic's raw scores);
    `gradient_penalty`: the weight of (|grad D(x_hat)| - 1)^2 at random points between real and
    fake images (WGAN-GP, Gulrajani et al. 2017), 0 for none; `critic_steps`: critic updates per
    generator update (each on a batch of its own); `betas`: both Adams'. A flag of `models.train`
    (--gan-loss, --beta1) overrides its field; the family's `critic_loss` and `generator_loss`
    may replace the losses outright."""

    loss: str = "bce"
    gradient_penalty: float = 0.0
    critic_steps: int = 1
    betas: tuple[float, float] = (0.5, 0.999)

    def __post_init__(self):
        if self.loss not in ("bce", "hinge", "wasserstein"):
            raise ValueError(f"the game's loss must be bce, hinge or wasserstein, not {self.loss!r}")
        if self.critic_steps < 1 or self.gradient_penalty < 0:
            raise ValueError("critic_steps must be at least 1 and gradient_penalty at least 0")


class Family(nn.Module):
    """The base of every family: its declarations, with the defaults of a model that declares
    nothing, and the methods the declarations promise."""

    family: ClassVar[str]
    Config: ClassVar[type]
    summary: ClassVar[str] = ""
    capabilities: ClassVar[tuple[str, ...]] = ()
    sampling: ClassVar[str | None] = None
    progress_unit: ClassVar[str] = "step"
    likelihood: ClassVar[str] = "none"
    likelihood_method: ClassVar[str] = ""  # what the likelihood endpoint says it computed
    likelihood_test_images: ClassVar[int | None] = None  # evaluation scores the first N (None: all)
    objective: ClassVar[str] = "loss"
    averaged_weights: ClassVar[bool] = False  # objective "loss": ship an EMA of the weights (--ema)
    sequential_sampling: ClassVar[bool] = False
    # sampling "latent": how far a class's samples stray from its mean latent at temperature 1, in
    # the class latent's standard deviations (below 1: a truncation that trades variety for clarity)
    class_spread: ClassVar[float] = 0.5
    channels_last: ClassVar[bool] = False
    class_conditional: bool = False
    latent_dim: int | None = None

    def __init_subclass__(cls, **kwargs) -> None:
        super().__init_subclass__(**kwargs)
        if "family" in cls.__dict__:  # a concrete family; mix-ins declare only part of it
            check_family(cls)

    @classmethod
    def preset_path(cls) -> Path:
        """Its defaults for `models.train`: configs/FAMILY.json beside the file defining it."""
        return Path(inspect.getfile(cls)).parent / "configs" / f"{cls.family}.json"

    # -- what the declarations promise ------------------------------------------------------------

    def loss(self, x: torch.Tensor, y: torch.Tensor | None) -> tuple[torch.Tensor, dict]:
        """objective "loss": the scalar `models.train` minimises on a batch, and figures to log."""
        raise NotImplementedError

    def adversarial_parts(self) -> tuple[nn.Module, nn.Module]:
        """objective "adversarial": (generator: (z, labels) -> images in [-1, 1], critic:
        (images in [0, 1], labels) -> scores [B]); the generator is what serves."""
        raise NotImplementedError

    def adversarial_inputs(self, labels: torch.Tensor, noise: torch.Generator) -> tuple[torch.Tensor, torch.Tensor | None]:
        """objective "adversarial": the generator's inputs for fakes beside a batch of real images
        of `labels` [B]: (z, the fakes' labels or None). With labels, both nets are given them,
        real images with theirs; with None, neither is."""
        raise NotImplementedError

    def adversarial_game(self) -> AdversarialGame:
        """objective "adversarial": the rules of its game (the DCGAN paper's by default)."""
        return AdversarialGame()

    def critic_loss(self, real_scores: torch.Tensor, fake_scores: torch.Tensor, game: AdversarialGame) -> torch.Tensor:
        """objective "adversarial": what the critic minimises, from its scores [B] of real and fake
        images: BCE (real -> 1, fake -> 0 on logits), hinge (real >= 1, fake <= -1) or Wasserstein
        (fake - real), as `game.loss` says; the gradient penalty is the trainer's."""
        if game.loss == "bce":
            return (F.binary_cross_entropy_with_logits(real_scores, torch.ones_like(real_scores))
                    + F.binary_cross_entropy_with_logits(fake_scores, torch.zeros_like(fake_scores)))
        if game.loss == "hinge":
            return F.relu(1 - real_scores).mean() + F.relu(1 + fake_scores).mean()
        return fake_scores.mean() - real_scores.mean()

    def generator_loss(self, fake_scores: torch.Tensor, game: AdversarialGame) -> torch.Tensor:
        """objective "adversarial": what the generator minimises, from the critic's scores of its
        fakes: the non-saturating BCE, or minus the score (hinge, Wasserstein)."""
        if game.loss == "bce":
            return F.binary_cross_entropy_with_logits(fake_scores, torch.ones_like(fake_scores))
        return -fake_scores.mean()

    def nll(self, x: torch.Tensor, cond: torch.Tensor | None = None,
            generator: torch.Generator | None = None) -> torch.Tensor:
        """likelihood "exact" or "bound": nats per image [B], -log p(x) or its upper bound."""
        raise NotImplementedError

    def bound_terms(self, x: torch.Tensor, generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        """likelihood "bound": per image [B], "bound" (the lower bound on log p(x): nll = -bound),
        "kl" (its divergence term), and any other lower bound worth reporting beside it, under a
        name of its own, from the same draws (evaluation writes NAME_test_bits_per_dim)."""
        raise NotImplementedError

    def decode(self, z: torch.Tensor, steps: int | None = None, on_progress: Progress | None = None) -> torch.Tensor:
        """sampling "latent": latents [B, latent_dim] -> images [B, C, H, W] in [0, 1]."""
        raise NotImplementedError

    def latents_for_seeds(self, seeds, temperature: float = 1.0) -> torch.Tensor:
        """sampling "latent": the prior's latent of each seed [len(seeds), latent_dim], each from
        its own generator on the CPU: the rule the API, evaluation and the showcase share."""
        raise NotImplementedError

    def sample_latents(self, n: int, generator: torch.Generator | None = None, temperature: float = 1.0) -> torch.Tensor:
        """sampling "latent": n prior draws [n, latent_dim] from one generator, on the CPU (bulk
        draws: a GAN's batchnorm recalibration, evaluation's search for class latents)."""
        raise NotImplementedError

    def declared_class_latents(self) -> list[tuple[torch.Tensor, torch.Tensor]] | None:
        """sampling "latent": each class's (mean, std) latent where the prior itself knows the
        classes; None: evaluation finds them (from the encoder or inversion, else from samples)."""
        return None

    def noise_for_seeds(self, seeds, cond: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """sampling "noise": the randomness of one image per seed, each from its own generator on
        the CPU, and the classes (`cond`, or drawn): (noise [len(seeds), ...], classes or None)."""
        raise NotImplementedError

    def sample_from_noise(self, noise: torch.Tensor, temperature: float = 1.0, cond: torch.Tensor | None = None,
                          steps: int | None = None, on_progress: Progress | None = None) -> torch.Tensor:
        """sampling "noise": the images [B, C, H, W] in [0, 1] of that randomness, deterministic."""
        raise NotImplementedError

    def completion_noise_for_seeds(self, seeds, cond: torch.Tensor | None = None) -> tuple:
        """"complete": the randomness of one completion per seed (a tuple of tensors or None, each
        [len(seeds), ...]), each from its own generator on the CPU."""
        raise NotImplementedError

    def complete_from_noise(self, images: torch.Tensor, known: torch.Tensor, noise: tuple,
                            temperature: float = 1.0) -> torch.Tensor:
        """"complete": images [B, C, H, W] whose pixels where `known` [B, 1, H, W] is False are
        drawn given the others (kept exactly), from `completion_noise_for_seeds`'s randomness."""
        raise NotImplementedError

    def class_posterior(self, images: torch.Tensor, known: torch.Tensor) -> torch.Tensor | None:
        """"complete": p(class | the known pixels) [B, K] where the family can compute it (the
        evaluation reports how often its argmax is the image's class); None where it cannot."""
        return None

    def encode(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """"encoder": images -> (mean, log-variance) of q(z | x), each [B, latent_dim]."""
        raise NotImplementedError

    def invert(self, images: torch.Tensor) -> torch.Tensor:
        """"invert": images -> the latents [B, latent_dim] that `decode` maps back to them."""
        raise NotImplementedError

    @torch.no_grad()
    def sample_for_seeds(self, seeds, temperature: float = 1.0, steps: int | None = None) -> torch.Tensor:
        """The images of these seeds [len(seeds), C, H, W], as `POST .../samples` draws them, by
        the family's declared `sampling`."""
        device = next(self.parameters()).device
        options = {"steps": steps} if steps is not None else {}
        if self.sampling == "latent":
            return self.decode(self.latents_for_seeds(seeds, temperature).to(device), **options)
        noise, cond = self.noise_for_seeds(seeds)
        return self.sample_from_noise(noise, temperature, cond, **options)

    def sampling_steps(self) -> tuple[int, int] | None:
        """(default, most) steps a request may ask its sampler for; None: it takes no steps."""
        return None

    def progress_count(self, steps: int | None = None) -> int:
        """"stream": how many times the sampler reports progress (rows, denoising steps)."""
        return self.config.image_shape[1] if self.progress_unit == "row" else (steps or self.sampling_steps()[0])

    def fit_after_training(self, images: torch.Tensor, labels: torch.Tensor, quiet: bool = False) -> dict:
        """Parts that gradients do not train, fitted once training is done (uint8 train images and
        their labels): figures to log, or {} when there is nothing to fit."""
        return {}


def defines(cls: type, method: str, stubs: type | None = None) -> bool:
    """Whether `cls` has its own `method`, not the stub that raises in `stubs` (the contract's)."""
    own = getattr(cls, method, None)
    return own is not None and own is not getattr(stubs or Family, method, None)


def check_family(cls: type[Family]) -> None:
    """Every declaration of a concrete family valid, and every method it promises defined."""
    name = cls.__dict__["family"]
    capabilities = set(cls.capabilities)
    problems = []
    if not (dataclasses.is_dataclass(getattr(cls, "Config", None))
            and "image_shape" in {f.name for f in dataclasses.fields(cls.Config)}):
        problems.append("Config must be a dataclass with an image_shape field")
    unknown = capabilities - CAPABILITIES
    if unknown:
        problems.append(f"unknown capabilities {sorted(unknown)}; known: {sorted(CAPABILITIES)}")
    if cls.likelihood not in LIKELIHOODS:
        problems.append(f"likelihood must be one of {LIKELIHOODS}, not {cls.likelihood!r}")
    elif ("likelihood" in capabilities) != (cls.likelihood != "none"):
        problems.append(f"the 'likelihood' capability and likelihood={cls.likelihood!r} disagree")
    if cls.objective not in OBJECTIVES:
        problems.append(f"objective must be one of {OBJECTIVES}, not {cls.objective!r}")
    if cls.sampling not in SAMPLINGS:
        problems.append(f"sampling must be one of {SAMPLINGS}, not {cls.sampling!r}")
    elif ("sample" in capabilities) != (cls.sampling is not None):
        problems.append(f"the 'sample' capability and sampling={cls.sampling!r} disagree")
    if cls.sampling != "latent" and capabilities & LATENT_CAPABILITIES:
        problems.append(f"{sorted(capabilities & LATENT_CAPABILITIES)} need sampling='latent'")
    if "stream" in capabilities and cls.progress_unit not in ("row", "step"):
        problems.append(f"progress_unit must be 'row' or 'step', not {cls.progress_unit!r}")
    partners = {"image_latent": ("encoder", "invert", "project"), "project": ("image_latent",),
                "encoder": ("image_latent",), "invert": ("image_latent",), "reconstruct": ("image_latent",),
                "stream": ("sample",)}
    for capability, needed in partners.items():
        if capability in capabilities and not set(needed) & capabilities:
            problems.append(f"{capability!r} needs one of {needed} among its capabilities")
    declared = capabilities | {cls.sampling, cls.objective} | ({"bound"} if cls.likelihood == "bound" else set())
    missing = sorted({m for d in declared & set(NEEDS) for m in NEEDS[d] if not defines(cls, m)})
    if missing:
        problems.append(f"its declarations promise {missing}, which it does not define")
    if problems:
        raise TypeError(f"{name}: " + "; ".join(problems))
