"""Reading an uploaded image: base64 in a JSON body, or a multipart file field; decoded by
`app.imaging` (off the event loop, at most DECODE_SLOTS at once) into a tensor of the model's
shape, every failure a 422."""

from __future__ import annotations

import asyncio
import weakref

import torch
from fastapi import Request
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile

from app.config import Settings
from app.errors import InputError
from app.imaging import DECODE_SLOTS, ImageError, decode_base64, load_image, release_freed_memory
from app.registry import ServedModel
from app.schemas import ImageRequest


class DecodeSlots:
    """The bound on uploads being decoded at once, for one event loop (an asyncio.Semaphore
    belongs to the loop it first waits on). Requests past it wait here, not in a thread, where
    they would starve the pool's other work. `pending` counts the uploads waiting or decoding
    (kept on the loop's thread only)."""

    def __init__(self) -> None:
        self.semaphore = asyncio.Semaphore(DECODE_SLOTS)
        self.pending = 0


_slots: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, DecodeSlots] = weakref.WeakKeyDictionary()


async def read_image(model: ServedModel, settings: Settings, data: str | bytes, loc: list) -> torch.Tensor:
    """A base64 string or raw upload -> float [1, C, H, W] for `model`."""
    loop = asyncio.get_running_loop()
    slots = _slots.setdefault(loop, DecodeSlots())
    slots.pending += 1
    try:
        payload = data if isinstance(data, bytes) else decode_base64(data, settings.max_image_bytes)
        async with slots.semaphore:
            return await run_in_threadpool(load_image, payload, model.image_shape, settings.max_image_bytes,
                                           model.background)
    except ImageError as e:
        raise InputError(loc, str(e)) from None
    finally:
        slots.pending -= 1
        if slots.pending == 0:  # the last of a burst: what its decodes freed goes back, off the loop
            loop.run_in_executor(None, release_freed_memory)


def _is_json(content_type: str) -> bool:
    kind = content_type.split(";", 1)[0].strip().lower()
    return kind == "application/json" or (kind.startswith("application/") and kind.endswith("+json"))


async def uploaded_image(request: Request, model: ServedModel, settings: Settings) -> torch.Tensor:
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
