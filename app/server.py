"""The HTTP server of `genserve serve`: uvicorn with httptools (or h11), with the settings' guards
against slow and idle clients.

uvicorn bounds only the idle time between two requests of a connection (`keep_alive_s`). It never
closes a connection that stops in the middle of a request's headers or body, so a few hundred of
them would hold the server's connections forever (slowloris). `GuardedHttpToolsProtocol` and
`GuardedH11Protocol` add the two deadlines nginx calls client_header_timeout and
client_body_timeout, and a bound on a request's head (`max_header_bytes`: 431, as nginx's
large_client_header_buffers) that holds however the head arrives: in one read or trickled.

uvicorn's own cap (`limit_concurrency`) counts idle keep-alive connections, so 512 pooled clients
that had each sent one request locked every new client out with a plain-text 503 for as long as
they idled. Here the cap on sockets makes room instead: past `max_connections` open connections,
each new one closes the connection idling longest between requests (as nginx reuses its keep-alive
connections), never one with a request begun. The cap on requests in flight, answered with the
service's JSON 503 and Retry-After, is the app's (`app.middleware.InFlightLimit`).

Each connection's transport is a `CoalescingTransport`: a response leaves in one send(), not two.

An answer that begins before the request's body has all come in (the 413 of a Content-Length past
the limit, the 503 at the cap, a 404) closes the connection after it (`Connection: close`), as
nginx does: the rest of the connection's bytes cannot be told from that body (a client waiting on
`Expect: 100-continue` sends its next request instead), and no second answer, such as the body
deadline's 408, is ever written after a response (issue 37).

httptools is the default parser: its C parser takes about 12 % off the server's CPU per request
at concurrency 32 against h11's pure Python (docs/benchmarks.md); `http_parser=h11` remains.
`genserve serve` builds it from its settings (`uvicorn_config`). Under the uvicorn command (say
with `--workers`), `--http app.server:GuardedHttpToolsProtocol` uses it with GENSERVE_HEADER_TIMEOUT_S,
GENSERVE_BODY_TIMEOUT_S and GENSERVE_MAX_HEADER_BYTES, read once per process; `--timeout-keep-alive`
and `--limit-concurrency` then carry the other two settings (`python -m app.server` prints them).
"""

from __future__ import annotations

import asyncio
import functools
import heapq
import itertools
import json
import re
import sys

import h11
import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from app.config import Settings, SettingsError, load_settings
from app.middleware import BASIC_SECURITY_HEADERS

HEADERS, BODY = "headers", "body"


class CoalescingTransport:
    """A connection's transport whose writes of one event-loop turn leave as one write.

    uvicorn writes a response's status line and headers, then its body, each with its own write,
    so each response is two send() calls and two TCP segments, and a client is woken, reads and
    parses twice per response. Held to the end of the turn, they leave together, as nginx sends a
    small answer: half the segments, and half the CPU per request of the lightest client; the
    requests/s measured within noise (docs/benchmarks.md). A write that brings `HOLD_BYTES` or more
    is sent at once, so that a large streamed body still meets the transport's flow control;
    closing sends what is held first, aborting drops it.
    """

    HOLD_BYTES = 64 * 1024

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._held: list[bytes] = []
        self._held_bytes = 0

    def write(self, data: bytes) -> None:
        if not self._held:
            self._loop.call_soon(self._flush)
        self._held.append(data)
        self._held_bytes += len(data)
        if self._held_bytes >= self.HOLD_BYTES:
            self._flush()

    def writelines(self, chunks) -> None:
        for chunk in chunks:
            self.write(chunk)

    def _flush(self) -> None:
        if not self._held:
            return
        data = self._held[0] if len(self._held) == 1 else b"".join(self._held)
        self._held.clear()
        self._held_bytes = 0
        if not self._transport.is_closing():  # a connection the peer closed takes nothing more
            self._transport.write(data)

    def close(self) -> None:
        self._flush()
        self._transport.close()

    def write_eof(self) -> None:
        self._flush()
        self._transport.write_eof()

    def abort(self) -> None:
        self._held.clear()
        self._held_bytes = 0
        self._transport.abort()

    def get_write_buffer_size(self) -> int:
        return self._transport.get_write_buffer_size() + self._held_bytes

    def __getattr__(self, name: str):  # the rest (reading, flow control, extra info) is the transport's
        return getattr(self._transport, name)


_RESPONSES = itertools.count(1)  # responses completed by this process, in order


