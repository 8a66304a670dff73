"""The images' Dockerfiles, checked without a Docker engine: hadolint, their shape (multi-stage,
locked uv sync of the one service, non-root, the media tools where models run), the
.dockerignore, and the build stage's uv step replayed on the context the Dockerfile sees, to
show that the venv it makes holds the service and none of the others.

What only a Docker engine can show is not checked here: that the base images pull, that
apt-get installs espeak-ng and ffmpeg, that the image starts and answers its probes as user
10001 on a read-only root."""

from __future__ import annotations

import fnmatch
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.deploy.deploy_support import REPO, SERVICES, tool

IMAGES = tuple(sorted(p.parent.name for p in (REPO / "services").glob("*/Dockerfile")))
MEDIA_IMAGES = {"inference", "modelhost"}


def stages(name: str) -> list[list[str]]:
    """The Dockerfile's instructions (continuations joined), split by FROM."""
    text = (REPO / "services" / name / "Dockerfile").read_text()
    joined = re.sub(r"\\\n\s*", " ", text)
    instructions = [
        line.strip() for line in joined.splitlines() if line.strip() and not line.startswith("#")
    ]
    found: list[list[str]] = []
    for instruction in instructions:
        if instruction.upper().startswith("FROM "):
            found.append([])
        if found:
            found[-1].append(instruction)
    return found


def build_stage(name: str) -> list[str]:
    """The stage that syncs the venv (the gateway's has a stage for its console's assets
    before it)."""
    return next(stage for stage in stages(name) if any("uv sync" in i for i in stage))


def test_every_service_has_an_image() -> None:
    assert set(SERVICES) <= set(IMAGES)


def test_hadolint_passes() -> None:
    files = [str(REPO / "services" / name / "Dockerfile") for name in IMAGES]
    result = subprocess.run(
        [tool("hadolint"), "--config", str(REPO / ".hadolint.yaml"), *files],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("name", IMAGES)
def test_the_image_is_multi_stage_locked_and_non_root(name: str) -> None:
    *_, final = stages(name)
    assert len(stages(name)) >= 2
    build = build_stage(name)
    sync = [i for i in build if i.startswith("RUN") and "uv sync" in i]
    assert len(sync) == 1
    assert "--frozen" in sync[0] and "--no-dev" in sync[0] and "--no-editable" in sync[0]
    assert f"--package kiln-{name}" in sync[0]
    assert not any(i.startswith(("COPY . ", "ADD ")) for i in final), "the runtime copies the tree"
    copies = [i for i in final if i.startswith("COPY")]
    assert copies == ["COPY --from=build /opt/venv /opt/venv"]
    users = [i for i in final if i.startswith("USER")]
    assert users and users[-1].split()[1].split(":")[0] not in ("0", "root")
    assert final[-1] == f'CMD ["python", "-m", "kiln_{name}"]'
    installs = " ".join(i for i in final if "apt-get install" in i)
    if name in MEDIA_IMAGES:
        assert "espeak-ng" in installs and "ffmpeg" in installs
    else:
        assert not installs, f"{name} needs no system packages"


def dockerignored(path: str, patterns: list[str]) -> bool:
    ignored = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        bare = pattern.removeprefix("!")
        parts = path.split("/")
        hit = any(
            fnmatch.fnmatch("/".join(parts[: i + 1]), bare.removeprefix("**/"))
            or fnmatch.fnmatch(parts[i], bare.removeprefix("**/"))
            for i in range(len(parts))
        ) if bare.startswith("**/") else any(
            fnmatch.fnmatch("/".join(parts[: i + 1]), bare) for i in range(len(parts))
        )  # fmt: skip
        if hit:
            ignored = not negate
    return ignored


def build_context(folder: Path) -> Path:
    """The files `docker build .` sends: the repository's, less .dockerignore's patterns."""
    patterns = [
        line.strip()
        for line in (REPO / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    listed = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard"],
        cwd=REPO, capture_output=True, text=True, check=True,
    ).stdout.splitlines()  # fmt: skip
    for path in listed:
        source = REPO / path
        if source.is_file() and not dockerignored(path, patterns):
            target = folder / path
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)
    return folder


def test_the_context_leaves_out_what_the_image_must_not_hold(tmp_path: Path) -> None:
    context = build_context(tmp_path)
    for absent in (".venv", ".kiln", "tests", "bench", "deploy", ".git"):
        assert not (context / absent).exists(), absent
    assert (context / "uv.lock").exists()
    assert (context / "services" / "billing" / "kiln_billing" / "migrations").is_dir()


@pytest.mark.parametrize("name", SERVICES)
def test_the_build_stage_makes_a_venv_of_the_service_alone(name: str, tmp_path: Path) -> None:
    context = build_context(tmp_path / "context")
    venv = tmp_path / "venv"
    (sync,) = [i for i in build_stage(name) if "uv sync" in i]
    argv = sync.removeprefix("RUN ").split()
    env = {**os.environ, "UV_PROJECT_ENVIRONMENT": str(venv), "UV_PYTHON_DOWNLOADS": "never"}
    env.pop("VIRTUAL_ENV", None)
    result = subprocess.run(
        [shutil.which("uv") or "uv", *argv[1:]],
        cwd=context, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    python = str(venv / "bin" / "python")
    found = subprocess.run(
        [python, "-c", "import importlib.util as u, sys; "
         "print(' '.join(m for m in sys.argv[1:] if u.find_spec(m)))",
         *(f"kiln_{s}" for s in SERVICES)],
        capture_output=True, text=True, check=True,
    ).stdout.split()  # fmt: skip
    assert found == [f"kiln_{name}"]
    site = subprocess.run(
        [python, "-c", f"import kiln_{name}; print(kiln_{name}.__file__)"],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    assert str(venv) in site, "installed as a wheel, not linked to the source tree"
