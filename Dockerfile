# syntax=docker/dockerfile:1
# agent-token-broker: production image (amd64 and arm64 from this one file:
#   docker buildx build --platform linux/amd64,linux/arm64 -t agent-token-broker:0.1.0 .)
#
# Base image: pinned by tag. Multi-arch index digest recorded for this tag when this file was
# written (verify and pin with `docker buildx imagetools inspect python:3.11.15-slim-bookworm`):
#   python:3.11.15-slim-bookworm@sha256:d29f48a31a8b408ed19272ca1e7b10ebae13b240a27e862d3d4217c528e2e0c3

# ---- build: wheels for the broker and every dependency -------------------------------------
FROM python:3.11.15-slim-bookworm AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY agent_token_broker ./agent_token_broker
COPY entra_emulator ./entra_emulator
RUN python -m pip wheel --wheel-dir /wheels .

# ---- runtime: the wheels installed into a slim image, nothing else --------------------------
FROM python:3.11.15-slim-bookworm AS runtime
ARG VERSION=0.1.0
LABEL org.opencontainers.image.title="agent-token-broker" \
      org.opencontainers.image.description="Localhost token broker sidecar for Microsoft Entra Agent ID" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.licenses="MIT" \
      org.opencontainers.image.base.name="docker.io/library/python:3.11.15-slim-bookworm"

# No bytecode written at run time (the root filesystem may be read-only), logs unbuffered,
# HOME and TMPDIR on the one writable place: a tmpfs mounted at /tmp.
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/tmp \
    TMPDIR=/tmp

# Install from the build stage's wheels only (no index), then drop the installers.
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    python -m pip install --no-cache-dir --no-index --find-links=/wheels "agent-token-broker==${VERSION}" \
    && python -m pip uninstall --yes pip setuptools wheel

# Numeric non-root user: Kubernetes' runAsNonRoot can verify it without /etc/passwd.
USER 10001:10001
WORKDIR /tmp

# API on loopback (127.0.0.1:5000, Broker__Listen); ops listener (/healthz, /readyz, /metrics).
EXPOSE 9464

# SIGTERM stops accepting connections and lets in-flight requests finish (grace period 10 s).
STOPSIGNAL SIGTERM

# Liveness of the ops listener, with no curl in the image (proxy variables ignored: it is local).
# The port follows Broker__OpsListen when set with this spelling; otherwise the default 9464.
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request as u; port = os.environ.get('Broker__OpsListen', ':9464').rpartition(':')[2]; u.build_opener(u.ProxyHandler({})).open('http://127.0.0.1:' + port + '/healthz', timeout=3)"]

ENTRYPOINT ["agent-token-broker"]
CMD ["serve"]
