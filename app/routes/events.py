"""Samples as Server-Sent Events (`Accept: text/event-stream` on POST .../samples).

Both answers of a samples request run the same plan (`plans.plan_samples`). A model that
samples row by row ("stream" among its capabilities: PixelCNN, PixelRNN) runs the plan's job with
an `on_row` hand-over: its sampler's worker thread draws each finished row's `progress` event
(the grid so far) and passes it to the event loop, which sends it. So the stream costs what the
plain answer costs and ends in the same pixels. A client that goes away cancels the stream
(Starlette cancels the generator): a job still queued is withdrawn, and a running one stops after
its current row. That job is only started (`Plan.start`), not run with `Jobs.run`'s disconnect
watch, which would read the connection beside the streaming response's own. Other models answer
one `done` event with the plain answer's PNG.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
from typing import AsyncIterator

import torch
from fastapi.responses import StreamingResponse

from app.imaging import grid_png
from app.routes.jobs import Jobs
from app.routes.plans import ImagePlan
from app.routes.responses import EVENT_STREAM
from app.worker import InferenceTimeout, QueueFull

log = logging.getLogger("genserve.events")

# Proxies (nginx) must pass each event on at once rather than buffer the stream.
STREAM_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


def event(name: str, data: dict) -> str:
    return f"event: {name}\ndata: {json.dumps(data)}\n\n"


def _base64(png: bytes) -> str:
    return base64.b64encode(png).decode("ascii")


async def sample_events(jobs: Jobs, plan: ImagePlan) -> StreamingResponse:
    """The event stream of a samples request's plan (checked: nothing here is a 4xx)."""
    headers = {**STREAM_HEADERS, "X-Seed": str(plan.seed)}
    if "stream" in plan.model.capabilities:
        events = _rows(jobs, plan)
    else:
        images = await plan.run(jobs)
        events = _single(grid_png(images, plan.nrow))
    return StreamingResponse(_reporting_errors(events), media_type=EVENT_STREAM, headers=headers)


async def _single(png: bytes) -> AsyncIterator[str]:
    yield event("done", {"image": _base64(png)})


async def _rows(jobs: Jobs, plan: ImagePlan) -> AsyncIterator[str]:
    loop = asyncio.get_running_loop()
    # The rows' events in order, then None once the job is done: the worker hands each one over
    # with call_soon_threadsafe before it settles the job, so they are queued before the None.
    finished: asyncio.Queue[str | None] = asyncio.Queue()
    listening = True
    rows, nrow = plan.model.image_shape[1], plan.nrow

    def on_row(row: int, images: torch.Tensor) -> bool:
        """In the worker thread: the row's event, drawn and encoded here, to the event loop, which
        only writes it (drawn there, each frame would hold the GIL that the sampler waits for
        between its steps); False stops the sampling once nobody listens."""
        if listening:
            frame = _base64(grid_png(images.to("cpu", torch.float32), nrow))
            loop.call_soon_threadsafe(finished.put_nowait, event("progress", {"row": row, "rows": rows, "image": frame}))
        return listening

    job = plan.start(jobs, on_row=on_row)
    job.add_done_callback(lambda _: finished.put_nowait(None))
    try:
        while (progress := await finished.get()) is not None:
            yield progress
        yield event("done", {"image": _base64(grid_png(job.result(), nrow))})
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
