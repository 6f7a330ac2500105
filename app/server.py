"""The HTTP server of `genserve serve`: uvicorn (h11), with the settings' guards against slow and idle
clients.

uvicorn bounds only the idle time between two requests of a connection (`keep_alive_s`). It never
closes a connection that stops in the middle of a request's headers or body, so a few hundred of
them would hold the server's connections forever (slowloris). `GuardedH11Protocol` adds the two
deadlines nginx calls client_header_timeout and client_body_timeout.

`genserve serve` builds it from its settings (`uvicorn_config`). Under the uvicorn command (say with
`--workers`), `--http app.server:GuardedH11Protocol` uses it with GENSERVE_HEADER_TIMEOUT_S and
GENSERVE_BODY_TIMEOUT_S, read once per process; `--timeout-keep-alive`, `--limit-concurrency` and
`--h11-max-incomplete-event-size` then carry the other three settings.
"""

from __future__ import annotations

import asyncio
import functools

import h11
import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from app.config import Settings

HEADERS, BODY = "headers", "body"


class GuardedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with read deadlines: a request's headers must be in within
    `header_timeout_s` of the connection's opening or of the request's first byte, and its body
    within `body_timeout_s` of the headers. A connection past one is closed, with a 408 when the
    app has not begun on the request. Each deadline is for the whole phase: a client trickling a
    byte at a time does not renew it."""

    header_timeout_s: float | None = None  # None: the GENSERVE_* settings of this process
    body_timeout_s: float | None = None

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        if self.header_timeout_s is None or self.body_timeout_s is None:
            self.header_timeout_s, self.body_timeout_s = _deadlines_from_environment()
        self._deadline: asyncio.TimerHandle | None = None
        self._phase: str | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:
        super().connection_made(transport)
        self._set_phase(HEADERS)

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        self._watch()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._watch()

    def connection_lost(self, exc: Exception | None) -> None:
        self._set_phase(None)
        super().connection_lost(exc)

    def _watch(self) -> None:
        """The phase the connection is now in, from h11's view of the client's side."""
        state = self.conn.their_state
        if state is h11.SEND_BODY:
            self._set_phase(BODY)
        elif state is h11.IDLE and self.conn.trailing_data[0]:  # part of the next request's headers
            self._set_phase(HEADERS)
        else:  # the request is in (the app works on it), or the connection idles between requests
            self._set_phase(None)

    def _set_phase(self, phase: str | None) -> None:
        if phase == self._phase:
            return  # the deadline runs on: it is for the whole phase
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None
        self._phase = phase
        if phase is not None and not self.transport.is_closing():
            timeout = self.header_timeout_s if phase == HEADERS else self.body_timeout_s
            self._deadline = self.loop.call_later(timeout, self._expired)

    def _expired(self) -> None:
        self._deadline = None
        if self.transport.is_closing():
            return
        if self.cycle is None or self.cycle.response_complete or not self.cycle.response_started:
            self._send_408()
        self.transport.close()  # the app, if it waits for the body, sees a disconnect

    def _send_408(self) -> None:
        body = f"the request's {self._phase} did not arrive in time\n".encode()
        headers = [(b"content-type", b"text/plain; charset=utf-8"), (b"content-length", str(len(body)).encode()),
                   (b"connection", b"close")]
        try:
            response = h11.Response(status_code=408, headers=headers, reason=b"Request Timeout")
            self.transport.write(self.conn.send(response) + self.conn.send(h11.Data(data=body))
                                 + self.conn.send(h11.EndOfMessage()))
        except h11.LocalProtocolError:
            pass  # h11 cannot answer in this state; closing is answer enough


@functools.cache
def _deadlines_from_environment() -> tuple[float, float]:
    settings = Settings()
    return settings.header_timeout_s, settings.body_timeout_s


def protocol_for(settings: Settings) -> type[GuardedH11Protocol]:
    """GuardedH11Protocol with the settings' deadlines (uvicorn builds protocols from a class)."""
    return type("GuardedH11Protocol", (GuardedH11Protocol,), {
        "header_timeout_s": settings.header_timeout_s, "body_timeout_s": settings.body_timeout_s})


def uvicorn_config(app, settings: Settings) -> uvicorn.Config:
    return uvicorn.Config(
        app, host=settings.host, port=settings.port, http=protocol_for(settings), log_config=None,
        log_level=settings.log_level, access_log=False, timeout_graceful_shutdown=settings.shutdown_grace_s,
        timeout_keep_alive=settings.keep_alive_s, limit_concurrency=settings.max_connections,
        h11_max_incomplete_event_size=settings.max_header_bytes)


def uvicorn_flags(settings: Settings) -> str:
    """The settings above as `uvicorn` command-line flags, for the container's multi-worker command
    (`uvicorn ... $(python -m app.server)`), so that it serves with the same guards."""
    return (f"--http app.server:GuardedH11Protocol --timeout-graceful-shutdown {round(settings.shutdown_grace_s)} "
            f"--timeout-keep-alive {settings.keep_alive_s} --limit-concurrency {settings.max_connections} "
            f"--h11-max-incomplete-event-size {settings.max_header_bytes}")


if __name__ == "__main__":
    print(uvicorn_flags(Settings()))
