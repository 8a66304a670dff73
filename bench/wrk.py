"""Saturation with wrk (Debian's `wrk`, written in C): a closed loop of N connections that the
Python generator could not keep up with against a bare endpoint. Its Lua `done` hook prints one
JSON line that `saturate` reads."""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

_LUA = """
wrk.method = "POST"
wrk.body = {body}
wrk.headers["Content-Type"] = "application/json"
{auth}
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRKJSON {{"requests": %d, "duration_us": %d, "non2xx": %d, "connect_errors": %d, '
    .. '"read_errors": %d, "write_errors": %d, "timeouts": %d, "p50_us": %d, "p99_us": %d}}\\n',
    summary.requests, summary.duration, e.status, e.connect, e.read, e.write, e.timeout,
    latency:percentile(50), latency:percentile(99)))
end
"""


def _lua_string(text: str) -> str:
    return "[==[" + text + "]==]"


@dataclass(frozen=True)
class WrkResult:
    requests: int
    duration_s: float
    non2xx: int
    socket_errors: int
    p50_ms: float
    p99_ms: float

    @property
    def accepted_per_s(self) -> float:
        accepted = self.requests - self.non2xx
        return accepted / self.duration_s if self.duration_s > 0 else 0.0


def wrk_path() -> str:
    found = shutil.which("wrk")
    if found is None:
        raise RuntimeError("wrk is not installed (Debian package `wrk`; `make install` adds it)")
    return found


def saturate(
    url: str,
    body: str,
    *,
    api_key: str = "",
    connections: int = 64,
    duration_s: float = 10.0,
    threads: int = 1,
    timeout_s: float = 10.0,
) -> WrkResult:
    """POST `body` to `url` from `connections` connections for `duration_s`."""
    auth = f'wrk.headers["Authorization"] = {_lua_string("Bearer " + api_key)}' if api_key else ""
    script = _LUA.format(body=_lua_string(body), auth=auth)
    with tempfile.TemporaryDirectory(prefix="kiln-wrk-") as folder:
        lua = Path(folder) / "post.lua"
        lua.write_text(script)
        result = subprocess.run(
            [
                wrk_path(),
                f"-t{threads}",
                f"-c{connections}",
                f"-d{max(1, round(duration_s))}s",
                f"--timeout={max(1, round(timeout_s))}s",
                "-s",
                str(lua),
                url,
            ],
            capture_output=True,
            text=True,
            check=False,
            timeout=duration_s + timeout_s + 30,
        )
    for line in result.stdout.splitlines():
        if line.startswith("WRKJSON "):
            data = json.loads(line.removeprefix("WRKJSON "))
            return WrkResult(
                requests=data["requests"],
                duration_s=data["duration_us"] / 1e6,
                non2xx=data["non2xx"],
                socket_errors=data["connect_errors"]
                + data["read_errors"]
                + data["write_errors"]
                + data["timeouts"],
                p50_ms=data["p50_us"] / 1000,
                p99_ms=data["p99_us"] / 1000,
            )
    raise RuntimeError(f"wrk gave no result (exit {result.returncode}): {result.stderr[-2000:]}")
