"""The service's errors and how each is answered: a clear 4xx (or 503/504), never a stray 500."""

from __future__ import annotations

import logging
import math

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response

from app.registry import UnknownModel
from app.worker import InferenceTimeout, QueueFull

log = logging.getLogger("genserve.errors")

RETRY_AFTER_S = 1
# An error reply stays small whatever the body was: the first MAX_ERRORS errors, and of each input
# only ECHO_LIMIT characters of a string, ECHO_ITEMS items of a list or object, ECHO_DEPTH levels.
MAX_ERRORS = 20
ECHO_LIMIT = 200
ECHO_ITEMS = 10
ECHO_DEPTH = 3


class InputError(Exception):
    """Input that passed the schema but not the model (a vector of the wrong length, an unknown
    class, an unreadable image...): answered 422 in the same shape as FastAPI's schema errors."""

    def __init__(self, loc: tuple | list, msg: str):
        super().__init__(msg)
        self.loc = list(loc)
        self.msg = msg


class CapabilityError(Exception):
    """The model cannot do what was asked: answered 400."""


class ClientDisconnected(Exception):
    """The client went away while its request waited; nobody reads the answer."""


def json_safe(value, depth: int = 0):
    """A small, JSON-serialisable copy of an error's input: non-finite floats and bytes as strings,
    long strings, lists and objects cut (never echoed whole), nesting cut at ECHO_DEPTH."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, (bytes, bytearray)):
        return f"<{len(value)} bytes>"
    if isinstance(value, str) and len(value) > ECHO_LIMIT:
        return value[:ECHO_LIMIT] + "..."
    if isinstance(value, (dict, list, tuple)) and depth >= ECHO_DEPTH:
        return f"<{type(value).__name__} of {len(value)} items>"
    if isinstance(value, dict):
        items = list(value.items())
        cut = {str(k)[:ECHO_LIMIT]: json_safe(v, depth + 1) for k, v in items[:ECHO_ITEMS]}
        if len(items) > ECHO_ITEMS:
            cut["..."] = f"{len(items) - ECHO_ITEMS} more items"
        return cut
    if isinstance(value, (list, tuple)):
        cut = [json_safe(v, depth + 1) for v in value[:ECHO_ITEMS]]
        return cut + [f"... {len(value) - ECHO_ITEMS} more items"] if len(value) > ECHO_ITEMS else cut
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)[:ECHO_LIMIT]


def capped_errors(errors: list[dict]) -> list[dict]:
    """The first MAX_ERRORS validation errors, made small and safe, and a last one saying how many
    more there were."""
    shown = [{key: json_safe(value) for key, value in error.items() if key != "url"} for error in errors[:MAX_ERRORS]]
    if len(errors) > MAX_ERRORS:
        shown.append({"type": "too_many_errors", "loc": ["body"],
                      "msg": f"{len(errors) - MAX_ERRORS} more errors not shown"})
    return shown


def _detail(status: int, detail, headers: dict | None = None) -> JSONResponse:
    return JSONResponse({"detail": detail}, status_code=status, headers=headers)


async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    # FastAPI's own handler would serialise NaN from the input with allow_nan=False: a 500.
    return _detail(422, capped_errors(exc.errors()))


async def _input_error(request: Request, exc: InputError) -> JSONResponse:
    return _detail(422, [{"type": "value_error", "loc": exc.loc, "msg": exc.msg}])


async def _capability_error(request: Request, exc: CapabilityError) -> JSONResponse:
    return _detail(400, str(exc))


async def _unknown_model(request: Request, exc: UnknownModel) -> JSONResponse:
    return _detail(404, exc.args[0])


async def _queue_full(request: Request, exc: QueueFull) -> JSONResponse:
    return _detail(503, f"{exc}; retry later", headers={"Retry-After": str(RETRY_AFTER_S)})


async def _timeout(request: Request, exc: InferenceTimeout) -> JSONResponse:
    return _detail(504, str(exc))


async def _disconnected(request: Request, exc: ClientDisconnected) -> Response:
    return Response(status_code=499)  # nginx's "client closed request"; nobody receives it


async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    log.error("unhandled error", exc_info=exc, extra={"path": request.url.path})
    return _detail(500, "internal server error")


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(InputError, _input_error)
    app.add_exception_handler(CapabilityError, _capability_error)
    app.add_exception_handler(UnknownModel, _unknown_model)
    app.add_exception_handler(QueueFull, _queue_full)
    app.add_exception_handler(InferenceTimeout, _timeout)
    app.add_exception_handler(ClientDisconnected, _disconnected)
    app.add_exception_handler(Exception, _unexpected)
