"""Slow and idle clients against a real `genserve serve` (issue 14): connections that stop inside
their headers or body are answered 408 and closed at the deadlines of the settings; an idle
keep-alive connection stays open longer than clients keep theirs (so that a request a client sends
on it is never lost, finding 5); heads past `max_header_bytes` are refused 431 however they arrive;
past `max_connections` idle connections make room for new clients (issue 28); an answer sent
before the request's body was read closes its connection, and nothing is written after an answer
(issue 37). The guards sit in uvicorn's parsers' protocols, so each runs with both. No clock is
read: each wait is for the server to answer or close, under the socket's timeout."""

from __future__ import annotations

import select
import socket

import httpx
import pytest

from app.config import Settings
from app.server import uvicorn_config
from bench.process import running_server
from tests.app.apptest import THREADS, metric, until

HEALTHZ = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
# How long httpx keeps an idle connection for reuse; a server that closes one sooner races the client.
HTTPX_KEEPALIVE_EXPIRY_S = 5.0


def _read_all(conn: socket.socket) -> bytes:
    """Everything until the server closes the connection (the socket's timeout bounds the wait)."""
    data = b""
    while chunk := conn.recv(4096):
        data += chunk
    return data


def _response(conn: socket.socket) -> bytes:
    """One whole response (headers and a Content-Length body) read off a kept-alive connection."""
    data = b""
    while b"\r\n\r\n" not in data:
        data += conn.recv(4096) or pytest.fail(f"closed after {data!r}")
    head, _, body = data.partition(b"\r\n\r\n")
    [length] = [int(line.split(b":")[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length")]
    while len(body) < length:
        body += conn.recv(4096) or pytest.fail("closed inside the body")
    return head + b"\r\n\r\n" + body


PARSERS = pytest.mark.parametrize("parser", ["httptools", "h11"])


@pytest.fixture(scope="module", params=["httptools", "h11"])
def capped_server(request, weights_dir, tmp_path_factory):
    """A server of each parser with one request in flight at most, a 2 s body deadline and 2 KiB of
    headers, shared by the tests that open one connection at a time."""
    log = tmp_path_factory.mktemp("capped") / "server.log"
    with running_server(weights_dir, log, threads=THREADS, max_connections=1, body_timeout_s=2, max_header_bytes=2048,
                        http_parser=request.param) as server:
        yield server


def _answered_before_the_trickle_ends(conn: socket.socket, trickle: bytes) -> bytes:
    """Send `trickle` a byte at a time, each while the server has said nothing; return what the
    server sends (and closes with) as soon as it does, or fail when the trickle runs out first."""
    for byte in trickle:
        try:
            conn.sendall(bytes([byte]))
        except OSError:
            break  # closed under us: what the deadline does
        if select.select([conn], [], [], TRICKLE_PACE_S)[0]:  # paces the trickle, and watches for the answer
            break
    else:
        pytest.fail("the connection outlived a trickle 60 times its header deadline: each byte renewed it")
    return _read_all(conn)


# A byte every 0.1 s: ten times within the 1 s header deadline, so a deadline that each byte renewed
# would never expire while the trickle lasts (600 bytes).
TRICKLE_PACE_S, TRICKLE = 0.1, b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 560


@PARSERS
def test_stalled_trickled_and_idle_connections_are_closed_at_their_deadlines(serve, parser):
    with serve(header_timeout_s=1, body_timeout_s=1, keep_alive_s=1, http_parser=parser) as server:
        stalled = []
        for i in range(40):
            conn = socket.create_connection(server.address, timeout=60)
            if i % 2:
                conn.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: ")  # headers never end
            else:
                conn.sendall(b"POST /v1/models/dcgan/samples HTTP/1.1\r\nHost: x\r\nContent-Type: application/json"
                             b"\r\nContent-Length: 100\r\n\r\n{")  # 1 byte of a 100-byte body
            stalled.append(conn)
        silent = socket.create_connection(server.address, timeout=60)  # sends nothing at all
        assert httpx.get(server.url + "/healthz").status_code == 200  # others are served meanwhile
        for conn in [*stalled, silent]:
            reply = _read_all(conn)  # returns only because the server closed the connection
            assert reply.startswith(b"HTTP/1.1 408 "), reply[:100]
            conn.close()
        with socket.create_connection(server.address, timeout=60) as conn:  # the header deadline is for
            reply = _answered_before_the_trickle_ends(conn, TRICKLE)  # the whole head, not per byte
            assert reply.startswith(b"HTTP/1.1 408 "), reply[:100]
        with socket.create_connection(server.address, timeout=60) as conn:
            conn.sendall(HEALTHZ)
            assert _response(conn).startswith(b"HTTP/1.1 200 ")
            assert _read_all(conn) == b"", "idle past keep_alive_s, closed without a word"
        assert httpx.post(server.url + "/v1/models/dcgan/samples", json={"n": 1}).status_code == 200


def test_headers_past_max_header_bytes_are_refused_and_the_next_request_is_served(capped_server):
    server = capped_server
    with socket.create_connection(server.address, timeout=60) as conn:
        conn.sendall(HEALTHZ)  # the limit holds for a kept-alive connection's next request too
        assert _response(conn).startswith(b"HTTP/1.1 200 ")
        conn.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        try:
            for _ in range(64):  # 64 KiB of headers, sent as a client would, never ending
                conn.sendall(b"X-Padding: " + b"a" * 1010 + b"\r\n")
        except OSError:
            pass  # closed under us: the limit did it
        try:
            reply = _read_all(conn)
        except ConnectionResetError:  # closed with our headers unread: the reply went with them
            reply = b"reset"
        # Without a limit the server would wait for the headers' end: a 408 after header_timeout_s.
        assert reply.startswith((b"HTTP/1.1 431 ", b"reset")), reply[:100]
    with socket.create_connection(server.address, timeout=60) as conn:  # headers just under it pass
        conn.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Padding: " + b"a" * 1500 + b"\r\n\r\n")
        assert _response(conn).startswith(b"HTTP/1.1 200 ")


def test_an_idle_keep_alive_connection_outlives_the_clients_own_idle_expiry():
    """Finding 5: with uvicorn's default (5 s, exactly httpx's pool expiry) a pooled connection was
    closed by the server just as the client sent its next request on it, which was lost (ReadError,
    never reaching the app). The server keeps idle connections for keep_alive_s (its use by a real
    server: the test above), longer than clients keep theirs."""
    settings = Settings()
    assert settings.keep_alive_s > 2 * HTTPX_KEEPALIVE_EXPIRY_S
    assert uvicorn_config(None, settings).timeout_keep_alive == settings.keep_alive_s


@PARSERS
def test_idle_keep_alive_connections_give_way_to_new_clients(serve, parser):
    """Issue 28, finding 1: pooled clients idling on every connection used to lock new clients out
    with 503s. Past the cap, each new connection closes the one idling longest; a connection
    whose request has begun is never closed."""
    with serve(max_connections=3, http_parser=parser) as server:
        busy = socket.create_connection(server.address, timeout=60)
        busy.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")  # a request begun, its headers unfinished
        idle = []
        for _ in range(2):
            conn = socket.create_connection(server.address, timeout=60)
            conn.sendall(HEALTHZ)
            assert _response(conn).startswith(b"HTTP/1.1 200 ")
            idle.append(conn)
        newcomers = []
        try:
            for path in (b"/healthz", b"/v1/models"):  # at the cap, new clients (which stay) are served
                newcomers.append(conn := socket.create_connection(server.address, timeout=60))
                conn.sendall(b"GET " + path + b" HTTP/1.1\r\nHost: x\r\n\r\n")
                assert _response(conn).startswith(b"HTTP/1.1 200 "), path
            assert all(_read_all(conn) == b"" for conn in idle)  # the idle ones made room, oldest first
            busy.sendall(b"\r\n")  # and the begun request completes on its connection
            assert _response(busy).startswith(b"HTTP/1.1 200 ")
            newcomers[-1].sendall(HEALTHZ)  # as does the newest idle one, still open
            assert _response(newcomers[-1]).startswith(b"HTTP/1.1 200 ")
        finally:
            for conn in [busy, *idle, *newcomers]:
                conn.close()


def test_a_head_past_the_limit_is_431_even_when_it_comes_in_one_read(capped_server):
    """Issue 28, finding 3: a whole head that came in one read used to pass the limit."""
    heads = [b"GET /v1/models/dcgan/samples.png?" + b"a" * 65536 + b" HTTP/1.1\r\nHost: x\r\n\r\n",
             b"GET /healthz HTTP/1.1\r\n" + b"".join(b"X-%d: 1\r\n" % i for i in range(8000)) + b"\r\n"]
    for head in heads:
        with socket.create_connection(capped_server.address, timeout=60) as conn:
            conn.sendall(head)
            reply = _read_all(conn)
            assert reply.startswith(b"HTTP/1.1 431 "), reply[:100]
            assert b"application/json" in reply and b"x-content-type-options: nosniff" in reply


def _one_answer_then_closed(conn: socket.socket) -> bytes:
    """Everything the server sends until it closes: exactly one response, which says it closes."""
    reply = _read_all(conn)
    assert reply.count(b"HTTP/1.1 ") == 1, reply  # once, a 408 came after it at the body deadline
    assert b"\r\nconnection: close\r\n" in reply.lower(), reply
    return reply


def test_an_answer_before_the_body_is_read_closes_its_connection(capped_server):
    """Issue 37, finding 10: a 413, a 503 at the cap or a 404 answered before the request's body
    was read left the connection open, and the body deadline then wrote a 408 on it; a client
    reusing it (after `Expect: 100-continue`) had its next request swallowed as that body."""
    post = b"POST %s HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: %d\r\n"
    server = capped_server

    def in_flight() -> float:  # counting the /metrics request asking
        return metric(httpx.get(server.url + "/metrics").text, "genserve_requests_in_progress")

    with socket.create_connection(server.address, timeout=60) as conn:  # 413 on the declared length
        conn.sendall(post % (b"/v1/models/vae/samples", 3 << 20) + b"Expect: 100-continue\r\n\r\n")
        assert _one_answer_then_closed(conn).startswith(b"HTTP/1.1 413 ")
    with socket.create_connection(server.address, timeout=60) as conn:  # 404 for a route there is not
        conn.sendall(post % (b"/v1/nowhere", 100) + b"\r\n{")
        assert _one_answer_then_closed(conn).startswith(b"HTTP/1.1 404 ")
    with socket.create_connection(server.address, timeout=60) as busy:  # the one request the cap allows,
        busy.sendall(post % (b"/v1/models/dcgan/samples", 100) + b"\r\n{")  # waiting for its body
        until(lambda: in_flight() == 2, "the first request to be in flight")
        with socket.create_connection(server.address, timeout=60) as conn:
            conn.sendall(post % (b"/v1/models/dcgan/samples", 50) + b"\r\n")
            assert _one_answer_then_closed(conn).startswith(b"HTTP/1.1 503 ")
    until(lambda: in_flight() == 1, "the first request to end with its connection")
    body = b'{"n": 1, "seed": 3}'
    with socket.create_connection(server.address, timeout=60) as conn:  # a body read: the connection stays
        conn.sendall(post % (b"/v1/models/dcgan/samples", len(body)) + b"\r\n" + body)
        reply = _response(conn)
        assert reply.startswith(b"HTTP/1.1 200 ") and b"connection: close" not in reply.lower()
        conn.sendall(HEALTHZ)
        assert _response(conn).startswith(b"HTTP/1.1 200 ")
