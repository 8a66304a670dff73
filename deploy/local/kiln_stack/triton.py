"""The stack's Triton server: the model host with the reference models."""

from __future__ import annotations

import subprocess
import sys
import sysconfig
import time
from pathlib import Path

import httpx

from kiln_stack.components import TRITON
from kiln_stack.processes import ProcessesMixin

TRITON_START_TIMEOUT_S = 180.0


class TritonMixin(ProcessesMixin):
    """The model host (services/modelhost) as the stack's `triton` component."""

    def _python_libdir(self) -> str:
        if Path(self.python).resolve() == Path(sys.executable).resolve():
            return str(sysconfig.get_config_var("LIBDIR") or "")
        result = subprocess.run(
            [str(self.python), "-c", "import sysconfig; print(sysconfig.get_config_var('LIBDIR'))"],
            capture_output=True,
            text=True,
            check=False,
        )
        return result.stdout.strip() if result.returncode == 0 else ""

    def triton_env(self) -> dict[str, str]:
        env = self._base_env()
        # PyTriton's Python backend stub needs the interpreter's own libpython first, or it dies
        # with "'_thread.RLock' object has no attribute '_recursion_count'".
        libdir = self._python_libdir()
        if libdir and libdir != "None":
            current = env.get("LD_LIBRARY_PATH", "")
            env["LD_LIBRARY_PATH"] = f"{libdir}:{current}" if current else libdir
        env["KILN_SANDBOX_DELAY_MS"] = str(self.sandbox_delay_ms)
        env["KILN_LOG_LEVEL"] = "INFO"
        env.update(self.extra_env)
        return env

    def triton_ready(self, timeout_s: float = 2.0) -> bool:
        try:
            response = httpx.get(f"{self.triton_url}/v2/health/ready", timeout=timeout_s)
        except httpx.HTTPError:
            return False
        return response.status_code == 200

    def start_triton(self, timeout_s: float = TRITON_START_TIMEOUT_S) -> None:
        self._reap_orphans(TRITON)
        pid = self.pid(TRITON)
        if pid is None:
            self._check_ports_free(
                TRITON,
                {
                    "triton_http": self.ports.triton_http,
                    "triton_grpc": self.ports.triton_grpc,
                    "triton_metrics": self.ports.triton_metrics,
                },
            )
            argv = [
                str(self.python), "-m", "kiln_modelhost",
                "--http-port", str(self.ports.triton_http),
                "--grpc-port", str(self.ports.triton_grpc),
                "--metrics-port", str(self.ports.triton_metrics),
                "--sandbox-delay-ms", str(self.sandbox_delay_ms),
            ]  # fmt: skip
            pid = self._spawn(TRITON, argv, self.triton_env())
            self._echo(f"triton: starting (pid {pid}) on {self.triton_url}")
        else:
            self._echo(f"triton: already running (pid {pid}) on {self.triton_url}")
        deadline = time.monotonic() + timeout_s
        while not self.triton_ready():
            if not self._alive(TRITON, pid):
                self.pid_file(TRITON).unlink(missing_ok=True)
                raise self._died(TRITON, f"{self._gone(TRITON)} during start")
            if time.monotonic() >= deadline:
                raise self._died(TRITON, f"was not ready within {timeout_s:.0f} s")
            time.sleep(0.5)
        self._echo(f"triton: ready on {self.triton_url}")
