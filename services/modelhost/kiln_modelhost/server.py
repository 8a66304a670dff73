"""Kiln's local Triton Inference Server (PyTriton) with the reference models on the CPU.

    python -m kiln_modelhost --http-port 8000 --grpc-port 8001 --metrics-port 8002 \\
        [--address 127.0.0.1] [--sandbox-delay-ms 10000] [--sandbox-instances 8]

Each flag falls back to an environment variable (KILN_TRITON_HTTP_PORT, KILN_TRITON_GRPC_PORT,
KILN_TRITON_METRICS_PORT, KILN_TRITON_ADDRESS, KILN_SANDBOX_DELAY_MS, KILN_SANDBOX_INSTANCES),
then to the default shown above.

Models (the catalog's ``triton_model`` names), all with one tensor contract:

* input ``request``: BYTES, shape (1,) per request: the job input as UTF-8 JSON
  (``tts_espeak``: {text, voice?, words_per_minute?};
  ``image_procedural``: {prompt, seed?, width?, height?};
  ``image_edit``: {image_b64, prompt, seed?, strength?};
  ``video_camera``: {image_b64, motion?, duration_s?, fps?, width?, height?};
  (``image_b64``: the input image the worker fetched, standard base64; the worker drops the
  job input's ``image_url``);
  ``sandbox``: {kind, delay_ms?: int | null, outcome?: "completed" | "failed"}; a null or
  absent delay_ms means the server's ``--sandbox-delay-ms``).
* outputs ``output`` (BYTES: the file), ``content_type`` (BYTES, e.g. ``image/png``) and
  ``error`` (BYTES: empty, or JSON ``{"code", "message"}``; see below).

Errors. When a request fails, Triton answers it with an error whose text contains
``CODE: message`` (codes: INVALID_INPUT, SANDBOX_FAILED, MODEL_ERROR; a sandbox asked to fail
gives ``SANDBOX_FAILED: …``). PyTriton can only fail a whole dynamic batch at once, and then
prefixes the text with a traceback; kiln_inference.triton_client extracts the code and message.
So that one bad request never fails the good requests batched with it, a batch whose requests
did not all fail with the same error is answered normally, and each failed request carries its
error in the ``error`` output instead (with an empty ``output``). Clients must check both.

Concurrency. Each model has several instances (tts_espeak 2, image_procedural 2, image_edit 2,
video_camera 1, sandbox 8: the
catalog's pool capacities), each running one dynamic batch (up to 8 requests, no added queue
delay) at a time, request after request. A sandbox batch waits out its longest delay once, so
requests waiting together take about one delay, not the sum; 8 instances mean that up to 8
sandbox requests (the pool's capacity) never share a batch and each keeps its own delay.

Readiness. PyTriton starts Triton with no model and then loads them one by one, so
``/v2/health/ready`` turns true before the models are ready: check each model's readiness
(``/v2/models/NAME/ready``, or ``triton_client.triton_ready(url, models)``).
"""

from __future__ import annotations

import argparse
import base64
import binascii
import json
import logging
import os
import signal
import sys
import sysconfig
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any, cast

import numpy as np
from numpy.typing import NDArray

from kiln_modelhost.reference_models import edit, image, sandbox, speech, video
from kiln_modelhost.reference_models.errors import (
    ModelError,
    ModelInputError,
    ModelRuntimeError,
    SandboxFailedError,
)

LOGGER = logging.getLogger("kiln_modelhost.server")

REQUEST_INPUT = "request"
OUTPUT = "output"
CONTENT_TYPE_OUTPUT = "content_type"
ERROR_OUTPUT = "error"

TTS_MODEL = "tts_espeak"
IMAGE_MODEL = "image_procedural"
EDIT_MODEL = "image_edit"
VIDEO_MODEL = "video_camera"
SANDBOX_MODEL = "sandbox"

ALL_MODELS = (TTS_MODEL, IMAGE_MODEL, EDIT_MODEL, VIDEO_MODEL, SANDBOX_MODEL)

DEFAULT_HTTP_PORT = 8000
DEFAULT_GRPC_PORT = 8001
DEFAULT_METRICS_PORT = 8002
DEFAULT_ADDRESS = "127.0.0.1"
DEFAULT_SANDBOX_DELAY_MS = 10_000
DEFAULT_SANDBOX_INSTANCES = 8
# A sandbox request holds a model instance for its whole delay, even after its client gave up.
MAX_SANDBOX_DELAY_MS = 600_000
SANDBOX_OUTCOMES = ("completed", "failed")

ObjectArray = NDArray[np.object_]
Result = tuple[bytes, str]
Handler = Callable[[dict[str, Any]], Result]


