"""Operations: liveness, readiness and Prometheus metrics."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from app.schemas import Readiness

router = APIRouter(tags=["health"])


def readiness(request: Request) -> tuple[bool, dict]:
    registry, worker = request.app.state.registry, request.app.state.worker
    ready = registry.ready and worker.alive
    return ready, {"ready": ready, "models": sorted(registry.models), "failed": registry.failed}


@router.get("/healthz")
async def healthz() -> dict:
    """The process is up (it says nothing of the models: see /readyz)."""
    return {"status": "ok"}


@router.get("/readyz", response_model=Readiness, responses={503: {"model": Readiness}})
async def readyz(request: Request) -> JSONResponse:
    """200 once the models are loaded and the worker runs, 503 before; lists checkpoints that failed."""
    ready, body = readiness(request)
    return JSONResponse(body, status_code=200 if ready else 503)


@router.get("/metrics", response_class=Response, responses={200: {"content": {"text/plain": {}}}})
async def metrics(request: Request) -> Response:
    """Prometheus text: requests and latency per endpoint and model, batch sizes, queue time and depth."""
    return Response(generate_latest(request.app.state.metrics.registry), media_type=CONTENT_TYPE_LATEST)
