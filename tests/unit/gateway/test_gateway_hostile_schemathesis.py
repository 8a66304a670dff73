"""Schemathesis against the gateway app alone (no Kafka: the hostile_support harness), served by
uvicorn on a free local port, for a short time. It is the fast twin of the live run in
tests/e2e/test_schemathesis.py: same checks, every operation of the served document, and the
login route too, since this gateway is nobody else's."""

import asyncio
import os
import socket
import threading
import time
from pathlib import Path
from typing import Any

import uvicorn

from tests.schemathesis_support import own_account, run_schemathesis, write_config
from tests.unit.gateway.hostile_support import ADMIN_TOKEN, gateway_under_test

MAX_TIME_S = int(os.environ.get("KILN_SCHEMATHESIS_UNIT_MAX_TIME_S", "10"))


class ServedGateway(threading.Thread):
    """The harness app behind a real uvicorn server, in a thread with its own event loop."""

    def __init__(self, tmp_path: Path) -> None:
        super().__init__(daemon=True)
        self.tmp_path = tmp_path
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self.server: uvicorn.Server | None = None
        self.error: BaseException | None = None

    @property
    def origin(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def run(self) -> None:
        try:
            asyncio.run(self._serve())
        except BaseException as exc:  # reported by the test, not lost in the thread
            self.error = exc

    def wait_started(self, timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and self.error is None and self.is_alive():
            if self.server is not None and self.server.started:
                return True
            time.sleep(0.05)
        return False

    async def _serve(self) -> None:
        overrides: dict[str, Any] = {"rate_limit_live_create": 20, "rate_limit_live_read": 200}
        async with gateway_under_test(self.tmp_path, **overrides) as gateway:
            app = gateway.client._transport.app  # type: ignore[attr-defined]
            config = uvicorn.Config(
                app, host="127.0.0.1", port=self.port, lifespan="off", log_level="warning"
            )
            self.server = uvicorn.Server(config)
            await self.server.serve()

    def stop(self) -> None:
        if self.server is not None:
            self.server.should_exit = True
        self.join(timeout=30)


def test_the_app_keeps_to_its_openapi_document(tmp_path: Path) -> None:
    served = ServedGateway(tmp_path)
    served.start()
    try:
        assert served.wait_started(30), f"the gateway did not start: {served.error!r}"
        credentials = own_account(f"{served.origin}/api/v1", ADMIN_TOKEN)
        config = tmp_path / "schemathesis.toml"
        # The sandbox key: it may also send `sandbox` options (the live run tries both keys).
        write_config(config, credentials, "sandbox")
        result = run_schemathesis(f"{served.origin}/openapi.json", config, tmp_path, MAX_TIME_S)
        output = result.stdout + result.stderr
        print(output[-20_000:])
        assert result.returncode == 0, f"schemathesis found problems:\n{output[-8000:]}"
    finally:
        served.stop()
