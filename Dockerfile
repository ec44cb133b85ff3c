# The classifier server's image: the Gradio page at /, POST /service, the protocols, /healthz, /readyz, /metrics.
#   docker build -t classifier .
#   docker run --read-only --tmpfs /tmp -p 8080:8080 classifier
# Offline or behind a proxy: build from a wheelhouse in the build context, never from the package registry:
#   pip download -r requirements.txt -d wheels && docker build --build-arg WHEELS=wheels -t classifier .
# The runtime image (the last stage, the default) serves the default model converted at build time, with no
# TensorFlow and no Keras in it. `--target full` keeps them: it converts models mounted later, and retrains.
# What was verified, and how: tests/test_docker.py builds this file for real (from a wheelhouse, on a Debian base
# made by mmdebstrap and passed as BASE_IMAGE), runs it with --read-only, waits for its HEALTHCHECK, classifies
# through /service and gradio_client, checks that no TensorFlow is importable in it and that it served without
# converting, re-times on fewer cores, and converts a mounted model with the full target. Its lines with
# python:3.11-slim (the default BASE_IMAGE) and the registry (WHEELS unset) were not run here: no registry is
# reachable from the machines we test on. docs/deploy.md has the transcript.
ARG BASE_IMAGE=python:3.11-slim

# What every stage starts from: Python, a venv on PATH (Debian's own Python refuses pip outside one), the user.
FROM ${BASE_IMAGE} AS base
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    GRADIO_ANALYTICS_ENABLED=False \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    HOME=/home/classifier \
    CLASSIFIER_HOST=0.0.0.0 \
    CLASSIFIER_PORT=8080
RUN useradd --create-home --home-dir /home/classifier --uid 10001 --user-group classifier
WORKDIR /app

# Serving's packages (requirements-serve.txt) in a venv, from the wheelhouse if WHEELS names one. The wheels are
# copied into this build stage only: the runtime stage copies the venv, never them.
FROM base AS serving-packages
ARG WHEELS
COPY requirements-serve.txt requirements.txt ${WHEELS} /build/
RUN python3 -m venv /opt/venv \
    && if [ -n "$WHEELS" ]; then pip install --no-index --find-links /build -r /build/requirements-serve.txt; \
       else pip install -r /build/requirements-serve.txt; fi

# Everything (requirements.txt): TensorFlow and Keras on top of serving's packages.
FROM serving-packages AS all-packages
ARG WHEELS
RUN if [ -n "$WHEELS" ]; then pip install --no-index --find-links /build -r /build/requirements.txt; \
    else pip install -r /build/requirements.txt; fi

# The files the app runs from (the same in both images); explicit, so that a wheelhouse in the context stays out.
FROM base AS app
COPY app.py conf.json retrain_inference.py ./
COPY classifier classifier/
COPY checkpoint_dir checkpoint_dir/
COPY examples examples/
RUN python3 -m compileall -q classifier app.py retrain_inference.py \
    && mkdir -p flagged trained checkpoint_dir/.litert \
    && chown 10001:10001 flagged trained checkpoint_dir/.litert

# With TensorFlow: converts the default model for LiteRT and OpenVINO, checks them against TensorFlow, times
# them and records the choice beside it (checkpoint_dir/.litert). Also an image of its own: --target full.
# (Built on all-packages, not on a copy of its venv: that copy cost 36 s of every build. So in the wheelhouse
# mode this image also holds the wheels, in a lower layer; the runtime image never does.)
FROM all-packages AS full
COPY --from=app /app /app
USER 10001
# --converted-only: the runtime stage has no TensorFlow, so the choice is made among the engines it has (built on
# a busy machine, TensorFlow once timed fastest, and every runtime container then timed the engines again).
RUN python -m classifier --convert --converted-only
EXPOSE 8080 8500
HEALTHCHECK --interval=10s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request as r; r.urlopen('http://127.0.0.1:%s/readyz' % os.environ['CLASSIFIER_PORT'], timeout=4)"]
CMD ["python", "app.py"]

# The runtime image: serving's packages, the app and the converted files; no TensorFlow, no Keras. It serves
# the recorded engine at once, and times the engines again (without TensorFlow) on a CPU unlike the build's.
# The Train tab is off in it (no TensorFlow to train with). Writable: /tmp (uploads), flagged/ (a volume).
FROM base AS runtime
COPY --from=serving-packages /opt/venv /opt/venv
COPY --from=app /app /app
COPY --from=full --chown=10001:10001 /app/checkpoint_dir/.litert /app/checkpoint_dir/.litert
USER 10001
EXPOSE 8080 8500
# Python's standard library does the probe (the image has no curl); /readyz: the model answered its warm-up.
HEALTHCHECK --interval=10s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request as r; r.urlopen('http://127.0.0.1:%s/readyz' % os.environ['CLASSIFIER_PORT'], timeout=4)"]
# One process: the engines already use every core; scale out with more containers (or Ray Serve), not workers.
CMD ["python", "app.py"]
