"""Open Inference Protocol (KServe v2) health and metadata, so KServe- and Triton-style probes and
tooling can read genserve. Inference stays on /v1: a generator's inputs are seeds and latents, not
the protocol's tensors.

As the protocol asks, health answers 200 for true and 4xx (here 400) for false, and errors are
`{"error": "..."}`. A model's version is the first 12 hex digits of its weights' sha256.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version as package_version

from fastapi import APIRouter
from fastapi.responses import JSONResponse
from pydantic import BaseModel

from app.registry import Registry, ServedModel
from app.routes.deps import RegistryDep, SettingsDep, WorkerDep
from app.routes.health import readiness

router = APIRouter(prefix="/v2", tags=["open inference protocol"])

NOT_READY = 400  # the protocol's "false": a 4xx


class OipError(BaseModel):
    error: str


class ServerMetadata(BaseModel):
    name: str
    version: str
    extensions: list[str]


class Live(BaseModel):
    live: bool


class Ready(BaseModel):
    ready: bool


class ModelReady(BaseModel):
    name: str
    ready: bool


class TensorMetadata(BaseModel):
    name: str
    datatype: str
    shape: list[int]


class ModelMetadata(BaseModel):
    name: str
    versions: list[str]
    platform: str
    inputs: list[TensorMetadata]
    outputs: list[TensorMetadata]


def _package_version() -> str:
    try:
        return package_version("genserve")
    except PackageNotFoundError:  # run from a checkout that was not installed
        return "0+unknown"


def model_version(model: ServedModel) -> str:
    return (model.card.get("sha256") or "unknown")[:12]


def tensors(model: ServedModel) -> tuple[list[dict], list[dict]]:
    """What one sample is made from and what it is: -1 is the batch (the request's `n`)."""
    inputs = [{"name": "seed", "datatype": "INT64", "shape": [-1]}]
    if model.module.sampling == "latent":
        inputs.append({"name": "latent", "datatype": "FP32", "shape": [-1, model.latent_dim]})
    if model.conditional:
        inputs.append({"name": "class", "datatype": "BYTES", "shape": [-1]})
    outputs = [{"name": "image", "datatype": "UINT8", "shape": [-1, *model.image_shape]}]
    return inputs, outputs


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


def _lookup(registry: Registry, name: str, version: str | None) -> ServedModel | JSONResponse:
    """The served model, or the 4xx that says why there is none."""
    model = registry.models.get(name)
    if model is None:
        if name in registry.failed or not registry.loaded:
            return _error(NOT_READY, f"model {name!r} is not loaded; see /readyz")
        return _error(404, f"no model named {name!r}; known models: {', '.join(sorted(registry.models)) or 'none'}")
    if version is not None and version != model_version(model):
        return _error(404, f"model {name!r} has no version {version!r}; it serves {model_version(model)!r}")
    return model


UNKNOWN = {404: {"model": OipError, "description": "No such model (or version)"}}
FALSE = {NOT_READY: {"model": OipError, "description": "Not ready"}}


@router.get("", response_model=ServerMetadata)
async def server_metadata() -> dict:
    """The server's name and version; no protocol extensions."""
    return {"name": "genserve", "version": _package_version(), "extensions": []}


@router.get("/health/live", response_model=Live, responses={NOT_READY: {"model": Live}})
async def server_live(worker: WorkerDep) -> JSONResponse:
    """200 while the process answers and its inference worker runs (like /healthz); 400 once the
    worker has died, for the liveness probe to restart the process."""
    live = worker.failure is None
    return JSONResponse({"live": live}, status_code=200 if live else NOT_READY)


@router.get("/health/ready", response_model=Ready, responses={NOT_READY: {"model": Ready}})
async def server_ready(registry: RegistryDep, worker: WorkerDep, settings: SettingsDep) -> JSONResponse:
    """200 once the models are loaded and the worker runs (like /readyz), 400 before."""
    ready, _ = readiness(registry, worker, settings)
    return JSONResponse({"ready": ready}, status_code=200 if ready else NOT_READY)


@router.get("/models/{name}/ready", response_model=ModelReady, responses={**UNKNOWN, **FALSE})
@router.get("/models/{name}/versions/{version}/ready", response_model=ModelReady,
            responses={**UNKNOWN, **FALSE}, include_in_schema=False)
async def model_ready(name: str, registry: RegistryDep, worker: WorkerDep,
                      version: str | None = None) -> JSONResponse:
    """200 when the model is loaded and the worker runs; 400 while it loads or when it failed to
    load; 404 for a name no checkpoint folder has."""
    model = _lookup(registry, name, version)
    if isinstance(model, JSONResponse):
        return model
    if not worker.alive:
        return _error(NOT_READY, "the inference worker is not running")
    return JSONResponse({"name": name, "ready": True})


@router.get("/models/{name}", response_model=ModelMetadata, responses={**UNKNOWN, **FALSE})
@router.get("/models/{name}/versions/{version}", response_model=ModelMetadata, responses={**UNKNOWN, **FALSE},
            include_in_schema=False)
async def model_metadata(name: str, registry: RegistryDep, version: str | None = None) -> JSONResponse:
    """The model's version, platform and the tensors of one sample (400 while it is not loaded)."""
    model = _lookup(registry, name, version)
    if isinstance(model, JSONResponse):
        return model
    inputs, outputs = tensors(model)
    return JSONResponse({"name": name, "versions": [model_version(model)], "platform": "pytorch",
                         "inputs": inputs, "outputs": outputs})
