"""Generation: samples, interpolate, traverse, arithmetic, latents.

Each route validates, turns the request into tensors on the CPU (`app.latents`), runs one job on
the worker and makes the answer; none calls a model itself.
"""

from __future__ import annotations

from typing import Annotated

import torch
from fastapi import APIRouter, Depends, Query, Request, Response

from app import latents
from app.errors import CapabilityError
from app.operations import DECODE, SAMPLE_PIXELS
from app.registry import ServedModel
from app.routes.deps import (ANIMATED_RESPONSES, ERROR_RESPONSES, IMAGE_RESPONSES, PNG_RESPONSES, AnimatedFormat,
                             Format, Plan, SettingsDep, capable, check_at_most, check_n, encoder, image_response,
                             infer, pick_seed)
from app.routes.events import EVENT_STREAM, SAMPLES_RESPONSES, sample_events
from app.schemas import (ArithmeticRequest, ImagesResponse, InterpolateRequest, LatentsRequest, LatentsResponse,
                         SamplesQuery, SamplesRequest, TraverseRequest)

router = APIRouter(prefix="/v1/models", tags=["generate"])


def plan_samples(model: ServedModel, settings, body: SamplesRequest, where: str) -> Plan:
    """A samples request -> its job: checked (every 4xx is raised here, before any work or stream),
    its seed picked, its noise drawn on the CPU."""
    check_n(body.n, model, settings, [where, "n"])
    seed = pick_seed(body.seed)
    seeds = range(seed, seed + body.n)
    if model.latent_dim is None:  # an autoregressive model: pixel noise, not a latent
        label = latents.class_index(model, body.class_, [where, "class"]) if body.class_ else None
        noise, labels = latents.pixel_noise(model, seeds, label)
        return Plan(SAMPLE_PIXELS, (noise, labels), {"temperature": body.temperature}, seed)
    class_latent = latents.class_latent(model, body.class_, [where, "class"]) if body.class_ else None
    z = latents.for_samples(model, seeds, body.temperature, class_latent)
    return Plan(DECODE, (z,), {}, seed, latents=z)


async def _samples(request: Request, model: ServedModel, settings, body: SamplesRequest, fmt: str, where: str):
    plan = plan_samples(model, settings, body, where)
    images = await plan.run(request, model)
    return image_response(images, fmt, nrow=body.nrow, seed=plan.seed, latents=plan.latents)


@router.post("/{name}/samples", response_model=ImagesResponse, responses=SAMPLES_RESPONSES)
async def samples(request: Request, model: Annotated[ServedModel, Depends(capable("sample"))],
                  settings: SettingsDep, body: SamplesRequest, format: Format = "png"):
    """A grid of `n` samples. Image i of a request with seed s is exactly the image of latent
    `{"seed": s + i}`, so any cell can be referenced later; the `X-Seed` header says s.

    With `Accept: text/event-stream`, Server-Sent Events: for a model that samples row by row
    ("stream" among its capabilities) one `progress` event per row,
    `{"row": r, "rows": H, "image": <base64 PNG grid so far>}`, then for every model one `done`
    event `{"image": <base64 PNG>}`, the very bytes of the plain answer; `error` events carry
    `{"detail": ...}`. A client that goes away stops the sampling.

    `temperature` scales the prior draw for latent models (z = T * eps under N(0, I); a mixture
    prior's draw is scaled about its component's mean) and is the softmax temperature for
    autoregressive models (PixelCNN, PixelRNN). `class` is an autoregressive model's conditioning
    label; for latent models (VAE, DCGAN) it draws around the class's mean latent from the model
    card: z = mean_c + T * 0.5 * std_c * eps.
    """
    if EVENT_STREAM in request.headers.get("accept", ""):
        return await sample_events(request, model, plan_samples(model, settings, body, "body"), body.nrow)
    return await _samples(request, model, settings, body, format, "body")


@router.get("/{name}/samples.png", response_class=Response, responses=PNG_RESPONSES)
async def samples_png(request: Request, model: Annotated[ServedModel, Depends(capable("sample"))],
                      settings: SettingsDep, query: Annotated[SamplesQuery, Query()]):
    """The samples grid for `<img src>`: the same as POST .../samples, from query parameters."""
    return await _samples(request, model, settings, query, "png", "query")


