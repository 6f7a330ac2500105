"""Plain ASGI middleware: the request body limit, the cap on requests in flight, HEAD for every GET
route, security headers, and per-request metrics and the request log line."""

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


# Most values (separators , : [ {) a JSON body may hold. The largest valid body (MAX_LIST terms, each
# a MAX_VECTOR-long vector) holds about 66,000; parsing 100,000 takes some 40 ms. Past it a body is
# refused before anything parses it: json.loads and pydantic hold the GIL, so no thread would keep
# a huge one from stalling the event loop.
MAX_JSON_VALUES = 100_000
_SEPARATORS = (b",", b":", b"[", b"{")
# Most keys (colons) a JSON body may hold: the largest valid body has about 200 (MAX_LIST terms of
# three), and each unknown key is a validation error, which costs some 20 us to make.
MAX_JSON_KEYS = 512


class BodyLimit:
    """413 for a body over `max_bytes`: before reading any of it when Content-Length says so, else as
    soon as the bytes received pass the limit; and 413 for a JSON body of more than MAX_JSON_VALUES
    values or MAX_JSON_KEYS keys, counted as the chunks arrive. Answered as JSON {"detail": ...} like every other error
    (FastAPI's own limit answers a declared length in plain text)."""

    def __init__(self, app: ASGIApp, max_bytes: int):
        self.app = app
        self.max_bytes = max_bytes
        self.detail = f"the request body is larger than {max_bytes} bytes (max_body_bytes)"
        self.values_detail = f"the JSON body holds more than {MAX_JSON_VALUES} values"
        self.keys_detail = f"the JSON body holds more than {MAX_JSON_KEYS} keys"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        declared = headers.get("content-length", "")
        if declared.isdigit() and int(declared) > self.max_bytes:
            await JSONResponse({"detail": self.detail}, status_code=413)(scope, receive, send)
            return
        count_values = not headers.get("content-type", "").startswith("multipart/")
        received = values = keys = 0

        async def limited_receive() -> Message:
            nonlocal received, values, keys
            message = await receive()
            if message["type"] == "http.request":
                body = message.get("body", b"")
                received += len(body)
                if received > self.max_bytes:
                    raise HTTPException(413, self.detail)  # answered by the app's exception handler
                if count_values:
                    keys += body.count(b":")
                    values += sum(body.count(separator) for separator in _SEPARATORS)
                    if values > MAX_JSON_VALUES:
                        raise HTTPException(413, self.values_detail)
                    if keys > MAX_JSON_KEYS:
                        raise HTTPException(413, self.keys_detail)
            return message

        await self.app(scope, limited_receive, send)


class InFlightLimit:
    """At most `max_requests` requests in flight (being read, waiting for the worker, or being
    answered); past it a request is answered 503 with Retry-After at once, in the service's JSON
    like its other errors. The probes (health, readiness, metrics) are not counted and never
    refused: a saturated server is still alive, and says so."""

    def __init__(self, app: ASGIApp, max_requests: int, exempt: tuple[str, ...], retry_after_s: int):
        self.app = app
        self.max_requests = max_requests
        self.exempt = exempt
        self.in_flight = 0
        self.refusal = JSONResponse({"detail": f"the server has {max_requests} requests in flight "
                                               "(max_connections); retry later"},
                                    status_code=503, headers={"Retry-After": str(retry_after_s)})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in self.exempt:
            await self.app(scope, receive, send)
            return
        if self.in_flight >= self.max_requests:
            await self.refusal(scope, receive, send)
            return
        self.in_flight += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.in_flight -= 1


class HeadAsGet:
    """HEAD on every GET route, as HTTP asks of a server (monitors and CDNs check with it): the
    GET's status and headers, Content-Length included, without the body. A route that has no GET
    answers 405 as it would to GET."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "HEAD":
            await self.app(scope, receive, send)
            return

        async def send_head(message: Message) -> None:
            if message["type"] == "http.response.body":
                if message.get("more_body", False):
                    return
                message = {"type": "http.response.body", "body": b"", "more_body": False}
            await send(message)

        await self.app({**scope, "method": "GET"}, receive, send_head)


# The demo page loads only its own scripts, styles and images (PNGs come back as blob: and data: URLs),
# and no other site may frame it.
PAGE_POLICY = ("default-src 'self'; img-src 'self' data: blob:; object-src 'none'; base-uri 'none'; "
               "form-action 'self'; frame-ancestors 'none'")
# Swagger UI's page starts itself with an inline script and sets inline styles; its assets are local.
DOCS_POLICY = ("default-src 'self'; script-src 'self' 'unsafe-inline'; style-src 'self' 'unsafe-inline'; "
               "img-src 'self' data:; object-src 'none'; base-uri 'none'; frame-ancestors 'none'")

# Every answer's, the server's own refusals (408, 431) included.
BASIC_SECURITY_HEADERS = [(b"x-content-type-options", b"nosniff"), (b"referrer-policy", b"no-referrer"),
                          (b"x-frame-options", b"DENY")]


class SecurityHeaders:
    """On every answer: no MIME sniffing, no referrer, no framing (CSP frame-ancestors and, for old
    browsers, X-Frame-Options), and a Content-Security-Policy: `DOCS_POLICY` under `docs_path`,
    `PAGE_POLICY` elsewhere."""

    def __init__(self, app: ASGIApp, docs_path: str):
        self.app = app
        self.docs_path = docs_path
        self.page_headers = BASIC_SECURITY_HEADERS + [(b"content-security-policy", PAGE_POLICY.encode())]
        self.docs_headers = BASIC_SECURITY_HEADERS + [(b"content-security-policy", DOCS_POLICY.encode())]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        extra = self.docs_headers if scope["path"].startswith(self.docs_path) else self.page_headers

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), *extra]}
            await send(message)

        await self.app(scope, receive, send_with_headers)


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
        self.metrics.in_progress += 1

        async def send_and_note(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_note)
        finally:
            self.metrics.in_progress -= 1
            elapsed = time.perf_counter() - started
            # Label by route template and by known model names only, so clients cannot grow the label set.
            endpoint = getattr(scope.get("route"), "path", "unmatched")
            name = scope.get("path_params", {}).get("name")
            model = name if name in self.registry.models else ""
            self.metrics.requests.labels(endpoint, model, str(status)).inc()
            self.metrics.latency.labels(endpoint, model).observe(elapsed)
            log.info("request", extra={"method": scope["method"], "path": scope["path"], "status": status,
                                       "model": model, "duration_ms": round(elapsed * 1000, 2)})
