"""The rules the service (app/) and the Python API (genserve/) share, so that the two cannot drift.

How a module is run for inference (its memory format and dtype, its inputs moved to it), the
class latents its card holds, and how a request's arguments become latents or noise: always on
the CPU, every seed from its own generator, so that image i of a request with seed s is the image
of seed s + i. Only noise is drawn here, never a forward pass: what runs a network (an image's
latent, a sample) is the caller's, the service's worker or the Python API.

Nothing here knows HTTP. A request the model cannot serve raises `Unsupported` (the service's
400), an argument it cannot take `InvalidArgument` (its 422, at the argument's `field`); both
are ValueErrors with a one-line message.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from statistics import NormalDist
from typing import Sequence

import torch
from torch import nn

from models.checkpoint_files import CheckpointError
from models.contract import Family
from models.families.latent import lerp, slerp
from models.families.projection import PROJECTION_STEPS

# A projection (an image's latent for a model without an encoder) starts at the latent of this seed.
PROJECTION_SEED = 0
# A projection runs as jobs of this many optimiser steps, so that the service's worker serves
# other requests between them (the Python API runs the same jobs, for the same floats).
PROJECTION_SLICE = 10
SEED_BITS = 31  # a seed left to chance is below 2**31


class Unsupported(ValueError):
    """The model cannot do what was asked (a capability, a class or steps it does not take)."""


class InvalidArgument(ValueError):
    """An argument this model cannot take; `field` is where it is among the call's arguments,
    e.g. ("axes", 0, "dim")."""

    def __init__(self, message: str, field: Sequence = ()):
        super().__init__(message)
        self.field = tuple(field)


@dataclass
class ClassLatent:
    mean: torch.Tensor
    std: torch.Tensor


@dataclass
class Model:
    """A loaded checkpoint as the rules read it: its module, card and class latents. The
    service's ServedModel and the Python API's Generator are both one."""

    name: str
    module: Family
    card: dict
    class_latents: dict[str, ClassLatent] = field(default_factory=dict)

    @property
    def family(self) -> str:
        return self.module.family

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self.module.config.image_shape)

    @property
    def latent_dim(self) -> int | None:
        return self.module.latent_dim

    @property
    def classes(self) -> list[str]:
        return list(self.card.get("classes") or [])

    @property
    def background(self) -> str:
        """What its training images' transparency was composited on, and so an upload's is."""
        return self.card.get("background", "black")


# -- running a module ---------------------------------------------------------------------------

def inference_dtype(device: torch.device, dtype: str) -> torch.dtype:
    """The dtype a module runs in: `dtype` on CUDA; float32 on the CPU, where half precision is
    slower or changes images by several gray levels."""
    return getattr(torch, dtype) if device.type == "cuda" else torch.float32


def prepare(module: nn.Module, *, channels_last: bool, dtype: torch.dtype = torch.float32) -> nn.Module:
    """Convert `module` in place to the memory format and dtype it runs in (outside inference
    mode, so that its parameters stay ordinary tensors). Channels-last only where the family asks
    for it (`module.channels_last`)."""
    if channels_last and module.channels_last:
        module.to(memory_format=torch.channels_last)
    return module.to(dtype)


def model_input(batch: torch.Tensor, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """A batch input on the module's device; floating inputs in its dtype."""
    batch = batch.to(device)
    return batch.to(dtype) if batch.is_floating_point() else batch


# -- what a card adds to its module -------------------------------------------------------------

def card_class_latents(module: Family, card: dict) -> dict[str, ClassLatent]:
    """The card's per-class latent mean and std as tensors (for a family that samples from a
    latent), checked against the module; CheckpointError where the card and the module disagree."""
    result = {}
    if module.sampling == "latent":
        for name, entry in (card.get("class_latents") or {}).items():
            if name not in card.get("classes", []):
                raise CheckpointError(f"class_latents names {name!r}, which is not one of the card's classes")
            try:
                mean, std = (torch.tensor(entry[key], dtype=torch.float32) for key in ("mean", "std"))
            except (KeyError, TypeError, ValueError) as e:
                raise CheckpointError(f"class_latents[{name!r}] needs 'mean' and 'std' lists of numbers ({e})") from e
            if mean.shape != (module.latent_dim,) or std.shape != (module.latent_dim,):
                raise CheckpointError(f"class_latents[{name!r}] is not {module.latent_dim} numbers long")
            if not (mean.isfinite().all() and std.isfinite().all()):
                raise CheckpointError(f"class_latents[{name!r}] holds non-finite numbers")
            result[name] = ClassLatent(mean, std)
    n_classes = module.config.n_classes if module.class_conditional else 0
    if n_classes and n_classes != len(card.get("classes") or []):
        raise CheckpointError(f"the model has {n_classes} classes but the card names "
                              f"{len(card.get('classes') or [])}")
    return result


