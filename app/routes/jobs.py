"""How a request's work reaches the worker: `Jobs`, one per request (the `JobsDep` dependency)."""

from __future__ import annotations

import asyncio

import torch
from fastapi import Request

from app.errors import ClientDisconnected
from app.operations import Operation
from app.registry import ServedModel
from app.worker import Worker


class Jobs:
    """The request's way to the worker. Every job goes through `start`; `run` adds the watch on
    the client, which an event stream leaves to its streaming response (two readers of one
    connection would take each other's messages)."""

    def __init__(self, worker: Worker, request: Request):
        self.worker = worker
        self.request = request

    def start(self, model: ServedModel, operation: Operation, *inputs: torch.Tensor | None,
              **params) -> asyncio.Future[torch.Tensor]:
        """Queue one job; cancelling the future withdraws it (or, begun, abandons its result)."""
        return asyncio.ensure_future(self.worker.run(model, operation, *inputs, **params))

    async def run(self, model: ServedModel, operation: Operation, *inputs: torch.Tensor | None,
                  **params) -> torch.Tensor:
        """Run one job; give it up (so it never runs) if the client disconnects first."""
        job = self.start(model, operation, *inputs, **params)
        gone = asyncio.ensure_future(self._client_gone())
        try:
            done, _ = await asyncio.wait({job, gone}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            job.cancel()  # no-op when done; otherwise abandons the job
            gone.cancel()
        if job in done:
            return job.result()
        gone.result()  # raises what broke the receive channel, if anything did
        raise ClientDisconnected()

    async def _client_gone(self) -> None:
        """Returns when the client disconnects (the body has been read, so nothing else arrives)."""
        while (await self.request.receive())["type"] != "http.disconnect":
            pass
