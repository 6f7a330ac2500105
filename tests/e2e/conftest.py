"""Fixtures for the browser tests: the real app on a real uvicorn port, and Debian's Chromium.

Weights: GENSERVE_TEST_WEIGHTS_DIR when set, else the repository's weights/ (the shipped ones).
Screenshots: under GENSERVE_E2E_ARTIFACTS/<test name>/ when set, else the test's tmp_path.
Playwright is imported lazily, so that a missing browser is one clear failure (`require_browser`).
"""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from bench.process import free_port

REPO = Path(__file__).resolve().parents[2]
CHROMIUM = Path(os.environ.get("GENSERVE_CHROMIUM", "/usr/bin/chromium"))


def require_browser() -> None:
    """Fail the browser tests' collection when Playwright or Chromium is missing: `make test`
    installs both, so their absence is a broken set-up, not a reason to pass. A developer without
    them opts out in the open with GENSERVE_SKIP_BROWSER=1."""
    import importlib.util

    missing = [what for what, absent in (("Playwright for Python (pip install playwright)",
                                           importlib.util.find_spec("playwright") is None),
                                          (f"Chromium at {CHROMIUM} (apt-get install -y chromium)",
                                           not CHROMIUM.exists())) if absent]
    if not missing:
        return
    message = "the browser tests need " + " and ".join(missing)
    if os.environ.get("GENSERVE_SKIP_BROWSER") == "1":
        pytest.skip(message + " (skipped: GENSERVE_SKIP_BROWSER=1)", allow_module_level=True)
    pytest.fail(message + "; set GENSERVE_SKIP_BROWSER=1 to skip them knowingly", pytrace=False)
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
FAMILIES = ("pixelcnn", "vae", "dcgan")
READY_TIMEOUT_S = 180


def weights_dir() -> Path:
    if os.environ.get("GENSERVE_TEST_WEIGHTS_DIR"):
        return Path(os.environ["GENSERVE_TEST_WEIGHTS_DIR"])
    shipped = REPO / "weights"
    if all((shipped / name / file).is_file() for name in FAMILIES for file in ("card.json", "model.safetensors")):
        return shipped
    pytest.fail(f"{shipped} lacks a checkpoint of each of {', '.join(FAMILIES)} (card.json + model.safetensors); "
                "set GENSERVE_TEST_WEIGHTS_DIR to a folder that has them", pytrace=False)


@dataclass
class Server:
    url: str
    log: Path


