# The streaming worker: `docker build -t publisher-stream .`, then see docker-compose.yml.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    STREAM_WORKER_WEB_PORT=6066

# libgomp1: the OpenMP runtime that the LightGBM and XGBoost wheels link against.
RUN apt-get update \
    && apt-get install -y --no-install-recommends libgomp1 \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /app

# The package installs into site-packages; /app keeps the source tree too, because runtime paths
# (schemas/json, var/) are resolved from the project root, and `python -m stream` run from /app
# imports /app/stream.
COPY . .
RUN pip install -c constraints.txt . \
    && useradd --system --uid 10001 --home-dir /app stream \
    && mkdir -p /app/var \
    && chown -R stream /app/var

USER stream
VOLUME ["/app/var"]
EXPOSE 6066

HEALTHCHECK --interval=15s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:6066/healthz', timeout=4)"]

CMD ["python", "-m", "stream", "worker"]
