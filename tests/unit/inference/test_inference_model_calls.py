"""What the worker asks Triton for each catalog model (kiln_inference.attempts), an operator
model's tensors (kiln_inference.tensors), and the nudity screen's decision
(kiln_inference.nudity_check) — pure functions, no server."""

from __future__ import annotations

import io
import json
import wave
from typing import Any

import numpy as np
import pytest
from PIL import Image

from kiln_contracts.v1 import common_pb2, jobs_pb2
from kiln_inference import nudity_check
from kiln_inference.attempts import InvalidJobInput, triton_call
from kiln_inference.inputs import screen_times
from kiln_inference.tensors import (
    TensorInputError,
    TensorOutputError,
    build_inputs,
    result_file,
)
from kiln_runtime.catalog import Catalog, TensorContract, TensorOutput, load_catalog

CATALOG = load_catalog()


def _dispatch(model: str, input_: dict[str, Any], sandbox: bool = False) -> jobs_pb2.JobDispatched:
    spec = common_pb2.JobSpec(model=model, input_json=json.dumps(input_), sandbox=sandbox)
    return jobs_pb2.JobDispatched(spec=spec, attempt=1)


# --- attempts: files, servers, sandbox ---------------------------------------------------------


def test_an_image_model_fetches_its_image() -> None:
    call = triton_call(
        _dispatch("kiln/remove-background", {"image_url": "https://x.test/a.png", "crop": True}),
        CATALOG,
        0,
    )
    assert call.triton_model == "background_u2netp"
    assert call.request == {"crop": True}
    assert [(f.field, f.kind, f.request_field) for f in call.files] == [
        ("image_url", "image", "image_b64")
    ]
    assert call.image_url == "https://x.test/a.png"
    assert call.server is None and call.tensors is None


def test_a_product_shot_fetches_its_optional_background_only_when_named() -> None:
    plain = triton_call(
        _dispatch("kiln/product-shot", {"image_url": "https://x.test/a.png"}), CATALOG, 0
    )
    assert [f.field for f in plain.files] == ["image_url"]
    custom = triton_call(
        _dispatch(
            "kiln/product-shot",
            {
                "image_url": "https://x.test/a.png",
                "background": "image",
                "background_url": "https://x.test/b.jpg",
            },
        ),
        CATALOG,
        0,
    )
    assert [f.request_field for f in custom.files] == ["image_b64", "background_b64"]
    assert custom.request == {"background": "image"}


def test_auto_clip_fetches_a_video() -> None:
    call = triton_call(
        _dispatch("kiln/auto-clip", {"video_url": "https://x.test/v.mp4", "max_clips": 2}),
        CATALOG,
        0,
    )
    assert [(f.field, f.kind, f.request_field) for f in call.files] == [
        ("video_url", "video", "video_b64")
    ]
    assert call.content_type == "application/zip"


@pytest.mark.parametrize("model", ["kiln/upscale", "kiln/auto-clip", "kiln/product-shot"])
def test_a_missing_required_file_is_invalid(model: str) -> None:
    with pytest.raises(InvalidJobInput):
        triton_call(_dispatch(model, {}), CATALOG, 0)


def test_the_sandbox_answers_auto_clip_with_an_archive() -> None:
    call = triton_call(
        _dispatch("kiln/auto-clip", {"video_url": "https://x.test/v.mp4"}, sandbox=True),
        CATALOG,
        100,
    )
    assert call.triton_model == "sandbox"
    assert call.request["content_type"] == "application/zip"
    image = triton_call(
        _dispatch("kiln/upscale", {"image_url": "https://x.test/a.png"}, sandbox=True), CATALOG, 0
    )
    assert "content_type" not in image.request and image.files == ()


def test_sandbox_calls_batch_only_with_equal_delays() -> None:
    quick = triton_call(_dispatch("kiln/upscale", {}, sandbox=True), CATALOG, 0)
    slow = triton_call(_dispatch("kiln/upscale", {}, sandbox=True), CATALOG, 2000)
    assert quick.batching is not None and quick.batching == CATALOG.sandbox_batching
    assert quick.batch_class != slow.batch_class
    # Kiln's own models have instances of their own: each job is its own request
    assert triton_call(_dispatch("kiln/speech", {"text": "hi"}), CATALOG, 0).batching is None