class _Deadlines:
    """The read deadlines of a uvicorn protocol: a request's headers must be in within
    `header_timeout_s` of the connection's opening or of the request's first byte, and its body
    within `body_timeout_s` of the headers. A connection past one is closed, with a 408 when the
    app has not begun on the request. Each deadline is for the whole phase: a client trickling a
    byte at a time does not renew it. The parser's side calls `_set_phase` as the request moves;
    a connection starts in the headers phase."""

    header_timeout_s: float | None = None  # None: the GENSERVE_* settings of this process
    body_timeout_s: float | None = None
    max_header_bytes: int | None = None

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        if self.header_timeout_s is None or self.body_timeout_s is None or self.max_header_bytes is None:
            self.header_timeout_s, self.body_timeout_s, self.max_header_bytes = _limits_from_environment()
        self._deadline: asyncio.TimerHandle | None = None
        self._phase: str | None = None
        self._watched = None  # the last request cycle whose early answer closes the connection
        self._responded = 0  # when its last response completed, in `_RESPONSES`' order
        # The connection cap is kept here (see the module's docstring), not by uvicorn's check.
        self.max_connections, self.limit_concurrency = self.limit_concurrency, None

    def connection_made(self, transport: asyncio.Transport) -> None:
        super().connection_made(CoalescingTransport(transport, self.loop))
        self._set_phase(HEADERS)
        if self.max_connections is not None and len(self.connections) > self.max_connections:
            self._make_room()

    def _make_room(self) -> None:
        """Close the connections idling longest between requests until the open ones are within the
        cap. Idle means a response went out and not one byte of a next request came in (uvicorn's
        keep-alive timer runs): no request a client has sent is cut off."""
        open_connections = [c for c in self.connections if not c.transport.is_closing()]
        excess = len(open_connections) - self.max_connections
        idle = [c for c in open_connections if c.timeout_keep_alive_task is not None]
        # Ordered by a count, not by the keep-alive timers' deadlines: uvloop's clock ticks in
        # milliseconds, and two connections that went idle within one tie.
        for connection in heapq.nsmallest(excess, idle, key=lambda c: c._responded):
            connection.timeout_keep_alive_handler()  # uvicorn's own close of an idle connection

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._responded = next(_RESPONSES)

    def connection_lost(self, exc: Exception | None) -> None:
        self._set_phase(None)
        super().connection_lost(exc)

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
        cycle = self.cycle
        if self._phase == HEADERS:  # a request's head: answerable unless an earlier answer is still due
            unanswered = cycle is None or cycle.response_complete
        else:  # the body of `cycle`'s request: answerable unless it has been answered
            unanswered = not cycle.response_started
        if unanswered and not getattr(self, "pipeline", None):  # (httptools' queue of requests in line)
            self._refuse(408, "Request Timeout", f"the request's {self._phase} did not arrive in time")
        else:
            self.transport.close()  # never a second answer; the app, if it waits for the body, sees a disconnect

    def _watch_early_answer(self) -> None:
        """Make the current request's answer close the connection if it begins before the request's
        body is all in (see the module's docstring)."""
        cycle = self.cycle
        if cycle is None or cycle is self._watched:
            return
        self._watched = cycle
        send = cycle.send

        async def send_closing_if_unread(message) -> None:
            if message["type"] == "http.response.start" and cycle.more_body:
                message = {**message, "headers": [*message.get("headers", []), (b"connection", b"close")]}
            await send(message)
        cycle.send = send_closing_if_unread  # looked up when the request's task starts, after this

    def _refuse_large_head(self) -> None:
        self._set_phase(None)
        self._refuse(431, "Request Header Fields Too Large",
                     f"the request's headers are larger than {self.max_header_bytes} bytes")

    def _refuse(self, status: int, reason: str, detail: str) -> None:
        """Answer `status` as the app answers its errors (JSON {"detail": ...}, the security
        headers) and close: the app has not begun on the request."""
        body = json.dumps({"detail": detail}).encode()
        head = [f"HTTP/1.1 {status} {reason}", "content-type: application/json",
                f"content-length: {len(body)}", "connection: close",
                *(f"{name.decode()}: {value.decode()}" for name, value in BASIC_SECURITY_HEADERS)]
        self.transport.write("\r\n".join(head).encode() + b"\r\n\r\n" + body)
        self.transport.close()


class HeadTooLarge(Exception):
    """Raised inside the parser's callbacks: the head passed `max_header_bytes`."""


