"""Serving: the dynamic batcher, the HTTP API, metrics, hot reload, the Gradio page and Ray Serve, on the core.

The core (classifier/*.py) never imports this package: `classifier.load(...).execute(...)` runs without a server.
"""

import os

# Gradio reports usage to its servers unless told not to; an offline server must not phone home. Set here, before
# any module of this package imports Gradio, so that every shape (app.py, the tests' servers, Ray) has it.
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
