"""Operations: liveness, readiness and Prometheus metrics."""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel, Field

from app.config import Settings
from app.registry import Registry
from app.routes.deps import MetricsDep, RegistryDep, SettingsDep, WorkerDep
from app.schemas import Readiness
from app.worker import Worker

router = APIRouter(tags=["health"])


def readiness(registry: Registry, worker: Worker, settings: Settings) -> tuple[bool, dict]:
    ready = registry.ready and worker.alive
    bound = settings.saturation_wait_s
    saturated = {model: round(wait, 3) for model, wait in worker.oldest_waits().items() if wait > bound}
    return ready, {"ready": ready, "models": sorted(registry.models), "failed": registry.failed,
                   "saturated": saturated}


class Health(BaseModel):
    status: Literal["ok", "failed"]
    detail: str | None = Field(None, description="why the process is not healthy")


@router.get("/healthz", response_model=Health, responses={503: {
    "model": Health, "description": "The inference worker has died: restart the process"}})
async def healthz(worker: WorkerDep) -> JSONResponse:
    """200 while the process is up and its inference worker runs (it says nothing of the models:
    see /readyz); 503 once the worker has died, for the liveness probe to restart the process."""
    if worker.failure is not None:
        return JSONResponse({"status": "failed", "detail": f"the inference worker died ({worker.failure})"},
                            status_code=503)
    return JSONResponse({"status": "ok"})


@router.get("/readyz", response_model=Readiness, responses={503: {"model": Readiness}})
async def readyz(registry: RegistryDep, worker: WorkerDep, settings: SettingsDep) -> JSONResponse:
    """200 once the models are loaded and the worker runs, 503 before; lists checkpoints that failed,
    and models whose oldest queued request has waited past `saturation_wait_s` (still 200: a
    saturated model is slow, not down; `genserve_queue_oldest_wait_seconds` is the autoscaler's
    signal)."""
    ready, body = readiness(registry, worker, settings)
    return JSONResponse(body, status_code=200 if ready else 503)


@router.get("/metrics", response_class=Response, responses={200: {"content": {"text/plain": {}}}})
async def metrics(metrics: MetricsDep) -> Response:
    """Prometheus text: requests and latency per endpoint and model, batch sizes, queue time and depth."""
    return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)