# --- request parsing ------------------------------------------------------------------------


def decode_request(raw: object) -> dict[str, Any]:
    """The JSON object carried by one ``request`` tensor element."""
    if isinstance(raw, np.bytes_):
        raw = bytes(raw)
    if isinstance(raw, str):
        raw = raw.encode("utf-8")
    if not isinstance(raw, bytes):
        raise ModelInputError("request must be UTF-8 JSON bytes")
    try:
        decoded = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelInputError("request is not valid UTF-8 JSON") from exc
    if not isinstance(decoded, dict):
        raise ModelInputError("request must be a JSON object")
    return decoded


def _only_fields(request: Mapping[str, Any], allowed: Sequence[str]) -> None:
    unknown = sorted(set(request) - set(allowed))
    if unknown:
        raise ModelInputError(f"unknown field(s): {', '.join(unknown)}")


def _required(request: Mapping[str, Any], name: str) -> Any:
    if name not in request:
        raise ModelInputError(f"{name} is required")
    return request[name]


def handle_speech(request: dict[str, Any]) -> Result:
    """``tts_espeak``: {text, voice = "en", words_per_minute = 170} → WAV."""
    _only_fields(request, ("text", "voice", "words_per_minute"))
    audio = speech.synthesize_speech(
        _required(request, "text"),
        request.get("voice", "en"),
        request.get("words_per_minute", 170),
    )
    return audio, speech.CONTENT_TYPE


def handle_image(request: dict[str, Any]) -> Result:
    """``image_procedural``: {prompt, seed = 0, width = 512, height = 512} → PNG."""
    _only_fields(request, ("prompt", "seed", "width", "height"))
    png = image.render_image(
        _required(request, "prompt"),
        request.get("seed", 0),
        request.get("width", 512),
        request.get("height", 512),
    )
    return png, image.CONTENT_TYPE


def _input_image(request: Mapping[str, Any]) -> bytes:
    encoded = _required(request, "image_b64")
    if not isinstance(encoded, str):
        raise ModelInputError("image_b64 must be a base64 string")
    try:
        return base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ModelInputError("image_b64 is not valid base64") from exc


def handle_edit(request: dict[str, Any]) -> Result:
    """``image_edit``: {image_b64, prompt, seed = 0, strength = 0.6} → PNG."""
    _only_fields(request, ("image_b64", "prompt", "seed", "strength"))
    png = edit.edit_image(
        _input_image(request),
        _required(request, "prompt"),
        request.get("seed", 0),
        request.get("strength", edit.DEFAULT_STRENGTH),
    )
    return png, edit.CONTENT_TYPE


def handle_video(request: dict[str, Any]) -> Result:
    """``video_camera``: {image_b64, motion, duration_s, fps, width, height} → MP4."""
    _only_fields(request, ("image_b64", "motion", "duration_s", "fps", "width", "height"))
    mp4 = video.animate_image(
        _input_image(request),
        request.get("motion", "zoom_in"),
        request.get("duration_s", 3),
        request.get("fps", 12),
        request.get("width", 512),
        request.get("height", 512),
    )
    return mp4, video.CONTENT_TYPE


@dataclass(frozen=True)
class SandboxRequest:
    """A parsed ``sandbox`` request."""

    kind: str
    delay_ms: int
    outcome: str


def parse_sandbox_request(request: dict[str, Any], default_delay_ms: int) -> SandboxRequest:
    """Check a ``sandbox`` request; a null or absent delay_ms means ``default_delay_ms``."""
    _only_fields(request, ("kind", "delay_ms", "outcome"))
    kind = _required(request, "kind")
    if kind not in sandbox.SANDBOX_KINDS:
        raise ModelInputError(f"kind must be one of {', '.join(sandbox.SANDBOX_KINDS)}")
    delay_ms = request.get("delay_ms")
    if delay_ms is None:
        delay_ms = default_delay_ms
    if isinstance(delay_ms, bool) or not isinstance(delay_ms, int):
        raise ModelInputError("delay_ms must be an integer or null")
    if not 0 <= delay_ms <= MAX_SANDBOX_DELAY_MS:
        raise ModelInputError(f"delay_ms must be between 0 and {MAX_SANDBOX_DELAY_MS}")
    outcome = request.get("outcome", "completed")
    if outcome not in SANDBOX_OUTCOMES:
        raise ModelInputError(f"outcome must be one of {', '.join(SANDBOX_OUTCOMES)}")
    return SandboxRequest(kind=kind, delay_ms=delay_ms, outcome=outcome)


