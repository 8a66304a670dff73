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
  ``tts_hibari``: {text, voice?, speed?, seed?};
  ``background_u2netp``: {image_b64, edges?, crop?};
  ``product_shot_u2netp``: {image_b64, background?, color?, gradient_to?, background_b64?,
  aspect_ratio?, size?, padding?, shadow?};
  ``upscale_realesr_compact`` / ``upscale_realesrgan_x4plus``: {image_b64, scale?};
  ``autoclip_scenedetect``: {video_b64, min_duration_s?, max_duration_s?, aspect_ratio?,
  max_clips?, max_side?, threshold?};
  (``<name>_b64``: a file the worker fetched for the job input's ``<name>_url``, standard
  base64);
  ``sandbox``: {kind, delay_ms?: int | null, outcome?: "completed" | "failed", content_type?};
  a null or absent delay_ms means the server's ``--sandbox-delay-ms``).
* outputs ``output`` (BYTES: the file), ``content_type`` (BYTES, e.g. ``image/png``) and
  ``error`` (BYTES: empty, or JSON ``{"code", "message"}``; see below).

Errors. When a request fails, Triton answers it with an error whose text contains
``CODE: message`` (codes: INVALID_INPUT, SANDBOX_FAILED, MODEL_ERROR; a sandbox asked to fail
gives ``SANDBOX_FAILED: …``). PyTriton can only fail a whole dynamic batch at once, and then
prefixes the text with a traceback; kiln_inference.triton_client extracts the code and message.
So that one bad request never fails the good requests batched with it, a batch whose requests
did not all fail with the same error is answered normally, and each failed request carries its
error in the ``error`` output instead (with an empty ``output``). Clients must check both.

