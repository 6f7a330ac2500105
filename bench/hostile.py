"""Hostile input for a running server: bad uploads, bad JSON, bodies that never end.

`barrage(url)` sends every case of `cases()` once and returns what came back; `lying_length` and
`endless_body` speak HTTP over a raw socket, since an HTTP client would not send what they do.
Every case names the statuses it may get: a clear 4xx, or 200 where the input is odd but valid
(16-bit, palette and CMYK images are converted, as the API promises).
"""

from __future__ import annotations

import base64
import io
import json
import select
import socket
import struct
import time
import zlib
from dataclasses import dataclass, field

import httpx
import numpy as np
from PIL import Image

MiB = 1 << 20
ERROR_4XX = frozenset({400, 413, 422})


@dataclass
class Case:
    kind: str  # the kind of bad input, as docs/reliability.md counts them
    name: str
    method: str
    path: str
    request: dict = field(default_factory=dict)  # httpx keyword arguments: json, content, files, headers
    expect: frozenset = ERROR_4XX


@dataclass
class Outcome:
    case: Case
    status: int
    detail: str

    @property
    def ok(self) -> bool:
        return self.status in self.case.expect


# -- payloads -----------------------------------------------------------------------------------

def encoded(image: Image.Image, format: str = "PNG", **params) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=format, **params)
    return buffer.getvalue()


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def bomb() -> bytes:
    """A tiny PNG that declares a 50,000 x 50,000 image."""
    header = struct.pack(">IIBBBBB", 50_000, 50_000, 8, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header)
            + _png_chunk(b"IDAT", zlib.compress(b"\0" * 1000)) + _png_chunk(b"IEND", b""))


def text_bomb() -> bytes:
    """A valid 28x28 PNG with a compressed text chunk that inflates to 64 MiB."""
    png = encoded(Image.new("L", (28, 28)))
    chunk = _png_chunk(b"zTXt", b"comment\0\0" + zlib.compress(b"\0" * (64 * MiB), 9))
    return png[:-12] + chunk + png[-12:]  # before IEND


def jpeg_bomb() -> bytes:
    """A small JPEG whose frame header declares 65,000 x 65,000 pixels."""
    data = bytearray(encoded(Image.new("L", (16, 16), 100), "JPEG"))
    frame = data.index(b"\xff\xc0")
    data[frame + 5: frame + 9] = struct.pack(">HH", 65_000, 65_000)
    return bytes(data)


def animated() -> bytes:
    frames = [Image.new("L", (28, 28), v) for v in (0, 255)]
    return encoded(frames[0], save_all=True, append_images=frames[1:])


def gif() -> bytes:
    return encoded(Image.new("L", (28, 28)), "GIF")


def noise_png(**params) -> bytes:
    return encoded(Image.fromarray(np.random.default_rng(0).integers(0, 256, (28, 28), np.uint8)), **params)


def _b64(payload: bytes) -> str:
    return base64.b64encode(payload).decode()


def _upload_cases(kind: str, name: str, payload: bytes, expect: frozenset = ERROR_4XX) -> list[Case]:
    """One image sent to every endpoint that decodes uploads: JSON, multipart and an image latent."""
    body = {"image": _b64(payload)}
    return [
        Case(kind, f"{name} (reconstruct)", "POST", "/v1/models/vae/reconstruct", {"json": body}, expect),
        Case(kind, f"{name} (multipart)", "POST", "/v1/models/vae/reconstruct",
             {"files": {"image": ("x.png", payload, "image/png")}}, expect),
        Case(kind, f"{name} (likelihood)", "POST", "/v1/models/pixelcnn/likelihood", {"json": body}, expect),
        Case(kind, f"{name} (latent)", "POST", "/v1/models/vae/latents", {"json": {"latent": body}}, expect),
    ]


def _raw(kind: str, name: str, path: str, text: str | bytes, expect: frozenset = ERROR_4XX) -> Case:
    content = text.encode() if isinstance(text, str) else text
    return Case(kind, name, "POST", path, {"content": content, "headers": {"content-type": "application/json"}}, expect)