@contextlib.contextmanager
def serve(weights: Path, log: Path) -> Iterator[Server]:
    """`uvicorn app.main:app` on the checkpoints in `weights` as a subprocess, ready when /readyz
    says so; stopped on leaving."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {**os.environ, "GENSERVE_WEIGHTS_DIR": str(weights)}
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "app.main:app", "--host", "127.0.0.1", "--port", str(port)],
            cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while True:
            if process.poll() is not None:
                pytest.fail(f"uvicorn exited with {process.returncode}:\n{log.read_text()[-3000:]}", pytrace=False)
            try:
                if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"{url}/readyz not ready after {READY_TIMEOUT_S} s:\n{log.read_text()[-3000:]}",
                            pytrace=False)
            time.sleep(0.25)
        yield Server(url, log)
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture(scope="session")
def server(tmp_path_factory) -> Iterator[Server]:
    """The app on the test weights, once for the session."""
    with serve(weights_dir(), tmp_path_factory.mktemp("server") / "uvicorn.log") as running:
        yield running


# A colour model of its own for the page's tests: a tiny DCGAN at 3x32x32, untrained (random weights
# draw colourful noise), with class latents for two classes and a small latent map, so that every
# control of the page has something to do.
COLOUR_MODEL = "dcgan-colour"
COLOUR_SHAPE = (3, 32, 32)
COLOUR_CLASSES = ["warm", "cool"]
COLOUR_LATENT_DIM = 8
MANY = 9  # the models of the first view: the shipped ones and a user's


def save_colour_dcgan(folder: Path) -> None:
    import numpy as np
    import torch

    from models.checkpoint import save_checkpoint
    from models.families.dcgan import DCGAN, DCGANConfig

    torch.manual_seed(0)
    model = DCGAN(DCGANConfig(image_shape=COLOUR_SHAPE, latent_dim=COLOUR_LATENT_DIM, generator_width=4,
                              discriminator_width=4))
    axis = np.eye(COLOUR_LATENT_DIM).tolist()
    save_checkpoint(model, folder, {
        "name": COLOUR_MODEL,
        "dataset": "synthetic-colour",
        "classes": COLOUR_CLASSES,
        "image_shape": list(COLOUR_SHAPE),
        "background": "white",  # as a folder's images are composited: the pad's paper starts white
        "class_latents": {"warm": {"mean": axis[0], "std": [1.0] * COLOUR_LATENT_DIM},
                          "cool": {"mean": axis[1], "std": [1.0] * COLOUR_LATENT_DIM}},
        "latent_map": {"images": 4, "mean": [0.0] * COLOUR_LATENT_DIM, "components": axis[:2],
                       "explained_variance": [0.3, 0.2],
                       "points": [[-1.0, -1.0, 0], [-0.5, 1.0, 0], [1.0, 0.5, 1], [0.8, -1.0, 1]]},
    })


@pytest.fixture(scope="package")
def many_server(tmp_path_factory) -> Iterator[Server]:
    """The shipped models (linked), the colour model, and copies of shipped ones under a user's names
    up to MANY models in all: a server of its own, started once for the package."""
    from app.registry import servable
    from models.checkpoint import read_card

    weights = tmp_path_factory.mktemp("many-weights")
    shipped = [folder for folder in sorted(weights_dir().iterdir())
               if (folder / "card.json").is_file() and servable(read_card(folder)["family"])]
    for folder in shipped:
        (weights / folder.name).symlink_to(folder.resolve(), target_is_directory=True)
    save_colour_dcgan(weights / COLOUR_MODEL)
    for folder in shipped[:max(0, MANY - len(shipped) - 1)]:
        (weights / f"my-{folder.name}").symlink_to(folder.resolve(), target_is_directory=True)
    with serve(weights, tmp_path_factory.mktemp("many-server") / "uvicorn.log") as running:
        yield running


@pytest.fixture(scope="package")
def many_api(many_server):
    with httpx.Client(base_url=many_server.url, timeout=300) as client:
        yield client


@pytest.fixture(scope="session")
def api(server):
    """An httpx client of the same server, to check what the page shows against the API."""
    with httpx.Client(base_url=server.url, timeout=300) as client:
        yield client


@pytest.fixture(scope="session")
def models(api) -> dict[str, dict]:
    return {m["name"]: m for m in api.get("/v1/models").raise_for_status().json()["models"]}


# Package scope: Playwright's sync API keeps an event loop running in this thread while it is
# open, which would break the asyncio tests collected after tests/e2e.
@pytest.fixture(scope="package")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture
def console() -> list[str]:
    """The page's console errors and uncaught exceptions; a test that provokes some clears them."""
    return []


def open_page(browser, server, console, **context_options):
    """A page in a fresh context whose pages record console errors, uncaught exceptions and any
    request to another origin (the page must need nothing but the service)."""
    context = browser.new_context(base_url=server.url, **context_options)
    context.set_default_timeout(120_000)
    context.on("console", lambda message: message.type == "error" and console.append(message.text))
    context.on("weberror", lambda error: console.append(f"uncaught: {error.error}"))
    context.on("request", lambda request: request.url.startswith((server.url, "data:"))
               or console.append(f"request to another origin: {request.url}"))
    return context.new_page()


@pytest.fixture
def page(browser, server, console):
    page = open_page(browser, server, console, viewport={"width": 1280, "height": 900})
    yield page
    page.context.close()
    assert console == [], "the page logged errors or left the service"


@pytest.fixture
def artifacts(request, tmp_path) -> Path:
    root = os.environ.get("GENSERVE_E2E_ARTIFACTS")
    if not root:
        return tmp_path
    folder = Path(root) / re.sub(r"[^\w.-]+", "_", request.node.name)
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def wait_until(page, expression: str, arg=None, timeout_s: float = 15.0) -> None:
    """Poll a JavaScript function of `arg` until it returns something truthy. Playwright's own
    wait_for_function evaluates strings inside the page, which the page's Content-Security-Policy
    (no 'unsafe-eval') forbids; page.evaluate runs through the DevTools protocol instead."""
    deadline = time.monotonic() + timeout_s
    while not page.evaluate(expression, arg):
        if time.monotonic() > deadline:
            raise AssertionError(f"still false after {timeout_s} s: {expression}")
        page.wait_for_timeout(50)