def sandbox_result(parsed: SandboxRequest) -> Result:
    """The answer to a sandbox request once its delay is over."""
    if parsed.outcome == "failed":
        raise SandboxFailedError("the sandbox job failed as requested (outcome: failed)")
    try:
        return sandbox.sandbox_example(parsed.kind)
    except NotImplementedError as exc:
        raise ModelInputError(f"the sandbox has no example for kind {parsed.kind!r} yet") from exc


# --- batching --------------------------------------------------------------------------------


def _as_model_error(exc: Exception, model: str) -> ModelError:
    if isinstance(exc, ModelError):
        return exc
    LOGGER.exception("unexpected error in model %s", model)
    return ModelRuntimeError("the model failed unexpectedly")


def _error_json(error: ModelError) -> bytes:
    return json.dumps({"code": error.code, "message": error.message}).encode("utf-8")


def pack_results(outcomes: Sequence[Result | ModelError]) -> dict[str, ObjectArray]:
    """The output tensors for one batch; raises when every request failed the same way.

    Raising makes Triton answer every request of the batch with that error. A batch whose
    requests did not all fail alike is answered normally, each failure in the ``error`` output.
    """
    errors = [outcome for outcome in outcomes if isinstance(outcome, ModelError)]
    if errors and len(errors) == len(outcomes) and len({str(e) for e in errors}) == 1:
        raise errors[0]
    outputs: list[bytes] = []
    content_types: list[bytes] = []
    error_texts: list[bytes] = []
    for outcome in outcomes:
        if isinstance(outcome, ModelError):
            outputs.append(b"")
            content_types.append(b"")
            error_texts.append(_error_json(outcome))
        else:
            data, content_type = outcome
            outputs.append(data)
            content_types.append(content_type.encode("ascii"))
            error_texts.append(b"")
    return {
        OUTPUT: _column(outputs),
        CONTENT_TYPE_OUTPUT: _column(content_types),
        ERROR_OUTPUT: _column(error_texts),
    }


def _column(values: Sequence[bytes]) -> ObjectArray:
    # dtype=object keeps each value's bytes exactly (a fixed-width bytes dtype drops trailing NULs)
    column: ObjectArray = np.empty((len(values), 1), dtype=np.object_)
    for index, value in enumerate(values):
        column[index, 0] = value
    return column


def run_batch(model: str, requests: ObjectArray, handler: Handler) -> dict[str, ObjectArray]:
    """Run ``handler`` on each request of a batch, one after the other."""
    started = time.perf_counter()
    outcomes: list[Result | ModelError] = []
    for raw in requests.reshape(-1):
        try:
            outcomes.append(handler(decode_request(raw)))
        except Exception as exc:
            outcomes.append(_as_model_error(exc, model))
    _log_batch(model, outcomes, started)
    return pack_results(outcomes)


def run_sandbox_batch(requests: ObjectArray, default_delay_ms: int) -> dict[str, ObjectArray]:
    """Wait out the delays of a sandbox batch together (the longest one), then answer each."""
    started = time.perf_counter()
    parsed: list[SandboxRequest | ModelError] = []
    for raw in requests.reshape(-1):
        try:
            parsed.append(parse_sandbox_request(decode_request(raw), default_delay_ms))
        except Exception as exc:
            parsed.append(_as_model_error(exc, SANDBOX_MODEL))
    delays = [item.delay_ms for item in parsed if isinstance(item, SandboxRequest)]
    if delays:
        time.sleep(max(delays) / 1000.0)
    outcomes: list[Result | ModelError] = []
    for item in parsed:
        if isinstance(item, ModelError):
            outcomes.append(item)
            continue
        try:
            outcomes.append(sandbox_result(item))
        except Exception as exc:
            outcomes.append(_as_model_error(exc, SANDBOX_MODEL))
    _log_batch(SANDBOX_MODEL, outcomes, started)
    return pack_results(outcomes)


def _log_batch(model: str, outcomes: Sequence[Result | ModelError], started: float) -> None:
    failures = [o.code for o in outcomes if isinstance(o, ModelError)]
    LOGGER.info(
        "model=%s batch=%d failed=%d%s took_ms=%.0f",
        model,
        len(outcomes),
        len(failures),
        f" codes={','.join(failures)}" if failures else "",
        (time.perf_counter() - started) * 1000.0,
    )


