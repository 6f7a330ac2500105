"""The contract every model family declares, in code.

A family is a subclass of `Family` (usually through a mix-in of abilities: `LatentModel` in
models/latent.py for a prior and a decoder, `AutoregressiveModel` in models/autoregressive.py for
a model drawn pixel by pixel) with a `Config` dataclass, registered with one line,
`models.families.register(MyFamily)`. Training, evaluation, the showcase and the service read what it declares
here and never test a family's name or probe it with `hasattr`:

- `capabilities`: what the service offers for it (`CAPABILITIES`); none: not served.
- `likelihood`: "exact" (`nll` is -log p(x)), "bound" (`nll` is an upper bound on it, and
  `bound_terms` gives the bound's terms), or "none".
- `objective`: how `models.train` trains it: "loss" (it minimises `loss(x, y)`) or
  "adversarial" (the GAN game between the two nets of `adversarial_parts()`).
- `averaged_weights`: the "loss" trainer ships an exponential moving average of the weights
  (decay `--ema`) instead of the last step's, as diffusion models are.
- `sequential_sampling` (one network step per pixel: a lower per-request cap, fewer evaluation
  samples), `channels_last` (the worker's memory format), `class_conditional` (requests take a
  class label), `latent_dim` (None without a latent space), `summary` (the card's one line).
`__init_subclass__` checks the declarations when the class is defined, so a family that breaks
the contract fails on import, not on a user's request.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import nn

CAPABILITIES = frozenset({
    "sample",        # samples from seeds
    "stream",        # samples drawn a row at a time, sent as events
    "complete",      # the missing pixels of an image, given the others
    "likelihood",    # log p(x), exact or bounded: see `likelihood`
    "interpolate", "traverse", "arithmetic",  # paths and sums in a latent space
    "encoder",       # an encoder network: encode(images) -> (mean, log-variance) of q(z | x)
    "image_latent",  # uploads become latents: by the encoder, or by "project"
    "project",       # an image's latent by optimisation through the decoder (no encoder)
    "reconstruct",   # an image beside the decoding of its latent
})
LIKELIHOODS = ("exact", "bound", "none")
OBJECTIVES = ("loss", "adversarial")


class Family(nn.Module):
    """The base of every family: its declarations, with the defaults of a model that declares
    nothing, and the methods the declarations promise."""

    family: ClassVar[str]
    Config: ClassVar[type]
    summary: ClassVar[str] = ""
    capabilities: ClassVar[tuple[str, ...]] = ()
    likelihood: ClassVar[str] = "none"
    likelihood_method: ClassVar[str] = ""  # what the likelihood endpoint says it computed
    objective: ClassVar[str] = "loss"
    averaged_weights: ClassVar[bool] = False  # objective "loss": ship an EMA of the weights (--ema)
    sequential_sampling: ClassVar[bool] = False
    channels_last: ClassVar[bool] = False
    class_conditional: bool = False
    latent_dim: int | None = None

    def __init_subclass__(cls, **kwargs) -> None:
        super().__init_subclass__(**kwargs)
        name = cls.__dict__.get("family", cls.__name__)
        unknown = set(cls.capabilities) - CAPABILITIES
        if unknown:
            raise TypeError(f"{name}: unknown capabilities {sorted(unknown)}; known: {sorted(CAPABILITIES)}")
        if cls.likelihood not in LIKELIHOODS:
            raise TypeError(f"{name}: likelihood must be one of {LIKELIHOODS}, not {cls.likelihood!r}")
        if ("likelihood" in cls.capabilities) != (cls.likelihood != "none"):
            raise TypeError(f"{name}: the 'likelihood' capability and likelihood={cls.likelihood!r} disagree")
        if cls.objective not in OBJECTIVES:
            raise TypeError(f"{name}: objective must be one of {OBJECTIVES}, not {cls.objective!r}")
        needs = {"image_latent": ("encoder", "project"), "project": ("image_latent",), "encoder": ("image_latent",)}
        for capability, partners in needs.items():
            if capability in cls.capabilities and not set(partners) & set(cls.capabilities):
                raise TypeError(f"{name}: {capability!r} needs one of {partners} among its capabilities")

    # -- what the declarations promise ------------------------------------------------------------

    def loss(self, x: torch.Tensor, y: torch.Tensor | None) -> tuple[torch.Tensor, dict]:
        """objective "loss": the scalar `models.train` minimises on a batch, and figures to log."""
        raise NotImplementedError(f"{type(self).__name__} declares objective {self.objective!r}")

    def adversarial_parts(self) -> tuple[nn.Module, nn.Module]:
        """objective "adversarial": (generator: (z, labels) -> images in [-1, 1], discriminator:
        (images in [0, 1], labels) -> logits [B]); the generator is what serves."""
        raise NotImplementedError(f"{type(self).__name__} declares objective {self.objective!r}")

    def adversarial_inputs(self, labels: torch.Tensor, noise: torch.Generator) -> tuple[torch.Tensor, torch.Tensor | None]:
        """objective "adversarial": the generator's inputs for fakes beside a batch of real images
        of `labels` [B]: (z, the fakes' labels or None). With labels, both nets are given them,
        real images with theirs; with None, neither is."""
        raise NotImplementedError(f"{type(self).__name__} declares objective {self.objective!r}")

    def nll(self, x: torch.Tensor, cond: torch.Tensor | None = None,
            generator: torch.Generator | None = None) -> torch.Tensor:
        """likelihood "exact" or "bound": nats per image [B], -log p(x) or its upper bound."""
        raise NotImplementedError(f"{type(self).__name__} declares likelihood {self.likelihood!r}")

    def bound_terms(self, x: torch.Tensor, generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        """likelihood "bound": per image [B], "bound" (the lower bound on log p(x): nll = -bound),
        "kl" (its divergence term), and any other lower bound worth reporting beside it, under a
        name of its own, from the same draws (evaluation writes NAME_test_bits_per_dim)."""
        raise NotImplementedError(f"{type(self).__name__} declares likelihood {self.likelihood!r}")

    def fit_after_training(self, images: torch.Tensor, labels: torch.Tensor, quiet: bool = False) -> dict:
        """Parts that gradients do not train, fitted once training is done (uint8 train images and
        their labels): figures to log, or {} when there is nothing to fit."""
        return {}
