"""Scale-out on Ray Serve: replicas of the same classifier, batched by @serve.batch, behind the same /service.

    serve run classifier.serving.ray_serve:build                                   # ./conf.json, one replica
    serve run classifier.serving.ray_serve:build conf=/srv/conf.json num_replicas=4 max_batch_size=16 \
        batch_wait_ms=5 max_ongoing_requests=32

Each replica loads the model once and answers the same HTTP contract as app.py (service.create_router: raw or
multipart bodies, the same JSON results, errors and statuses), on Ray Serve's HTTP proxy (port 8000).

Optional: Ray comes from requirements-ray.txt, and only this module imports it (app.py never does).
"""
from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

from fastapi import FastAPI
from ray import serve
from starlette.requests import Request
from starlette.responses import Response

from .. import load
from ..images import limits_of
from .batching import pipeline_steps
from .service import Health, create_router


@serve.deployment(ray_actor_options={"num_cpus": 1})
class Classifier:
    """One replica: the model, the /service routes, and Ray Serve's batching of the model calls."""

    def __init__(self, conf_path: str, max_batch_size: int, batch_wait_ms: float):
        self.model = load(conf_path)
        self.pipeline = pipeline_steps(self.model)  # the steps app.py's batcher runs, checks included
        self.run_batch.set_max_batch_size(max_batch_size)
        self.run_batch.set_batch_wait_timeout_s(batch_wait_ms / 1000)
        health = Health()
        health.ready = True  # Ray Serve routes traffic to a replica only once its constructor has returned
        # The same routes as app.py, with this replica standing in for the batcher (it has classify()).
        self.api = FastAPI(title="Image classifier (Ray Serve)")
        self.api.include_router(create_router(self, limits_of(self.model), health))

    async def __call__(self, request: Request) -> Response:
        """Ray Serve hands each HTTP request here; the routes above answer it."""
        messages: list[dict] = []

        async def send(message: dict) -> None:
            messages.append(message)

        await self.api(request.scope, request.receive, send)
        start = next(m for m in messages if m["type"] == "http.response.start")
        body = b"".join(m.get("body", b"") for m in messages if m["type"] == "http.response.body")
        headers = {k.decode(): v.decode() for k, v in start["headers"] if k.lower() != b"content-length"}
        headers["x-replica"] = serve.get_replica_context().replica_id.unique_id  # which replica answered
        return Response(body, status_code=start["status"], headers=headers)

    async def classify(self, item: Any) -> Any:
        prepared = await asyncio.to_thread(self.pipeline.prepare, item)  # decoding off the event loop
        output = await self.run_batch(prepared)
        if isinstance(output, Exception):
            raise output
        return self.pipeline.finish(output)

    @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.005)
    async def run_batch(self, items: list) -> list:
        return await asyncio.to_thread(self.pipeline.run, items)


def build(args: dict[str, str]) -> serve.Application:
    """`serve run classifier.serving.ray_serve:build key=value …`: conf, num_replicas, max_batch_size, batch_wait_ms."""
    conf = Path(args.get("conf", os.environ.get("UAI_SERVICE_CONFIG", "conf.json"))).resolve()
    max_batch_size = int(args.get("max_batch_size", 16))
    # Ray Serve lets a replica hold 5 requests by default: too few to fill a batch of 16.
    return Classifier.options(num_replicas=int(args.get("num_replicas", 1)),
                              max_ongoing_requests=int(args.get("max_ongoing_requests", 2 * max_batch_size))).bind(
        str(conf), max_batch_size, float(args.get("batch_wait_ms", 5)))
