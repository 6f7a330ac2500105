"""The routes' dependencies, typed: the app's settings, registry, worker and metrics, the model a
path names (with a capability), the request's way to the worker, and the format parameters. The
routes reach the app's state through these alone."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import Depends, Query, Request

from app.config import Settings
from app.errors import CapabilityError
from app.metrics import Metrics
from app.registry import Registry, ServedModel
from app.routes.jobs import Jobs
from app.worker import Worker

Format = Annotated[Literal["png", "json"], Query(
    description="png: one grid image; json: the images one by one in base64, with the seed and latents")]
AnimatedFormat = Annotated[Literal["png", "json", "gif"], Query(
    description="png: one grid image; json: the images one by one in base64, with the latents; "
                "gif: an animation that loops, one frame per image in order")]


# The dependencies are `async def` although they never await: FastAPI runs a plain `def` dependency
# in its thread pool, a thread hand-off per dependency per request.

async def get_settings(request: Request) -> Settings:
    return request.app.state.settings


async def get_registry(request: Request) -> Registry:
    return request.app.state.registry


async def get_worker(request: Request) -> Worker:
    return request.app.state.worker


async def get_metrics(request: Request) -> Metrics:
    return request.app.state.metrics


async def get_jobs(request: Request) -> Jobs:
    return Jobs(request.app.state.worker, request)


SettingsDep = Annotated[Settings, Depends(get_settings)]
RegistryDep = Annotated[Registry, Depends(get_registry)]
WorkerDep = Annotated[Worker, Depends(get_worker)]
MetricsDep = Annotated[Metrics, Depends(get_metrics)]
JobsDep = Annotated[Jobs, Depends(get_jobs)]


async def served_model(name: str, request: Request) -> ServedModel:
    # The registry read here, not through RegistryDep: one dependency less on every model route.
    return request.app.state.registry.get(name)


def capable(capability: str):
    """A dependency: the model named in the path, if it has `capability` (else 400)."""
    async def dependency(model: Annotated[ServedModel, Depends(served_model)]) -> ServedModel:
        if capability not in model.capabilities:
            raise CapabilityError(f"model {model.name!r} ({model.family}) does not support {capability!r}; "
                                  f"its capabilities are {list(model.capabilities)}")
        return model
    return dependency
