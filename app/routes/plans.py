"""One plan per endpoint: a request -> its checks, its latents or noise, one worker job, its answer.

A route takes its model and settings from the dependencies and asks its endpoint's `plan_*` for
the plan. Planning raises every 4xx, before the job runs or a stream begins, and draws the
randomness on the CPU; the latents of uploaded images are encoded while planning (through the
request's `Jobs`), since the job that decodes them needs them. The route then runs the plan and
answers `plan.answer(output)`: the event-stream answer of samples runs the same plan.
"""

from __future__ import annotations

import asyncio
import functools
import math
from dataclasses import dataclass, field

import torch
from fastapi import Request
from fastapi.responses import JSONResponse, Response

from app import latents
from app.config import Settings
from app.errors import CapabilityError, InputError
from app.imaging import gif_bytes, grid_png, pngs_base64
from app.operations import COMPLETE, DECODE, NLL, NLL_BOUND, SAMPLE, Operation
from app.registry import ServedModel
from app.routes.jobs import Jobs
from app.routes.uploads import read_image, uploaded_image
from app.schemas import (ArithmeticRequest, CompleteRequest, ImagesResponse, InterpolateRequest, Latent,
                         LikelihoodRequest, LikelihoodResponse, SamplesRequest, TraverseRequest)
from models import inference
from models.inference import pick_seed


@dataclass(frozen=True, kw_only=True)
class Plan:
    """One job of `model`: the worker operation, its batch inputs and its shared parameters."""

    model: ServedModel
    operation: Operation
    inputs: tuple[torch.Tensor | None, ...]
    params: dict = field(default_factory=dict)

    def start(self, jobs: Jobs, **extra) -> asyncio.Future[torch.Tensor]:
        """The job queued, `extra` parameters added (an event stream's `on_progress`)."""
        return jobs.start(self.model, self.operation, *self.inputs, **self.params, **extra)

    async def run(self, jobs: Jobs) -> torch.Tensor:
        """The job's output, given up if the client disconnects first."""
        return await jobs.run(self.model, self.operation, *self.inputs, **self.params)


@dataclass(frozen=True, kw_only=True)
class ImagePlan(Plan):
    """A job whose output is images, and what their answer reports: the seed used, each image's
    latent, the grid's row length, and images shown before the output (an input as the model sees it)."""

    seed: int | None = None
    latents: torch.Tensor | None = None
    nrow: int | None = None
    shown: torch.Tensor | None = None

    def answer(self, images: torch.Tensor, fmt: str) -> Response:
        """A PNG grid, or for ?format=json each image in base64 with the seed and latents, or for
        ?format=gif an animation of the images in order."""
        if self.shown is not None:
            images = torch.cat([self.shown, images])
        headers = {"X-Seed": str(self.seed)} if self.seed is not None else None
        if fmt == "gif":
            return Response(gif_bytes(images), media_type="image/gif", headers=headers)
        if fmt == "json":
            body = ImagesResponse(images=pngs_base64(images), seed=self.seed,
                                  latents=None if self.latents is None else self.latents.tolist())
            return JSONResponse(body.model_dump(exclude_none=True), headers=headers)
        return Response(grid_png(images, self.nrow), media_type="image/png", headers=headers)


@dataclass(frozen=True, kw_only=True)
class LikelihoodPlan(Plan):
    """A job whose output is -log p(x) in nats, exact or a bound, and how it was computed."""

    exact: bool
    method: str

    def answer(self, nats: torch.Tensor) -> LikelihoodResponse:
        nll = float(nats[0])
        bits = nll / (self.inputs[0][0].numel() * math.log(2))
        return LikelihoodResponse(model=self.model.name, nll_nats=nll, bits_per_dim=bits, exact=self.exact,
                                  method=self.method)


def check_at_most(value: int, limit: int, loc: list, what: str) -> None:
    if value > limit:
        raise InputError(loc, f"at most {limit} {what} are allowed, got {value}")


def check_n(n: int, model: ServedModel, settings: Settings, loc: list) -> None:
    check_at_most(n, model.max_n(settings.limits()), loc, f"images of {model.name}")


async def resolve(jobs: Jobs, model: ServedModel, settings: Settings, specs: list[tuple[list, Latent]]) -> torch.Tensor:
    """`latents.resolve` with this request's image encoder and seed limit."""
    return await latents.resolve(model, specs, encoder(jobs, model, settings), settings.max_terms)


def encoder(jobs: Jobs, model: ServedModel, settings: Settings) -> latents.Encode:
    """The `encode` that latents.resolve uses for image latents: decode the uploads, then encode
    them together through this request's jobs."""
    async def encode(images: list[tuple[list, str]]) -> torch.Tensor:
        batch = torch.cat([await read_image(model, settings, data, loc) for loc, data in images])
        return await latents.encode_images(model, batch, functools.partial(jobs.run, model))
    return encode


# -- generation ---------------------------------------------------------------------------------