def cases() -> list[Case]:
    valid = frozenset({200})
    out: list[Case] = []
    png = noise_png()
    out += _upload_cases("truncated image", "PNG cut in half", png[: len(png) // 2])
    out += _upload_cases("truncated image", "PNG cut inside its header", png[:20])
    jpeg = encoded(Image.new("L", (28, 28), 90), "JPEG")
    out += _upload_cases("truncated image", "JPEG cut in half", jpeg[: len(jpeg) // 2])
    out += _upload_cases("decompression bomb", "PNG declaring 50k x 50k", bomb())
    out += _upload_cases("decompression bomb", "JPEG declaring 65k x 65k", jpeg_bomb())
    out += _upload_cases("decompression bomb", "PNG with a 64 MiB zTXt chunk", text_bomb())
    out += _upload_cases("decompression bomb", "4096 x 4096 16-bit PNG",
                         encoded(Image.fromarray(np.zeros((4096, 4096), np.uint16)), optimize=True))
    out += _upload_cases("multi-frame image", "animated PNG", animated())
    out += _upload_cases("multi-frame image", "GIF", gif())
    out += _upload_cases("16-bit / palette / odd modes", "16-bit gray PNG",
                         encoded(Image.fromarray(np.full((28, 28), 40000, np.uint16))), valid)
    out += _upload_cases("16-bit / palette / odd modes", "palette PNG with transparency",
                         encoded(Image.open(io.BytesIO(png)).convert("P"), transparency=0), valid)
    out += _upload_cases("16-bit / palette / odd modes", "RGBA PNG",
                         encoded(Image.new("RGBA", (40, 20), (255, 0, 0, 128))), valid)
    out += _upload_cases("JPEG", "grayscale JPEG", jpeg, valid)
    out += _upload_cases("JPEG", "CMYK progressive JPEG", encoded(Image.new("CMYK", (30, 30)), "JPEG",
                                                                  progressive=True), valid)
    out += _upload_cases("non-image bytes", "text", b"hello, not an image")
    out += _upload_cases("non-image bytes", "empty", b"")
    out += _upload_cases("non-image bytes", "BMP", encoded(Image.new("L", (28, 28)), "BMP"))
    out += _upload_cases("non-image bytes", "PNG signature then zeros", b"\x89PNG\r\n\x1a\n" + b"\0" * 4096)
    for text in ("not base64!!", "abc", "data:image/png;base64,@@@@", "\u00e9\u00e9\u00e9\u00e9", "=" * 8):
        out.append(Case("bad base64", repr(text), "POST", "/v1/models/vae/reconstruct", {"json": {"image": text}}))
    out.append(Case("bad base64", "base64 of 1.5 MiB", "POST", "/v1/models/vae/reconstruct",
                    {"json": {"image": "A" * (2 * MiB - 100)}}))
    out.append(_raw("oversized body", "3 MiB of JSON", "/v1/models/vae/reconstruct",
                    json.dumps({"image": "A" * (3 * MiB)})))
    out.append(Case("oversized body", "3 MiB multipart file", "POST", "/v1/models/vae/reconstruct",
                    {"files": {"image": ("x.png", b"\0" * (3 * MiB), "image/png")}}))
    for depth in (1_000, 100_000):
        out.append(_raw("deeply nested JSON", f"{depth} nested arrays", "/v1/models/dcgan/samples",
                        "[" * depth + "]" * depth))
        out.append(_raw("deeply nested JSON", f"{depth} nested objects in a latent", "/v1/models/dcgan/latents",
                        '{"latent": ' + '{"seed": ' * depth + "1" + "}" * depth + "}"))
    out.append(_raw("malformed JSON", "unterminated", "/v1/models/dcgan/samples", '{"n": '))
    out.append(_raw("malformed JSON", "invalid UTF-8", "/v1/models/dcgan/samples", b'{"class": "\xff\xfe"}'))
    out.append(Case("malformed JSON", "text/plain body", "POST", "/v1/models/dcgan/samples",
                    {"content": b'{"n": 1}', "headers": {"content-type": "text/plain"}}))
    for name, text in [("n = 1e400", '{"n": 1e400}'), ("n with 5000 digits", '{"n": ' + "9" * 5000 + "}"),
                       ("seed = 2^64", '{"seed": 18446744073709551616}'),
                       ("temperature = 1e-400", '{"temperature": 1e-400}')]:
        out.append(_raw("huge numbers", name, "/v1/models/dcgan/samples", text))
    out.append(_raw("huge numbers", "weight = 1e308", "/v1/models/dcgan/arithmetic",
                    '{"terms": [{"latent": {"seed": 1}, "weight": 1e308}]}'))
    out.append(_raw("huge numbers", "vector entry 1e300", "/v1/models/dcgan/latents",
                    '{"latent": {"vector": [1e300' + ", 0" * 99 + "]}}"))
    out.append(_raw("huge numbers", "half a million seeds", "/v1/models/dcgan/latents",
                    '{"latent": {"seeds": [' + ",".join(["1"] * 500_000) + "]}}"))
    for value in ("NaN", "Infinity", "-Infinity"):
        out.append(_raw("NaN/Infinity", f"{value} in a vector", "/v1/models/vae/interpolate",
                        '{"start": {"vector": [' + value + ", 0" * 15 + ']}, "end": {"seed": 1}}'))
        out.append(_raw("NaN/Infinity", f"{value} as noise", "/v1/models/dcgan/arithmetic",
                        '{"terms": [{"latent": {"seed": 1}}], "noise": ' + value + "}"))
    out.append(Case("NaN/Infinity", "nan in the query", "GET", "/v1/models/dcgan/samples.png?temperature=nan"))
    return out


# -- sending them -------------------------------------------------------------------------------

def barrage(url: str, timeout_s: float = 60) -> list[Outcome]:
    """Send every case once, in order; a transport error is an outcome of status 0."""
    outcomes = []
    with httpx.Client(base_url=url, timeout=timeout_s) as client:
        for case in cases():
            try:
                response = client.request(case.method, case.path, **case.request)
                outcomes.append(Outcome(case, response.status_code, response.text[:300]))
            except httpx.TransportError as e:
                outcomes.append(Outcome(case, 0, f"{type(e).__name__}: {e}"))
    return outcomes


def _status(reply: bytes) -> int:
    return int(reply.split(b" ", 2)[1]) if reply.startswith(b"HTTP/1.1 ") else 0


def lying_length(address: tuple[str, int], timeout_s: float = 10) -> int:
    """Headers that announce 3 MiB, then one byte: the status the server answers without the rest."""
    with socket.create_connection(address, timeout=timeout_s) as conn:
        conn.sendall(b"POST /v1/models/vae/reconstruct HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Content-Length: 3145728\r\n\r\n{")
        return _status(conn.recv(200))


def endless_body(address: tuple[str, int], give_up_bytes: int = 256 * MiB,
                 give_up_s: float = 30) -> tuple[int, int]:
    """A chunked body that would never end: (the status answered, bytes sent by then). Stops at the
    first byte of an answer, or after give_up_bytes or give_up_s (status 0)."""
    chunk = b"%x\r\n%s\r\n" % (64 * 1024, b" " * 64 * 1024)
    pending, sent = b"", 0
    deadline = time.monotonic() + give_up_s
    with socket.create_connection(address, timeout=give_up_s) as conn:
        conn.sendall(b"POST /v1/models/dcgan/samples HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Transfer-Encoding: chunked\r\n\r\n")
        conn.setblocking(False)  # send what fits, so that an answer is read as soon as it comes
        while sent < give_up_bytes and time.monotonic() < deadline:
            readable, writable, _ = select.select([conn], [conn], [], 1)
            if readable:
                return _read_status(conn), sent
            if writable:
                pending = pending or chunk
                try:
                    count = conn.send(pending)
                except (BrokenPipeError, ConnectionResetError):  # closed after answering: read it
                    return _read_status(conn), sent
                pending, sent = pending[count:], sent + count
    return 0, sent


def _read_status(conn: socket.socket) -> int:
    conn.settimeout(5)
    try:
        return _status(conn.recv(200))
    except OSError:
        return 0
