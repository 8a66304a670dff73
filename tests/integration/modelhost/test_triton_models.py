"""The procedural reference models and the sandbox on a real Triton server (PyTriton), called
through triton_client (the server: conftest.py's session fixture)."""

from __future__ import annotations

import asyncio
import base64
import io
import time
import wave
from pathlib import Path

import imageio_ffmpeg
import pytest
from PIL import Image

from kiln_inference.triton_batches import RowBatcher
from kiln_inference.triton_client import (
    TritonInferenceError,
    close_clients,
    encode_request,
    infer_file,
    triton_ready,
)
from kiln_modelhost.reference_models import speech
from kiln_modelhost.reference_models.edit import edit_image
from kiln_modelhost.reference_models.image import render_image
from tests.integration.modelhost.conftest import (
    MODELS,
    SANDBOX_DELAY_MS,
    TritonServer,
    free_ports,
)

pytestmark = pytest.mark.integration

needs_espeak = pytest.mark.skipif(
    not speech.espeak_available(),
    reason="espeak-ng is not installed (apt-get install espeak-ng; deploy/local/apt-packages.txt)",
)

_PNG_B64 = base64.b64encode(render_image("tiny", 0, 64, 64)).decode()


# --- models ------------------------------------------------------------------------------------


async def test_image_model(triton_server: TritonServer) -> None:
    request = {"prompt": "a red sunset over the ocean", "seed": 11, "width": 320, "height": 192}
    data, content_type = await infer_file(triton_server.url, "image_procedural", request, 60)
    assert content_type == "image/png"
    picture = Image.open(io.BytesIO(data))
    assert picture.size == (320, 192)
    # the server renders exactly what the reference function renders here
    assert data == render_image("a red sunset over the ocean", 11, 320, 192)


async def test_image_model_defaults(triton_server: TritonServer) -> None:
    data, _ = await infer_file(triton_server.url, "image_procedural", {"prompt": "ice"}, 60)
    assert Image.open(io.BytesIO(data)).size == (512, 512)


@needs_espeak
async def test_speech_model(triton_server: TritonServer) -> None:
    text = "Hello from Kiln. This is a test."
    request = {"text": text, "voice": "en-gb", "words_per_minute": 150}
    data, content_type = await infer_file(triton_server.url, "tts_espeak", request, 60)
    assert content_type == "audio/wav"
    with wave.open(io.BytesIO(data), "rb") as reader:
        duration = reader.getnframes() / reader.getframerate()
    assert 1.0 < duration < 8.0
    # byte for byte, including the silent (all-zero) end
    assert data == speech.synthesize_speech(text, "en-gb", 150)


async def test_image_edit_model(triton_server: TritonServer) -> None:
    source = render_image("a calm blue sea", 3, 328, 200)
    request = {"image_b64": base64.b64encode(source).decode(), "prompt": "autumn fire", "seed": 2}
    data, content_type = await infer_file(triton_server.url, "image_edit", request, 60)
    assert content_type == "image/png"
    edited = Image.open(io.BytesIO(data))
    assert edited.format == "PNG"
    assert edited.size == (328, 200)
    # an edit, not a copy: the pixels moved towards the prompt's palette
    assert data != source
    assert data == edit_image(source, "autumn fire", 2)


async def test_video_model(triton_server: TritonServer, tmp_path: Path) -> None:
    source = render_image("a forest at dawn", 5, 512, 384)
    request = {
        "image_b64": base64.b64encode(source).decode(),
        "motion": "pan_right",
        "duration_s": 2,
        "fps": 12,
        "width": 256,
        "height": 192,
    }
    data, content_type = await infer_file(triton_server.url, "video_camera", request, 120)
    assert content_type == "video/mp4"
    path = tmp_path / "out.mp4"
    path.write_bytes(data)
    reader = imageio_ffmpeg.read_frames(str(path))
    meta = next(reader)
    frames = sum(1 for _ in reader)
    assert meta["size"] == (256, 192)
    assert meta["codec"] == "h264"
    assert frames == 24
    assert meta["duration"] == pytest.approx(2.0, abs=0.1)


