"""The model catalog: one data file (kiln_runtime/data/catalog.json by default, or
KILN_CATALOG_FILE) read by the gateway (validation, quotes), billing (prices), the scheduler
(pools, deadlines) and inference (how each model is served).

A model is served by a Triton server: Kiln's model host (the default, at the worker's
KILN_TRITON_GRPC_URL) or any other one the entry names (``triton_server``). Kiln's own models
speak its JSON contract (one BYTES tensor ``request`` in; ``output``, ``content_type``,
``error`` out; see kiln_modelhost.contract). An operator's model declares its tensors instead
(``tensors``): which job input field fills which input tensor, and which output tensor is the
result file (docs/models.md, "Adding a model").

An operator's catalog file may set ``"include_builtin": true``: Kiln's own pools and models are
then part of it, and it adds its own (a pool or model id may not appear twice).
"""

import json
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from kiln_runtime.money import parse_credits

DEFAULT_CATALOG_FILE = Path(__file__).parent / "data" / "catalog.json"

FileKind = Literal["image", "video"]
TensorDatatype = Literal[
    "BYTES", "BOOL", "UINT8", "INT8", "INT16", "INT32", "INT64", "FP16", "FP32", "FP64"
]


class PoolEntry(BaseModel):
    capacity: int = Field(gt=0)
    description: str = ""


class TensorInput(BaseModel):
    """One input tensor of an operator's model, filled from the job's input."""

    model_config = ConfigDict(extra="forbid")

    tensor: str = Field(min_length=1)
    datatype: TensorDatatype
    # the job input's field; for a file field (see ``input_files``) the fetched file
    field: str = Field(min_length=1)
    # per request, without the batch dimension; -1 takes that dimension from the value
    shape: list[int] = Field(default_factory=lambda: [1])
    # "value": the JSON value (a string is UTF-8 bytes in a BYTES tensor; numbers and nested
    # lists as they are); "json": the value as JSON text (BYTES); "file": the fetched file's
    # bytes (BYTES); "image_rgb": the fetched picture decoded to (height, width, 3) UINT8
    source: Literal["value", "json", "file", "image_rgb"] = "value"
    # the value when the job's input does not have the field; without one the tensor is left
    # out of the request (for an optional input of the model)
    default: Any = None


class TensorOutput(BaseModel):
    """Which output tensor of an operator's model is the job's result, and how it becomes a
    file of the entry's ``content_type``."""

    model_config = ConfigDict(extra="forbid")

    tensor: str = Field(min_length=1)
    # "file": a BYTES tensor holding the file; "png": a picture (H, W, 1|3|4) as UINT8, or as
    # floats in [0, 1]; "wav": audio samples (floats in [-1, 1] or INT16), mono
    encoding: Literal["file", "png", "wav"] = "file"
    sample_rate: int = Field(default=24_000, gt=0)


class TensorContract(BaseModel):
    model_config = ConfigDict(extra="forbid")

    # the model's config has max_batch_size > 0: each request carries a batch dimension of 1
    # (Triton's dynamic batcher on that server then groups concurrent jobs)
    batching: bool = True
    inputs: list[TensorInput] = Field(min_length=1)
    output: TensorOutput


