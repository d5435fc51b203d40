# syntax=docker/dockerfile:1
# One image recipe for every Python app of the uv workspace (each service, the stack tools).
# The build context is the repository root, so the workspace lock (uv.lock) pins every image.
# services/<name>/Dockerfile and deploy/docker/stack.Dockerfile are rendered from
# deploy/docker/app.Dockerfile by deploy/render.py, which fills in the build arguments' defaults.

ARG PACKAGE
ARG APP
ARG PORT=8000
ARG HEALTH_PATH=/healthz
ARG APT_PACKAGES=""
ARG PYTHON_IMAGE=python:3.11-slim-bookworm
ARG UV_IMAGE=ghcr.io/astral-sh/uv:0.13.9

FROM ${UV_IMAGE} AS uv

FROM ${PYTHON_IMAGE} AS builder
ARG PACKAGE
COPY --from=uv /uv /usr/local/bin/uv
ENV UV_COMPILE_BYTECODE=1 \
    UV_LINK_MODE=copy \
    UV_PYTHON_DOWNLOADS=never \
    UV_PROJECT_ENVIRONMENT=/app/.venv
WORKDIR /src
COPY . .
# Non-editable so that the runtime stage needs the virtualenv only, not the sources.
RUN --mount=type=cache,target=/root/.cache/uv \
    test -n "${PACKAGE}" \
    && uv sync --frozen --no-dev --no-editable --package "${PACKAGE}"

FROM ${PYTHON_IMAGE} AS runtime
ARG APP
ARG PORT
ARG HEALTH_PATH
ARG APT_PACKAGES
# Programs an app runs besides Python (the post service's media worker runs ffmpeg); their
# versions are those of the base image's Debian release.
# hadolint ignore=DL3008
RUN if [ -n "${APT_PACKAGES}" ]; then \
        apt-get update \
        && apt-get install -y --no-install-recommends ${APT_PACKAGES} \
        && rm -rf /var/lib/apt/lists/*; \
    fi
# /shared is where compose's provision step leaves each service's generated settings, /data
# where moto keeps its state; a new named volume mounted over either takes this owner.
RUN groupadd --system --gid 10001 app \
    && useradd --system --uid 10001 --gid app --no-create-home --shell /usr/sbin/nologin app \
    && mkdir /shared /data \
    && chown app:app /shared /data
COPY --from=builder /app/.venv /app/.venv
ENV PATH=/app/.venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    APP=${APP} \
    PORT=${PORT} \
    HEALTH_PATH=${HEALTH_PATH}
USER 10001:10001
EXPOSE ${PORT}
# The slim image has no curl; the standard library is enough for a liveness probe.
HEALTHCHECK --interval=10s --timeout=3s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen(f'http://127.0.0.1:{os.environ[\"PORT\"]}{os.environ[\"HEALTH_PATH\"]}', timeout=2)"]
CMD ["sh", "-c", "test -n \"$APP\" && exec uvicorn --factory \"$APP\" --host 0.0.0.0 --port \"$PORT\""]