@pytest.mark.parametrize(
    ("kind", "content_type"),
    [("image", "image/png"), ("audio", "audio/wav"), ("video", "video/mp4")],
)
async def test_sandbox_model(triton_server: TritonServer, kind: str, content_type: str) -> None:
    started = time.perf_counter()
    data, got = await infer_file(triton_server.url, "sandbox", {"kind": kind, "delay_ms": None}, 60)
    elapsed = time.perf_counter() - started
    assert got == content_type
    assert elapsed >= SANDBOX_DELAY_MS / 1000.0  # the server's default delay
    if kind == "image":
        assert Image.open(io.BytesIO(data)).format == "PNG"
    elif kind == "video":
        assert data[4:8] == b"ftyp"
    else:
        with wave.open(io.BytesIO(data), "rb") as reader:
            assert reader.getnframes() > 0


async def test_sandbox_requests_wait_concurrently(triton_server: TritonServer) -> None:
    request = {"kind": "image", "delay_ms": 1000}
    started = time.perf_counter()
    results = await asyncio.gather(
        *(infer_file(triton_server.url, "sandbox", request, 30) for _ in range(8))
    )
    elapsed = time.perf_counter() - started
    assert all(content_type == "image/png" for _, content_type in results)
    # One after the other they would take 8 s; waiting together, about one delay. The upper
    # bound leaves a loaded machine room and still tells the two apart.
    assert 1.0 <= elapsed < 7.0, f"8 concurrent 1 s sandbox requests took {elapsed:.2f} s"


async def test_sandbox_failures_stay_with_their_request(triton_server: TritonServer) -> None:
    # 16 at once: more than the model has instances, so some share a dynamic batch
    async def one(index: int) -> str:
        outcome = "failed" if index % 3 == 0 else "completed"
        request = {"kind": "audio", "delay_ms": 300, "outcome": outcome}
        try:
            _, content_type = await infer_file(triton_server.url, "sandbox", request, 30)
        except TritonInferenceError as error:
            assert not error.retryable
            return error.code
        return content_type

    results = await asyncio.gather(*(one(index) for index in range(16)))
    assert results == ["SANDBOX_FAILED" if i % 3 == 0 else "audio/wav" for i in range(16)]


# --- errors ------------------------------------------------------------------------------------


async def test_sandbox_failed_outcome(triton_server: TritonServer) -> None:
    with pytest.raises(TritonInferenceError) as caught:
        await infer_file(
            triton_server.url, "sandbox", {"kind": "image", "delay_ms": 0, "outcome": "failed"}, 30
        )
    assert caught.value.code == "SANDBOX_FAILED"
    assert not caught.value.retryable
    assert str(caught.value).startswith("SANDBOX_FAILED")
    assert "Traceback" not in caught.value.message


@pytest.mark.parametrize(
    ("model", "request_"),
    [
        ("image_procedural", {"prompt": ""}),
        ("image_procedural", {"prompt": "ok", "width": 100}),
        ("image_procedural", {"prompt": "ok", "seed": -1}),
        ("image_procedural", {"text": "wrong model"}),
        ("tts_espeak", {"text": "hi", "voice": "klingon"}),
        ("tts_espeak", {"text": "hi", "words_per_minute": 1000}),
        ("tts_espeak", {}),
        ("sandbox", {"kind": "hologram"}),
        ("image_edit", {"prompt": "ok", "image_b64": "bm90IGFuIGltYWdl"}),
        ("image_edit", {"prompt": "ok", "image_b64": "!!!"}),
        ("image_edit", {"prompt": "ok"}),
        ("video_camera", {"image_b64": "bm90IGFuIGltYWdl"}),
        ("video_camera", {"image_b64": _PNG_B64, "motion": "spin"}),
        ("video_camera", {"image_b64": _PNG_B64, "width": 100}),
        ("video_camera", {"image_b64": _PNG_B64, "duration_s": 60}),
        ("sandbox", {"kind": "image", "delay_ms": -5}),
    ],
)
async def test_bad_input_is_not_retryable(
    triton_server: TritonServer, model: str, request_: dict[str, object]
) -> None:
    with pytest.raises(TritonInferenceError) as caught:
        await infer_file(triton_server.url, model, request_, 30)
    assert caught.value.code == "INVALID_INPUT"
    assert not caught.value.retryable
    assert "Traceback" not in caught.value.message
    assert "/" not in caught.value.message  # no server paths


