"""Fixtures for the service tests: weights to serve, an in-process app, and a real uvicorn server.

Weights, in order: $GENSERVE_TEST_WEIGHTS_DIR; else a verified snapshot of the repo's weights/
when it holds all three models (training may rewrite them meanwhile, so the tests copy them);
else tiny checkpoints built once by the training module, with class latents put into their cards.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
import torch

from apptest import THREADS, serving
from models.checkpoint import read_card, sha256_file, update_card

REPO = Path(__file__).resolve().parents[2]
FAMILIES = ("pixelcnn", "vae", "dcgan")
TINY = {"pixelcnn": ["--set", "channels=16", "n_layers=3", "head_channels=32"], "vae": [], "dcgan": []}


@pytest.fixture(scope="session")
def anyio_backend():
    return "asyncio"


def _has_all_models(folder: Path) -> bool:
    return all((folder / f / "card.json").is_file() and (folder / f / "model.safetensors").is_file()
               for f in FAMILIES)


def _snapshot(source: Path, target: Path, tries: int = 10) -> Path:
    """Copy every checkpoint folder, retrying any copy whose weights do not match its card (a
    training run may be between writing the weights and writing the card)."""
    for folder in sorted(p for p in source.iterdir() if p.is_dir()):
        for _ in range(tries):
            shutil.rmtree(target / folder.name, ignore_errors=True)
            (target / folder.name).mkdir(parents=True)
            for name in ("card.json", "model.safetensors"):
                if (folder / name).exists():
                    shutil.copy2(folder / name, target / folder.name / name)
            copied = target / folder.name
            if (copied / "model.safetensors").exists() and \
                    read_card(copied).get("sha256") == sha256_file(copied / "model.safetensors"):
                break
            time.sleep(1)
    return target


def _tiny_checkpoints(root: Path) -> Path:
    weights = root / "weights"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    runs = [subprocess.Popen([sys.executable, "-m", "models.train", family, "--limit", "640", "--max-steps", "2",
                              "--out", str(weights / family), "--state-dir", str(root / "runs" / family),
                              "--quiet", "--threads", "1", *TINY[family]],
                             cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
            for family in FAMILIES]
    for run in runs:
        output, _ = run.communicate(timeout=600)
        assert run.returncode == 0, output.decode()
    for family in ("vae", "dcgan"):  # what evaluation would add: each class's latent mean and spread
        card = read_card(weights / family)
        dim = card["config"]["latent_dim"]
        generator = torch.Generator().manual_seed(0)
        update_card(weights / family, class_latents={
            name: {"mean": (torch.randn(dim, generator=generator) * 0.5).tolist(), "std": [0.8] * dim}
            for name in card["classes"]})
    return weights


@pytest.fixture(scope="session")
def weights_dir(tmp_path_factory) -> Path:
    if os.environ.get("GENSERVE_TEST_WEIGHTS_DIR"):
        return Path(os.environ["GENSERVE_TEST_WEIGHTS_DIR"])
    root = tmp_path_factory.mktemp("genserve")
    if _has_all_models(REPO / "weights"):
        return _snapshot(REPO / "weights", root / "weights")
    return _tiny_checkpoints(root)


@pytest.fixture(scope="session")
async def client(weights_dir, anyio_backend):
    """An in-process client of an app with default settings, lifespan run (models loaded)."""
    async with serving(weights_dir) as client:
        yield client


@pytest.fixture(scope="session")
async def models(client) -> dict:
    """name -> ModelInfo, as the service reports them."""
    return {info["name"]: info for info in (await client.get("/v1/models")).json()["models"]}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def running_server(weights_dir: Path, log: Path, **settings):
    """A real `genserve serve` (uvicorn) process on a free port, with GENSERVE_* `settings`; yields its URL."""
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(REPO), "GENSERVE_WEIGHTS_DIR": str(weights_dir),
           "GENSERVE_THREADS": str(THREADS), **{f"GENSERVE_{k.upper()}": str(v) for k, v in settings.items()}}
    with open(log, "wb") as out:
        process = subprocess.Popen([sys.executable, "-m", "app.cli", "serve", "--port", str(port)],
                                   cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            assert process.poll() is None, log.read_text()
            try:
                if httpx.get(url + "/readyz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "the server did not become ready"
            time.sleep(0.3)
        yield url
    finally:
        process.terminate()
        process.wait(timeout=30)


@pytest.fixture(scope="session")
def server(weights_dir, tmp_path_factory):
    """A server with the default settings."""
    with running_server(weights_dir, tmp_path_factory.mktemp("server") / "server.log") as url:
        yield url


@pytest.fixture(scope="module")
def patient_server(weights_dir, tmp_path_factory):
    """A server whose worker holds every batch open for a second, and queues one request at most."""
    log = tmp_path_factory.mktemp("patient") / "server.log"
    with running_server(weights_dir, log, batch_wait_ms=1000, queue_size=1) as url:
        yield url
