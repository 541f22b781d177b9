# One image for every service; the service is chosen by the command:
#   docker run IMAGE python -m command_service
# The base image is a build argument so that machines without a registry can build on a
# locally made Python image (see docs/containers.md).
ARG PYTHON_IMAGE=python:3.11-slim-bookworm
FROM ${PYTHON_IMAGE}

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app
COPY pyproject.toml README.md ./
COPY shared ./shared
COPY command_service ./command_service
COPY projector_service ./projector_service
COPY query_service ./query_service
COPY workflow_service ./workflow_service
# The operator's CLI (esctl, an entry point of the package): `docker exec CONTAINER esctl lag`.
COPY esctl ./esctl
RUN python -m pip install . && useradd --system --uid 10001 app && mkdir -p /app/var && chown app /app/var
USER app

ENV HTTP_HOST=0.0.0.0 LOG_FORMAT=json
EXPOSE 8001 8002 8003 8004
CMD ["python", "-m", "command_service"]