# -- seeds, samples and classes -----------------------------------------------------------------

def pick_seed(seed: int | None) -> int:
    """The seed given, or one left to chance."""
    return seed if seed is not None else secrets.randbelow(2**SEED_BITS)


def sampler_steps(model: Model, steps: int | None) -> dict:
    """{"steps": n} where a call chose the steps of a sampler that takes them, else {}."""
    if steps is None:
        return {}
    bounds = model.module.sampling_steps()
    if bounds is None:
        raise Unsupported(f"model {model.name!r} takes no sampling steps")
    if steps > bounds[1]:
        raise InvalidArgument(f"at most {bounds[1]} steps of {model.name} are allowed, got {steps}")
    return {"steps": steps}


def seed_latents(model: Model, seeds: Sequence[int]) -> torch.Tensor:
    """The prior draw of each seed: [len(seeds), latent_dim]."""
    return model.module.latents_for_seeds(seeds)


def for_samples(model: Model, seeds: Sequence[int], temperature: float,
                class_latent: ClassLatent | None = None) -> torch.Tensor:
    """The latents of samples: prior draws at temperature T (z = T * eps under N(0, I)), or
    mean_c + T * spread * std_c * eps around a class's mean, eps ~ N(0, I), with the family's
    `class_spread`."""
    if class_latent is None:
        return model.module.latents_for_seeds(seeds, temperature)
    spread = temperature * model.module.class_spread * class_latent.std
    return class_latent.mean + spread * model.module.latent_noise_for_seeds(seeds)


