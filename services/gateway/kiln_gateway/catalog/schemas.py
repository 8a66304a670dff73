"""A catalog model as the API shows it."""

from typing import Any

from kiln_runtime.catalog import ModelEntry


def model_json(entry: ModelEntry) -> dict[str, Any]:
    return {
        "id": entry.id,
        "name": entry.name,
        "description": entry.description,
        "kind": entry.kind,
        "price": entry.price,
        "content_type": entry.content_type,
        "needs_input_image": entry.needs_input_image,
        # the input fields holding a URL the worker fetches: {"image_url": "image", ...}
        "input_files": entry.input_files,
        "input_schema": entry.input_schema,
    }