@router.post("/{name}/interpolate", response_model=ImagesResponse, responses=ANIMATED_RESPONSES)
async def interpolate(request: Request, model: Annotated[ServedModel, Depends(capable("interpolate"))],
                      settings: SettingsDep, body: InterpolateRequest, format: AnimatedFormat = "png"):
    """One row of `steps` images from `start` to `end`, both included, along a great circle
    (slerp) or a straight line (lerp) in latent space; `?format=gif` animates them."""
    check_at_most(body.steps, settings.max_steps, ["body", "steps"], "steps")
    ends = await latents.resolve(model, [(["body", "start"], body.start), (["body", "end"], body.end)],
                                 encoder(request, model, settings), settings.max_terms)
    path = latents.interpolate(ends[0], ends[1], body.steps, body.method)
    images = await infer(request, model, DECODE, path)
    return image_response(images, format, nrow=body.steps, latents=path)


@router.post("/{name}/traverse", response_model=ImagesResponse, responses=ANIMATED_RESPONSES)
async def traverse(request: Request, model: Annotated[ServedModel, Depends(capable("traverse"))],
                   settings: SettingsDep, body: TraverseRequest, format: AnimatedFormat = "png"):
    """Decodings along one or two axes through `center`: the latent of a cell is
    `center + t0 * a0 (+ t1 * a1)`. An axis is `{"dim": k}`, the unit vector of dimension k, or
    `{"toward": L}`, the unit vector from the center toward latent L. One axis gives one row of
    `steps` images (`?format=gif` animates it); two axes a `steps x steps` grid, row r at `t0[r]`,
    column c at `t1[c]`. With two `dim` axes and `"spacing": "gaussian"` on a 2-d VAE this is
    Kingma & Welling's picture of the learned data manifold."""
    if format == "gif" and len(body.axes) == 2:
        raise CapabilityError("a GIF animates a one-axis traversal; a two-axis one is a grid: "
                              "ask for format png or json")
    cells = await latents.traverse(model, body, encoder(request, model, settings), settings.max_terms)
    images = await infer(request, model, DECODE, cells)
    return image_response(images, format, nrow=body.steps, latents=cells)


@router.post("/{name}/arithmetic", response_model=ImagesResponse, responses=IMAGE_RESPONSES)
async def arithmetic(request: Request, model: Annotated[ServedModel, Depends(capable("arithmetic"))],
                     settings: SettingsDep, body: ArithmeticRequest, format: Format = "png"):
    """Latent arithmetic, as in the DCGAN paper's figures: the decoded operands (with `show_terms`),
    then the result sum(weight * z), then `n - 1` variations that add `noise` * z(seed + k).
    With `show_terms` the operands and the result fill the first row."""
    check_at_most(len(body.terms), settings.max_terms, ["body", "terms"], "terms")
    check_n(body.n, model, settings, ["body", "n"])
    specs = [(["body", "terms", i, "latent"], term.latent) for i, term in enumerate(body.terms)]
    operands = await latents.resolve(model, specs, encoder(request, model, settings), settings.max_terms)
    result = latents.arithmetic(operands, [term.weight for term in body.terms])
    seed = pick_seed(body.seed)
    results = latents.variations(model, result, body.n, body.noise, seed)
    cells = torch.cat([operands, results]) if body.show_terms else results
    images = await infer(request, model, DECODE, cells)
    nrow = len(body.terms) + 1 if body.show_terms else None
    return image_response(images, format, nrow=nrow, seed=seed, latents=cells)


@router.post("/{name}/latents", response_model=LatentsResponse, responses=ERROR_RESPONSES)
async def latent_vector(request: Request, model: Annotated[ServedModel, Depends(capable("arithmetic"))],
                        settings: SettingsDep, body: LatentsRequest) -> LatentsResponse:
    """The z of a latent spec, so that clients can do their own arithmetic."""
    z = await latents.resolve(model, [(["body", "latent"], body.latent)], encoder(request, model, settings),
                              settings.max_terms)
    return LatentsResponse(vector=z[0].tolist())
