# CPU image for the classifier server: the Gradio page at /, POST /service, /healthz, /readyz, /metrics.
#   docker build -t classifier .
#   docker run -p 8080:8080 classifier
# Another model: mount it and point UAI_SERVICE_CONFIG at its conf.json, e.g.
#   docker run -p 8080:8080 -v $PWD/my_model:/models/my_model -e UAI_SERVICE_CONFIG=/models/my_model/conf.json classifier
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    GRADIO_ANALYTICS_ENABLED=False \
    UAI_SERVICE_CONFIG=/app/conf.json

WORKDIR /app

# Dependencies first: this layer is rebuilt only when requirements.txt changes.
COPY requirements.txt .
RUN pip install -r requirements.txt

COPY . .

# A non-root user. It owns the folders the app writes: flagged photos, trained models, the LiteRT cache.
RUN useradd --create-home --uid 10001 classifier \
    && mkdir -p /app/flagged /app/trained /app/checkpoint_dir/.litert \
    && chown -R classifier:classifier /app/flagged /app/trained /app/checkpoint_dir/.litert
USER 10001

EXPOSE 8080

# The image has no curl: Python's standard library does the probe.
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8080/healthz', timeout=4)"]

# One process: LiteRT already uses every core; scale out with more containers (or Ray Serve), not workers.
CMD ["python", "app.py", "--host", "0.0.0.0", "--port", "8080", "--no-train"]
