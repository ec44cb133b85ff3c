"""The HTTP API app.py and each Ray Serve replica serve, from one factory: /service, /explain, /v2, /v1, /healthz,
/readyz, /metrics and /admin/reload, behind the guard and the metrics middleware."""
from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.middleware.trustedhost import TrustedHostMiddleware

from . import inference_lane, metrics, open_inference, service, tf_serving
from .explanations import create_router as explain_router
from .guard import Guard, GuardConf
from .repository import Repository


def create_app(models: Repository, guard: GuardConf | None = None,
               allowed_hosts: list[str] | None = None, cors_origins: list[str] | None = None,
               reloading: bool = True, **fastapi_kwargs: Any) -> FastAPI:
    """Every HTTP route but the page (app.py mounts the Gradio UI at / after these), each model by name from the
    repository (`models`, which holds who may call too: models.access), the default one where no name is given.
    The protocols (KServe v2, TF Serving REST) run on each model's batcher and limits. guard: the middleware every
    request passes first (inside the metrics, so that what it refuses is counted). reloading: offer /admin/reload
    (Ray Serve's replicas do not).

    allowed_hosts: the Host names answered (Starlette's TrustedHostMiddleware: "*" any, "*.example.com"); any
    other gets 400, so that a page of another site whose name re-resolves to this server (DNS rebinding) is not
    answered. None: no check (Ray Serve's proxy checks its own). cors_origins: the other sites' pages that may
    call this server from a browser; none by default, and then no CORS header is sent (Gradio's own CORS, which
    reflects any origin when Host is not localhost, stands aside for Starlette's when the app sets one)."""
    app = FastAPI(**{"title": "Image classifier", **fastapi_kwargs})
    app.include_router(service.create_router(models, reloading))
    app.include_router(open_inference.create_router(models))
    app.include_router(tf_serving.create_router(models))
    app.include_router(explain_router(models))
    ours = layers(models, guard, allowed_hosts, cors_origins)
    for layer in reversed(ours):  # each added goes outside the ones before
        app.add_middleware(layer.cls, *layer.args, **layer.kwargs)
    # The inference routes' shorter way, behind the same layers; inference_lane.first(app) puts it in front.
    service_paths = (service.SERVICE_PATH, service.SERVICE_BY_NAME_PATH)
    routes = [*inference_lane.routes(service.classify_route(models), service_paths, ["POST", "PUT"]),
              *inference_lane.routes(open_inference.infer_route(models), open_inference.INFER_PATHS, ["POST"]),
              *inference_lane.routes(tf_serving.run_route(models), (tf_serving.RUN_PATH,), ["POST"])]
    app.state.inference_routes, app.state.inference_lane = routes, inference_lane.lane(ours)
    return app


def layers(models: Repository, guard: GuardConf | None, allowed_hosts: list[str] | None,
           cors_origins: list[str] | None) -> list[Middleware]:
    """Our middleware, outermost first: the metrics (which count what the others refuse), the allowed hosts, the
    guard, CORS."""
    chosen = [Middleware(metrics.MetricsMiddleware, model_of=lambda path: metrics.model_in(
        path, models.names, models.served_name(models.entry())))]
    if allowed_hosts is not None:
        chosen.append(Middleware(TrustedHostMiddleware, allowed_hosts=allowed_hosts, www_redirect=False))
    if guard is not None:
        chosen.append(Middleware(Guard, conf=guard))
    chosen.append(Middleware(CORSMiddleware, allow_origins=cors_origins or [], allow_credentials=bool(cors_origins),
                             allow_methods=["*"], allow_headers=["*"]))
    return chosen