async def test_unknown_model(triton_server: TritonServer) -> None:
    with pytest.raises(TritonInferenceError) as caught:
        await infer_file(triton_server.url, "no_such_model", {"x": 1}, 10)
    assert caught.value.code == "MODEL_UNAVAILABLE"
    assert caught.value.retryable


async def test_timeout_is_retryable(triton_server: TritonServer) -> None:
    started = time.perf_counter()
    with pytest.raises(TritonInferenceError) as caught:
        await infer_file(triton_server.url, "sandbox", {"kind": "image", "delay_ms": 3000}, 0.5)
    assert caught.value.code == "TRITON_TIMEOUT"
    assert caught.value.retryable
    # The client gave up at its timeout, not when the 3 s model answered (or later).
    assert time.perf_counter() - started < 2.9


async def test_wrong_port_is_unavailable_and_retryable(triton_server: TritonServer) -> None:
    (port,) = free_ports(1)
    url = f"127.0.0.1:{port}"
    try:
        assert not await triton_ready(url)
        with pytest.raises(TritonInferenceError) as caught:
            await infer_file(url, "sandbox", {"kind": "image"}, 5)
        assert caught.value.code == "TRITON_UNAVAILABLE"
        assert caught.value.retryable
    finally:
        await close_clients(url)


async def test_server_is_ready(triton_server: TritonServer) -> None:
    assert await triton_ready(triton_server.url)
    assert await triton_ready(triton_server.url, MODELS)
    assert not await triton_ready(triton_server.url, ["no_such_model"])


async def test_dynamic_batching_groups_waiting_requests(triton_server: TritonServer) -> None:
    # 12 requests at once on a model with 2 instances: those that wait are batched together
    source = base64.b64encode(render_image("batch", 0, 256, 256)).decode()
    requests = [{"image_b64": source, "prompt": f"style {i}", "seed": i} for i in range(12)]
    results = await asyncio.gather(
        *(infer_file(triton_server.url, "image_edit", r, 60) for r in requests)
    )
    assert all(content_type == "image/png" for _, content_type in results)
    # each request got its own answer, in order
    assert results[3][0] == edit_image(base64.b64decode(source), "style 3", 3)
    sizes = [
        int(line.split(" batch=")[1].split()[0])
        for line in triton_server.log.read_text().splitlines()
        if "model=image_edit batch=" in line
    ]
    assert sum(sizes) >= 12
    assert max(sizes) > 1, f"no dynamic batch formed: {sizes}"


async def test_client_batches_keep_each_rows_answer(triton_server: TritonServer) -> None:
    # 24 sandbox rows through one batcher with 2 calls in flight: they leave as requests of
    # several rows, and every row gets its own answer or its own failure
    rows = RowBatcher(url=triton_server.url, triton_model="sandbox", rows=8, calls=2)
    kinds = [("image", "image/png"), ("audio", "audio/wav"), ("video", "video/mp4")]

    async def one(index: int) -> str:
        kind = kinds[index % 3][0]
        outcome = "failed" if index % 5 == 0 else "completed"
        payload = encode_request({"kind": kind, "delay_ms": 50, "outcome": outcome})
        try:
            _, content_type = await rows.infer(payload, 30)
        except TritonInferenceError as error:
            return error.code
        return content_type

    results = await asyncio.gather(*(one(index) for index in range(24)))
    assert results == ["SANDBOX_FAILED" if i % 5 == 0 else kinds[i % 3][1] for i in range(24)]
    assert sum(rows.sizes) == 24
    assert max(rows.sizes) > 1, f"no request carried several rows: {rows.sizes}"
    assert len(rows.sizes) < 24


async def test_a_client_batch_that_fails_alike_fails_each_row(triton_server: TritonServer) -> None:
    rows = RowBatcher(url=triton_server.url, triton_model="sandbox", rows=8, calls=1)
    payload = encode_request({"kind": "image", "delay_ms": 0, "outcome": "failed"})
    results = await asyncio.gather(
        *(rows.infer(payload, 30) for _ in range(4)), return_exceptions=True
    )
    assert rows.sizes == [4]
    for result in results:
        assert isinstance(result, TritonInferenceError)
        assert (result.code, result.retryable) == ("SANDBOX_FAILED", False)
