# syntax=docker/dockerfile:1
# WAITING FOR services/modelhost: this is services/modelhost/Dockerfile once the model host is its
# own workspace package (kiln-modelhost, `python -m kiln_modelhost`); a Dockerfile there now
# would make an incomplete workspace member. deploy/k8s/base/modelhost.yaml runs this image.
# The model host image, built from the repository root:
#   docker build -f services/modelhost/Dockerfile -t kiln-modelhost .
# Stage 1 installs the locked dependencies and Kiln's packages that inference needs (uv.lock,
# `uv sync --frozen`) into /opt/venv, as wheels (no editable links into the source tree).
# Stage 2 is the runtime: that venv alone, run as an unprivileged user, on a read-only root
# (deploy/k8s mounts /tmp and /var/lib/kiln as volumes).

FROM python:3.11-slim-bookworm AS build
COPY --from=ghcr.io/astral-sh/uv:0.5.31 /uv /usr/local/bin/uv
ENV UV_COMPILE_BYTECODE=1 \
    UV_LINK_MODE=copy \
    UV_PYTHON_DOWNLOADS=never \
    UV_PROJECT_ENVIRONMENT=/opt/venv
WORKDIR /src
# The whole workspace (less .dockerignore): uv needs every member's pyproject.toml to read the
# lock. Only kiln-modelhost and the workspace packages it depends on end up in /opt/venv.
COPY . .
RUN uv sync --frozen --no-dev --no-editable --package kiln-modelhost

FROM python:3.11-slim-bookworm
# espeak-ng and ffmpeg: the speech (tts_espeak) and video (video_camera) reference models run them.
RUN apt-get update \
    && apt-get install -y --no-install-recommends espeak-ng ffmpeg \
    && rm -rf /var/lib/apt/lists/*
RUN groupadd --system --gid 10001 kiln \
    && useradd --system --uid 10001 --gid kiln --no-create-home --home-dir /nonexistent kiln
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    KILN_TRITON_ADDRESS=0.0.0.0 \
    HOME=/tmp
WORKDIR /tmp
USER 10001:10001
# Triton: HTTP, gRPC, metrics (KILN_TRITON_*_PORT)
EXPOSE 8000 8001 8002
CMD ["python", "-m", "kiln_modelhost"]
