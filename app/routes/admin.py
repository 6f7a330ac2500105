"""Admin operations, behind a bearer token (GENSERVE_ADMIN_TOKEN); absent (404) when no token is set."""

from __future__ import annotations

import secrets
from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from app.routes.deps import RegistryDep, SettingsDep, WorkerDep
from app.routes.health import readiness
from app.schemas import ErrorDetail, Readiness

router = APIRouter(prefix="/v1/admin", tags=["admin"])
bearer = HTTPBearer(auto_error=False)


def require_admin(settings: SettingsDep,
                  credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]) -> None:
    if settings.admin_token is None:
        raise HTTPException(404, "Not Found")
    expected = settings.admin_token.get_secret_value().encode()
    if credentials is None or not secrets.compare_digest(credentials.credentials.encode(), expected):
        raise HTTPException(401, "a valid bearer token is required", headers={"WWW-Authenticate": "Bearer"})


@router.post("/reload", response_model=Readiness, dependencies=[Depends(require_admin)],
             responses={401: {"model": ErrorDetail, "description": "no or a wrong bearer token"},
                        404: {"model": ErrorDetail, "description": "admin is off"},
                        503: {"model": Readiness, "description": "reloaded, but no model loaded"}})
async def reload(registry: RegistryDep, worker: WorkerDep, settings: SettingsDep) -> JSONResponse:
    """Load the weights directory again (say after new weights land); requests in flight finish on
    the models they started with. One reload runs at a time: a request that arrives during one
    waits for it and answers its outcome. Answers like /readyz."""
    await registry.reload()
    ready, body = readiness(registry, worker, settings)
    return JSONResponse(body, status_code=200 if ready else 503)
