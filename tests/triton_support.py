"""Triton servers as processes of the tests: free ports, the environment PyTriton needs, start
and stop as a process group. The model host's integration tests start Kiln's own model host
with these; the e2e tests also start an operator's Triton server (tests/e2e/operator_triton.py).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sysconfig
from pathlib import Path

from tests.stack_support import free_port

REPO = Path(__file__).resolve().parents[1]
MODELHOST_SRC = REPO / "services" / "modelhost"
STOP_TIMEOUT_S = 60.0


def free_ports(count: int) -> list[int]:
    """Distinct free ports outside the ephemeral range (kiln_stack's `free_port`)."""
    return [free_port() for _ in range(count)]


def server_env() -> dict[str, str]:
    env = dict(os.environ)
    paths = [str(MODELHOST_SRC), *filter(None, env.get("PYTHONPATH", "").split(os.pathsep))]
    env["PYTHONPATH"] = os.pathsep.join(paths)
    # PyTriton's Python backend stub must load this interpreter's libpython, not the system one.
    libdir = sysconfig.get_config_var("LIBDIR") or ""
    env["LD_LIBRARY_PATH"] = ":".join(filter(None, [libdir, env.get("LD_LIBRARY_PATH", "")]))
    env["PYTHONUNBUFFERED"] = "1"
    return env


def tail(path: Path, lines: int = 60) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def start(command: list[str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as log_file:
        # a process group of its own, so that teardown can end tritonserver and the stubs too
        return subprocess.Popen(
            command,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            env=server_env(),
            cwd=REPO,
            start_new_session=True,
        )


def stop(process: subprocess.Popen[bytes]) -> None:
    """A test's server is thrown away: killed with its process group (start_new_session:
    tritonserver and the stubs go with it), not stopped; a Triton stop waits for every model
    instance to unload, which after a test's load took up to its 30 s exit timeout."""
    with contextlib.suppress(ProcessLookupError):  # the group too if its leader is gone
        os.killpg(process.pid, signal.SIGKILL)
    process.wait(timeout=STOP_TIMEOUT_S)
