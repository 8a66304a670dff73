"""A real Triton server (``python -m kiln_modelhost``, PyTriton) on free ports for the model
host's integration tests, started once per session with a 200 ms sandbox delay, stopped at the
end."""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import pytest_asyncio

from kiln_inference.triton_client import close_clients, triton_ready
from kiln_modelhost.contract import ALL_MODELS
from tests.triton_support import free_ports, start, stop, tail

SANDBOX_DELAY_MS = 200
READY_TIMEOUT_S = 240.0
MODELS = ALL_MODELS


@dataclass(frozen=True)
class TritonServer:
    url: str
    log: Path


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def triton_server(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[TritonServer]:
    pytest.importorskip("pytriton", reason="nvidia-pytriton is not installed")
    http_port, grpc_port, metrics_port = free_ports(3)
    log = tmp_path_factory.mktemp("triton") / "triton.log"
    command = [
        sys.executable,
        "-m",
        "kiln_modelhost",
        "--http-port",
        str(http_port),
        "--grpc-port",
        str(grpc_port),
        "--metrics-port",
        str(metrics_port),
        "--sandbox-delay-ms",
        str(SANDBOX_DELAY_MS),
    ]
    url = f"127.0.0.1:{grpc_port}"
    process = start(command, log)
    try:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while not await triton_ready(url, MODELS):
            if process.poll() is not None:
                pytest.fail(f"the Triton server exited ({process.returncode}):\n{tail(log)}")
            if time.monotonic() > deadline:
                pytest.fail(f"the Triton server was not ready in {READY_TIMEOUT_S} s:\n{tail(log)}")
            await asyncio.sleep(0.5)
        yield TritonServer(url=url, log=log)
    finally:
        await close_clients(url)
        stop(process)


__all__ = ["MODELS", "SANDBOX_DELAY_MS", "TritonServer", "free_ports"]
