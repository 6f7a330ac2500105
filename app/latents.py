"""Latent specs -> z, and the noise of autoregressive samples, always on the CPU.

Every seed gets its own generator, in the model's per-seed rule (`latents_for_seeds`,
`noise_for_seeds`, `completion_noise_for_seeds`), so image i of a request with seed s is the image
of seed s + i whatever else is asked for or batched with it, and the image evaluation and the
docs drew for that seed. Only those CPU noise draws are called here, never a forward pass:
anything that runs a network (the encoder of an `{"image": ...}` latent, a projection's steps, a
completion's class posterior) goes through the worker, as jobs handed to the caller's `run`.
"""

from __future__ import annotations

from statistics import NormalDist
from typing import Awaitable, Callable, Sequence

import torch

from app.errors import CapabilityError, InputError
from app.operations import ENCODE, PROJECT
from app.registry import ClassLatent, ServedModel
from app.schemas import Latent, TraverseRequest
from models.families.latent import lerp, slerp
from models.families.projection import PROJECTION_STEPS, projection_latents, projection_state

# How far class samples stray from the class mean at temperature 1, in class standard deviations.
CLASS_SPREAD = 0.5
# A projection (an image's latent for a model without an encoder) starts at the latent of this seed.
PROJECTION_SEED = 0
# A projection runs as jobs of this many optimiser steps, so that other requests' batches run between.
PROJECTION_SLICE = 10

Encode = Callable[[list[tuple[list, str]]], Awaitable[torch.Tensor]]
RunJob = Callable[..., Awaitable[torch.Tensor]]  # (operation, *inputs, **params) -> the job's output


def seed_latents(model: ServedModel, seeds: Sequence[int]) -> torch.Tensor:
    """The prior draw of each seed: [len(seeds), latent_dim]."""
    return model.module.latents_for_seeds(seeds)


def for_samples(model: ServedModel, seeds: Sequence[int], temperature: float,
                class_latent: ClassLatent | None = None) -> torch.Tensor:
    """The latents of a samples request: prior draws at temperature T (z = T * eps under N(0, I)),
    or mean_c + T * CLASS_SPREAD * std_c * eps around a class's mean, eps ~ N(0, I)."""
    if class_latent is None:
        return model.module.latents_for_seeds(seeds, temperature)
    return class_latent.mean + temperature * CLASS_SPREAD * class_latent.std * model.module.noise_for_seeds(seeds)


