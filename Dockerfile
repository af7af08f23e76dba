# syntax=docker/dockerfile:1
# sansio-gateway as a container image: docs/deployment.md, "Containers".
#   docker build -t sansio-gateway .
#   docker run -p 8080:8080 -v ./gateway.toml:/etc/sansio-gateway/gateway.toml:ro \
#     -e ALICE_KEY sansio-gateway
# The config comes from the mounted file; every secret it names with key_env or
# api_key_env comes from the environment, so the image and the file hold none.

ARG PYTHON_VERSION=3.12

# --------------------------------------------------------------------------- build
FROM python:${PYTHON_VERSION}-slim AS builder
WORKDIR /src
# Only what the wheel is built from (.dockerignore keeps the rest out of the context).
COPY pyproject.toml README.md ./
COPY sansio_gateway ./sansio_gateway
COPY adapters ./adapters
# The gateway's wheel and every dependency's, with uvloop (the "fast" extra) and
# OpenTelemetry (the "otel" extra: off unless [tracing] enables it), so the
# runtime stage installs offline and carries no compiler or build cache.
RUN python -m pip wheel --no-cache-dir --wheel-dir /wheels ".[fast,otel]"

# --------------------------------------------------------------------------- runtime
FROM python:${PYTHON_VERSION}-slim
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN --mount=type=bind,from=builder,source=/wheels,target=/wheels \
    python -m pip install --no-cache-dir --no-index --find-links=/wheels "sansio-gateway[fast,otel]"
# An unprivileged user; its home holds the default SQLite usage ledger.
RUN groupadd --system --gid 10001 sansio-gateway \
    && useradd --system --uid 10001 --gid 10001 --home-dir /var/lib/sansio-gateway \
       --create-home --shell /usr/sbin/nologin sansio-gateway
WORKDIR /var/lib/sansio-gateway
VOLUME ["/var/lib/sansio-gateway"]
USER 10001:10001
EXPOSE 8080
# No curl in a slim image: the image's own Python asks /health.
HEALTHCHECK --interval=15s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import sys, urllib.request; sys.exit(urllib.request.urlopen('http://127.0.0.1:8080/health', timeout=4).status != 200)"]
# A config at /etc/sansio-gateway/gateway.toml is required: mount it read-only.
ENTRYPOINT ["sansio-gateway"]
CMD ["serve", "--config", "/etc/sansio-gateway/gateway.toml", "--host", "0.0.0.0", "--port", "8080"]
