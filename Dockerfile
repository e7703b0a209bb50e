# syntax=docker/dockerfile:1
# The streamq image: `streamq consume`, `streamq autoscale` and every other command.
# Build:  docker build -t streamq/streamq:$(python -c 'import streamq; print(streamq.__version__)') .
# The tag follows the package version, as the Helm chart's appVersion does.

ARG PYTHON_VERSION=3.12

FROM python:${PYTHON_VERSION}-slim AS build
WORKDIR /src
# Every dependency ships manylinux wheels, so no compiler is needed even here.
RUN python -m venv /opt/streamq
COPY pyproject.toml README.md ./
COPY streamq ./streamq
COPY autoscaler ./autoscaler
RUN /opt/streamq/bin/pip install --no-cache-dir ".[kubernetes]" \
    && /opt/streamq/bin/pip uninstall --yes pip \
    && find /opt/streamq -name '__pycache__' -prune -exec rm -rf {} +

FROM python:${PYTHON_VERSION}-slim
LABEL org.opencontainers.image.title="streamq" \
      org.opencontainers.image.description="Reliable job engine on Redis Streams for publishing social-media posts"
ENV PATH=/opt/streamq/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    STREAMQ_HOME=/tmp/streamq
COPY --from=build /opt/streamq /opt/streamq
RUN groupadd --system --gid 10001 streamq \
    && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent streamq
# Numeric, so Kubernetes' runAsNonRoot can check it.
USER 10001:10001
ENTRYPOINT ["streamq"]
CMD ["--help"]
