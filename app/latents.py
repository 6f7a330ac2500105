"""Latent specs -> z, and the noise of samples, always on the CPU: the service's side of the rules
in `models.inference`, which the Python API (genserve) shares, with their errors answered as
HTTP errors (Unsupported 400, InvalidArgument 422 at the request's location).

Every seed gets its own generator, in the model's per-seed rule (`latents_for_seeds`,
`noise_for_seeds`, `completion_noise_for_seeds`), so image i of a request with seed s is the image
of seed s + i whatever else is asked for, and the image evaluation and the docs drew for that
seed. Only those CPU noise draws are called here, never a forward pass: anything that runs a
network (the encoder of an `{"image": ...}` latent, a projection's steps, a completion's class
posterior) goes through the worker, as jobs handed to the caller's `run`.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Awaitable, Callable, Iterator, Sequence

import torch

from app.errors import CapabilityError, InputError
from app.operations import ENCODE, INVERT, PROJECT
from app.registry import ServedModel
from app.schemas import Latent, TraverseRequest
from models import inference
from models.families.projection import projection_latents, projection_state
# The rules that raise nothing serve as they are (the plans and the tests call them from here).
from models.inference import (ClassLatent, arithmetic, completion_noise, for_samples,  # noqa: F401
                              interpolate, projection_start, sampling_noise, variations)

Encode = Callable[[list[tuple[list, str]]], Awaitable[torch.Tensor]]
RunJob = Callable[..., Awaitable[torch.Tensor]]  # (operation, *inputs, **params) -> the job's output


@contextmanager
def http_errors(loc: list) -> Iterator[None]:
    """models.inference's errors as the service answers them: Unsupported 400, InvalidArgument 422
    at `loc` and the argument's place under it."""
    try:
        yield
    except inference.Unsupported as e:
        raise CapabilityError(str(e)) from None
    except inference.InvalidArgument as e:
        raise InputError([*loc, *e.field], str(e)) from None


def class_index(model: ServedModel, name: str, loc: list) -> int:
    """The label of a class name, for a model that takes one (a class-conditional autoregressive model)."""
    with http_errors(loc):
        return inference.class_index(model, name)


def class_latent(model: ServedModel, name: str, loc: list) -> ClassLatent:
    """The card's mean and spread of the latents of one class (VAE and DCGAN)."""
    with http_errors(loc):
        return inference.class_latent(model, name)


async def resolve(model: ServedModel, specs: Sequence[tuple[list, Latent]], encode: Encode,
                  max_seeds: int) -> torch.Tensor:
    """Each (location in the request, latent spec) -> one row of z: [len(specs), latent_dim].
    Images are encoded together, in one call of `encode` with their locations."""
    rows: list[torch.Tensor | None] = []
    images: list[tuple[int, list, str]] = []
    for index, (loc, spec) in enumerate(specs):
        kind = spec.kind
        if kind == "image":
            if "image_latent" not in model.capabilities:
                raise CapabilityError(f"model {model.name!r} cannot encode images; its capabilities are "
                                      f"{list(model.capabilities)}")
            images.append((index, loc + ["image"], spec.image))
            rows.append(None)
            continue
        if kind == "seeds" and len(spec.seeds) > max_seeds:
            raise InputError(loc + ["seeds"], f"at most {max_seeds} seeds are accepted")
        with http_errors(loc):
            rows.append(inference.latent(model, kind, getattr(spec, "class_" if kind == "class" else kind)))
    if images:
        encoded = await encode([(loc, data) for _, loc, data in images])
        for (index, _, _), z in zip(images, encoded):
            rows[index] = z
    return torch.stack(rows)


async def encode_images(model: ServedModel, images: torch.Tensor, run: RunJob) -> torch.Tensor:
    """Images [B, C, H, W] -> latents: the encoder's mean, the family's inversion, or for a model
    that "project"s, the projection (models.families.projection): its optimiser steps run as jobs
    of PROJECTION_SLICE steps (models.inference), each its own batch, so that the worker serves
    other requests between them."""
    if "encoder" in model.capabilities:
        return await run(ENCODE, images)
    if "invert" in model.capabilities:
        return await run(INVERT, images)
    state = projection_state(projection_start(model, images.shape[0]))
    for first, steps in inference.projection_slices():
        state = await run(PROJECT, images, state, first_step=first, steps=steps)
    return projection_latents(state)


async def traverse(model: ServedModel, body: TraverseRequest, encode: Encode, max_seeds: int) -> torch.Tensor:
    """The latents of a traversal, row-major: center + t0[r] * a0 (+ t1[c] * a1), [steps ** len(axes), d]."""
    specs = [(["body", "center"], body.center)]
    specs += [(["body", "axes", i, "toward"], axis.toward) for i, axis in enumerate(body.axes) if axis.toward]
    resolved = await resolve(model, specs, encode, max_seeds)
    center, towards = resolved[0], iter(resolved[1:])
    axes = [axis.dim if axis.dim is not None else next(towards) for axis in body.axes]
    with http_errors(["body"]):
        return inference.traverse(model, center, axes, body.steps, body.extent, body.spacing)
