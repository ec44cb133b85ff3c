"""Serving: the dynamic batcher, the HTTP API, metrics, hot reload, the Gradio page and Ray Serve, on the core.

The core (classifier/*.py) never imports this package: `classifier.load(...).execute(...)` runs without a server.
"""