def plan_samples(model: ServedModel, settings: Settings, body: SamplesRequest, where: str) -> ImagePlan:
    """A samples request (its fields in the body or, `where` = "query", the query) -> its job:
    its seed picked, its randomness drawn on the CPU, by the sampling its family declares."""
    check_n(body.n, model, settings, [where, "n"])
    seed = pick_seed(body.seed)
    seeds = range(seed, seed + body.n)
    steps = sampler_steps(model, body.steps, [where, "steps"])
    if model.module.sampling == "noise":
        label = latents.class_index(model, body.class_, [where, "class"]) if body.class_ else None
        noise, labels = latents.sampling_noise(model, seeds, label)
        return ImagePlan(model=model, operation=SAMPLE, inputs=(noise, labels),
                         params={"temperature": body.temperature, **steps}, seed=seed, nrow=body.nrow)
    class_latent = latents.class_latent(model, body.class_, [where, "class"]) if body.class_ else None
    z = latents.for_samples(model, seeds, body.temperature, class_latent)
    return ImagePlan(model=model, operation=DECODE, inputs=(z,), params=steps, seed=seed, latents=z, nrow=body.nrow)


def sampler_steps(model: ServedModel, steps: int | None, loc: list) -> dict:
    """{"steps": n} where a request chose the steps of a sampler that takes them, else {}."""
    with latents.http_errors(loc):
        return inference.sampler_steps(model, steps)


async def plan_interpolate(jobs: Jobs, model: ServedModel, settings: Settings, body: InterpolateRequest) -> ImagePlan:
    check_at_most(body.steps, settings.max_steps, ["body", "steps"], "steps")
    ends = await resolve(jobs, model, settings, [(["body", "start"], body.start), (["body", "end"], body.end)])
    path = latents.interpolate(ends[0], ends[1], body.steps, body.method)
    return ImagePlan(model=model, operation=DECODE, inputs=(path,), latents=path, nrow=body.steps)


async def plan_traverse(jobs: Jobs, model: ServedModel, settings: Settings, body: TraverseRequest,
                        fmt: str) -> ImagePlan:
    if fmt == "gif" and len(body.axes) == 2:
        raise CapabilityError("a GIF animates a one-axis traversal; a two-axis one is a grid: "
                              "ask for format png or json")
    cells = await latents.traverse(model, body, encoder(jobs, model, settings), settings.max_terms)
    return ImagePlan(model=model, operation=DECODE, inputs=(cells,), latents=cells, nrow=body.steps)


async def plan_arithmetic(jobs: Jobs, model: ServedModel, settings: Settings, body: ArithmeticRequest) -> ImagePlan:
    check_at_most(len(body.terms), settings.max_terms, ["body", "terms"], "terms")
    check_n(body.n, model, settings, ["body", "n"])
    specs = [(["body", "terms", i, "latent"], term.latent) for i, term in enumerate(body.terms)]
    operands = await resolve(jobs, model, settings, specs)
    result = latents.arithmetic(operands, [term.weight for term in body.terms])
    seed = pick_seed(body.seed)
    results = latents.variations(model, result, body.n, body.noise, seed)
    cells = torch.cat([operands, results]) if body.show_terms else results
    nrow = len(body.terms) + 1 if body.show_terms else None
    return ImagePlan(model=model, operation=DECODE, inputs=(cells,), seed=seed, latents=cells, nrow=nrow)


# -- images in ----------------------------------------------------------------------------------

async def plan_reconstruct(request: Request, jobs: Jobs, model: ServedModel, settings: Settings) -> ImagePlan:
    """The upload's latent (encoded or projected now), to be decoded beside the upload."""
    image = await uploaded_image(request, model, settings)
    z = await latents.encode_images(model, image, functools.partial(jobs.run, model))
    return ImagePlan(model=model, operation=DECODE, inputs=(z,), latents=torch.cat([z, z]), nrow=2, shown=image)


async def plan_complete(model: ServedModel, settings: Settings, body: CompleteRequest) -> ImagePlan:
    check_n(body.n, model, settings, ["body", "n"])
    height = model.image_shape[1]
    check_at_most(body.keep_rows, height, ["body", "keep_rows"], "rows")
    image = await read_image(model, settings, body.image, ["body", "image"])
    label = latents.class_index(model, body.class_, ["body", "class"]) if body.class_ else None
    seed = pick_seed(body.seed)
    inputs, shown = inference.completion_inputs(model, image, body.keep_rows, range(seed, seed + body.n), label)
    return ImagePlan(model=model, operation=COMPLETE, inputs=inputs, params={"temperature": body.temperature},
                     seed=seed, nrow=body.n + 1, shown=shown)


async def plan_likelihood(model: ServedModel, settings: Settings, body: LikelihoodRequest) -> LikelihoodPlan:
    image = await read_image(model, settings, body.image, ["body", "image"])
    module = model.module
    with latents.http_errors(["body", "class"]):
        cond = inference.likelihood_condition(model, body.class_)
    exact = module.likelihood == "exact"
    method = module.likelihood_method + (" given the class" if cond is not None else "")
    return LikelihoodPlan(model=model, operation=NLL if exact else NLL_BOUND, inputs=(image, cond), exact=exact,
                          method=method)
