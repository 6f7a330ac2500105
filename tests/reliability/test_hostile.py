"""Hostile input over a real socket: every kind that issue 8 names gets a clear 4xx (or, for odd but
valid images, a 200), a body that never ends is cut off with 413, and the server stays healthy."""

from __future__ import annotations

from bench.hostile import barrage, endless_body
from bench.reliability import healthy

MiB = 1 << 20
KINDS = {"truncated image", "decompression bomb", "multi-frame image", "16-bit / palette / odd modes", "JPEG",
         "non-image bytes", "bad base64", "oversized body", "deeply nested JSON", "huge numbers", "NaN/Infinity"}


def test_the_barrage_gets_clear_answers_and_the_server_stays_healthy(server):
    outcomes = barrage(server.url)
    assert KINDS <= {outcome.case.kind for outcome in outcomes}
    unexpected = [(o.case.kind, o.case.name, o.status, o.detail) for o in outcomes if not o.ok]
    assert not unexpected
    for outcome in outcomes:
        if outcome.status >= 400:  # clear: JSON that says what was wrong, and no Python object's repr
            assert outcome.detail.startswith('{"detail":'), (outcome.case.name, outcome.detail)
            assert " object at 0x" not in outcome.detail, (outcome.case.name, outcome.detail)
    assert healthy(server.url)
    assert server.process.poll() is None


def test_a_body_that_never_ends_is_answered_413_while_it_is_still_coming(server):
    status, sent = endless_body(server.address, give_up_bytes=256 * MiB, give_up_s=30)
    assert status == 413
    # the 2 MiB limit, plus what the socket buffers held: far from the 256 MiB this client would send
    assert sent < 64 * MiB
    assert healthy(server.url)
