"""What the routes share: the model dependency, limits, running a job, reading uploads, answering images."""

from __future__ import annotations

import asyncio
import secrets
from dataclasses import dataclass
from typing import Annotated, Literal

import torch
from fastapi import Depends, Query, Request
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool

from app import latents
from app.config import Settings
from app.errors import CapabilityError, ClientDisconnected, InputError
from app.imaging import ImageError, decode_base64, gif_bytes, grid_png, load_image, pngs_base64
from app.operations import ENCODE, PROJECT, Operation
from app.metrics import Metrics
from app.registry import Registry, ServedModel
from app.schemas import ErrorDetail, ImagesResponse
from app.worker import Worker
from models.latent import PROJECTION_STEPS, projection_latents, projection_state

Format = Annotated[Literal["png", "json"], Query(
    description="png: one grid image; json: the images one by one in base64, with the seed and latents")]
AnimatedFormat = Annotated[Literal["png", "json", "gif"], Query(
    description="png: one grid image; json: the images one by one in base64, with the latents; "
                "gif: an animation that loops, one frame per image in order")]

# A projection runs as jobs of this many optimiser steps, so that other requests' batches run between.
PROJECTION_SLICE = 10

ERROR_RESPONSES = {
    400: {"model": ErrorDetail, "description": "The model lacks the capability (the detail names its capabilities), "
                                               "or the body could not be parsed at all"},
    404: {"model": ErrorDetail, "description": "No such model; the detail names the known models"},
    413: {"model": ErrorDetail, "description": "The body is larger than max_body_bytes"},
    503: {"model": ErrorDetail, "description": "The queue is full; retry after Retry-After seconds",
          "headers": {"Retry-After": {"description": "seconds to wait", "schema": {"type": "integer"}}}},
    504: {"model": ErrorDetail, "description": "The inference took longer than the request timeout"},
}
SEED_HEADER = {"X-Seed": {"description": "the seed used (drawn at random when the request had none)",
                          "schema": {"type": "integer"}}}
IMAGE_RESPONSES = {
    200: {"description": "A PNG grid, or with ?format=json the images one by one",
          "content": {"image/png": {"schema": {"type": "string", "format": "binary"}}},
          "headers": SEED_HEADER},
    **ERROR_RESPONSES,
}
ANIMATED_RESPONSES = {**IMAGE_RESPONSES, 200: {
    **IMAGE_RESPONSES[200], "description": "A PNG grid; with ?format=gif an animated GIF; with ?format=json the images",
    "content": {"image/png": {"schema": {"type": "string", "format": "binary"}},
                "image/gif": {"schema": {"type": "string", "format": "binary"}}}}}
PNG_RESPONSES = {**IMAGE_RESPONSES, 200: {**IMAGE_RESPONSES[200], "description": "A PNG grid"}}


# The dependencies are `async def` although they never await: FastAPI runs a plain `def` dependency
# in its thread pool, a thread hand-off per dependency per request.

async def get_settings(request: Request) -> Settings:
    return request.app.state.settings


async def get_registry(request: Request) -> Registry:
    return request.app.state.registry


def worker_of(request: Request) -> Worker:
    """The app's worker, for the code paths that submit jobs (`infer`, the event stream)."""
    return request.app.state.worker


async def get_worker(request: Request) -> Worker:
    return worker_of(request)


async def get_metrics(request: Request) -> Metrics:
    return request.app.state.metrics


RegistryDep = Annotated[Registry, Depends(get_registry)]
WorkerDep = Annotated[Worker, Depends(get_worker)]
MetricsDep = Annotated[Metrics, Depends(get_metrics)]


async def served_model(name: str, request: Request) -> ServedModel:
    # The registry read here, not through RegistryDep: one dependency less on every model route.
    return request.app.state.registry.get(name)


def capable(capability: str):
    """A dependency: the model named in the path, if it has `capability` (else 400)."""
    async def dependency(model: Annotated[ServedModel, Depends(served_model)]) -> ServedModel:
        if capability not in model.capabilities:
            raise CapabilityError(f"model {model.name!r} ({model.family}) does not support {capability!r}; "
                                  f"its capabilities are {list(model.capabilities)}")
        return model
    return dependency


SettingsDep = Annotated[Settings, Depends(get_settings)]


