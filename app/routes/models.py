"""What the service serves: GET /v1/models and GET /v1/models/{name}."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Request

from app.registry import ServedModel
from app.routes.deps import ERROR_RESPONSES, SettingsDep, served_model
from app.schemas import ModelInfo, ModelList

router = APIRouter(prefix="/v1/models", tags=["models"])


@router.get("", response_model=ModelList)
async def list_models(request: Request, settings: SettingsDep) -> dict:
    """Every model that loaded, and the request limits (settings) that apply to them."""
    limits = settings.limits()
    models = request.app.state.registry.models
    return {"models": [models[name].info(limits) for name in sorted(models)], "limits": limits}


@router.get("/{name}", response_model=ModelInfo, responses={404: ERROR_RESPONSES[404]})
async def get_model(model: Annotated[ServedModel, Depends(served_model)], settings: SettingsDep) -> dict:
    """One model: its family, data, shape, classes, capabilities, metrics and checkpoint."""
    return model.info(settings.limits())
