"""The catalog as data (kiln_runtime.catalog): Kiln's own models say what they are, their files
and tensors are checked when the file loads, and an operator's file adds models to Kiln's."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from kiln_runtime.catalog import DEFAULT_CATALOG_FILE, Catalog, ModelEntry, load_catalog

BUILTIN = load_catalog()


def test_the_builtin_catalog_has_the_neural_models() -> None:
    ids = {m.id for m in BUILTIN.models}
    assert {
        "kiln/speech",
        "kiln/remove-background",
        "kiln/product-shot",
        "kiln/upscale",
        "kiln/upscale-x4plus",
        "kiln/auto-clip",
    } <= ids


@pytest.mark.parametrize(
    ("model_id", "words"),
    [
        ("kiln/prompt-to-image", ["procedural", "not a neural model"]),
        ("kiln/image-edit", ["procedural"]),
        ("kiln/image-to-video", ["procedural"]),
        ("kiln/text-to-speech", ["espeak-ng"]),
        ("kiln/speech", ["hibari", "Kokoro-82M"]),
        ("kiln/remove-background", ["U²-Net-p"]),
        ("kiln/upscale", ["Real-ESRGAN"]),
        ("kiln/upscale-x4plus", ["Real-ESRGAN", "x4plus"]),
        ("kiln/auto-clip", ["PySceneDetect"]),
    ],
)
def test_names_say_what_each_model_is(model_id: str, words: list[str]) -> None:
    entry = BUILTIN.model(model_id)
    assert entry is not None and entry.description
    for word in words:
        assert word in entry.name


def test_image_models_refuse_people_in_their_description() -> None:
    for entry in BUILTIN.models:
        if entry.input_files:
            assert "person" in entry.description, entry.id


def test_input_files_follow_the_schemas() -> None:
    for entry in BUILTIN.models:
        properties = entry.input_schema["properties"]
        for field in entry.input_files:
            assert properties[field]["format"] == "uri", (entry.id, field)
    clip = BUILTIN.model("kiln/auto-clip")
    assert clip is not None and clip.needs_input_video and not clip.needs_input_image
    assert clip.content_type == "application/zip"
    shot = BUILTIN.model("kiln/product-shot")
    assert shot is not None and shot.input_files == {
        "image_url": "image",
        "background_url": "image",
    }


def test_the_large_upscaler_is_in_the_gpu_pool() -> None:
    large, small = BUILTIN.model("kiln/upscale-x4plus"), BUILTIN.model("kiln/upscale")
    assert large is not None and small is not None
    assert large.pool == "gpu-image" and small.pool == "cpu-image"
    assert "GPU" in BUILTIN.pools["gpu-image"].description


def test_an_old_entry_with_needs_input_image_gets_its_image_field() -> None:
    raw = json.loads(DEFAULT_CATALOG_FILE.read_text())
    edit = next(m for m in raw["models"] if m["id"] == "kiln/image-edit")
    edit.pop("input_files", None)
    assert ModelEntry.model_validate(edit).input_files == {"image_url": "image"}


def _operator_model(**changes: Any) -> dict[str, Any]:
    model: dict[str, Any] = {
        "id": "acme/posterize",
        "name": "Posterize (Acme's Triton)",
        "kind": "image",
        "content_type": "image/png",
        "price": "1.5",
        "pool": "acme-gpu",
        "triton_model": "posterize",
        "triton_server": "triton.acme.internal:8001",
        "triton_model_version": "2",
        "needs_input_image": True,
        "input_files": {"image_url": "image"},
        "deadline_s": 60,
        "input_schema": {
            "type": "object",
            "required": ["image_url"],
            "properties": {"image_url": {"type": "string", "format": "uri", "maxLength": 2048}},
        },
        "tensors": {
            "batching": True,
            "inputs": [
                {
                    "tensor": "IMAGE",
                    "datatype": "UINT8",
                    "field": "image_url",
                    "shape": [-1, -1, 3],
                    "source": "image_rgb",
                },
                {"tensor": "LEVELS", "datatype": "INT32", "field": "levels", "default": 4},
            ],
            "output": {"tensor": "OUT", "encoding": "png"},
        },
    }
    model.update(changes)
    return model


def _write(tmp_path: Path, body: dict[str, Any]) -> Path:
    path = tmp_path / f"catalog-{len(list(tmp_path.iterdir()))}.json"
    path.write_text(json.dumps(body))
    return path


def test_an_operator_file_adds_its_models_to_kilns(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        {
            "include_builtin": True,
            "pools": {"acme-gpu": {"capacity": 4, "description": "Acme's GPU nodes"}},
            "models": [_operator_model()],
        },
    )
    catalog = load_catalog(path)
    assert len(catalog.models) == len(BUILTIN.models) + 1
    entry = catalog.model("acme/posterize")
    assert entry is not None and entry.tensors is not None
    assert entry.triton_server == "triton.acme.internal:8001"
    assert entry.tensors.inputs[0].source == "image_rgb"
    assert catalog.pools["acme-gpu"].capacity == 4
    assert catalog.model("kiln/speech") is not None


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"models": [_operator_model(id="kiln/speech")]}, "already in Kiln's catalog"),
        ({"pools": {"cpu-image": {"capacity": 1}}, "models": []}, "already in Kiln's catalog"),
        ({"models": [_operator_model(pool="nowhere")]}, "unknown pool"),
    ],
)
def test_an_operator_file_cannot_replace_or_dangle(
    tmp_path: Path, extra: dict[str, Any], message: str
) -> None:
    body = {"include_builtin": True, "pools": {"acme-gpu": {"capacity": 1}}, **extra}
    if "pools" in extra:
        body["pools"] = extra["pools"]
    with pytest.raises(ValueError, match=message):
        load_catalog(_write(tmp_path, body))


@pytest.mark.parametrize(
    "changes",
    [
        # a file tensor whose field is not an input file
        {"input_files": {}, "needs_input_image": False},
        # needs_input_image without an image field
        {"input_files": {"video_url": "video"}},
        # a URL field not named *_url
        {"input_files": {"image": "image"}},
        # an unknown key in a tensor
        {
            "tensors": {
                "inputs": [{"tensor": "X", "datatype": "FP32", "field": "x", "oops": 1}],
                "output": {"tensor": "Y"},
            }
        },
        # an unknown datatype
        {
            "tensors": {
                "inputs": [{"tensor": "X", "datatype": "FP8", "field": "x"}],
                "output": {"tensor": "Y"},
            }
        },
        # the worker's batching is for Kiln's own contract, not a tensors model
        {"batching": {"rows": 4, "calls": 2}},
        # no rows at all
        {"tensors": None, "batching": {"rows": 0, "calls": 2}},
    ],
)
def test_bad_operator_entries_fail_to_load(changes: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        Catalog.model_validate(
            {
                "pools": {"acme-gpu": {"capacity": 1}},
                "sandbox_pool": "acme-gpu",
                "sandbox_triton_model": "sandbox",
                "models": [_operator_model(**changes)],
            }
        )


def test_the_sandbox_is_batched_by_the_worker_and_an_operators_sandbox_is_not(
    tmp_path: Path,
) -> None:
    assert BUILTIN.sandbox_batching is not None and BUILTIN.sandbox_batching.rows == 8
    assert all(model.batching is None for model in BUILTIN.models)
    own = load_catalog(_write(tmp_path, {"include_builtin": True, "sandbox_triton_model": "acme"}))
    assert own.sandbox_batching is None
    kept = load_catalog(_write(tmp_path, {"include_builtin": True, "models": []}))
    assert kept.sandbox_batching == BUILTIN.sandbox_batching
