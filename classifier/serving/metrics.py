"""Prometheus metrics (prometheus-client): requests, latency, batch sizes, queue depth, the model being served."""
from __future__ import annotations

import time
import weakref
from contextvars import ContextVar
from pathlib import Path
from typing import Any, Callable, Collection

from prometheus_client import Counter, Gauge, Histogram

from ..contract import servable

from . import logs
from .guard import route_path

REQUESTS = Counter("classifier_requests_total", "HTTP requests by endpoint, model and status",
                   ["endpoint", "model", "status"])
LATENCY = Histogram("classifier_request_seconds", "HTTP request latency by endpoint and model", ["endpoint", "model"],
                    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10))
GRPC_REQUESTS = Counter("classifier_grpc_requests_total", "gRPC calls by method and status code",
                        ["method", "code"])
GRPC_LATENCY = Histogram("classifier_grpc_request_seconds", "gRPC call latency by method", ["method"],
                         buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10))
CLASSIFICATIONS = Counter("classifier_images_total", "Images classified, by model and outcome (ok, or the error's "
                          "kind)", ["model", "outcome"])
LIVE_FRAMES = Counter("classifier_live_frames_total", "The page's live camera frames, by outcome: classified, "
                      "dropped (the server busy) or refused (a second stream of the same visitor)", ["outcome"])
BATCH_SIZE = Histogram("classifier_batch_size", "Images per model call, by model", ["model"],
                       buckets=(1, 2, 4, 8, 16, 32, 64))
IN_PROGRESS = Gauge("classifier_requests_in_progress", "HTTP requests taken in and not yet answered, by endpoint",
                    ["endpoint"])
QUEUE_DEPTH = Gauge("classifier_queue_depth", "Requests admitted and not yet answered, by model", ["model"])
MODEL_LOAD_SECONDS = Gauge("classifier_model_load_seconds", "Seconds each model took to load and warm up", ["model"])
MODEL_REFUSED = Counter("classifier_model_refused_total",
                        "Models a reload refused (broken or incomplete); the previous one kept serving")
MODEL_LOADS = Counter("classifier_model_loads_total", "Models loaded while serving, by name and how: asked (the "
                      "repository API), on request (--lazy-load, --max-loaded-models), refused", ["model", "how"])
MODEL_UNLOADS = Counter("classifier_model_unloads_total", "Models unloaded while serving, by name", ["model"])
MODEL_INFO = Gauge("classifier_model_info", "Each model served, by its name (value 1)",
                   ["model", "model_dir", "version", "format", "engine", "labels"])

# Our own routes are labelled by path (a model's by its route: /service/NAME is /service), the protocols by their
# prefix, everything else is Gradio's (the page, its assets and its API). The model is a label of its own, taken
# only from the names the server serves (model_in): a path a client makes up adds no series.
OWN_ENDPOINTS = ("/service", "/explain", "/healthz", "/readyz", "/metrics", "/admin/reload")
PROTOCOL_PREFIXES = ("/v2", "/v1")  # KServe v2, TF Serving REST


def endpoint_of(path: str) -> str:
    if path in OWN_ENDPOINTS:
        return path
    if path.startswith(("/service/", "/explain/")):  # a model by name: counted with its route
        return path[:path.index("/", 1)]
    return next((prefix for prefix in PROTOCOL_PREFIXES if path == prefix or path.startswith(prefix + "/")),
                "gradio")


# The images a request had classified (Batcher.classify counts each), for its log line: set per request by the
# middleware, and seen by the tasks and threads the request starts (they copy its context).
REQUEST_IMAGES: ContextVar[list[int] | None] = ContextVar("request_images", default=None)


def count_image() -> None:
    if (images := REQUEST_IMAGES.get()) is not None:
        images[0] += 1


def model_in(path: str, names: Collection[str], default: str) -> str:
    """The model a route names, for the model label: a repository's name (a name it does not serve counts as "",
    so that a client cannot create series), the default for /service and /explain; "" for the other routes (the
    page's events name theirs in the body)."""
    if path in ("/service", "/explain"):
        return default
    parts = path.split("/")
    if len(parts) > 2 and parts[1] in ("service", "explain"):
        name = parts[2]
    elif len(parts) > 3 and parts[1] in ("v1", "v2") and parts[2] == "models":
        name = parts[3].split(":", 1)[0]  # TF Serving's /v1/models/NAME:predict
    else:
        return ""
    return name if name in names else ""


class MetricsMiddleware:
    """Pure ASGI middleware (no buffering, so Gradio's event streams pass through untouched). model_of(path): the
    model a request's route names (model_in, with the server's names)."""

    def __init__(self, app: Callable, model_of: Callable[[str], str] = lambda path: ""):
        self.app, self.model_of = app, model_of

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path = route_path(scope)
        endpoint, model = endpoint_of(path), self.model_of(path)
        started = time.perf_counter()
        status = {"code": 500}

        async def send_and_record(message: dict) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        in_progress = IN_PROGRESS.labels(endpoint)
        in_progress.inc()
        images = [0]
        token = REQUEST_IMAGES.set(images)
        try:
            await self.app(scope, receive, send_and_record)
        finally:
            REQUEST_IMAGES.reset(token)
            in_progress.dec()
            seconds = time.perf_counter() - started
            REQUESTS.labels(endpoint, model, str(status["code"])).inc()
            LATENCY.labels(endpoint, model).observe(seconds)
            # The page's events classify in Gradio's queue, outside this request: their images are not known here.
            logs.request(endpoint, path, scope.get("method", ""), model, status["code"],
                         images[0] if endpoint != "gradio" else None, seconds, scope.get("client"))


def describe_model(model: Any, load_seconds: float, name: str) -> None:
    """Publishes the model served under `name` (one series with value 1; its previous one is removed)."""
    forget_model(name)
    runtime = getattr(model, "runtime", None)  # a user's UAI class has none: its class name stands for its format
    model = servable(model)
    # The model folder's name, not its path: /metrics needs no login, and the server's folders are nobody's business.
    labels = (name, Path(str(model.model_dir or "")).name, str(model.version or ""),
              getattr(runtime, "format", type(getattr(model, "wrapped", model)).__name__),
              getattr(runtime, "engine", ""), str(len(model.labels)))
    MODEL_INFO.labels(*labels).set(1)
    _DESCRIBED[name] = labels
    MODEL_LOAD_SECONDS.labels(name).set(load_seconds)


def forget_model(name: str) -> None:
    """A reloaded model's description goes (its successor's replaces it)."""
    if name in _DESCRIBED:
        MODEL_INFO.remove(*_DESCRIBED.pop(name))
        MODEL_LOAD_SECONDS.remove(name)


def drop_model(name: str) -> None:
    """An unloaded model's series go, its counts too: their number stays bounded by the models served. (Loaded
    again, its counts start from zero, which Prometheus' rate() reads as a counter reset.)"""
    forget_model(name)
    for series in (QUEUE_DEPTH, BATCH_SIZE, CLASSIFICATIONS, REQUESTS, LATENCY):
        series.remove_by_labels({"model": name})


_DESCRIBED: dict[str, tuple[str, ...]] = {}  # each model's info labels, by name


def count_queue(batcher: Any, name: str) -> None:
    """classifier_queue_depth{model}: the requests waiting in that model's batcher (read when scraped; the batcher
    is held weakly, so an unloaded one's memory is not kept by its series)."""
    held = weakref.ref(batcher)
    QUEUE_DEPTH.labels(name).set_function(lambda: batcher.pending if (batcher := held()) is not None else 0)
