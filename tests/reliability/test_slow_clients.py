"""Slow and idle clients against a real `genserve serve` (issue 14): connections that stop inside
their headers or body are answered 408 and closed at the deadlines of the settings; an idle
keep-alive connection stays open longer than clients keep theirs (so that a request a client sends
on it is never lost, finding 5); heads past `max_header_bytes` are refused 431 however they arrive;
past `max_connections` idle connections make room for new clients (issue 28). The guards sit in
uvicorn's parsers' protocols, so each runs with both."""

from __future__ import annotations

import socket
import time

import httpx
import pytest

from app.config import Settings

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


@PARSERS
def test_connections_stalled_in_their_headers_or_body_are_answered_408_and_closed(serve, parser):
    with serve(header_timeout_s=1, body_timeout_s=1, http_parser=parser) as server:
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
        assert httpx.post(server.url + "/v1/models/dcgan/samples", json={"n": 1}).status_code == 200


@PARSERS
def test_a_request_trickled_byte_by_byte_does_not_renew_the_header_deadline(serve, parser):
    with (serve(header_timeout_s=1, http_parser=parser) as server,
          socket.create_connection(server.address, timeout=60) as conn):
        started = time.monotonic()
        try:
            for byte in b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 200:
                conn.sendall(bytes([byte]))
                time.sleep(0.1)  # 20 s in all, were the connection left open
        except OSError:
            pass  # closed under us: what the deadline does
        assert time.monotonic() - started < 15
        assert _read_all(conn).startswith(b"HTTP/1.1 408 ")


@PARSERS
def test_headers_past_max_header_bytes_are_refused_and_the_next_request_is_served(serve, parser):
    with serve(max_header_bytes=2048, http_parser=parser) as server:
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


def test_an_idle_keep_alive_connection_outlives_the_clients_own_idle_expiry(serve):
    """Finding 5: with uvicorn's default (5 s, exactly httpx's pool expiry) a pooled connection was
    closed by the server just as the client sent its next request on it, which was lost (ReadError,
    never reaching the app). The server now keeps idle connections longer than clients do."""
    assert Settings().keep_alive_s > 2 * HTTPX_KEEPALIVE_EXPIRY_S
    with serve() as server, socket.create_connection(server.address, timeout=60) as conn:
        conn.sendall(HEALTHZ)
        assert _response(conn).startswith(b"HTTP/1.1 200 ")
        time.sleep(HTTPX_KEEPALIVE_EXPIRY_S + 1)  # idle past the client's expiry (and uvicorn's old default)
        conn.sendall(HEALTHZ)  # the same connection: still open, and answered
        assert _response(conn).startswith(b"HTTP/1.1 200 ")


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


@PARSERS
def test_a_head_past_the_limit_is_431_even_when_it_comes_in_one_read(serve, parser):
    """Issue 28, finding 3: a whole head that came in one read used to pass the limit."""
    heads = [b"GET /v1/models/dcgan/samples.png?" + b"a" * 65536 + b" HTTP/1.1\r\nHost: x\r\n\r\n",
             b"GET /healthz HTTP/1.1\r\n" + b"".join(b"X-%d: 1\r\n" % i for i in range(8000)) + b"\r\n"]
    with serve(http_parser=parser) as server:
        for head in heads:
            with socket.create_connection(server.address, timeout=60) as conn:
                conn.sendall(head)
                reply = _read_all(conn)
                assert reply.startswith(b"HTTP/1.1 431 "), reply[:100]
                assert b"application/json" in reply and b"x-content-type-options: nosniff" in reply