def _operator_catalog() -> Catalog:
    raw = {
        "pools": {"acme": {"capacity": 2}},
        "sandbox_pool": "acme",
        "sandbox_triton_model": "sandbox",
        "models": [
            {
                "id": "acme/posterize",
                "name": "Posterize",
                "kind": "image",
                "content_type": "image/png",
                "price": "1",
                "pool": "acme",
                "triton_model": "posterize",
                "triton_server": "10.1.2.3:8001",
                "triton_model_version": "3",
                "needs_input_image": True,
                "deadline_s": 30,
                "input_schema": {"type": "object", "required": ["image_url"], "properties": {}},
                "tensors": {
                    "inputs": [
                        {
                            "tensor": "IMAGE",
                            "datatype": "UINT8",
                            "field": "image_url",
                            "shape": [-1, -1, 3],
                            "source": "image_rgb",
                        },
                        {"tensor": "LEVELS", "datatype": "INT32", "field": "levels", "default": 4},
                        {"tensor": "LABEL", "datatype": "BYTES", "field": "label"},
                    ],
                    "output": {"tensor": "OUT", "encoding": "png"},
                },
            }
        ],
    }
    return Catalog.model_validate(raw)


def test_an_operator_model_is_called_on_its_own_server() -> None:
    catalog = _operator_catalog()
    call = triton_call(
        _dispatch("acme/posterize", {"image_url": "https://x.test/a.png", "levels": 3}), catalog, 0
    )
    assert (call.server, call.triton_model, call.model_version) == (
        "10.1.2.3:8001",
        "posterize",
        "3",
    )
    assert call.tensors is not None and call.request == {"levels": 3}


# --- tensors -----------------------------------------------------------------------------------


def _png(width: int, height: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), (200, 30, 60)).save(buffer, format="PNG")
    return buffer.getvalue()


def test_inputs_fill_their_tensors_with_a_batch_dimension() -> None:
    contract = _operator_catalog().models[0].tensors
    assert contract is not None
    tensors = build_inputs(contract, {"levels": 3, "label": "poster"}, {"image_url": _png(5, 4)})
    by_name = {t.name: t for t in tensors}
    assert by_name["IMAGE"].array.shape == (1, 4, 5, 3)
    assert by_name["IMAGE"].array.dtype == np.uint8
    assert by_name["IMAGE"].array[0, 0, 0].tolist() == [200, 30, 60]
    assert by_name["LEVELS"].array.tolist() == [[3]] and by_name["LEVELS"].datatype == "INT32"
    assert by_name["LABEL"].array.tolist() == [[b"poster"]]


def test_a_default_fills_a_missing_field_and_an_optional_input_is_left_out() -> None:
    contract = _operator_catalog().models[0].tensors
    assert contract is not None
    tensors = build_inputs(contract, {}, {"image_url": _png(2, 2)})
    assert {t.name: t.array.tolist() for t in tensors if t.name != "IMAGE"} == {"LEVELS": [[4]]}


def test_without_batching_there_is_no_batch_dimension() -> None:
    contract = TensorContract.model_validate(
        {
            "batching": False,
            "inputs": [
                {"tensor": "X", "datatype": "FP32", "field": "x", "shape": [3]},
                {"tensor": "J", "datatype": "BYTES", "field": "opts", "source": "json"},
            ],
            "output": {"tensor": "Y"},
        }
    )
    tensors = build_inputs(contract, {"x": [1, 2.5, 3], "opts": {"a": 1}}, {})
    assert tensors[0].array.shape == (3,) and tensors[0].array.dtype == np.float32
    assert tensors[1].array.tolist() == [b'{"a": 1}']


@pytest.mark.parametrize(
    ("spec", "value"),
    [
        ({"tensor": "X", "datatype": "INT32", "field": "x"}, "seven"),
        ({"tensor": "X", "datatype": "INT32", "field": "x", "shape": [2]}, [1, 2, 3]),
        ({"tensor": "X", "datatype": "UINT8", "field": "x"}, 300),
        ({"tensor": "X", "datatype": "FP32", "field": "x", "shape": [2]}, [[1, 2], [3]]),
    ],
)
def test_values_that_do_not_fit_are_the_jobs_fault(spec: dict[str, Any], value: Any) -> None:
    contract = TensorContract.model_validate({"inputs": [spec], "output": {"tensor": "Y"}})
    with pytest.raises(TensorInputError):
        build_inputs(contract, {"x": value}, {})


def test_an_unreadable_image_is_the_jobs_fault() -> None:
    contract = _operator_catalog().models[0].tensors
    assert contract is not None
    with pytest.raises(TensorInputError):
        build_inputs(contract, {}, {"image_url": b"not a picture"})