class ClientBatching(BaseModel):
    """Requests for one model that wait at the same time go to Triton as one request of up to
    ``rows`` rows, with at most ``calls`` such requests in flight (docs/architecture.md,
    "Inference"). For models whose batch of N costs less than N requests one by one (the
    sandbox, vectorised GPU models); ``rows`` must not exceed the model's ``max_batch_size``."""

    rows: int = Field(default=8, ge=1, le=1024)
    calls: int = Field(default=8, ge=1, le=1024)


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
    description: str = ""
    # where the model is served: a Triton gRPC address; None is Kiln's model host
    triton_server: str | None = None
    # "" is the version Triton's policy picks (usually the latest)
    triton_model_version: str = ""
    # None: Kiln's JSON contract; else the tensors of an operator's model
    tensors: TensorContract | None = None
    # job input fields holding a URL that the worker fetches, checks and screens before the
    # call (Kiln's contract gets the file as ``<name less _url>_b64``)
    input_files: dict[str, FileKind] = Field(default_factory=dict)
    # None: every job is its own Triton request (Triton's dynamic batcher may still group them)
    batching: ClientBatching | None = None

    @model_validator(mode="after")
    def _files_and_flags_agree(self) -> "ModelEntry":
        if self.needs_input_image and not self.input_files:
            self.input_files = {"image_url": "image"}
        if self.needs_input_image != ("image" in self.input_files.values()):
            raise ValueError(f"model {self.id}: needs_input_image disagrees with input_files")
        for field in self.input_files:
            if not field.endswith("_url"):
                raise ValueError(f"model {self.id}: input file field {field} must end in _url")
        if self.tensors is not None and self.batching is not None:
            raise ValueError(
                f"model {self.id}: batching is for Kiln's own contract; a tensors model "
                "uses tensors.batching (Triton's dynamic batcher)"
            )
        if self.tensors is not None:
            for tensor in self.tensors.inputs:
                is_file = tensor.source in ("file", "image_rgb")
                if is_file != (tensor.field in self.input_files):
                    raise ValueError(
                        f"model {self.id}: tensor {tensor.tensor} takes {tensor.source} "
                        f"but {tensor.field} is {'not ' if is_file else ''}an input file"
                    )
                if tensor.source == "image_rgb" and self.input_files[tensor.field] != "image":
                    raise ValueError(f"model {self.id}: image_rgb needs an image field")
        return self

    @property
    def price_millicredits(self) -> int:
        return parse_credits(self.price)

    @property
    def needs_input_video(self) -> bool:
        return "video" in self.input_files.values()


class Catalog(BaseModel):
    pools: dict[str, PoolEntry]
    sandbox_pool: str
    sandbox_triton_model: str
    sandbox_batching: ClientBatching | None = None
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


def _merged_with_builtin(extra: dict[str, Any]) -> dict[str, Any]:
    """An operator's catalog file with ``include_builtin`` on top of Kiln's own."""
    base = json.loads(DEFAULT_CATALOG_FILE.read_text())
    pools = dict(base["pools"])
    for name, pool in extra.get("pools", {}).items():
        if name in pools:
            raise ValueError(f"pool {name} is already in Kiln's catalog")
        pools[name] = pool
    ids = {model["id"] for model in base["models"]}
    models = list(base["models"])
    for model in extra.get("models", []):
        if model.get("id") in ids:
            raise ValueError(f"model {model.get('id')} is already in Kiln's catalog")
        ids.add(model.get("id"))
        models.append(model)
    return {
        "pools": pools,
        "sandbox_pool": extra.get("sandbox_pool", base["sandbox_pool"]),
        "sandbox_triton_model": extra.get("sandbox_triton_model", base["sandbox_triton_model"]),
        # Kiln's batching suits Kiln's sandbox model, not necessarily an operator's own
        "sandbox_batching": (
            extra["sandbox_batching"]
            if "sandbox_batching" in extra
            else None
            if "sandbox_triton_model" in extra
            else base.get("sandbox_batching")
        ),
        "models": models,
    }


@lru_cache(maxsize=8)
def load_catalog(path: Path | None = None) -> Catalog:
    source = path or DEFAULT_CATALOG_FILE
    raw = json.loads(source.read_text())
    if isinstance(raw, dict) and raw.pop("include_builtin", False):
        raw = _merged_with_builtin(raw)
    catalog = Catalog.model_validate(raw)
    seen: set[str] = set()
    for entry in catalog.models:
        if entry.pool not in catalog.pools:
            raise ValueError(f"model {entry.id} names unknown pool {entry.pool}")
        if entry.id in seen:
            raise ValueError(f"model {entry.id} appears twice")
        seen.add(entry.id)
    return catalog
