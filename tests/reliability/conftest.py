"""Fixtures for the reliability tests: real `genserve serve` processes on loopback.

The weights come from the `weights_dir` fixture of tests/conftest.py.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.process import running_server
from tests.app.apptest import THREADS


@pytest.fixture
def serve(weights_dir, tmp_path):
    """Starts servers with GENSERVE_* settings (and other weights): `with serve(queue_size=8) as server:`."""
    count = 0

    def start(weights: Path | None = None, **settings):
        nonlocal count
        count += 1
        return running_server(weights or weights_dir, tmp_path / f"server-{count}.log", threads=THREADS, **settings)
    return start


@pytest.fixture(scope="module")
def server(weights_dir, tmp_path_factory):
    """A server with the default settings, shared by a module's tests."""
    with running_server(weights_dir, tmp_path_factory.mktemp("server") / "server.log", threads=THREADS) as running:
        yield running
