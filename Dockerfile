# syntax=docker/dockerfile:1
#
# Payment Service image: `docker build -t payment-service:1.0.0 .`
#
# Stage 1 installs the project and the dependencies uv.lock pins into a virtual
# environment (uv sync --frozen: no resolution at build time);
# stage 2 is a slim Python runtime (no compilers, no pip cache, no sources) that
# copies that environment, runs as an unprivileged user and starts
# `payment-service serve`. tests/deploy/ checks this file: hadolint, the build
# context against .dockerignore, and the exact ENTRYPOINT + CMD run from a freshly
# installed wheel against a real PostgreSQL.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build

# uv installs exactly what uv.lock pins (make lock); keep UV_VERSION at uv.lock's uv.
ARG UV_VERSION=0.13.9
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    UV_PROJECT_ENVIRONMENT=/opt/venv \
    UV_PYTHON_DOWNLOADS=never \
    UV_LINK_MODE=copy \
    UV_NO_CACHE=1

RUN python -m pip install --no-cache-dir "uv==${UV_VERSION}"

WORKDIR /src
# The lock first so the dependency layer is cached until uv.lock changes.
# The sandbox (workspace member sandbox/, the `sandbox` extra) stays out: no extra is
# synced, and uv --frozen needs no file of a member it does not install.
COPY pyproject.toml uv.lock README.md ./
RUN uv sync --frozen --no-dev --no-install-project
COPY src ./src
RUN uv sync --frozen --no-dev --no-editable


FROM ${PYTHON_IMAGE} AS runtime

ARG VERSION=1.0.0
LABEL org.opencontainers.image.title="payment-service" \
      org.opencontainers.image.description="Payment Service of the ride-hailing platform" \
      org.opencontainers.image.version="${VERSION}"

# A fixed, unprivileged uid/gid: Kubernetes' runAsUser/fsGroup use the same numbers.
RUN groupadd --system --gid 10001 app \
    && useradd --system --uid 10001 --gid app --no-create-home --home-dir /app \
       --shell /usr/sbin/nologin app

ENV PATH="/opt/venv/bin:${PATH}" \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    SERVICE_HOST=0.0.0.0 \
    SERVICE_PORT=8082

COPY --from=build /opt/venv /opt/venv

# The wheel carries the migrations and the seed CSVs: /app only is the working directory.
WORKDIR /app

USER 10001:10001
EXPOSE 8082

# Liveness of the process, without curl: the probe is the runtime's own Python.
HEALTHCHECK --interval=15s --timeout=3s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import os, sys, urllib.request; port = os.environ.get('SERVICE_PORT', '8082'); sys.exit(0 if urllib.request.urlopen(f'http://127.0.0.1:{port}/health/live', timeout=2).status == 200 else 1)"]

# Exec form: payment-service is PID 1 and gets SIGTERM itself; uvicorn handles it
# by draining in-flight requests and stopping the outbox dispatcher.
STOPSIGNAL SIGTERM
ENTRYPOINT ["payment-service"]
CMD ["serve"]
