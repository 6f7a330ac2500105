"""Per-request metrics and the request log line, as plain ASGI middleware (it never touches the body)."""

from __future__ import annotations

import logging
import time

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.metrics import Metrics
from app.registry import Registry

log = logging.getLogger("genserve.http")


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
