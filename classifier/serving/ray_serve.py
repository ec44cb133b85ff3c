"""Scale-out on Ray Serve: replicas of the same classifier, each serving app.py's whole HTTP API, batched by
@serve.batch.

    serve run classifier.serving.ray_serve:build                                   # ./conf.json, one replica
    serve run classifier.serving.ray_serve:build conf=/srv/conf.json num_replicas=4 max_batch_size=16
    serve deploy deploy/ray/serve.yaml                                              # autoscaled (the config file)

Each replica loads the model once and serves the routes of api.create_app, the factory app.py uses: /service,
/explain, /v2 (KServe), /v1 (TF Serving REST), /healthz, /readyz and its own /metrics, with the same results,
errors and statuses. Ray Serve's HTTP proxy hands each request to the replica's ASGI app directly (serve.ingress),
and the replica's batcher forms its model calls with @serve.batch.

Optional: Ray comes from requirements-ray.txt, and only this module imports it (app.py never does).
"""
from __future__ import annotations

import asyncio
import dataclasses
import os
from pathlib import Path
from typing import Any, Callable

import ray
from ray import serve

from .. import load
from ..conf import JsonConfLoader
from ..images import limits_of
from .api import create_app
from .batching import MODEL_CALLS_IN_FLIGHT, Batcher
from .service import Health

# Which replica answered, and on which Ray node: for the operator, and the tests.
REPLICA_HEADER, NODE_HEADER = b"x-replica", b"x-ray-node"


class ServeBatcher(Batcher):
    """app.py's Batcher (the same admission, 503 when full, decoding pool and model checks) whose batches are
    formed by Ray Serve's @serve.batch instead of its own queue."""

    def __init__(self, model: Any, conf: Any):
        super().__init__(model, conf)
        self._batching = 0  # requests handed to @serve.batch and not yet answered
        self._run_batch.set_max_batch_size(conf.max_batch_size)
        self._run_batch.set_batch_wait_timeout_s(conf.max_batch_wait_ms / 1000)

    @property
    def pending(self) -> int:
        return self._decoding + self._batching

    async def _batched(self, pipeline: Any, item: Any, finish: Callable[[Any], Any]) -> Any:
        self._batching += 1
        try:
            output = await self._run_batch((pipeline, item))
        finally:
            self._batching -= 1
        if isinstance(output, Exception):
            raise output
        return finish(output)

    @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.005, max_concurrent_batches=MODEL_CALLS_IN_FLIGHT)
    async def _run_batch(self, entries: list[tuple[Any, Any]]) -> list:
        """One model call per pipeline among the entries (a batch is one model's, but for a swap), on the
        batcher's model threads; a call that fails is retried image by image, so one bad input fails alone."""
        loop = asyncio.get_running_loop()
        results: list = [None] * len(entries)
        for pipeline in {id(p): p for p, _ in entries}.values():
            indices = [i for i, (p, _) in enumerate(entries) if p is pipeline]
            items = [entries[i][1] for i in indices]
            try:
                outputs = await loop.run_in_executor(self._model_threads, pipeline.run, items)
            except Exception as exc:
                outputs = [exc] if len(items) == 1 else [
                    (await self._run_alone(loop, pipeline, item)) for item in items]
            for index, output in zip(indices, outputs):
                results[index] = output
        return results

    async def _run_alone(self, loop: asyncio.AbstractEventLoop, pipeline: Any, item: Any) -> Any:
        try:
            return (await loop.run_in_executor(self._model_threads, pipeline.run, [item]))[0]
        except Exception as exc:
            return exc


class ReplicaHeaders:
    """Pure ASGI middleware: each response says which replica answered, on which node (x-replica, x-ray-node)."""

    def __init__(self, app: Any, replica: str, node: str):
        self.app, self.headers = app, [(REPLICA_HEADER, replica.encode()), (NODE_HEADER, node.encode())]

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        async def with_header(message: dict) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), *self.headers]
            await send(message)

        await self.app(scope, receive, with_header if scope["type"] == "http" else send)


@serve.deployment(ray_actor_options={"num_cpus": 1}, max_ongoing_requests=32)
@serve.ingress()
class Classifier:
    """One replica: the model, its batcher, and app.py's HTTP API over them (built by __serve_build_asgi_app__,
    after the constructor)."""

    def __init__(self, conf_path: str, max_batch_size: int | None = None, batch_wait_ms: float | None = None):
        self.model = load(conf_path)
        # @serve.batch waits for a batch to fill whether or not more requests are coming (app.py's batcher waits
        # only while others are being decoded): no wait unless asked. Measured with wrk on 2 cores, one replica:
        # c1 47.5 images/s at 0 ms against 36.7 at conf's 5 ms; c16 the same (batches form while the model runs).
        batching = dataclasses.replace(JsonConfLoader(self.model.conf).get_batching(), max_batch_wait_ms=0)
        batching = dataclasses.replace(batching, **{key: value for key, value in (
            ("max_batch_size", max_batch_size), ("max_batch_wait_ms", batch_wait_ms)) if value is not None})
        self.batcher = ServeBatcher(self.model, batching)
        self.health = Health()
        self.health.ready = True  # Ray Serve routes traffic to a replica only once its constructor has returned

    def __serve_build_asgi_app__(self) -> Any:
        app = create_app(self.batcher, limits_of(self.model), self.health, title="Image classifier (Ray Serve)")
        return ReplicaHeaders(app, serve.get_replica_context().replica_id.unique_id,
                              ray.get_runtime_context().get_node_id())


def build(args: dict[str, str]) -> serve.Application:
    """`serve run classifier.serving.ray_serve:build key=value …` (or a config file's `args`): conf,
    num_replicas, max_batch_size, batch_wait_ms, max_ongoing_requests. Without num_replicas, the deployment's
    options (a config file's autoscaling_config, say) decide."""
    conf = Path(args.get("conf", os.environ.get("UAI_SERVICE_CONFIG", "conf.json"))).resolve()
    max_batch_size = int(args["max_batch_size"]) if "max_batch_size" in args else None
    options: dict[str, Any] = {}
    if "num_replicas" in args:
        options["num_replicas"] = int(args["num_replicas"])
    if "max_ongoing_requests" in args:
        options["max_ongoing_requests"] = int(args["max_ongoing_requests"])
    # max_ongoing_requests: Ray Serve's default (5 a replica) is too few to fill a batch of 16; 32 is the default.
    wait = float(args["batch_wait_ms"]) if "batch_wait_ms" in args else None
    return Classifier.options(**options).bind(str(conf), max_batch_size, wait)


# What `serve build classifier.serving.ray_serve:app` reads (deploy/ray/serve.yaml was made from its output):
# one replica of ./conf.json's model (or $UAI_SERVICE_CONFIG's), bound, not started.
app = build({})
