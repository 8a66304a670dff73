"""A Prometheus (Debian's `prometheus` package) that scrapes every component of a local stack:
the five services' /metrics and Triton's metrics port, so that a developer sees at
http://127.0.0.1:9090 the series that deploy/k8s's dashboards and alerts use.

    make up PROMETHEUS=1                                    # or: stack.py up --prometheus
    uv run python deploy/local/stack.py down                # stops it with the rest

It lives under the stack's folder (prometheus/ for its config and data, logs/prometheus.log,
run/prometheus.pid) and reads the stack's ports, so a test stack on free ports gets its own.
The alert rules of deploy/k8s/base/monitoring/alerts.yaml are loaded too.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx
import yaml

DEFAULT_PORT = 9090
RULES = Path(__file__).resolve().parents[2] / "k8s" / "base" / "monitoring" / "alerts.yaml"
START_TIMEOUT_S = 60.0


class LocalPrometheus:
    def __init__(self, stack: Any, port: int = DEFAULT_PORT, scrape_interval_s: float = 5.0):
        self.stack = stack
        self.port = port
        self.scrape_interval_s = scrape_interval_s
        self.folder = Path(stack.root) / "prometheus"
        self.config_file = self.folder / "prometheus.yml"
        self.rules_file = self.folder / "rules.yml"
        self.pid_file = Path(stack.run_dir) / "prometheus.pid"
        self.log_file = Path(stack.logs_dir) / "prometheus.log"
        self._proc: subprocess.Popen[bytes] | None = None  # when this object started it

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def targets(self) -> dict[str, list[str]]:
        """Scrape job -> host:port of each instance (the services by name, Triton as modelhost,
        the name of the production deployment that runs it)."""
        jobs: dict[str, list[str]] = {}
        for component in self.stack.service_components():
            port = self.stack.service_port(component)
            if port is not None:
                service = component.rsplit("-", 1)[0] if component[-1].isdigit() else component
                jobs.setdefault(service, []).append(f"127.0.0.1:{port}")
        jobs["modelhost"] = [f"127.0.0.1:{self.stack.ports.triton_metrics}"]
        return jobs

    def write_config(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        rule = yaml.safe_load(RULES.read_text())
        self.rules_file.write_text(yaml.safe_dump(rule["spec"], sort_keys=False))
        interval = f"{max(self.scrape_interval_s, 1):g}s"
        config = {
            "global": {"scrape_interval": interval, "evaluation_interval": interval},
            "rule_files": [str(self.rules_file)],
            "scrape_configs": [
                {"job_name": job, "static_configs": [{"targets": targets}]}
                for job, targets in self.targets().items()
            ],
        }
        self.config_file.write_text(yaml.safe_dump(config, sort_keys=False))

    def pid(self) -> int | None:
        try:
            pid = int(self.pid_file.read_text().strip())
            os.kill(pid, 0)
        except (FileNotFoundError, ValueError, ProcessLookupError):
            return None
        if self._proc is not None and self._proc.pid == pid:
            # Our own child: asked directly. Its /proc cmdline is empty for a moment after the
            # exec (the kernel sets the arguments after it lets the parent go on), which read as
            # "not prometheus" and failed a start on a loaded machine.
            return pid if self._proc.poll() is None else None
        cmdline = Path(f"/proc/{pid}/cmdline")
        if cmdline.exists() and str(self.config_file).encode() not in cmdline.read_bytes():
            return None
        return pid

    def ready(self) -> bool:
        try:
            return httpx.get(f"{self.url}/-/ready", timeout=2.0).status_code == 200
        except httpx.HTTPError:
            return False

    def start(self, timeout_s: float = START_TIMEOUT_S) -> None:
        binary = shutil.which("prometheus")
        if binary is None:
            raise RuntimeError("prometheus is missing (Debian package `prometheus`: make install)")
        self.write_config()
        pid = self.pid()
        if pid is not None:  # running: take the new targets
            os.kill(pid, signal.SIGHUP)
        else:
            self.log_file.parent.mkdir(parents=True, exist_ok=True)
            self.pid_file.parent.mkdir(parents=True, exist_ok=True)
            argv = [
                binary,
                f"--config.file={self.config_file}",
                f"--storage.tsdb.path={self.folder / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                "--storage.tsdb.retention.time=2d",
            ]
            with self.log_file.open("ab") as log:
                proc = subprocess.Popen(
                    argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                    start_new_session=True,
                )  # fmt: skip
            self._proc = proc
            self.pid_file.write_text(f"{proc.pid}\n")
            pid = proc.pid
        deadline = time.monotonic() + timeout_s
        while not self.ready():
            if self.pid() is None or time.monotonic() >= deadline:
                raise RuntimeError(f"prometheus did not start; see {self.log_file}")
            time.sleep(0.5)

    def stop(self, grace_s: float = 10.0) -> bool:
        pid = self.pid()
        if pid is None:
            self.pid_file.unlink(missing_ok=True)
            return False
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        while self.pid() is not None and time.monotonic() < deadline:
            time.sleep(0.2)
        if self.pid() is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        self.pid_file.unlink(missing_ok=True)
        return True

    def query(self, expr: str) -> dict[str, Any]:
        """The API's answer to an instant query (`status`, `data.result`, or `error`)."""
        response = httpx.get(f"{self.url}/api/v1/query", params={"query": expr}, timeout=30.0)
        answer: dict[str, Any] = response.json()
        return answer
