"""Catalog and usage endpoints."""

from typing import Any

from fastapi import APIRouter

from kiln_gateway.deps import CallerDep, StateDep
from kiln_gateway.errors import NotFound
from kiln_runtime.catalog import ModelEntry

router = APIRouter(tags=["catalog"])


def model_json(entry: ModelEntry) -> dict[str, Any]:
    return {
        "id": entry.id,
        "name": entry.name,
        "kind": entry.kind,
        "price": entry.price,
        "content_type": entry.content_type,
        "needs_input_image": entry.needs_input_image,
        "input_schema": entry.input_schema,
    }


@router.get("/models")
async def list_models(caller: CallerDep, state: StateDep) -> dict[str, Any]:
    return {"data": [model_json(m) for m in state.catalog.models]}


@router.get("/models/{owner}/{name}")
async def get_model(owner: str, name: str, caller: CallerDep, state: StateDep) -> dict[str, Any]:
    entry = state.catalog.model(f"{owner}/{name}")
    if entry is None:
        raise NotFound("No such model.")
    return {"data": model_json(entry)}