def sampling_noise(model: Model, seeds: Sequence[int],
                   label: int | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The randomness per seed of a family that samples from "noise": (noise [n, ...], class labels
    [n] or None). Without a label a conditional model draws each image's class from its seed."""
    return model.module.noise_for_seeds(seeds, None if label is None else torch.tensor([label]))


def completion_noise(model: Model, seeds: Sequence[int], label: int | None = None) -> tuple:
    """The randomness of completions per seed (the family's `completion_noise_for_seeds`). Without
    a label a conditional model's class is left to the completion (the kept pixels choose it)."""
    return model.module.completion_noise_for_seeds(seeds, None if label is None else torch.tensor([label]))


def completion_inputs(model: Model, image: torch.Tensor, keep_rows: int, seeds: Sequence[int],
                      label: int | None = None) -> tuple[tuple, torch.Tensor]:
    """The inputs of completions of `image` [1, C, H, W] that keep its top `keep_rows` rows, one
    per seed: (images, known-pixel mask, *the family's noise), each [len(seeds), ...]; and the
    image as the completions see it, the other rows blacked out."""
    _, height, width = model.module.config.image_shape
    known = torch.zeros(1, 1, height, width, dtype=torch.bool)
    known[:, :, :keep_rows] = True
    n = len(seeds)
    noise = completion_noise(model, seeds, label)
    return (image.expand(n, -1, -1, -1), known.expand(n, -1, -1, -1), *noise), image * known


def likelihood_condition(model: Model, name: str | None) -> torch.Tensor | None:
    """The class label [1] a likelihood is conditioned on, or None: over all the classes."""
    if name is None:
        return None
    if not model.module.class_conditional:
        raise Unsupported(f"model {model.name!r} computes its likelihood without a class")
    return torch.tensor([class_index(model, name)])


def class_index(model: Model, name: str) -> int:
    """The label of a class name, for a model that takes one (a class-conditional autoregressive model)."""
    if not model.module.class_conditional:
        raise Unsupported(f"model {model.name!r} is not class-conditional; it cannot take a class")
    _check_class_name(model, name)
    return model.classes.index(name)


def class_latent(model: Model, name: str) -> ClassLatent:
    """The card's mean and spread of the latents of one class (VAE and DCGAN)."""
    if not model.class_latents:
        raise Unsupported(f"model {model.name!r} has no class latents in its card (they are computed by "
                          f"`genserve evaluate`); use a seed, seeds or vector latent instead")
    _check_class_name(model, name)
    if name not in model.class_latents:
        raise Unsupported(f"the card of {model.name!r} has no latent for class {name!r}")
    return model.class_latents[name]


def _check_class_name(model: Model, name: str) -> None:
    if name not in model.classes:
        raise InvalidArgument(f"unknown class {name!r}; the classes of {model.name} are {model.classes}")


# -- latents ------------------------------------------------------------------------------------

def latent(model: Model, kind: str, value) -> torch.Tensor:
    """The z [latent_dim] of a latent spec that needs no network: kind "seed" (an int), "seeds"
    (their mean), "vector" (latent_dim numbers) or "class" (the card's mean latent of that class).
    An "image" latent is the caller's: it runs the encoder, the inversion or a projection."""
    if kind == "seed":
        return seed_latents(model, [value])[0]
    if kind == "seeds":
        return seed_latents(model, value).mean(0)
    if kind == "vector":
        if len(value) != model.latent_dim:
            raise InvalidArgument(f"{model.name} latents have {model.latent_dim} numbers, not {len(value)}", ["vector"])
        return torch.as_tensor(value, dtype=torch.float32)
    if kind == "class":
        try:
            return class_latent(model, value).mean
        except InvalidArgument as e:
            raise InvalidArgument(str(e), ["class"]) from None
    raise InvalidArgument(f"a latent is one of seed, seeds, vector, class, image; not {kind!r}")


def interpolate(a: torch.Tensor, b: torch.Tensor, steps: int, method: str) -> torch.Tensor:
    """`steps` latents from a to b, both ends included: [steps, latent_dim]."""
    path = slerp if method == "slerp" else lerp
    return path(a, b, torch.linspace(0, 1, steps))


def arithmetic(z: torch.Tensor, weights: Sequence[float]) -> torch.Tensor:
    """sum_k weight_k * z_k: [latent_dim]."""
    return (torch.tensor(weights, dtype=z.dtype)[:, None] * z).sum(0)


def variations(model: Model, result: torch.Tensor, n: int, noise: float, seed: int) -> torch.Tensor:
    """The result, then n - 1 copies with noise * eps(seed + k) added, k = 1 .. n - 1, eps ~ N(0, I):
    [n, latent_dim]."""
    if n == 1:
        return result[None]
    return torch.cat([result[None], result + noise * model.module.latent_noise_for_seeds(range(seed + 1, seed + n))])


def projection_start(model: Model, n: int) -> torch.Tensor:
    """Where the projection of n images starts: the same fixed latent for each, [n, latent_dim]."""
    return seed_latents(model, [PROJECTION_SEED]).expand(n, -1).clone()


def projection_slices() -> list[tuple[int, int]]:
    """The projection's jobs: (first step, steps) each, PROJECTION_SLICE steps at a time."""
    return [(first, min(PROJECTION_SLICE, PROJECTION_STEPS - first))
            for first in range(0, PROJECTION_STEPS, PROJECTION_SLICE)]


def offsets(steps: int, extent: float, spacing: str) -> torch.Tensor:
    """The offsets along a traversal axis: evenly from -extent to extent, or the standard normal's
    quantiles at (i + 0.5) / steps."""
    if spacing == "gaussian":
        quantile = NormalDist().inv_cdf
        return torch.tensor([quantile((i + 0.5) / steps) for i in range(steps)], dtype=torch.float32)
    return torch.linspace(-extent, extent, steps)


def traverse(model: Model, center: torch.Tensor, axes: Sequence[int | torch.Tensor], steps: int, extent: float,
             spacing: str) -> torch.Tensor:
    """The latents of a traversal, row-major: center + t0[r] * a0 (+ t1[c] * a1),
    [steps ** len(axes), d]. An axis is a dimension (an int: its unit vector) or a latent (the unit
    vector from the center toward it)."""
    dim = model.latent_dim
    directions = []
    for i, axis in enumerate(axes):
        if isinstance(axis, int):
            if axis >= dim:
                raise InvalidArgument(f"{model.name} latents have dimensions 0 to {dim - 1}, not {axis}",
                                      ["axes", i, "dim"])
            direction = torch.zeros(dim)
            direction[axis] = 1.0
        else:
            direction = axis - center
            norm = direction.norm()
            if not norm > 1e-6:
                raise InvalidArgument("the latent to go toward is the center itself", ["axes", i, "toward"])
            direction = direction / norm
        directions.append(direction)
    t = offsets(steps, extent, spacing)
    cells = center + t[:, None] * directions[0]
    if len(directions) == 2:
        cells = (cells[:, None, :] + t[None, :, None] * directions[1]).reshape(-1, dim)
    return cells
