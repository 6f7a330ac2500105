"""Samples as Server-Sent Events (`Accept: text/event-stream` on POST .../samples).

Both answers of a samples request run the same plan (`plans.plan_samples`). A model whose sampler
reports as it goes ("stream" among its capabilities: PixelCNN and PixelRNN by rows, diffusion by
denoising steps) runs the plan's job with an `on_progress` hand-over: its sampler passes each row
or step from the worker thread to the event loop, where it is sent as a `progress` event with the
grid so far ({"row": i, "rows": n} or {"step": i, "steps": n}, as the family's `progress_unit` says). So the stream costs what the
plain answer costs and ends in the same pixels. A client that goes away cancels the stream
(Starlette cancels the generator): a job still queued is withdrawn, and a running one stops after
its current row or step. That job is only started (`Plan.start`), not run with `Jobs.run`'s disconnect
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
        events = _progress(jobs, plan)
    else:
        images = await plan.run(jobs)
        events = _single(grid_png(images, plan.nrow))
    return StreamingResponse(_reporting_errors(events), media_type=EVENT_STREAM, headers=headers)


async def _single(png: bytes) -> AsyncIterator[str]:
    yield event("done", {"image": _base64(png)})


async def _progress(jobs: Jobs, plan: ImagePlan) -> AsyncIterator[str]:
    loop = asyncio.get_running_loop()
    # The rows (steps) in order, then None once the job is done: the worker hands each over with
    # call_soon_threadsafe before it settles the job, so they are queued before the None.
    finished: asyncio.Queue[tuple[int, torch.Tensor] | None] = asyncio.Queue()
    listening = True

    def on_progress(row: int, images: torch.Tensor) -> bool:
        """In the worker thread: a copy of the images so far to the event loop; False stops the
        sampling once nobody listens."""
        if listening:
            loop.call_soon_threadsafe(finished.put_nowait, (row, images.to("cpu", torch.float32, copy=True)))
        return listening

    job = plan.start(jobs, on_progress=on_progress)
    job.add_done_callback(lambda _: finished.put_nowait(None))
    module, nrow = plan.model.module, plan.nrow
    unit, count = module.progress_unit, module.progress_count(plan.params.get("steps"))
    try:
        while (item := await finished.get()) is not None:
            row, images = item
            yield event("progress", {unit: row, f"{unit}s": count, "image": _base64(grid_png(images, nrow))})
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
