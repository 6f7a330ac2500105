"""Fixtures for the service tests: an in-process app, and a real uvicorn server.

The weights they serve come from the `weights_dir` fixture of tests/conftest.py.
"""

from __future__ import annotations

import pytest

from apptest import SLOW_SERVER, THREADS, model_infos, serving
from bench.process import running_server


@pytest.fixture(scope="session")
async def client(weights_dir, anyio_backend):
    """An in-process client of an app with default settings, lifespan run (models loaded)."""
    async with serving(weights_dir) as client:
        yield client


@pytest.fixture(scope="session")
async def models(client) -> dict:
    """name -> ModelInfo, as the service reports them."""
    return await model_infos(client)


@pytest.fixture(scope="session")
def server(weights_dir, tmp_path_factory):
    """A server with the default settings."""
    log = tmp_path_factory.mktemp("server") / "server.log"
    with running_server(weights_dir, log, threads=THREADS) as running:
        yield running.url


@pytest.fixture(scope="module")
def patient_server(weights_dir, tmp_path_factory):
    """A server whose every forward pass takes a second longer, one request at a time, and which
    queues one request at most."""
    log = tmp_path_factory.mktemp("patient") / "server.log"
    with running_server(weights_dir, log, SLOW_SERVER, threads=THREADS, test_pass_delay_s=1, max_batch=1,
                        queue_size=1) as running:
        yield running.url
