# syntax=docker/dockerfile:1
# agent-token-broker: production image (amd64 and arm64 from this one file:
#   docker buildx build --platform linux/amd64,linux/arm64 -t agent-token-broker:0.1.0 .)
#
# Targets: `runtime` (the default, production: the broker and its runtime dependencies only) and
# `dev` (adds the Entra emulator and the `dev`/`emulator` commands, for deploy/compose.yaml; never
# deploy it). Build arguments: EXTRAS=redis adds the Redis client for the shared token cache
# (Broker__Cache__Redis__*); BASE_IMAGE replaces the base (tests build from a local stand-in).
#
# Base image: pinned by tag. Multi-arch index digest recorded for this tag when this file was
# written (verify and pin with `docker buildx imagetools inspect python:3.11.15-slim-bookworm`):
#   python:3.11.15-slim-bookworm@sha256:d29f48a31a8b408ed19272ca1e7b10ebae13b240a27e862d3d4217c528e2e0c3
ARG BASE_IMAGE=python:3.11.15-slim-bookworm
ARG VERSION=0.1.0
ARG EXTRAS=""

# ---- build: wheels for the broker and every runtime dependency (no emulator) ----------------
FROM ${BASE_IMAGE} AS build
ARG EXTRAS
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
SHELL ["/bin/sh", "-eu", "-c"]
# strip (binutils) and wheel's pack/unpack, in this throwaway stage only. The compiled extensions
# of uvloop, aiohttp, cryptography & co. ship with debug information the runtime never reads.
# binutils is not version-pinned: the pinned base decides the Debian release it comes from.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends binutils \
    && rm -rf /var/lib/apt/lists/* \
    && python -m pip install "wheel==0.48.0"
WORKDIR /src
COPY pyproject.toml README.md LICENSE ./
COPY agent_token_broker ./agent_token_broker
# entra_emulator/ is not in this stage, so the broker's wheel is built without it. Platform
# wheels are repacked with stripped shared objects (wheel pack rewrites their RECORD hashes).
RUN python -m pip wheel --wheel-dir /wheels ".${EXTRAS:+[$EXTRAS]}" \
    && for whl in /wheels/*-linux_*.whl /wheels/*manylinux*.whl; do \
        [ -e "$whl" ] || continue; \
        python -m wheel unpack --dest /tmp/unpacked "$whl"; \
        find /tmp/unpacked -name "*.so*" -type f -exec strip --strip-unneeded {} +; \
        rm "$whl"; \
        python -m wheel pack --dest-dir /wheels /tmp/unpacked/*; \
        rm -rf /tmp/unpacked; \
    done

# ---- build-dev: the same package with the emulator (for the dev target only) ----------------
FROM build AS build-dev
COPY entra_emulator ./entra_emulator
RUN python -m pip wheel --no-deps --wheel-dir /wheels-dev .

# ---- dev: broker + Entra emulator, for local use with deploy/compose.yaml --------------------
FROM ${BASE_IMAGE} AS dev
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/tmp \
    TMPDIR=/tmp
RUN --mount=type=bind,from=build-dev,source=/wheels,target=/wheels \
    --mount=type=bind,from=build-dev,source=/wheels-dev,target=/wheels-dev \
    python -m pip install --no-cache-dir --no-index --find-links=/wheels /wheels-dev/*.whl \
    && python -m pip uninstall --yes pip setuptools wheel
USER 10001:10001
WORKDIR /tmp
ENTRYPOINT ["agent-token-broker"]
CMD ["dev"]

# ---- runtime (default target): the broker's wheels installed into a slim image, nothing else --
FROM ${BASE_IMAGE} AS runtime
ARG BASE_IMAGE
ARG VERSION
ARG EXTRAS
LABEL org.opencontainers.image.title="agent-token-broker" \
      org.opencontainers.image.description="Localhost token broker sidecar for Microsoft Entra Agent ID" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.licenses="MIT" \
      org.opencontainers.image.base.name="${BASE_IMAGE}"

# No bytecode written at run time (the root filesystem may be read-only), logs unbuffered,
# HOME and TMPDIR on the one writable place: a tmpfs mounted at /tmp.
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/tmp \
    TMPDIR=/tmp

# Install from the build stage's wheels only (no index), then drop the installers.
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    python -m pip install --no-cache-dir --no-index --find-links=/wheels \
        "agent-token-broker${EXTRAS:+[$EXTRAS]}==${VERSION}" \
    && python -m pip uninstall --yes pip setuptools wheel

# Numeric non-root user: Kubernetes' runAsNonRoot can verify it without /etc/passwd.
USER 10001:10001
WORKDIR /tmp

# API on loopback (127.0.0.1:5000, Broker__Listen); ops listener (/healthz, /readyz, /metrics).
EXPOSE 9464

# SIGTERM stops accepting connections and lets in-flight requests finish (grace period 10 s).
STOPSIGNAL SIGTERM

# Liveness of the ops listener with no curl in the image: the broker's own probe, which follows
# Broker__OpsListen (any spelling) and ignores proxy variables. Exit 0 healthy, 1 not.
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 \
    CMD ["agent-token-broker", "healthcheck"]

ENTRYPOINT ["agent-token-broker"]
CMD ["serve"]
