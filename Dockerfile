# migration-runner image.
#
#   docker build -t migration-runner .
#   docker build --build-arg BASE_IMAGE=localhost/bookworm-python:latest .   # any image with python3 + venv
#
# Two ways to use it (docs/kubernetes.md, "Container image"):
#   FROM migration-runner, then COPY alembic.ini and your migrations into /migrations;
#   or pip install kube-migration-runner into your application image, for an env.py that imports your models.
ARG BASE_IMAGE=python:3.11-slim-bookworm

FROM ${BASE_IMAGE} AS build
ARG UV_VERSION=0.13.9
# Compile bytecode at build time: the runtime filesystem may be read-only.
# pip and uv trust the system CA bundle; behind a TLS-intercepting proxy, pass yours as a build
# secret (--secret id=ca-certificates,src=/etc/ssl/certs/ca-certificates.crt): it is mounted only
# while downloading and never stored in a layer.
ENV UV_COMPILE_BYTECODE=1 \
    UV_LINK_MODE=copy \
    UV_PYTHON_DOWNLOADS=never \
    UV_PROJECT_ENVIRONMENT=/opt/migration-runner \
    UV_SYSTEM_CERTS=1 \
    SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt \
    PIP_CERT=/etc/ssl/certs/ca-certificates.crt \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN --mount=type=secret,id=ca-certificates,target=/etc/ssl/certs/ca-certificates.crt \
    python3 -m venv /opt/uv && /opt/uv/bin/pip install --no-cache-dir "uv==${UV_VERSION}"
WORKDIR /src
# Locked dependencies first: this layer survives changes to the project's own code.
COPY pyproject.toml uv.lock ./
RUN --mount=type=secret,id=ca-certificates,target=/etc/ssl/certs/ca-certificates.crt \
    /opt/uv/bin/uv sync --locked --no-dev --no-install-project --python python3
COPY README.md LICENSE ./
COPY runner ./runner
RUN --mount=type=secret,id=ca-certificates,target=/etc/ssl/certs/ca-certificates.crt \
    /opt/uv/bin/uv sync --locked --no-dev --no-editable --python python3

FROM ${BASE_IMAGE}
ARG VERSION=0.1.0
LABEL org.opencontainers.image.title="migration-runner" \
      org.opencontainers.image.description="Applies Alembic revisions under a database advisory lock, with documented exit codes." \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.source="https://github.com/migration-runner/migration-runner"
# The virtual environment only: no uv, no pip cache, no compiler.
COPY --from=build /opt/migration-runner /opt/migration-runner
ENV PATH=/opt/migration-runner/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    MIGRATION_ENVIRONMENT=production
# Put alembic.ini and the script directory here (COPY, or a volume).
WORKDIR /migrations
# Numeric, so the kubelet can verify runAsNonRoot; any other UID works too.
USER 65532:65532
ENTRYPOINT ["migration-runner"]
CMD ["upgrade"]
