"""The HTTP API app.py and each Ray Serve replica serve, from one factory: /service, /explain, /v2, /v1, /healthz,
/readyz, /metrics and /admin/reload, behind the guard and the metrics middleware."""
from __future__ import annotations

from typing import Any

from fastapi import FastAPI

from ..images import Limits
from . import metrics, open_inference, service, tf_serving
from .batching import Batcher
from .explanations import Explainer
from .explanations import create_router as explain_router
from .guard import Guard, GuardConf
from .protocols import Served
from .service import Health


def create_app(batcher: Batcher, limits: Limits, health: Health, credentials: tuple[str, str] | None = None,
               reloader: Any = None, guard: GuardConf | None = None, explainer: Explainer | None = None,
               **fastapi_kwargs: Any) -> FastAPI:
    """Every HTTP route but the page (app.py mounts the Gradio UI at / after these). The protocols (KServe v2,
    TF Serving REST) run on the same batcher and limits. guard: the middleware every request passes first
    (inside the metrics, so that what it refuses is counted)."""
    app = FastAPI(**{"title": "Image classifier", **fastapi_kwargs})
    app.include_router(service.create_router(batcher, limits, health, credentials, reloader))
    served = Served(batcher, limits, credentials, health)
    app.include_router(open_inference.create_router(served))
    app.include_router(tf_serving.create_router(served))
    app.include_router(explain_router(explainer or Explainer(batcher), limits, credentials))
    if guard is not None:
        app.add_middleware(Guard, conf=guard)
    app.add_middleware(metrics.MetricsMiddleware)
    return app
