"""The model catalog: one data file (kiln_runtime/data/catalog.json by default, or
KILN_CATALOG_FILE) read by the gateway (validation, quotes) and billing (prices)."""

import json
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field

from kiln_runtime.money import parse_credits

DEFAULT_CATALOG_FILE = Path(__file__).parent / "data" / "catalog.json"


class PoolEntry(BaseModel):
    capacity: int = Field(gt=0)
    description: str = ""


class ModelEntry(BaseModel):
    id: str
    name: str
    kind: Literal["image", "video", "audio"]
    content_type: str
    price: str
    pool: str
    triton_model: str
    needs_input_image: bool
    deadline_s: int = Field(gt=0)
    input_schema: dict[str, Any]

    @property
    def price_millicredits(self) -> int:
        return parse_credits(self.price)


class Catalog(BaseModel):
    pools: dict[str, PoolEntry]
    sandbox_pool: str
    sandbox_triton_model: str
    models: list[ModelEntry]

    def model(self, model_id: str) -> ModelEntry | None:
        return next((m for m in self.models if m.id == model_id), None)

    def price_millicredits(self, model_id: str, input_: dict[str, Any], sandbox: bool) -> int:
        """The price of one job now. Sandbox jobs are free; options do not change the price yet."""
        entry = self.model(model_id)
        if entry is None:
            raise KeyError(model_id)
        return 0 if sandbox else entry.price_millicredits

    def pool_for(self, model_id: str, sandbox: bool) -> str:
        entry = self.model(model_id)
        if entry is None:
            raise KeyError(model_id)
        return self.sandbox_pool if sandbox else entry.pool


@lru_cache(maxsize=8)
def load_catalog(path: Path | None = None) -> Catalog:
    source = path or DEFAULT_CATALOG_FILE
    catalog = Catalog.model_validate(json.loads(source.read_text()))
    for entry in catalog.models:
        if entry.pool not in catalog.pools:
            raise ValueError(f"model {entry.id} names unknown pool {entry.pool}")
    return catalog