class GuardedHttpToolsProtocol(_Deadlines, HttpToolsProtocol):
    """uvicorn's httptools protocol with the read deadlines and a bound on a request's headers,
    counted twice: the bytes received while a head is incomplete (a head that never ends), and the
    parsed request line and headers (a whole head that came in one read)."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._header_bytes = 0
        self._parsed_head_bytes = 0
        self._head_too_large = False

    def on_url(self, url: bytes) -> None:
        self._count_parsed(len(url))
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._count_parsed(len(name) + len(value) + 4)  # ": " and CRLF
        super().on_header(name, value)

    def _count_parsed(self, size: int) -> None:
        self._parsed_head_bytes += size
        if self._parsed_head_bytes > self.max_header_bytes:
            self._head_too_large = True
            raise HeadTooLarge  # the parser stops; uvicorn answers through send_400_response

    def send_400_response(self, msg: str) -> None:
        if self._head_too_large:
            self._refuse_large_head()
        else:
            super().send_400_response(msg)

    def data_received(self, data: bytes) -> None:
        counted = self._phase == HEADERS
        if counted:
            self._header_bytes += len(data)
        super().data_received(data)
        if self._phase == HEADERS and not counted:  # a request began in this chunk
            self._header_bytes += len(data)
        # Still in the headers past the limit (a chunk that completes them is not counted against it).
        if self._phase == HEADERS and self._header_bytes > self.max_header_bytes and not self.transport.is_closing():
            self._refuse_large_head()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        if self._phase != HEADERS:
            self._header_bytes = 0
        self._parsed_head_bytes = 0
        self._set_phase(HEADERS)

    def on_headers_complete(self) -> None:
        super().on_headers_complete()
        self._watch_early_answer()
        self._header_bytes = 0
        self._set_phase(BODY)

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self._set_phase(None)  # the request is in: the app works on it, then the connection idles


# The end of a request's head: h11 takes a bare LF as a line end too.
HEAD_END = re.compile(rb"\r?\n\r?\n")


class GuardedH11Protocol(_Deadlines, H11Protocol):
    """uvicorn's h11 protocol with the read deadlines and a bound on a request's head (h11's own,
    `h11_max_incomplete_event_size`, bounds only a head still incomplete: a larger one that came
    whole in one read passed)."""

    def handle_events(self) -> None:
        if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
            buffered = self.conn.trailing_data[0]
            end = HEAD_END.search(buffered)
            if (end.end() if end else len(buffered)) > self.max_header_bytes:
                self._refuse_large_head()
                return
        super().handle_events()
        self._watch_early_answer()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        self._watch()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._watch()

    def _watch(self) -> None:
        """The phase the connection is now in, from h11's view of the client's side."""
        state = self.conn.their_state
        if state is h11.SEND_BODY:
            self._set_phase(BODY)
        elif state is h11.IDLE and self.conn.trailing_data[0]:  # part of the next request's headers
            self._set_phase(HEADERS)
        else:  # the request is in (the app works on it), or the connection idles between requests
            self._set_phase(None)


PROTOCOLS = {"httptools": GuardedHttpToolsProtocol, "h11": GuardedH11Protocol}  # by Settings.http_parser


@functools.cache
def _limits_from_environment() -> tuple[float, float, int]:
    settings = load_settings()
    return settings.header_timeout_s, settings.body_timeout_s, settings.max_header_bytes


def protocol_for(settings: Settings) -> type[_Deadlines]:
    """The settings' parser, guarded with their limits (uvicorn builds protocols from a class)."""
    base = PROTOCOLS[settings.http_parser]
    return type(base.__name__, (base,), {
        "header_timeout_s": settings.header_timeout_s, "body_timeout_s": settings.body_timeout_s,
        "max_header_bytes": settings.max_header_bytes})


def uvicorn_config(app, settings: Settings) -> uvicorn.Config:
    return uvicorn.Config(
        app, host=settings.host, port=settings.port, http=protocol_for(settings), log_config=None,
        log_level=settings.log_level, access_log=False, timeout_graceful_shutdown=settings.shutdown_grace_s,
        timeout_keep_alive=settings.keep_alive_s, limit_concurrency=settings.max_connections,
        h11_max_incomplete_event_size=settings.max_header_bytes)


def uvicorn_flags(settings: Settings) -> str:
    """The settings above as `uvicorn` command-line flags, for the container's multi-worker command
    (`uvicorn ... $(python -m app.server)`), so that it serves with the same guards."""
    return (f"--http app.server:{PROTOCOLS[settings.http_parser].__name__} "
            f"--timeout-graceful-shutdown {round(settings.shutdown_grace_s)} --timeout-keep-alive {settings.keep_alive_s} "
            f"--limit-concurrency {settings.max_connections} "
            f"--h11-max-incomplete-event-size {settings.max_header_bytes}")


if __name__ == "__main__":
    try:
        flags = uvicorn_flags(load_settings())
    except SettingsError as e:  # one line, and a failing status that stops the container's start
        sys.exit(f"genserve: error: {e}")
    print(flags)
