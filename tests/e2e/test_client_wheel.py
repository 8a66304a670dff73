"""The `kiln-client` wheel on its own: built with `uv build`, installed with its `[cli]` extra
into a fresh virtual environment (none of Kiln's server packages in it), and `kiln run` with
the sandbox key writes a decrypted PNG."""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from PIL import Image

from tests.stack_support import REPO

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(900)]


def run(*args: str, env: dict[str, str] | None = None, cwd: Path = REPO) -> str:
    result = subprocess.run(
        args, cwd=cwd, env=env, capture_output=True, text=True, timeout=600, check=False
    )
    assert result.returncode == 0, f"{' '.join(args)}:\n{result.stdout}\n{result.stderr}"
    return result.stdout


def test_the_wheel_installs_alone_and_runs_a_job(stack: dict[str, str], tmp_path: Path) -> None:
    uv = shutil.which("uv")
    assert uv is not None, "uv is needed to build the wheel"
    dist = tmp_path / "dist"
    run(uv, "build", "--package", "kiln-client", "--wheel", "--out-dir", str(dist))
    wheels = list(dist.glob("kiln_client-*.whl"))
    assert len(wheels) == 1, wheels

    venv = tmp_path / "venv"
    run(uv, "venv", "--python", "3.11", str(venv))
    python = venv / "bin" / "python"
    run(uv, "pip", "install", "--python", str(python), f"{wheels[0]}[cli]")
    listed = run(uv, "pip", "list", "--python", str(python))
    assert "kiln-client" in listed
    for server_package in ("kiln-crypto", "kiln-runtime", "kiln-gateway", "kiln-contracts"):
        assert server_package not in listed
    probe = "import importlib.util as u; print(u.find_spec('kiln_crypto') is None)"
    assert run(str(python), "-c", probe).strip() == "True"

    out = tmp_path / "out.png"
    env = {
        "PATH": f"{venv / 'bin'}:{os.environ.get('PATH', '')}",
        "HOME": str(tmp_path),
        "KILN_API_URL": stack["KILN_API_URL"],
        "KILN_API_KEY": stack["KILN_DEMO_SANDBOX_KEY"],
    }
    printed = run(
        str(venv / "bin" / "kiln"),
        "run",
        "kiln/prompt-to-image",
        "-i",
        "prompt=a lighthouse in a storm",
        "-o",
        str(out),
        env=env,
        cwd=tmp_path,
    )
    job = json.loads(printed)
    assert job["status"] == "completed" and job["sandbox"] is True
    data = out.read_bytes()
    assert data.startswith(b"\x89PNG")
    Image.open(io.BytesIO(data)).verify()
