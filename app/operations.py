"""What the worker may run on a model: one function per operation, over a merged batch.

Each function takes the module, then batch tensors (concatenated along dim 0 across the merged
requests, None where a request has none), then keyword parameters that all merged requests share.
It returns one tensor whose first dimension matches the inputs', so the batch splits back.
Randomness never lives here: callers draw noise per request on the CPU, so merging cannot change it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from models.contract import Progress
from models.families.projection import projection_steps

# A bound (the ELBO) needs one posterior draw per image; a fixed seed makes the endpoint deterministic.
NLL_SEED = 0


@dataclass(frozen=True)
class Operation:
    name: str
    run: Callable[..., torch.Tensor]
    # False when a result would depend on what else is in the batch (the ELBO's shared generator).
    batchable: bool = True


def _sampler_options(steps: int | None, on_progress: Progress | None) -> dict:
    """The sampler's keyword arguments that a request set: a family that takes no steps or
    reports no progress is never given them (the plans refuse such requests)."""
    return {key: value for key, value in (("steps", steps), ("on_progress", on_progress)) if value is not None}


def _decode(module: nn.Module, z: torch.Tensor, *, steps: int | None = None,
            on_progress: Progress | None = None) -> torch.Tensor:
    """`on_progress(i, images)` (the event stream) sees each step; a job that has it is never
    merged with another (its parameters differ)."""
    return module.decode(z, **_sampler_options(steps, on_progress))


def _encode(module: nn.Module, images: torch.Tensor) -> torch.Tensor:
    mean, _ = module.encode(images)
    return mean


def _invert(module: nn.Module, images: torch.Tensor) -> torch.Tensor:
    return module.invert(images)


def _sample(module: nn.Module, noise: torch.Tensor, cond: torch.Tensor | None, *, temperature: float,
            steps: int | None = None, on_progress: Progress | None = None) -> torch.Tensor:
    return module.sample_from_noise(noise, temperature, cond, **_sampler_options(steps, on_progress))


def _complete(module: nn.Module, images: torch.Tensor, known: torch.Tensor, *noise: torch.Tensor | None,
              temperature: float) -> torch.Tensor:
    """`noise`: the family's `completion_noise_for_seeds` tuple, each part batched."""
    return module.complete_from_noise(images, known, noise, temperature)


def _project(module: nn.Module, images: torch.Tensor, state: torch.Tensor, *, first_step: int,
             steps: int) -> torch.Tensor:
    """`steps` steps of the projection of images into the latent space (models.latent)."""
    return projection_steps(module.decode, images, state, first_step, steps)


def _nll(module: nn.Module, images: torch.Tensor, cond: torch.Tensor | None) -> torch.Tensor:
    generator = torch.Generator(device=images.device).manual_seed(NLL_SEED)
    return module.nll(images, cond, generator)


DECODE = Operation("decode", _decode)
ENCODE = Operation("encode", _encode)
INVERT = Operation("invert", _invert)
SAMPLE = Operation("sample", _sample)
COMPLETE = Operation("complete", _complete)
# Not batchable: merged with other images, a projection's floats would change in their last bits.
PROJECT = Operation("project", _project, batchable=False)
NLL = Operation("nll", _nll)  # an exact likelihood: nothing is drawn
# Not batchable: a bound's posterior draws come from one generator shared by the batch.
NLL_BOUND = Operation("nll_bound", _nll, batchable=False)