def check_at_most(value: int, limit: int, loc: list, what: str) -> None:
    if value > limit:
        raise InputError(loc, f"at most {limit} {what} are allowed, got {value}")


def check_n(n: int, model: ServedModel, settings: Settings, loc: list) -> None:
    check_at_most(n, model.max_n(settings.limits()), loc, f"images of {model.name}")


def pick_seed(seed: int | None) -> int:
    return seed if seed is not None else secrets.randbelow(2**31)


async def _client_gone(request: Request) -> None:
    """Returns when the client disconnects (the body has been read, so nothing else arrives)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


@dataclass(frozen=True)
class Plan:
    """What a request becomes before any work: the worker operation, its batch inputs and shared
    parameters, and what the answer reports (the seed used, the latents decoded). The plain and
    the event-stream answers of one endpoint run the same plan."""

    operation: Operation
    inputs: tuple[torch.Tensor | None, ...]
    params: dict
    seed: int | None = None
    latents: torch.Tensor | None = None

    async def run(self, request: Request, model: ServedModel) -> torch.Tensor:
        """The plan's job through `infer`: given up if the client disconnects first."""
        return await infer(request, model, self.operation, *self.inputs, **self.params)


async def infer(request: Request, model: ServedModel, operation: Operation, *inputs: torch.Tensor | None,
                **params) -> torch.Tensor:
    """Run one job on the worker; give it up (so it never runs) if the client disconnects first."""
    job = asyncio.ensure_future(worker_of(request).run(model, operation, *inputs, **params))
    gone = asyncio.ensure_future(_client_gone(request))
    try:
        done, _ = await asyncio.wait({job, gone}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        job.cancel()  # no-op when done; otherwise abandons the job
        gone.cancel()
    if job in done:
        return job.result()
    gone.result()  # raises what broke the receive channel, if anything did
    raise ClientDisconnected()


async def read_image(model: ServedModel, settings: Settings, data: str | bytes, loc: list) -> torch.Tensor:
    """A base64 string or raw upload -> float [1, C, H, W] for `model` (decoded off the event loop)."""
    try:
        payload = data if isinstance(data, bytes) else decode_base64(data, settings.max_image_bytes)
        return await run_in_threadpool(load_image, payload, model.image_shape, settings.max_image_bytes)
    except ImageError as e:
        raise InputError(loc, str(e)) from None


async def encode_images(request: Request, model: ServedModel, images: torch.Tensor) -> torch.Tensor:
    """Images [B, C, H, W] -> latents: the encoder's mean, or for a model that "project"s, the
    projection (models.latent): PROJECTION_STEPS optimiser steps run as jobs of PROJECTION_SLICE
    steps, each its own batch, so that the worker serves other requests between them."""
    if "project" not in model.capabilities:
        return await infer(request, model, ENCODE, images)
    state = projection_state(latents.projection_start(model, images.shape[0]))
    for first in range(0, PROJECTION_STEPS, PROJECTION_SLICE):
        steps = min(PROJECTION_SLICE, PROJECTION_STEPS - first)
        state = await infer(request, model, PROJECT, images, state, first_step=first, steps=steps)
    return projection_latents(state)


def encoder(request: Request, model: ServedModel, settings: Settings):
    """The `encode` that latents.resolve uses for image latents: decode, then `encode_images`."""
    async def encode(images: list[tuple[list, str]]) -> torch.Tensor:
        batch = torch.cat([await read_image(model, settings, data, loc) for loc, data in images])
        return await encode_images(request, model, batch)
    return encode


def image_response(images: torch.Tensor, fmt: str, *, nrow: int | None = None, seed: int | None = None,
                   latents: torch.Tensor | None = None) -> Response:
    """A PNG grid, or for ?format=json each image in base64 with the seed and latents, or for
    ?format=gif an animation of the images in order."""
    headers = {"X-Seed": str(seed)} if seed is not None else None
    if fmt == "gif":
        return Response(gif_bytes(images), media_type="image/gif", headers=headers)
    if fmt == "json":
        body = ImagesResponse(images=pngs_base64(images), seed=seed,
                              latents=None if latents is None else latents.tolist())
        return JSONResponse(body.model_dump(exclude_none=True), headers=headers)
    return Response(grid_png(images, nrow), media_type="image/png", headers=headers)
