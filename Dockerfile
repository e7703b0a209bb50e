# syntax=docker/dockerfile:1
# The streamq image: `streamq consume`, `streamq autoscale` and every other command.
# Build:  docker build -t streamq/streamq:$(python -c 'import streamq; print(streamq.__version__)') .
# The tag follows the package version, as the Helm chart's appVersion does.
#
# The base image is pinned by digest (python:3.12-slim, linux/amd64 and arm64 index), so a
# rebuild gets the same system libraries; bump it on purpose with
#   docker buildx imagetools inspect python:3.12-slim
# and paste the new index digest into PYTHON_IMAGE below (both stages are FROM it).
ARG PYTHON_IMAGE=python:3.12-slim@sha256:78387bc3881b8273120a12ebe6c1ab22b018ccc2c9adf565ae1ac9b536e184ea

# Stage 1: the wheel, built from the sources (every dependency ships manylinux wheels, so no
# compiler is needed).
FROM ${PYTHON_IMAGE} AS build
WORKDIR /src
RUN python -m pip install --no-cache-dir "hatchling>=1.25"
COPY pyproject.toml README.md ./
COPY streamq ./streamq
COPY autoscaler ./autoscaler
RUN python -m hatchling build -t wheel -d /dist

# Stage 2: only the wheel (and its dependencies from the index) in a virtualenv.
FROM ${PYTHON_IMAGE}
LABEL org.opencontainers.image.title="streamq" \
      org.opencontainers.image.description="Reliable job engine on Redis Streams for publishing social-media posts"
ENV PATH=/opt/streamq/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    STREAMQ_HOME=/tmp/streamq
RUN --mount=type=bind,from=build,source=/dist,target=/dist \
    python -m venv /opt/streamq \
    && /opt/streamq/bin/pip install --no-cache-dir "$(ls /dist/streamq-*.whl)[kubernetes]" \
    && /opt/streamq/bin/pip uninstall --yes pip \
    && find /opt/streamq -name '__pycache__' -prune -exec rm -rf {} + \
    && groupadd --system --gid 10001 streamq \
    && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent streamq
# Numeric, so Kubernetes' runAsNonRoot can check it.
USER 10001:10001
ENTRYPOINT ["streamq"]
CMD ["--help"]
