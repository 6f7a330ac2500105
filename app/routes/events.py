"""Samples as Server-Sent Events (`Accept: text/event-stream` on POST .../samples).

A model that samples row by row ("stream" among its capabilities: PixelCNN, PixelRNN) runs one
sampling job, the very job of the plain answer, whose sampler hands each finished row from the
worker thread to the event loop, where it is sent as a `progress` event with the grid so far. So
the stream costs what the plain answer costs (its sampler state is built once, not once per row)
and ends in the same pixels. A client that goes away cancels the stream (Starlette cancels the
generator): a job still queued is withdrawn, and a running one stops after its current row. The
worker is taken directly, not through `deps.infer`, since the streaming response itself watches
the connection for the disconnect. Other models answer one `done` event with the plain answer's PNG.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
from typing import AsyncIterator, Awaitable, Callable

import torch
from fastapi import Request, Response
from fastapi.responses import StreamingResponse

from app import latents
from app.imaging import grid_png
from app.operations import SAMPLE_PIXELS
from app.registry import ServedModel
from app.routes.deps import IMAGE_RESPONSES
from app.schemas import SamplesRequest
from app.worker import InferenceTimeout, QueueFull

log = logging.getLogger("genserve.events")

EVENT_STREAM = "text/event-stream"
SAMPLES_RESPONSES = {**IMAGE_RESPONSES, 200: {
    **IMAGE_RESPONSES[200],
    "description": "A PNG grid; with ?format=json the images one by one; with Accept: text/event-stream, "
                   "Server-Sent Events: `progress` {row, rows, image} per row (row-by-row models), then `done` {image}",
    "content": {"image/png": {"schema": {"type": "string", "format": "binary"}},
                EVENT_STREAM: {"schema": {"type": "string"}}}}}
# Proxies (nginx) must pass each event on at once rather than buffer the stream.
STREAM_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


def event(name: str, data: dict) -> str:
    return f"event: {name}\ndata: {json.dumps(data)}\n\n"


def _base64(png: bytes) -> str:
    return base64.b64encode(png).decode("ascii")


async def sample_events(request: Request, model: ServedModel, body: SamplesRequest,
                        plain: Callable[[], Awaitable[Response]]) -> StreamingResponse:
    """The event stream of a samples request whose seed is set; `plain` answers it as a PNG.
    Everything that can be refused with a 4xx is checked before the stream starts."""
    headers = {**STREAM_HEADERS, "X-Seed": str(body.seed)}
    if "stream" in model.capabilities:
        label = latents.class_index(model, body.class_, ["body", "class"]) if body.class_ else None
        noise, labels = latents.pixel_noise(model, range(body.seed, body.seed + body.n), label)
        events = _rows(request, model, noise, labels, body)
    else:
        events = _single(await plain())
    return StreamingResponse(_reporting_errors(events), media_type=EVENT_STREAM, headers=headers)


async def _single(response: Response) -> AsyncIterator[str]:
    yield event("done", {"image": _base64(response.body)})


async def _rows(request: Request, model: ServedModel, noise: torch.Tensor, labels: torch.Tensor | None,
                body: SamplesRequest) -> AsyncIterator[str]:
    loop = asyncio.get_running_loop()
    # The rows in order, then None once the job is done: the worker hands each row over with
    # call_soon_threadsafe before it settles the job, so the rows are queued before the None.
    finished: asyncio.Queue[tuple[int, torch.Tensor] | None] = asyncio.Queue()
    listening = True

    def on_row(row: int, images: torch.Tensor) -> bool:
        """In the worker thread: a copy of the images so far to the event loop; False stops the
        sampling once nobody listens."""
        if listening:
            loop.call_soon_threadsafe(finished.put_nowait, (row, images.to("cpu", torch.float32, copy=True)))
        return listening

    job = asyncio.ensure_future(request.app.state.worker.run(
        model, SAMPLE_PIXELS, noise, labels, temperature=body.temperature, on_row=on_row))
    job.add_done_callback(lambda _: finished.put_nowait(None))
    rows = model.image_shape[1]
    try:
        while (item := await finished.get()) is not None:
            row, images = item
            yield event("progress", {"row": row, "rows": rows, "image": _base64(grid_png(images, body.nrow))})
        yield event("done", {"image": _base64(grid_png(job.result(), body.nrow))})
    finally:
        listening = False
        job.cancel()


async def _reporting_errors(events: AsyncIterator[str]) -> AsyncIterator[str]:
    """Once the stream has begun a failure can no longer be a status code: it becomes an `error` event."""
    try:
        async for chunk in events:
            yield chunk
    except (QueueFull, InferenceTimeout) as e:
        yield event("error", {"detail": str(e)})
    except Exception:
        log.exception("event stream failed")
        yield event("error", {"detail": "internal server error"})
