"""Helpers for the service tests: an app in process, PNG grids, metrics."""

from __future__ import annotations

import asyncio
import base64
import io
import math
import socket
import struct
import time
from contextlib import asynccontextmanager

import httpx
import numpy as np
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families

from app.config import Settings
from app.main import create_app
from app.registry import servable
from models.checkpoint import read_card

PAD = 2


# How long a test waits for something to happen before it fails saying what did not.
DEADLINE_S = 60


def until(condition, what: str, deadline_s: float = DEADLINE_S) -> None:
    """Poll `condition()` until it holds; fail naming `what` after `deadline_s`."""
    give_up = time.monotonic() + deadline_s
    while not condition():
        assert time.monotonic() < give_up, f"gave up after {deadline_s:g} s waiting for {what}"
        time.sleep(0.01)


async def until_async(condition, what: str, deadline_s: float = DEADLINE_S) -> None:
    """`until` for a coroutine function `condition`, polled without blocking the event loop."""
    give_up = time.monotonic() + deadline_s
    while not await condition():
        assert time.monotonic() < give_up, f"gave up after {deadline_s:g} s waiting for {what}"
        await asyncio.sleep(0.01)


# One torch thread: on a small shared machine more threads only fight each other (and other jobs).
THREADS = 1


@asynccontextmanager
async def serving(weights_dir, **settings):
    """An httpx client of a fresh app (lifespan run: models loaded, worker started)."""
    app = create_app(Settings(weights_dir=weights_dir, threads=THREADS, **settings))
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver", timeout=120) as client:
            client.app = app
            yield client


def served_names(weights_dir) -> list[str]:
    """The sorted names of the checkpoint folders the service serves (the generators)."""
    return sorted(folder.name for folder in weights_dir.iterdir()
                  if (folder / "card.json").is_file() and servable(read_card(folder)["family"]))


def png(content: bytes) -> np.ndarray:
    """PNG bytes -> uint8 [H, W] (gray) or [H, W, 3]."""
    image = Image.open(io.BytesIO(content))
    assert image.format == "PNG"
    return np.asarray(image)


def b64png(text: str) -> np.ndarray:
    return png(base64.b64decode(text))


def grid_shape(n: int, nrow: int | None, height: int, width: int) -> tuple[int, int]:
    """(height, width) of a torchvision-style grid: 2 px padding around and between the cells."""
    columns = min(nrow or math.ceil(math.sqrt(n)), n)
    rows = math.ceil(n / columns)
    return PAD + rows * (height + PAD), PAD + columns * (width + PAD)


def grid_cells(grid: np.ndarray, n: int, nrow: int | None, height: int, width: int) -> list[np.ndarray]:
    columns = min(nrow or math.ceil(math.sqrt(n)), n)
    cells = []
    for i in range(n):
        top, left = PAD + (i // columns) * (height + PAD), PAD + (i % columns) * (width + PAD)
        cells.append(grid[top:top + height, left:left + width])
    return cells


def max_diff(a: np.ndarray, b: np.ndarray) -> int:
    assert a.shape == b.shape
    return int(np.abs(a.astype(int) - b.astype(int)).max())


def metric(text: str, name: str, **labels) -> float:
    """The sum of the samples named `name` whose labels include `labels` (0 when none)."""
    return sum(sample.value for family in text_string_to_metric_families(text) for sample in family.samples
               if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()))


def encode_png(array: np.ndarray, **params) -> str:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG", **params)
    return base64.b64encode(buffer.getvalue()).decode()


TCPI_DATA_SEGS_IN = 152  # offset of tcpi_data_segs_in in Linux's struct tcp_info (Linux 4.6+)


def data_segments_in(conn: socket.socket) -> int:
    """The segments with data that the TCP socket `conn` has received (Linux only)."""
    return struct.unpack_from("I", conn.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 256), TCPI_DATA_SEGS_IN)[0]
