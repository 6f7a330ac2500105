"""`CoalescingTransport` on a real loopback TCP connection: what one event-loop turn writes reaches
the peer as one segment, in order; closing sends what is held first, aborting drops it; a large
write leaves at once. Segments are counted by the peer's kernel (Linux TCP_INFO)."""

from __future__ import annotations

import asyncio
import socket
import sys

import pytest

from app.server import CoalescingTransport
from apptest import data_segments_in

pytestmark = [pytest.mark.anyio,
              pytest.mark.skipif(sys.platform != "linux", reason="counts segments with Linux's TCP_INFO")]


async def received(conn: socket.socket, size: int) -> bytes:
    """`size` bytes from `conn`, or fewer if it closes first."""
    loop = asyncio.get_running_loop()
    data = b""
    while len(data) < size and (chunk := await loop.sock_recv(conn, size - len(data))):
        data += chunk
    return data


@pytest.fixture
async def connection():
    """(the coalescing transport of one end, the other end's socket)."""
    loop = asyncio.get_running_loop()
    with socket.create_server(("127.0.0.1", 0)) as listener:
        listener.setblocking(False)
        accepting = loop.create_task(loop.sock_accept(listener))
        transport, _ = await loop.create_connection(asyncio.Protocol, *listener.getsockname())
        peer, _ = await accepting
    peer.setblocking(False)
    with peer:
        coalescing = CoalescingTransport(transport, loop)
        yield coalescing, peer
        transport.abort()


async def test_the_writes_of_one_turn_arrive_as_one_segment(connection):
    transport, peer = connection
    transport.write(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\n")
    transport.writelines([b"he", b"llo"])
    assert transport.get_write_buffer_size() > 0  # held until the turn ends
    expected = b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhello"
    assert await received(peer, len(expected)) == expected
    assert data_segments_in(peer) == 1
    transport.write(b"next")  # a later turn's writes are a segment of their own
    assert await received(peer, 4) == b"next"
    assert data_segments_in(peer) == 2


async def test_close_sends_what_is_held_then_the_end(connection):
    transport, peer = connection
    transport.write(b"head ")
    transport.write(b"body")
    transport.close()
    assert await received(peer, 100) == b"head body"  # then EOF: received stops short of 100


async def test_abort_drops_what_is_held(connection):
    transport, peer = connection
    transport.write(b"never sent")
    transport.abort()
    assert await received(peer, 100) == b""  # the connection's end, and nothing before it


async def test_a_large_write_leaves_at_once(connection):
    transport, peer = connection
    transport.write(b"x" * CoalescingTransport.HOLD_BYTES)
    assert transport.get_write_buffer_size() < CoalescingTransport.HOLD_BYTES  # sent, not held
    assert peer.recv(1, socket.MSG_PEEK) == b"x"  # arrived before this turn ends (the peek would not wait)