def test_png_outputs_from_uint8_floats_and_planar() -> None:
    output = TensorOutput(tensor="OUT", encoding="png")
    pixels = np.zeros((1, 4, 6, 3), dtype=np.uint8)
    pixels[0, :, :, 1] = 255
    picture = Image.open(io.BytesIO(result_file(output, pixels, batching=True)))
    assert picture.size == (6, 4) and picture.getpixel((0, 0)) == (0, 255, 0)
    floats = np.full((3, 4, 6), 0.5, dtype=np.float32)  # planar, no batch
    picture = Image.open(io.BytesIO(result_file(output, floats, batching=False)))
    assert picture.size == (6, 4) and picture.getpixel((0, 0)) == (128, 128, 128)


def test_wav_and_file_outputs() -> None:
    wav = result_file(
        TensorOutput(tensor="AUDIO", encoding="wav", sample_rate=16000),
        np.sin(np.linspace(0, 100, 1600, dtype=np.float32))[None, :],
        batching=True,
    )
    with wave.open(io.BytesIO(wav)) as reader:
        assert reader.getframerate() == 16000 and reader.getnframes() == 1600
    holder = np.empty((1, 1), dtype=object)
    holder[0, 0] = b"%PDF-1.7 ..."
    assert result_file(TensorOutput(tensor="F"), holder, batching=True) == b"%PDF-1.7 ..."


@pytest.mark.parametrize(
    ("output", "array"),
    [
        (TensorOutput(tensor="OUT", encoding="png"), None),
        (TensorOutput(tensor="OUT", encoding="png"), np.zeros((2, 2, 2, 2, 2), dtype=np.uint8)),
        (TensorOutput(tensor="OUT", encoding="png"), np.zeros((4, 4, 3), dtype=np.int64)),
        (TensorOutput(tensor="OUT", encoding="file"), np.zeros((1, 1), dtype=np.float32)),
        (TensorOutput(tensor="OUT", encoding="wav"), np.zeros((1, 8), dtype=np.int64)),
    ],
)
def test_outputs_that_are_not_the_declared_file_are_the_models_fault(
    output: TensorOutput, array: Any
) -> None:
    with pytest.raises(TensorOutputError):
        result_file(output, array, batching=True)


# --- screening decisions -----------------------------------------------------------------------


def test_video_screen_times_are_spread_and_bounded() -> None:
    assert len(screen_times(3.0)) == 6
    assert len(screen_times(30.0)) == 12
    assert len(screen_times(600.0)) == 24
    times = screen_times(10.0)
    assert times == sorted(times) and 0 < times[0] and times[-1] < 10.0


def _detection(label: str, score: float, box: list[int]) -> dict[str, Any]:
    return {"class": label, "score": score, "box": box}


def test_exposed_parts_on_skin_are_sexual_content() -> None:
    skin = np.zeros((100, 100), dtype=bool)
    skin[20:80, 20:80] = True
    found = nudity_check.sexual_findings(
        [
            _detection("FEMALE_BREAST_EXPOSED", 0.8, [20, 20, 60, 60]),
            _detection("FACE_FEMALE", 0.9, [0, 0, 10, 10]),
        ],
        skin,
    )
    assert [f.label for f in found] == ["FEMALE_BREAST_EXPOSED"]


@pytest.mark.parametrize(
    "detection",
    [
        _detection("FEMALE_BREAST_EXPOSED", 0.45, [20, 20, 60, 60]),  # below the score
        _detection("BELLY_EXPOSED", 0.95, [20, 20, 60, 60]),  # not refused
        _detection("BUTTOCKS_COVERED", 0.95, [20, 20, 60, 60]),  # covered
        _detection("BUTTOCKS_EXPOSED", 0.83, [0, 0, 20, 100]),  # a box without skin tone
    ],
)
def test_what_is_not_sexual_content(detection: dict[str, Any]) -> None:
    skin = np.zeros((100, 100), dtype=bool)
    skin[20:80, 20:80] = True
    assert nudity_check.sexual_findings([detection], skin) == []


def test_in_a_grey_picture_the_score_alone_decides() -> None:
    detection = _detection("MALE_GENITALIA_EXPOSED", 0.7, [0, 0, 50, 50])
    assert nudity_check.sexual_findings([detection], None)


def test_the_skin_mask_knows_grey_from_colour() -> None:
    grey = np.full((10, 10, 3), 120, dtype=np.uint8)
    assert nudity_check.skin_mask(grey) is None
    tone = np.zeros((10, 10, 3), dtype=np.uint8)
    tone[:5] = (224, 172, 138)  # a light skin tone
    tone[5:] = (30, 90, 200)  # blue
    mask = nudity_check.skin_mask(tone)
    assert mask is not None and mask[:5].all() and not mask[5:].any()