# --- server ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class ServerOptions:
    """What the server listens on and how the models are set up."""

    http_port: int = DEFAULT_HTTP_PORT
    grpc_port: int = DEFAULT_GRPC_PORT
    metrics_port: int = DEFAULT_METRICS_PORT
    address: str = DEFAULT_ADDRESS
    sandbox_delay_ms: int = DEFAULT_SANDBOX_DELAY_MS
    sandbox_instances: int = DEFAULT_SANDBOX_INSTANCES
    tts_instances: int = 2
    image_instances: int = 2
    edit_instances: int = 2
    video_instances: int = 1
    max_batch_size: int = 8


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name, "").strip()
    if not value:
        return default
    try:
        return int(value)
    except ValueError:
        raise SystemExit(f"{name} must be an integer, not {value!r}") from None


def parse_args(argv: Sequence[str] | None = None) -> ServerOptions:
    """Options from the command line, else the KILN_* environment variables, else defaults."""
    parser = argparse.ArgumentParser(
        prog="python -m kiln_modelhost",
        description="Kiln's Triton server (PyTriton) with the reference models on the CPU.",
    )
    parser.add_argument("--http-port", type=int, help="env KILN_TRITON_HTTP_PORT (8000)")
    parser.add_argument("--grpc-port", type=int, help="env KILN_TRITON_GRPC_PORT (8001)")
    parser.add_argument("--metrics-port", type=int, help="env KILN_TRITON_METRICS_PORT (8002)")
    parser.add_argument("--address", help="listen address; env KILN_TRITON_ADDRESS (127.0.0.1)")
    parser.add_argument(
        "--sandbox-delay-ms", type=int, help="default sandbox delay; env KILN_SANDBOX_DELAY_MS"
    )
    parser.add_argument(
        "--sandbox-instances",
        type=int,
        help="sandbox model instances (requests waiting at once); env KILN_SANDBOX_INSTANCES (8)",
    )
    args = parser.parse_args(argv)

    def pick(flag: int | None, env: str, default: int) -> int:
        return flag if flag is not None else _env_int(env, default)

    options = ServerOptions(
        http_port=pick(args.http_port, "KILN_TRITON_HTTP_PORT", DEFAULT_HTTP_PORT),
        grpc_port=pick(args.grpc_port, "KILN_TRITON_GRPC_PORT", DEFAULT_GRPC_PORT),
        metrics_port=pick(args.metrics_port, "KILN_TRITON_METRICS_PORT", DEFAULT_METRICS_PORT),
        address=args.address or os.environ.get("KILN_TRITON_ADDRESS") or DEFAULT_ADDRESS,
        sandbox_delay_ms=pick(
            args.sandbox_delay_ms, "KILN_SANDBOX_DELAY_MS", DEFAULT_SANDBOX_DELAY_MS
        ),
        sandbox_instances=pick(
            args.sandbox_instances, "KILN_SANDBOX_INSTANCES", DEFAULT_SANDBOX_INSTANCES
        ),
    )
    for name in ("http_port", "grpc_port", "metrics_port"):
        if not 1 <= getattr(options, name) <= 65535:
            parser.error(f"{name.replace('_', '-')} must be a port number")
    if not 0 <= options.sandbox_delay_ms <= MAX_SANDBOX_DELAY_MS:
        parser.error(f"sandbox-delay-ms must be between 0 and {MAX_SANDBOX_DELAY_MS}")
    if not 1 <= options.sandbox_instances <= 64:
        parser.error("sandbox-instances must be between 1 and 64")
    return options


def use_own_libpython() -> None:
    """Make Triton's Python backend stub load this interpreter's libpython, not the system's.

    The stub is linked against ``libpython3.X.so``; when the interpreter running PyTriton is not
    the system one (pyenv, uv-managed Pythons), the system library gets loaded instead and the stub
    crashes (``'_thread.RLock' object has no attribute '_recursion_count'``). Putting this
    interpreter's LIBDIR first on LD_LIBRARY_PATH, which tritonserver and the stubs inherit,
    avoids that.
    """
    libdir = sysconfig.get_config_var("LIBDIR")
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    if not libdir or not any(Path(libdir).glob(f"libpython{version}*.so*")):
        return
    current = os.environ.get("LD_LIBRARY_PATH", "")
    parts = [part for part in current.split(":") if part]
    if parts[:1] != [libdir]:
        os.environ["LD_LIBRARY_PATH"] = ":".join([libdir, *[p for p in parts if p != libdir]])