Concurrency. Each model has one or more instances (tts_espeak 2, tts_hibari 2,
image_procedural 2, image_edit 2, video_camera 1, the U²-Net-p, Real-ESRGAN and auto-clip models
1 each, sandbox 8), each running one dynamic batch (up to 8 requests, no added queue delay) at a
time, request after request. A sandbox batch waits out its longest delay once, so
requests waiting together take about one delay, not the sum; 8 instances mean that up to 8
sandbox requests (the pool's capacity) never share a batch and each keeps its own delay.

Readiness. PyTriton starts Triton with no model and then loads them one by one, so
``/v2/health/ready`` turns true before the models are ready: check each model's readiness
(``/v2/models/NAME/ready``, or ``triton_client.triton_ready(url, models)``).
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import sysconfig
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from types import FrameType
from typing import Any, cast

from kiln_modelhost.batching import ObjectArray, run_batch, run_sandbox_batch
from kiln_modelhost.config import ServerOptions, parse_args
from kiln_modelhost.contract import (
    ALL_MODELS,
    AUTOCLIP_MODEL,
    CONTENT_TYPE_OUTPUT,
    EDIT_MODEL,
    ERROR_OUTPUT,
    IMAGE_MODEL,
    NEURAL_TTS_MODEL,
    OUTPUT,
    PRODUCT_SHOT_MODEL,
    REMOVE_BACKGROUND_MODEL,
    REQUEST_INPUT,
    SANDBOX_MODEL,
    TTS_MODEL,
    UPSCALE_MODEL,
    UPSCALE_X4PLUS_MODEL,
    VIDEO_MODEL,
)
from kiln_modelhost.handlers import (
    Handler,
    handle_auto_clip,
    handle_edit,
    handle_image,
    handle_neural_speech,
    handle_product_shot,
    handle_remove_background,
    handle_speech,
    handle_video,
    upscale_handler,
)
from kiln_modelhost.reference_models import sandbox, speech

LOGGER = logging.getLogger(__name__)


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

    def model(name: str, handler: Handler) -> Callable[..., Any]:
        @batched
        def infer(request: ObjectArray) -> dict[str, ObjectArray]:
            return run_batch(name, request, handler)

        return infer

    @batched
    def infer_sandbox(request: ObjectArray) -> dict[str, ObjectArray]:
        return run_sandbox_batch(request, options.sandbox_delay_ms)

    # One callable per instance: each instance runs one batch at a time in its own thread.
    for model_name, infer_func, instances in (
        (TTS_MODEL, model(TTS_MODEL, handle_speech), options.tts_instances),
        (IMAGE_MODEL, model(IMAGE_MODEL, handle_image), options.image_instances),
        (EDIT_MODEL, model(EDIT_MODEL, handle_edit), options.edit_instances),
        (VIDEO_MODEL, model(VIDEO_MODEL, handle_video), options.video_instances),
        (SANDBOX_MODEL, infer_sandbox, options.sandbox_instances),
        (
            NEURAL_TTS_MODEL,
            model(NEURAL_TTS_MODEL, handle_neural_speech),
            options.neural_tts_instances,
        ),
        (
            REMOVE_BACKGROUND_MODEL,
            model(REMOVE_BACKGROUND_MODEL, handle_remove_background),
            options.background_instances,
        ),
        (
            PRODUCT_SHOT_MODEL,
            model(PRODUCT_SHOT_MODEL, handle_product_shot),
            options.product_shot_instances,
        ),
        (
            UPSCALE_MODEL,
            model(UPSCALE_MODEL, upscale_handler("compact")),
            options.upscale_instances,
        ),
        (
            UPSCALE_X4PLUS_MODEL,
            model(UPSCALE_X4PLUS_MODEL, upscale_handler("x4plus")),
            options.upscale_x4plus_instances,
        ),
        (AUTOCLIP_MODEL, model(AUTOCLIP_MODEL, handle_auto_clip), options.autoclip_instances),
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
# How long a model instance's stub waits for the first instance's handshake socket. PyTriton
# waits 1 s, and Triton starts a model's instances in parallel: on a loaded machine the first
# instance's stub is often more than a second behind, every other instance gives up and the
# model fails to load. Within that wait, a connect refused (the socket file exists between the
# first instance's bind and its listen) is tried again instead of failing the model.
HANDSHAKE_WAIT_S = 60.0
_PYTRITON_WAIT = (
    b"def get_config_from_handshake_server(socket_path: pathlib.Path, timeout_s: float = 1.0)"
)
_PYTRITON_CONNECT = b"""        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(max(0.0, should_stop_before_s - time.time()))
        sock.connect(socket_path.as_posix())
"""
_RETRIED_CONNECT = b"""        while True:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.settimeout(max(0.0, should_stop_before_s - time.time()))
            try:
                sock.connect(socket_path.as_posix())
                break
            except ConnectionRefusedError:
                sock.close()
                sock = None
                if time.time() >= should_stop_before_s:
                    raise
                time.sleep(0.01)
"""


# How often a stub's requests server looks whether it was told to stop. PyTriton looks every
# second, and Triton unloads a model's instances one after another at shutdown, so the
# sandbox's eight instances add up: after 80 sandbox requests a stop took 23 s, 16 s with this.
# Five looks a second cost nothing measurable when idle.
STUB_STOP_CHECK_S = 0.2
_PYTRITON_STOP_CHECK = b"flag_check_interval_s = 1.0"


def patch_stub_code() -> None:
    """Make the stub code PyTriton sends to Triton wait HANDSHAKE_WAIT_S for the handshake
    socket, try a refused connect again within that wait, and look for a stop every
    STUB_STOP_CHECK_S. The stub's files are sent as bytes with each model's load request
    (`Model.get_proxy_model_files`), so the change is made there, in this process only; when a
    PyTriton release changes that code, it is left as it is and a warning says so."""
    from pytriton.models.model import Model

    original = Model.get_proxy_model_files
    if getattr(original, "_kiln_patched", False):
        return
    wanted = _PYTRITON_WAIT.replace(b"1.0)", f"{HANDSHAKE_WAIT_S})".encode())
    stop_check = _PYTRITON_STOP_CHECK.replace(b"1.0", str(STUB_STOP_CHECK_S).encode())

    def get_proxy_model_files(self: Any) -> dict[str, bytes]:
        files: dict[str, bytes] = original(self)
        for name, content in files.items():
            if name.endswith("/communication.py"):
                if _PYTRITON_WAIT in content and _PYTRITON_CONNECT in content:
                    content = content.replace(_PYTRITON_WAIT, wanted).replace(
                        _PYTRITON_CONNECT, _RETRIED_CONNECT
                    )
                else:
                    LOGGER.warning("PyTriton's handshake code was not found; left as it is")
                if _PYTRITON_STOP_CHECK in content:
                    content = content.replace(_PYTRITON_STOP_CHECK, stop_check)
                else:
                    LOGGER.warning("PyTriton's stop check was not found; left as it is")
                files[name] = content
        return files

    get_proxy_model_files._kiln_patched = True  # type: ignore[attr-defined]
    Model.get_proxy_model_files = get_proxy_model_files


def without_auto_complete(triton_class: type[Any]) -> type[Any]:
    """A ``Triton`` that starts the server with its configurations taken as given.

    PyTriton sends each model's whole configuration with its load request, yet leaves
    Triton's auto-complete on; the Python backend then starts one more stub process per model
    only to ask it for a configuration. The eleven models load one after another; without those
    stubs they are ready in 6 s instead of 21 (a whole stack in 21 s instead of 33; the served
    configurations are the same). No PyTriton setting reaches that server option, so its
    private config step is extended; when a PyTriton release renames that step the server
    starts as before and a warning says so."""
    if not hasattr(triton_class, "_prepare_triton_config"):
        LOGGER.warning("PyTriton's server config step was not found; auto-complete stays on")
        return triton_class

    class TritonAsConfigured(triton_class):  # type: ignore[misc]
        def _prepare_triton_config(self, *args: Any, **kwargs: Any) -> None:
            super()._prepare_triton_config(*args, **kwargs)
            # --disable-auto-complete-config is a bare flag, which PyTriton cannot pass
            # (it writes --key=value); this older spelling takes a value (Triton logs that it
            # is deprecated, and honours it)
            try:
                self._triton_server_config["strict-model-config"] = "true"
            except Exception:
                LOGGER.warning("PyTriton's server options were not found; auto-complete stays on")

    return TritonAsConfigured


def _stop_on_sigterm(signum: int, frame: FrameType | None) -> None:
    # Triton.serve() stops the server cleanly on KeyboardInterrupt.
    raise KeyboardInterrupt


def serve(options: ServerOptions) -> None:
    """Start Triton with the reference models and serve until SIGINT or SIGTERM."""
    use_own_libpython()
    patch_stub_code()
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
    # while Triton loads the models, not when the first sandbox jobs arrive
    threading.Thread(target=sandbox.warm_examples, name="sandbox-examples", daemon=True).start()
    # PyTriton's multi-instance models have a second start-up race (instances 1..N may connect
    # to instance 0's handshake socket between its bind and listen; the connect is refused and
    # the model fails to load). A fresh server with a fresh workspace fixes it.
    for attempt in range(1, LOAD_ATTEMPTS + 1):
        started = time.perf_counter()
        ready = False
        try:
            with without_auto_complete(Triton)(config=config) as triton:
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