def pixel_noise(model: ServedModel, seeds: Sequence[int],
                label: int | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """An autoregressive model's randomness per seed: (uniforms [n, C, H, W], class labels [n] or
    None). Without a label a conditional model draws each image's class from its seed."""
    return model.module.noise_for_seeds(seeds, None if label is None else torch.tensor([label]))


def completion_noise(model: ServedModel, seeds: Sequence[int], label: int | None = None
                     ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """The randomness of completions per seed: (uniforms, labels, class uniforms). Without a label
    a conditional model's class is drawn in the worker, from its posterior given the kept rows,
    by each seed's class uniform."""
    return model.module.completion_noise_for_seeds(seeds, None if label is None else torch.tensor([label]))


def class_index(model: ServedModel, name: str, loc: list) -> int:
    """The label of a class name, for a model that takes one (a class-conditional autoregressive model)."""
    if not model.module.class_conditional:
        raise CapabilityError(f"model {model.name!r} is not class-conditional; it cannot take a class")
    _check_class_name(model, name, loc)
    return model.classes.index(name)


def class_latent(model: ServedModel, name: str, loc: list) -> ClassLatent:
    """The card's mean and spread of the latents of one class (VAE and DCGAN)."""
    if not model.class_latents:
        raise CapabilityError(f"model {model.name!r} has no class latents in its card (they are computed by "
                              f"`genserve evaluate`); use a seed, seeds or vector latent instead")
    _check_class_name(model, name, loc)
    if name not in model.class_latents:
        raise CapabilityError(f"the card of {model.name!r} has no latent for class {name!r}")
    return model.class_latents[name]


def _check_class_name(model: ServedModel, name: str, loc: list) -> None:
    if name not in model.classes:
        raise InputError(loc, f"unknown class {name!r}; the classes of {model.name} are {model.classes}")


async def resolve(model: ServedModel, specs: Sequence[tuple[list, Latent]], encode: Encode,
                  max_seeds: int) -> torch.Tensor:
    """Each (location in the request, latent spec) -> one row of z: [len(specs), latent_dim].
    Images are encoded together, in one call of `encode` with their locations."""
    dim = model.latent_dim
    rows: list[torch.Tensor | None] = []
    images: list[tuple[int, list, str]] = []
    for index, (loc, spec) in enumerate(specs):
        kind = spec.kind
        if kind == "seed":
            rows.append(seed_latents(model, [spec.seed])[0])
        elif kind == "seeds":
            if len(spec.seeds) > max_seeds:
                raise InputError(loc + ["seeds"], f"at most {max_seeds} seeds are accepted")
            rows.append(seed_latents(model, spec.seeds).mean(0))
        elif kind == "vector":
            if len(spec.vector) != dim:
                raise InputError(loc + ["vector"], f"{model.name} latents have {dim} numbers, not {len(spec.vector)}")
            rows.append(torch.tensor(spec.vector, dtype=torch.float32))
        elif kind == "class":
            rows.append(class_latent(model, spec.class_, loc + ["class"]).mean)
        else:
            if "image_latent" not in model.capabilities:
                raise CapabilityError(f"model {model.name!r} cannot encode images; its capabilities are "
                                      f"{list(model.capabilities)}")
            images.append((index, loc + ["image"], spec.image))
            rows.append(None)
    if images:
        encoded = await encode([(loc, data) for _, loc, data in images])
        for (index, _, _), z in zip(images, encoded):
            rows[index] = z
    return torch.stack(rows)


def interpolate(a: torch.Tensor, b: torch.Tensor, steps: int, method: str) -> torch.Tensor:
    """`steps` latents from a to b, both ends included: [steps, latent_dim]."""
    path = slerp if method == "slerp" else lerp
    return path(a, b, torch.linspace(0, 1, steps))


def arithmetic(z: torch.Tensor, weights: Sequence[float]) -> torch.Tensor:
    """sum_k weight_k * z_k: [latent_dim]."""
    return (torch.tensor(weights, dtype=z.dtype)[:, None] * z).sum(0)


def variations(model: ServedModel, result: torch.Tensor, n: int, noise: float, seed: int) -> torch.Tensor:
    """The result, then n - 1 copies with noise * eps(seed + k) added, k = 1 .. n - 1, eps ~ N(0, I):
    [n, latent_dim]."""
    if n == 1:
        return result[None]
    return torch.cat([result[None], result + noise * model.module.noise_for_seeds(range(seed + 1, seed + n))])


def projection_start(model: ServedModel, n: int) -> torch.Tensor:
    """Where the projection of n images starts: the same fixed latent for each, [n, latent_dim]."""
    return seed_latents(model, [PROJECTION_SEED]).expand(n, -1).clone()


async def encode_images(model: ServedModel, images: torch.Tensor, run: RunJob) -> torch.Tensor:
    """Images [B, C, H, W] -> latents: the encoder's mean, or for a model that "project"s, the
    projection (models.latent): PROJECTION_STEPS optimiser steps run as jobs of PROJECTION_SLICE
    steps, each its own batch, so that the worker serves other requests between them."""
    if "project" not in model.capabilities:
        return await run(ENCODE, images)
    state = projection_state(projection_start(model, images.shape[0]))
    for first in range(0, PROJECTION_STEPS, PROJECTION_SLICE):
        steps = min(PROJECTION_SLICE, PROJECTION_STEPS - first)
        state = await run(PROJECT, images, state, first_step=first, steps=steps)
    return projection_latents(state)


def offsets(steps: int, extent: float, spacing: str) -> torch.Tensor:
    """The offsets along a traversal axis: evenly from -extent to extent, or the standard normal's
    quantiles at (i + 0.5) / steps."""
    if spacing == "gaussian":
        quantile = NormalDist().inv_cdf
        return torch.tensor([quantile((i + 0.5) / steps) for i in range(steps)], dtype=torch.float32)
    return torch.linspace(-extent, extent, steps)


async def traverse(model: ServedModel, body: TraverseRequest, encode: Encode, max_seeds: int) -> torch.Tensor:
    """The latents of a traversal, row-major: center + t0[r] * a0 (+ t1[c] * a1), [steps ** len(axes), d]."""
    specs = [(["body", "center"], body.center)]
    specs += [(["body", "axes", i, "toward"], axis.toward) for i, axis in enumerate(body.axes) if axis.toward]
    resolved = await resolve(model, specs, encode, max_seeds)
    center, towards = resolved[0], iter(resolved[1:])
    directions = []
    for i, axis in enumerate(body.axes):
        if axis.dim is not None:
            if axis.dim >= model.latent_dim:
                raise InputError(["body", "axes", i, "dim"], f"{model.name} latents have dimensions 0 to "
                                 f"{model.latent_dim - 1}, not {axis.dim}")
            direction = torch.zeros(model.latent_dim)
            direction[axis.dim] = 1.0
        else:
            direction = next(towards) - center
            norm = direction.norm()
            if not norm > 1e-6:
                raise InputError(["body", "axes", i, "toward"], "the latent to go toward is the center itself")
            direction = direction / norm
        directions.append(direction)
    t = offsets(body.steps, body.extent, body.spacing)
    cells = center + t[:, None] * directions[0]
    if len(directions) == 2:
        cells = (cells[:, None, :] + t[None, :, None] * directions[1]).reshape(-1, model.latent_dim)
    return cells
