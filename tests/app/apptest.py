"""Helpers for the service tests: an app in process, a worker held or made slow, PNG grids, metrics."""

from __future__ import annotations

import asyncio
import base64
import functools
import io
import math
import socket
import struct
import threading
import time
from contextlib import asynccontextmanager

import httpx
import numpy as np
import torch
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families
from torch import nn

from app.config import Settings
from app.main import create_app
from app.operations import Operation
from app.registry import ServedModel
from app.worker import Worker
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


class SlowWorker(Worker):
    """The worker with a fault: every forward pass first waits `pass_delay_s` more, as for a model
    slower than this machine runs it, so that no test of timeouts or full queues hangs on how fast
    this machine is. Real servers get it from tests/app/slow_server.py."""

    def __init__(self, *args, pass_delay_s: float, **kwargs):
        super().__init__(*args, **kwargs)
        self.pass_delay_s = pass_delay_s

    def _forward(self, batch):
        time.sleep(self.pass_delay_s)
        return super()._forward(batch)


# `python -m` this to start a real server of SlowWorkers (bench.process.running_server's `command`),
# the delay in its setting `test_pass_delay_s`.
SLOW_SERVER = ("tests.app.slow_server",)


@asynccontextmanager
async def serving(weights_dir, pass_delay_s: float = 0, **settings):
    """An httpx client of a fresh app (lifespan run: models loaded, worker started); with
    `pass_delay_s`, its worker a SlowWorker."""
    worker = functools.partial(SlowWorker, pass_delay_s=pass_delay_s) if pass_delay_s else Worker
    async with serving_with(weights_dir, worker, **settings) as client:
        yield client


@asynccontextmanager
async def serving_with(weights_dir, worker_factory, **settings):
    """An httpx client of a fresh app whose worker `worker_factory` makes (lifespan run)."""
    app = create_app(Settings(weights_dir=weights_dir, threads=THREADS, **settings), worker_factory)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver", timeout=120) as client:
            client.app = app
            yield client


async def model_infos(client: httpx.AsyncClient) -> dict:
    """served name -> ModelInfo, as GET /v1/models reports them."""
    answer = await client.get("/v1/models")
    assert answer.status_code == 200, answer.text
    return {info["name"]: info for info in answer.json()["models"]}


class _Idle(nn.Module):
    """The module of the held pass: nothing in it runs."""

    channels_last = False  # what the worker asks of a module before its first pass


HELD = ServedModel("held", _Idle(), {})  # the held pass's model, by this name in the metrics


@asynccontextmanager
async def held(client):
    """While the block runs the worker is busy with a pass of the test's own (model "held") that
    ends with the block, so that the requests sent meanwhile queue up and meet in the queue
    whatever this machine's speed, as they do behind any long pass."""
    entered, release = threading.Event(), threading.Event()

    def hold(module: nn.Module, token: torch.Tensor) -> torch.Tensor:  # in the worker thread
        entered.set()
        release.wait()
        return token

    worker = client.app.state.worker
    gate = asyncio.ensure_future(worker.run(HELD, Operation("held", hold, batchable=False), torch.zeros(1)))

    async def taken() -> bool:
        return entered.is_set() or gate.done()
    try:
        await until_async(taken, "the worker to take the held pass")
        assert entered.is_set(), f"the held pass never ran: {gate.exception()!r}"
        yield
    finally:
        release.set()
    await gate


def served_names(weights_dir) -> list[str]:
    """The sorted names of the checkpoint folders the service should serve: every one but the
    evaluation classifier's (read from the cards, not asked of the app)."""
    return sorted(folder.name for folder in weights_dir.iterdir()
                  if (folder / "card.json").is_file() and read_card(folder)["family"] != "classifier")


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
