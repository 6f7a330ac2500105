"""Generation: samples, interpolate, traverse, arithmetic, latents.

Each route takes its endpoint's plan (`app.routes.plans`: checks, latents or noise on the CPU,
one worker job), runs it through the request's `Jobs` and answers; none calls a model itself.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request, Response

from app.registry import ServedModel
from app.routes.deps import AnimatedFormat, Format, JobsDep, SettingsDep, capable
from app.routes.events import sample_events
from app.routes.plans import plan_arithmetic, plan_interpolate, plan_samples, plan_traverse, resolve
from app.routes.responses import (ANIMATED_RESPONSES, ERROR_RESPONSES, EVENT_STREAM, IMAGE_RESPONSES, PNG_RESPONSES,
                                  SAMPLES_RESPONSES)
from app.schemas import (ArithmeticRequest, ImagesResponse, InterpolateRequest, LatentsRequest, LatentsResponse,
                         SamplesQuery, SamplesRequest, TraverseRequest)

router = APIRouter(prefix="/v1/models", tags=["generate"])


@router.post("/{name}/samples", response_model=ImagesResponse, responses=SAMPLES_RESPONSES)
async def samples(request: Request, model: Annotated[ServedModel, Depends(capable("sample"))],
                  settings: SettingsDep, jobs: JobsDep, body: SamplesRequest, format: Format = "png"):
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
    plan = plan_samples(model, settings, body, "body")
    if EVENT_STREAM in request.headers.get("accept", ""):
        return await sample_events(jobs, plan)
    return plan.answer(await plan.run(jobs), format)


@router.get("/{name}/samples.png", response_class=Response, responses=PNG_RESPONSES)
async def samples_png(model: Annotated[ServedModel, Depends(capable("sample"))], settings: SettingsDep,
                      jobs: JobsDep, query: Annotated[SamplesQuery, Query()]):
    """The samples grid for `<img src>`: the same as POST .../samples, from query parameters."""
    plan = plan_samples(model, settings, query, "query")
    return plan.answer(await plan.run(jobs), "png")


@router.post("/{name}/interpolate", response_model=ImagesResponse, responses=ANIMATED_RESPONSES)
async def interpolate(model: Annotated[ServedModel, Depends(capable("interpolate"))], settings: SettingsDep,
                      jobs: JobsDep, body: InterpolateRequest, format: AnimatedFormat = "png"):
    """One row of `steps` images from `start` to `end`, both included, along a great circle
    (slerp) or a straight line (lerp) in latent space; `?format=gif` animates them."""
    plan = await plan_interpolate(jobs, model, settings, body)
    return plan.answer(await plan.run(jobs), format)


@router.post("/{name}/traverse", response_model=ImagesResponse, responses=ANIMATED_RESPONSES)
async def traverse(model: Annotated[ServedModel, Depends(capable("traverse"))], settings: SettingsDep,
                   jobs: JobsDep, body: TraverseRequest, format: AnimatedFormat = "png"):
    """Decodings along one or two axes through `center`: the latent of a cell is
    `center + t0 * a0 (+ t1 * a1)`. An axis is `{"dim": k}`, the unit vector of dimension k, or
    `{"toward": L}`, the unit vector from the center toward latent L. One axis gives one row of
    `steps` images (`?format=gif` animates it); two axes a `steps x steps` grid, row r at `t0[r]`,
    column c at `t1[c]`. With two `dim` axes and `"spacing": "gaussian"` on a 2-d VAE this is
    Kingma & Welling's picture of the learned data manifold."""
    plan = await plan_traverse(jobs, model, settings, body, format)
    return plan.answer(await plan.run(jobs), format)


@router.post("/{name}/arithmetic", response_model=ImagesResponse, responses=IMAGE_RESPONSES)
async def arithmetic(model: Annotated[ServedModel, Depends(capable("arithmetic"))], settings: SettingsDep,
                     jobs: JobsDep, body: ArithmeticRequest, format: Format = "png"):
    """Latent arithmetic, as in the DCGAN paper's figures: the decoded operands (with `show_terms`),
    then the result sum(weight * z), then `n - 1` variations that add `noise` * z(seed + k).
    With `show_terms` the operands and the result fill the first row."""
    plan = await plan_arithmetic(jobs, model, settings, body)
    return plan.answer(await plan.run(jobs), format)


@router.post("/{name}/latents", response_model=LatentsResponse, responses=ERROR_RESPONSES)
async def latent_vector(model: Annotated[ServedModel, Depends(capable("arithmetic"))], settings: SettingsDep,
                        jobs: JobsDep, body: LatentsRequest) -> LatentsResponse:
    """The z of a latent spec, so that clients can do their own arithmetic."""
    z = await resolve(jobs, model, settings, [(["body", "latent"], body.latent)])
    return LatentsResponse(vector=z[0].tolist())
