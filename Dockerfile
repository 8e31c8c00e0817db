# One image for every service: api, workers, migrate and flower differ only by their command.
# The torch build is a build argument: CUDA by default (the GPU worker's image),
#   docker build .                                   # CUDA wheel (TORCH_VARIANT=cu128)
#   docker build --build-arg TORCH_VARIANT=cpu .     # CPU wheel: api, migrate, CPU workers
FROM python:3.11-slim AS base

ARG TORCH_VARIANT=cu128
ARG TORCH_INDEX=https://download.pytorch.org/whl/${TORCH_VARIANT}
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    SPOTTUNE_DATA_DIR=/var/lib/spottune

RUN apt-get update \
    && apt-get install -y --no-install-recommends curl \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /app
# torch first and alone: the largest layer, cached across code changes.
RUN pip install --index-url "${TORCH_INDEX}" "torch==2.13.0" \
    && python -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)"
COPY pyproject.toml README.md constraints.txt ./
COPY spottune ./spottune
# flower: the optional monitoring service of docker-compose.yml uses this image too
RUN pip install -c constraints.txt . flower
COPY alembic.ini ./
COPY migrations ./migrations

RUN useradd --system --create-home --uid 10001 spottune \
    && mkdir -p /var/lib/spottune && chown spottune /var/lib/spottune
USER spottune

EXPOSE 8000
CMD ["uvicorn", "spottune.app.main:create_app", "--factory", "--host", "0.0.0.0", "--port", "8000", "--timeout-keep-alive", "75", "--loop", "uvloop", "--http", "httptools"]
