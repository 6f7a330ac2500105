"""What the service serves: GET /v1/models, GET /v1/models/{name} and its latent map."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends

from pydantic import ValidationError

from app.errors import CapabilityError
from app.registry import ServedModel
from app.routes.deps import RegistryDep, SettingsDep, served_model
from app.routes.responses import ERROR_RESPONSES
from app.schemas import LatentMap, ModelInfo, ModelList

router = APIRouter(prefix="/v1/models", tags=["models"])


@router.get("", response_model=ModelList)
async def list_models(registry: RegistryDep, settings: SettingsDep) -> dict:
    """Every model that loaded, and the request limits (settings) that apply to them."""
    limits = settings.limits()
    models = registry.models
    return {"models": [models[name].info(limits) for name in sorted(models)], "limits": limits}


@router.get("/{name}", response_model=ModelInfo, responses={404: ERROR_RESPONSES[404]})
async def get_model(model: Annotated[ServedModel, Depends(served_model)], settings: SettingsDep) -> dict:
    """One model: its family, data, shape, classes, capabilities, metrics and checkpoint."""
    return model.info(settings.limits())


@router.get("/{name}/latent-map", response_model=LatentMap,
            responses={400: ERROR_RESPONSES[400], 404: ERROR_RESPONSES[404]})
async def latent_map(model: Annotated[ServedModel, Depends(served_model)]) -> LatentMap:
    """Where test images lie in the latent space: the 2-D PCA of their encoder means, coloured by
    label, as the model card keeps it; 400 for a model whose card has none."""
    stored = model.card.get("latent_map")
    if not stored:
        raise CapabilityError(f"the card of {model.name!r} has no latent map (`python -m models.latent_map` "
                              f"computes one for a model with an encoder)")
    try:
        return LatentMap(model=model.name, classes=model.classes, **stored)
    except (TypeError, ValidationError) as e:
        raise CapabilityError(f"the latent map in the card of {model.name!r} is malformed ({e})") from None
