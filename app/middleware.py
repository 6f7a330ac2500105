"""Plain ASGI middleware: the request body limit, and per-request metrics and the request log line."""

from __future__ import annotations

import logging
import time

from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.metrics import Metrics
from app.registry import Registry

log = logging.getLogger("genserve.http")


class BodyLimit:
    """413 for a body over `max_bytes`: before reading any of it when Content-Length says so, else as
    soon as the bytes received pass the limit. Answered as JSON {"detail": ...} like every other
    error (FastAPI's own limit answers a declared length in plain text)."""

    def __init__(self, app: ASGIApp, max_bytes: int):
        self.app = app
        self.max_bytes = max_bytes
        self.detail = f"the request body is larger than {max_bytes} bytes (max_body_bytes)"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = Headers(scope=scope).get("content-length", "")
        if declared.isdigit() and int(declared) > self.max_bytes:
            await JSONResponse({"detail": self.detail}, status_code=413)(scope, receive, send)
            return
        received = 0

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise HTTPException(413, self.detail)  # answered by the app's exception handler
            return message

        await self.app(scope, limited_receive, send)


class RequestMetrics:
    def __init__(self, app: ASGIApp, metrics: Metrics, registry: Registry):
        self.app = app
        self.metrics = metrics
        self.registry = registry

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500  # what the client gets if the app fails before answering

        async def send_and_note(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_note)
        finally:
            elapsed = time.perf_counter() - started
            # Label by route template and by known model names only, so clients cannot grow the label set.
            endpoint = getattr(scope.get("route"), "path", "unmatched")
            name = scope.get("path_params", {}).get("name")
            model = name if name in self.registry.models else ""
            self.metrics.requests.labels(endpoint, model, str(status)).inc()
            self.metrics.latency.labels(endpoint, model).observe(elapsed)
            log.info("request", extra={"method": scope["method"], "path": scope["path"], "status": status,
                                       "model": model, "duration_ms": round(elapsed * 1000, 2)})
