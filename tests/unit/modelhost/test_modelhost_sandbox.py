"""Sandbox example outputs (kiln_modelhost.reference_models.sandbox)."""

from __future__ import annotations

import io
import tempfile
import threading
import time
import wave
from concurrent.futures import ThreadPoolExecutor

import pytest
from PIL import Image

from kiln_modelhost.reference_models import sandbox, speech
from kiln_modelhost.reference_models.errors import ModelInputError
from kiln_modelhost.reference_models.sandbox import sandbox_example, sine_tone_wav


def test_image_example_is_a_png() -> None:
    data, content_type = sandbox_example("image")
    assert content_type == "image/png"
    picture = Image.open(io.BytesIO(data))
    picture.load()
    assert picture.format == "PNG"
    assert picture.size == (512, 512)
    assert sandbox_example("image")[0] is data  # made once, then cached


def test_audio_example_is_a_wav() -> None:
    data, content_type = sandbox_example("audio")
    assert content_type == "audio/wav"
    with wave.open(io.BytesIO(data), "rb") as reader:
        assert reader.getnchannels() == 1
        assert reader.getsampwidth() == 2
        assert reader.getnframes() / reader.getframerate() > 0.5


def test_audio_example_without_espeak_is_a_tone(monkeypatch: pytest.MonkeyPatch) -> None:
    sandbox._example_audio.cache_clear()
    monkeypatch.setattr(speech, "espeak_available", lambda: False)
    try:
        data, content_type = sandbox_example("audio")
        assert content_type == "audio/wav"
        assert data == sine_tone_wav()
    finally:
        sandbox._example_audio.cache_clear()


def test_sine_tone() -> None:
    data = sine_tone_wav(frequency_hz=1000.0, duration_s=0.5, sample_rate=8000)
    with wave.open(io.BytesIO(data), "rb") as reader:
        assert (reader.getframerate(), reader.getnframes()) == (8000, 4000)
        frames = reader.readframes(4000)
    assert max(frames) > 0


def test_video_example_is_a_short_mp4() -> None:
    import imageio_ffmpeg

    data, content_type = sandbox_example("video")
    assert content_type == "video/mp4"
    assert data[4:8] == b"ftyp"
    with tempfile.NamedTemporaryFile(suffix=".mp4") as handle:
        handle.write(data)
        handle.flush()
        frames, seconds = imageio_ffmpeg.count_frames_and_secs(handle.name)
    assert frames == 24
    assert seconds == pytest.approx(2.0, abs=0.1)


@pytest.mark.parametrize("kind", ["", "text", "IMAGE", "3d"])
def test_unknown_kind(kind: str) -> None:
    with pytest.raises(ModelInputError):
        sandbox_example(kind)


def test_an_example_is_made_once_however_many_instances_ask_at_once() -> None:
    calls: list[int] = []
    started = threading.Event()

    def slow() -> bytes:
        calls.append(1)
        started.set()
        time.sleep(0.2)
        return b"example"

    once = sandbox._Once(slow)
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda _: once(), range(8)))
    assert answers == [b"example"] * 8
    assert calls == [1]
    once.cache_clear()
    assert once() == b"example" and calls == [1, 1]


def test_warming_makes_every_example() -> None:
    examples = (
        sandbox._example_image,
        sandbox._example_audio,
        sandbox._example_video,
        sandbox._example_archive,
    )
    for example in examples:
        example.cache_clear()
    sandbox.warm_examples()
    assert all(example._made for example in examples)
