"""Catalog endpoints: the models a key can run (the catalog is data: docs/architecture.md,
"Catalog")."""

from typing import Any

from fastapi import APIRouter

from kiln_gateway.catalog.schemas import model_json
from kiln_gateway.deps import CallerDep, StateDep
from kiln_gateway.errors import NotFound

router = APIRouter(tags=["catalog"])


@router.get("/models")
async def list_models(caller: CallerDep, state: StateDep) -> dict[str, Any]:
    return {"data": [model_json(m) for m in state.catalog.models]}


@router.get("/models/{owner}/{name}")
async def get_model(owner: str, name: str, caller: CallerDep, state: StateDep) -> dict[str, Any]:
    entry = state.catalog.model(f"{owner}/{name}")
    if entry is None:
        raise NotFound("No such model.")
    return {"data": model_json(entry)}
