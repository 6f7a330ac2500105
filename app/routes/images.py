"""Endpoints that take an image: reconstruct, complete, likelihood.

Uploads are base64 in JSON (reconstruct also takes a multipart file); see app.imaging for how
they are decoded, converted and resized. Each route runs its endpoint's plan (`app.routes.plans`).
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Request

from app.registry import ServedModel
from app.routes.deps import Format, JobsDep, SettingsDep, capable
from app.routes.plans import plan_complete, plan_likelihood, plan_reconstruct
from app.routes.responses import ERROR_RESPONSES, IMAGE_RESPONSES, UPLOAD_BODY
from app.schemas import CompleteRequest, ImagesResponse, LikelihoodRequest, LikelihoodResponse

router = APIRouter(prefix="/v1/models", tags=["images"])


@router.post("/{name}/reconstruct", response_model=ImagesResponse, responses=IMAGE_RESPONSES,
             openapi_extra=UPLOAD_BODY)
async def reconstruct(request: Request, model: Annotated[ServedModel, Depends(capable("reconstruct"))],
                      settings: SettingsDep, jobs: JobsDep, format: Format = "png"):
    """The input (as the model sees it) beside its reconstruction, decoded from the encoder's mean
    (VAE) or from the image's projection (DCGAN: 100 optimiser steps through the generator, fixed
    start, deterministic). Send JSON `{"image": base64}` or a multipart form with a file field `image`."""
    plan = await plan_reconstruct(request, jobs, model, settings)
    return plan.answer(await plan.run(jobs), format)


@router.post("/{name}/complete", response_model=ImagesResponse, responses=IMAGE_RESPONSES)
async def complete(model: Annotated[ServedModel, Depends(capable("complete"))], settings: SettingsDep,
                   jobs: JobsDep, body: CompleteRequest, format: Format = "png"):
    """The occluded input (rows below `keep_rows` blacked out), then `n` completions that keep the
    top `keep_rows` rows and sample the rest; completion i uses seed + i. One row."""
    plan = await plan_complete(model, settings, body)
    return plan.answer(await plan.run(jobs), format)


@router.post("/{name}/likelihood", response_model=LikelihoodResponse, responses=ERROR_RESPONSES)
async def likelihood(model: Annotated[ServedModel, Depends(capable("likelihood"))], settings: SettingsDep,
                     jobs: JobsDep, body: LikelihoodRequest) -> LikelihoodResponse:
    """-log p(x) of one image in nats and bits per dimension: exact for an autoregressive model
    (marginalised over the classes unless `class` is given), the negative ELBO (an upper bound,
    from one posterior draw with a fixed seed, so that the answer is deterministic) for the VAE."""
    plan = await plan_likelihood(model, settings, body)
    return plan.answer(await plan.run(jobs))
