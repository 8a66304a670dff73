"""What the model host listens on and how its models are set up: command-line flags, each
falling back to a KILN_* environment variable, then to a default."""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence
from dataclasses import dataclass

from kiln_modelhost.contract import MAX_SANDBOX_DELAY_MS

DEFAULT_HTTP_PORT = 8000
DEFAULT_GRPC_PORT = 8001
DEFAULT_METRICS_PORT = 8002
DEFAULT_ADDRESS = "127.0.0.1"
DEFAULT_SANDBOX_DELAY_MS = 10_000
DEFAULT_SANDBOX_INSTANCES = 8


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
    neural_tts_instances: int = 2
    background_instances: int = 1
    product_shot_instances: int = 1
    upscale_instances: int = 1
    upscale_x4plus_instances: int = 1
    autoclip_instances: int = 1
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
