"""The FastAPI application: `create_app(settings)`, and `app` for `uvicorn app.main:app`."""

from __future__ import annotations

import gc
from collections.abc import Callable
from contextlib import asynccontextmanager
from pathlib import Path

import torch
from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import FileResponse, HTMLResponse
from fastapi.staticfiles import StaticFiles
from starlette.concurrency import run_in_threadpool
from swagger_ui_bundle import swagger_ui_path

from app.config import Settings
from app.errors import RETRY_AFTER_S, install_error_handlers
from app.logs import configure_logging
from app.metrics import Metrics
from app.middleware import BodyLimit, HeadAsGet, InFlightLimit, RequestMetrics, SecurityHeaders
from app.registry import Registry
from app.routes import admin, generate, health, images, models, oip
from app.worker import Worker
from models.checkpoint import resolve_device

STATIC_DIR = Path(__file__).parent / "static"
DOCS_PATH, DOCS_ASSETS = "/docs", "/docs/assets"  # Swagger UI from the swagger-ui-bundle wheel: no CDN
PROBES = ("/healthz", "/readyz", "/metrics")  # answered even when the server is saturated

DESCRIPTION = """
Trained image generators over HTTP: a class-conditional **PixelCNN**, **PixelRNN**, **DCGAN** and
**diffusion** model and a **VAE** on Fashion-MNIST. What each model can do is in its `capabilities`.

* Image endpoints answer `image/png` (a grid, 2 px padding) or, with `?format=json`, the images
  one by one in base64 with the seed and the latents.
* A *latent* is exactly one of `{"seed": int}`, `{"seeds": [int, ...]}` (their mean),
  `{"vector": [float x latent_dim]}`, `{"class": "Sneaker"}` (the class's mean latent from the
  model card) or `{"image": "<base64 PNG>"}` (the VAE encoder's mean; for the diffusion model, its
  DDIM inversion; for the DCGAN, its projection: 100 deterministic optimiser steps through the generator).
* Explore: `traverse` walks latent dimensions or toward a latent; `?format=gif` animates an
  interpolation or a one-axis traversal; `Accept: text/event-stream` on samples streams a model
  whose capabilities list `stream` as Server-Sent Events: row by row (PixelCNN, PixelRNN) or
  denoising step by step (diffusion; `steps` chooses how many).
* Seeds: image i of a request with seed s is the image of `{"seed": s + i}`; the `X-Seed` header
  says which seed was used. The same request gives the same bytes.
* Uploads: PNG or JPEG up to 1 MiB, converted to the model's channels and resized to its size.
* Limits (`GET /v1/models`): a value past one is 422; a body past `max_body_bytes` is 413; a full
  queue is 503 with `Retry-After`; an inference past the request timeout is 504.
"""


def create_app(settings: Settings | None = None, worker_factory: Callable[..., Worker] = Worker) -> FastAPI:
    """The app; `worker_factory` makes its worker from `Worker`'s arguments (a subclass, say)."""
    settings = settings or Settings()
    configure_logging(settings.log_level)
    device = resolve_device(settings.device)
    metrics = Metrics()
    registry = Registry(settings.weights_dir, device)
    worker = worker_factory(device, metrics, batch_wait_ms=settings.batch_wait_ms, max_batch=settings.max_batch,
                            queue_size=settings.queue_size, timeout_s=settings.request_timeout_s,
                            channels_last=settings.channels_last, dtype=settings.dtype,
                            requests_in_server=lambda: metrics.in_progress)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        torch.set_num_threads(settings.torch_threads())
        await run_in_threadpool(registry.load)
        worker.start()
        yield
        await run_in_threadpool(worker.stop)
        # An app started and stopped inside a longer-lived process (the tests, an embedding) leaves
        # its cycles to the collector again.
        gc.unfreeze()

    # docs_url=None: FastAPI's own /docs loads Swagger UI from a CDN, and ReDoc has no local assets.
    app = FastAPI(title="genserve", version="1", description=DESCRIPTION, lifespan=lifespan,
                  docs_url=None, redoc_url=None)
    app.state.settings = settings
    app.state.registry = registry
    app.state.worker = worker
    app.state.metrics = metrics

    install_error_handlers(app)
    app.add_middleware(BodyLimit, max_bytes=settings.max_body_bytes)  # innermost: metrics and CORS see its 413s
    app.add_middleware(HeadAsGet)
    app.add_middleware(InFlightLimit, max_requests=settings.max_connections, exempt=PROBES, retry_after_s=RETRY_AFTER_S)
    app.add_middleware(SecurityHeaders, docs_path=DOCS_PATH)
    app.add_middleware(RequestMetrics, metrics=metrics, registry=registry)
    if settings.cors_origins:
        app.add_middleware(CORSMiddleware, allow_origins=settings.cors_origins, allow_methods=["GET", "POST"],
                           allow_headers=["Content-Type", "Authorization"], expose_headers=["X-Seed", "Retry-After"])
    for module in (health, models, generate, images, admin, oip):
        app.include_router(module.router)

    @app.get("/", include_in_schema=False)
    async def demo_page() -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html")

    @app.get(DOCS_PATH, include_in_schema=False)
    async def docs_page() -> HTMLResponse:
        return get_swagger_ui_html(openapi_url=app.openapi_url, title="genserve API",
                                   swagger_js_url=f"{DOCS_ASSETS}/swagger-ui-bundle.js",
                                   swagger_css_url=f"{DOCS_ASSETS}/swagger-ui.css",
                                   swagger_favicon_url=f"{DOCS_ASSETS}/favicon-32x32.png")

    app.mount(DOCS_ASSETS, StaticFiles(directory=swagger_ui_path), name="docs-assets")
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    return app


app = create_app()
