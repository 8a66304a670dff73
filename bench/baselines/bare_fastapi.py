"""The HTTP ceiling of the submit bench: a bare FastAPI `POST /api/v1/jobs` that reads the JSON
body and answers 202 `{"data": {"id", "status": "queued"}}`, with nothing behind it.

    python -m bench.baselines.bare_fastapi --port 8123

It is served exactly as Kiln's services are (kiln_runtime.http.serve): the same logging set-up,
`uvicorn.run` with its default loop and HTTP parser (uvloop and httptools), log level info (so the
access log is on), no proxy headers, one process. `BareFastAPI` starts it as a subprocess on a
free port and stops it.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

import httpx
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from kiln_runtime.logs import configure_logging
from tests.stack_support import free_port

SERVICE = "bare-fastapi"


def create_app() -> FastAPI:
    app = FastAPI(title="bare FastAPI (bench ceiling)")

    @app.post("/api/v1/jobs", status_code=202)
    async def create_job(request: Request) -> JSONResponse:
        body: Any = await request.json()
        model = body.get("model", "") if isinstance(body, dict) else ""
        data = {"id": f"job_{uuid.uuid4().hex}", "model": model, "status": "queued"}
        return JSONResponse({"data": data}, status_code=202)

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    return app


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.baselines.bare_fastapi")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args(argv)
    # The same call as kiln_runtime.http.serve, with the services' default settings.
    configure_logging(SERVICE, "INFO")
    uvicorn.run(create_app(), host=args.host, port=args.port, log_level="info", proxy_headers=False)


class BareFastAPI:
    """`with BareFastAPI(log_file) as bare: ... bare.jobs_url ... bare.pid`: the bare endpoint in
    a subprocess of its own, on a free port, ready when entered, stopped when left."""

    def __init__(self, log_file: Path, ready_timeout_s: float = 30.0) -> None:
        self.log_file = log_file
        self.port = free_port()
        self._ready_timeout_s = ready_timeout_s
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def jobs_url(self) -> str:
        return f"{self.base_url}/api/v1/jobs"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def start(self) -> BareFastAPI:
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        repo = str(Path(__file__).resolve().parents[2])
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (repo, env.get("PYTHONPATH", "")) if p)
        with self.log_file.open("ab") as log:
            self._proc = subprocess.Popen(
                [sys.executable, "-m", "bench.baselines.bare_fastapi", "--port", str(self.port)],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=repo,
                env=env,
            )
        deadline = time.monotonic() + self._ready_timeout_s
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise RuntimeError(
                    f"bare FastAPI exited with {self._proc.returncode}; see {self.log_file}"
                )
            try:
                if httpx.get(f"{self.base_url}/healthz", timeout=1.0).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"bare FastAPI did not answer in {self._ready_timeout_s:.0f} s")

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)

    def __enter__(self) -> BareFastAPI:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


if __name__ == "__main__":
    main()
