"""Endpoints that take an image: reconstruct, complete, likelihood.

Uploads are base64 in JSON (reconstruct also takes a multipart file); see app.imaging for how
they are decoded, converted and resized.
"""

from __future__ import annotations

import math
from typing import Annotated

import torch
from fastapi import APIRouter, Depends, Request
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError
from starlette.datastructures import UploadFile

from app import latents
from app.errors import CapabilityError, InputError
from app.operations import COMPLETE, DECODE, NLL, NLL_BOUND
from app.registry import ServedModel
from app.routes.deps import (ERROR_RESPONSES, IMAGE_RESPONSES, Format, SettingsDep, capable, check_at_most, check_n,
                             encode_images, image_response, infer, pick_seed, read_image)
from app.schemas import CompleteRequest, ImageRequest, ImagesResponse, LikelihoodRequest, LikelihoodResponse

router = APIRouter(prefix="/v1/models", tags=["images"])

UPLOAD_BODY = {"requestBody": {"required": True, "content": {
    "application/json": {"schema": ImageRequest.model_json_schema(ref_template="#/components/schemas/{model}")},
    "multipart/form-data": {"schema": {"type": "object", "required": ["image"], "properties": {
        "image": {"type": "string", "format": "binary", "description": "a PNG or JPEG file"}}}},
}}}


def _is_json(content_type: str) -> bool:
    kind = content_type.split(";", 1)[0].strip().lower()
    return kind == "application/json" or (kind.startswith("application/") and kind.endswith("+json"))


async def _uploaded_image(request: Request, model: ServedModel, settings) -> torch.Tensor:
    """The image of a JSON body {"image": base64} or of a multipart file field named `image`."""
    loc = ["body", "image"]
    if request.headers.get("content-type", "").startswith("multipart/form-data"):
        async with request.form(max_files=1, max_fields=1) as form:
            upload = form.get("image")
            if not isinstance(upload, UploadFile):
                raise InputError(loc, "a multipart upload needs a file field named 'image'")
            data = await upload.read(settings.max_image_bytes + 1)
        return await read_image(model, settings, data, loc)
    if not _is_json(request.headers.get("content-type", "")):
        # As FastAPI does for every other JSON body: a text/plain POST (which any web page may send
        # across origins without a preflight) is not parsed as JSON.
        raise RequestValidationError([{"type": "model_attributes_type", "loc": ("body",), "input": None,
                                       "msg": "send JSON (Content-Type: application/json) or a multipart form"}])
    try:
        body = ImageRequest.model_validate_json(await request.body())
    except ValidationError as e:
        raise RequestValidationError([{**error, "loc": ("body", *error["loc"])}
                                      for error in e.errors(include_url=False)]) from None
    return await read_image(model, settings, body.image, loc)


@router.post("/{name}/reconstruct", response_model=ImagesResponse, responses=IMAGE_RESPONSES,
             openapi_extra=UPLOAD_BODY)
async def reconstruct(request: Request, model: Annotated[ServedModel, Depends(capable("reconstruct"))],
                      settings: SettingsDep, format: Format = "png"):
    """The input (as the model sees it) beside its reconstruction, decoded from the encoder's mean
    (VAE) or from the image's projection (DCGAN: 100 optimiser steps through the generator, fixed
    start, deterministic). Send JSON `{"image": base64}` or a multipart form with a file field `image`."""
    image = await _uploaded_image(request, model, settings)
    z = await encode_images(request, model, image)
    reconstruction = await infer(request, model, DECODE, z)
    return image_response(torch.cat([image, reconstruction]), format, nrow=2, latents=torch.cat([z, z]))


@router.post("/{name}/complete", response_model=ImagesResponse, responses=IMAGE_RESPONSES)
async def complete(request: Request, model: Annotated[ServedModel, Depends(capable("complete"))],
                   settings: SettingsDep, body: CompleteRequest, format: Format = "png"):
    """The occluded input (rows below `keep_rows` blacked out), then `n` completions that keep the
    top `keep_rows` rows and sample the rest; completion i uses seed + i. One row."""
    check_n(body.n, model, settings, ["body", "n"])
    _, height, width = model.image_shape
    check_at_most(body.keep_rows, height, ["body", "keep_rows"], "rows")
    image = await read_image(model, settings, body.image, ["body", "image"])
    label = latents.class_index(model, body.class_, ["body", "class"]) if body.class_ else None
    seed = pick_seed(body.seed)
    noise, labels, class_u = latents.completion_noise(model, range(seed, seed + body.n), label)
    known = torch.zeros(1, 1, height, width, dtype=torch.bool)
    known[:, :, : body.keep_rows] = True
    completions = await infer(request, model, COMPLETE, noise, labels, class_u, image.expand(body.n, -1, -1, -1),
                              known.expand(body.n, -1, -1, -1), temperature=body.temperature)
    return image_response(torch.cat([image * known, completions]), format, nrow=body.n + 1, seed=seed)


@router.post("/{name}/likelihood", response_model=LikelihoodResponse, responses=ERROR_RESPONSES)
async def likelihood(request: Request, model: Annotated[ServedModel, Depends(capable("likelihood"))],
                     settings: SettingsDep, body: LikelihoodRequest) -> LikelihoodResponse:
    """-log p(x) of one image in nats and bits per dimension: exact for an autoregressive model
    (marginalised over the classes unless `class` is given), the negative ELBO (an upper bound,
    from one posterior draw with a fixed seed, so that the answer is deterministic) for the VAE."""
    image = await read_image(model, settings, body.image, ["body", "image"])
    module = model.module
    cond = None
    if body.class_:
        if not module.class_conditional:
            raise CapabilityError(f"model {model.name!r} computes its likelihood without a class")
        cond = torch.tensor([latents.class_index(model, body.class_, ["body", "class"])])
    exact = module.likelihood == "exact"
    nats = await infer(request, model, NLL if exact else NLL_BOUND, image, cond)
    method = module.likelihood_method + (" given the class" if cond is not None else "")
    nll = float(nats[0])
    bits = nll / (image[0].numel() * math.log(2))
    return LikelihoodResponse(model=model.name, nll_nats=nll, bits_per_dim=bits, exact=exact,
                              method=method)