def bind_models(triton: Any, options: ServerOptions) -> None:
    """Bind the reference models to a ``pytriton.triton.Triton``."""
    from pytriton.decorators import batch
    from pytriton.model_config import DynamicBatcher, ModelConfig, Tensor

    inputs = [Tensor(name=REQUEST_INPUT, dtype=bytes, shape=(1,))]
    outputs = [
        Tensor(name=OUTPUT, dtype=bytes, shape=(1,)),
        Tensor(name=CONTENT_TYPE_OUTPUT, dtype=bytes, shape=(1,)),
        Tensor(name=ERROR_OUTPUT, dtype=bytes, shape=(1,)),
    ]

    def config() -> ModelConfig:
        return ModelConfig(
            batching=True,
            max_batch_size=options.max_batch_size,
            batcher=DynamicBatcher(max_queue_delay_microseconds=0),
        )

    def batched(infer: Callable[[ObjectArray], dict[str, ObjectArray]]) -> Callable[..., Any]:
        # @batch turns Triton's list of requests into one stacked array per input, and back
        return cast("Callable[..., Any]", batch(infer))

    @batched
    def infer_speech(request: ObjectArray) -> dict[str, ObjectArray]:
        return run_batch(TTS_MODEL, request, handle_speech)

    @batched
    def infer_image(request: ObjectArray) -> dict[str, ObjectArray]:
        return run_batch(IMAGE_MODEL, request, handle_image)

    @batched
    def infer_edit(request: ObjectArray) -> dict[str, ObjectArray]:
        return run_batch(EDIT_MODEL, request, handle_edit)

    @batched
    def infer_video(request: ObjectArray) -> dict[str, ObjectArray]:
        return run_batch(VIDEO_MODEL, request, handle_video)

    @batched
    def infer_sandbox(request: ObjectArray) -> dict[str, ObjectArray]:
        return run_sandbox_batch(request, options.sandbox_delay_ms)

    # One callable per instance: each instance runs one batch at a time in its own thread.
    for model_name, infer_func, instances in (
        (TTS_MODEL, infer_speech, options.tts_instances),
        (IMAGE_MODEL, infer_image, options.image_instances),
        (EDIT_MODEL, infer_edit, options.edit_instances),
        (VIDEO_MODEL, infer_video, options.video_instances),
        (SANDBOX_MODEL, infer_sandbox, options.sandbox_instances),
    ):
        triton.bind(
            model_name=model_name,
            infer_func=[infer_func] * instances,
            inputs=inputs,
            outputs=outputs,
            config=config(),
            strict=True,
        )


LOAD_ATTEMPTS = 5


def _stop_on_sigterm(signum: int, frame: FrameType | None) -> None:
    # Triton.serve() stops the server cleanly on KeyboardInterrupt.
    raise KeyboardInterrupt


def serve(options: ServerOptions) -> None:
    """Start Triton with the reference models and serve until SIGINT or SIGTERM."""
    use_own_libpython()
    from pytriton.triton import Triton, TritonConfig

    if not speech.espeak_available():
        LOGGER.warning("espeak-ng is not installed: %s requests will fail", TTS_MODEL)
    config = TritonConfig(
        http_address=options.address,
        http_port=options.http_port,
        grpc_address=options.address,
        grpc_port=options.grpc_port,
        metrics_address=options.address,
        metrics_port=options.metrics_port,
    )
    signal.signal(signal.SIGTERM, _stop_on_sigterm)
    # PyTriton's multi-instance models have a start-up race (instances 1..N connect to
    # instance 0's handshake socket between its bind and listen; under load the connect is
    # refused and the model fails to load). A fresh server with a fresh workspace fixes it.
    for attempt in range(1, LOAD_ATTEMPTS + 1):
        started = time.perf_counter()
        ready = False
        try:
            with Triton(config=config) as triton:
                bind_models(triton, options)
                ready = True
                LOGGER.info(
                    "Triton ready in %.1f s (attempt %d): http=%s:%d grpc=%s:%d metrics=%s:%d "
                    "models=%s sandbox_delay_ms=%d sandbox_instances=%d",
                    time.perf_counter() - started,
                    attempt,
                    options.address,
                    options.http_port,
                    options.address,
                    options.grpc_port,
                    options.address,
                    options.metrics_port,
                    ",".join(ALL_MODELS),
                    options.sandbox_delay_ms,
                    options.sandbox_instances,
                )
                triton.serve()
            break
        except Exception:
            if ready or attempt == LOAD_ATTEMPTS:
                raise
            LOGGER.warning(
                "loading the models failed (attempt %d of %d); restarting Triton",
                attempt,
                LOAD_ATTEMPTS,
                exc_info=True,
            )
            time.sleep(1.0)
    LOGGER.info("Triton stopped")


def main(argv: Sequence[str] | None = None) -> None:
    """Command-line entry point."""
    logging.basicConfig(
        level=os.environ.get("KILN_LOG_LEVEL", "INFO").upper(),
        stream=sys.stdout,
        format="%(asctime)s triton %(levelname)s %(name)s: %(message)s",
        force=True,
    )
    serve(parse_args(argv))


if __name__ == "__main__":
    main()
