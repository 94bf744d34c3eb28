# The image the Helm chart (deploy/helm/apizee-kafka-bridge) runs. `make image` builds it with
# buildah (docs/shipping.md); by hand: `docker build --build-arg VERSION=$(cat VERSION) .`.
# Two stages: the build stage installs the bridge, the consumers' package it depends on and their
# pinned dependencies into a virtualenv (all of them ship wheels, so no compiler is needed); the
# runtime stage copies only that virtualenv onto a slim Python base and runs as an unprivileged
# user. PYTHON_IMAGE is any Debian bookworm with Python 3.11 as `python` on the PATH (make image
# makes such a base with debootstrap where the public one cannot be pulled).
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
WORKDIR /src
RUN python -m venv /opt/venv
# Dependencies first, so that code changes reuse this layer. The consumers' package is built
# from this repository (its schemas/ and VERSION are links to the root's); runtime
# dependencies only, never the dev or test extras.
COPY pyproject.toml constraints.txt README.md VERSION ./
COPY schemas schemas
COPY consumers/python consumers/python
COPY bridge/__init__.py bridge/__init__.py
RUN /opt/venv/bin/pip install --no-cache-dir -c constraints.txt ./consumers/python .
COPY bridge bridge
# The installers leave: the running service never installs anything (and less to patch).
RUN /opt/venv/bin/pip install --no-cache-dir --no-deps --force-reinstall -c constraints.txt . \
    && /opt/venv/bin/apizee-bridge --version \
    && /opt/venv/bin/python -m pip uninstall --yes --quiet pip setuptools \
    && /opt/venv/bin/python -m compileall -q /opt/venv/lib

FROM ${PYTHON_IMAGE}
# The release version (the repository's VERSION; a unit test keeps this default equal to it).
ARG VERSION=0.1.0
LABEL org.opencontainers.image.title="apizee-kafka-bridge" \
      org.opencontainers.image.description="Apizee session events (webhooks and REST gap filling) into Kafka, Avro-encoded" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.version="${VERSION}"
# The root filesystem may be read-only (the chart makes it so): no bytecode written at run
# time (compiled in the build stage), logs unbuffered to stdout.
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
RUN groupadd --system --gid 10001 bridge \
    && useradd --system --uid 10001 --gid bridge --no-create-home --home-dir /nonexistent \
       --shell /usr/sbin/nologin bridge
COPY --from=build /opt/venv /opt/venv
# Numeric, so that Kubernetes' runAsNonRoot can verify it.
USER 10001:10001
# 8080: webhooks (BRIDGE_INGRESS_PORT); 9090: /metrics, /healthz, /readyz (BRIDGE_ADMIN_PORT).
EXPOSE 8080 9090
ENTRYPOINT ["apizee-bridge"]
CMD ["run"]
