"""Scale-out on Ray Serve: replicas of the same classifier, each serving app.py's whole HTTP API, batched by
@serve.batch.

    eval "$(python -m classifier.serving.ray_serve)"                               # the cluster's environment
    serve run deploy/ray/serve.yaml                                                # the API autoscaled, the page
    serve run classifier.serving.ray_serve:build conf=/srv/conf.json num_replicas=4 max_batch_size=16

Each replica loads the model once and serves the routes of api.create_app, the factory app.py uses: /service,
/explain, /v2 (KServe), /v1 (TF Serving REST), /healthz, /readyz and its own /metrics, with the same results,
errors and statuses. Ray Serve's HAProxy ingress (CLUSTER_ENVIRONMENT) sends each request to the replica's own
HTTP server, and the replica's batcher forms its model calls with @serve.batch. The page is a deployment of its
own (ray_page.py), calling the replicas' facts, classify and explain through a handle.

Optional: Ray comes from requirements-ray.txt, and only this module and ray_page.py import it (app.py never does).
"""
from __future__ import annotations

import asyncio
import os
import shlex
import threading
from pathlib import Path
from typing import Any

from fastapi.responses import RedirectResponse

try:
    import ray
    from ray import serve
except ImportError as exc:  # optional: app.py and the library never import this module
    raise ImportError("Ray Serve is not installed: pip install -r requirements-ray.txt (scale-out is optional; "
                      "python app.py needs none of it)") from exc

from .. import describe
from ..conf import ConfError
from ..explain import LabelError
from ..images import ImageError, limits_of
from . import inference_lane
from .api import create_app
from .batching import MODEL_CALLS_IN_FLIGHT, Batcher, Overloaded
from ..from_path import discover
from .core import load_core
from .repository import Repository

# Which replica answered, and on which Ray node: for the operator, and the tests.
REPLICA_HEADER, NODE_HEADER = b"x-replica", b"x-ray-node"

# The environment of the cluster's Ray processes (`ray start`'s, or the KubeRay pods' env in rayservice.yaml):
# Ray Serve's HAProxy ingress, which sends HTTP straight to each replica's own server instead of through the Python
# proxy actor and a Ray call (bench/ray_replicas.py: one replica's c16 from 47 % of app.py's to 76–80 %).
# HAProxy retries a request on another replica when its replica's connection fails, closes without a whole answer,
# or answers 500 (a node lost mid-request; docs/deploy.md): classifying is idempotent, so replaying it is safe.
# It can replay only what its buffer holds, so the buffer fits a typical photo (512 KiB; larger uploads lost in
# flight get a 5xx to retry), and maxconn caps what the buffers may take (1024 × 2 × 512 KiB = 1 GiB at most, per node).
CLUSTER_ENVIRONMENT = {
    "RAY_SERVE_ENABLE_HA_PROXY": "1",
    "RAY_SERVE_ENABLE_DIRECT_INGRESS": "1",
    "RAY_SERVE_HAPROXY_RETRY_ON": "conn-failure empty-response junk-response 500",
    "RAY_SERVE_HAPROXY_RETRIES": "3",
    "RAY_SERVE_HAPROXY_TUNE_BUFSIZE": str(512 * 1024),
    "RAY_SERVE_HAPROXY_MAXCONN": "1024",
    "RAY_USAGE_STATS_ENABLED": "0",  # Ray reports usage unless told not to; an offline cluster must not try
}


class ServeBatching:
    """The batcher's batching (batching.BatchForming) done by Ray Serve's @serve.batch: the same admission, 503
    when full, decoding pool, model calls and retries as app.py's (Batcher.run_batch), the batches formed by
    Ray Serve instead of the batcher's own queue."""

    def __init__(self, max_batch_size: int):
        self.waiting = 0  # items handed to @serve.batch and not yet answered
        self._batcher: Batcher | None = None
        self._run_batch.set_max_batch_size(max_batch_size)  # the wait is set per item (submit)

    async def submit(self, batcher: Batcher, pipeline: Any, item: Any) -> Any:
        # app.py's rule, on @serve.batch: a batch waits for more requests (up to max_batch_wait_ms) only while
        # others are being decoded. @serve.batch alone waits always, or never: in a profiling run (docs/deploy.md),
        # never waiting made c16's batches nearly all of 1 image; waiting always cost c1 a third of its rate; this
        # rule kept c1's rate and gave c16 batches of 2–4.
        self._batcher = batcher
        self._run_batch.set_batch_wait_timeout_s(batcher.conf.max_batch_wait_ms / 1000 if batcher.decoding else 0)
        self.waiting += 1
        try:
            output = await self._run_batch((pipeline, item))
        finally:
            self.waiting -= 1
        if isinstance(output, Exception):
            raise output
        return output

    @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.005, max_concurrent_batches=MODEL_CALLS_IN_FLIGHT)
    async def _run_batch(self, entries: list[tuple[Any, Any]]) -> list:
        """One model call per pipeline among the entries (a batch is one model's, but for a swap)."""
        results: list = [None] * len(entries)
        for pipeline in {id(p): p for p, _ in entries}.values():
            indices = [i for i, (p, _) in enumerate(entries) if p is pipeline]
            outputs = await self._batcher.run_batch(pipeline, [entries[i][1] for i in indices])
            for index, output in zip(indices, outputs):
                results[index] = output
        return results

    async def close(self) -> None:
        pass


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
    after the constructor); the page's deployment (ray_page.Page) calls facts, classify and explain through a
    handle. Hot reload: a new version folder (conf's reload_poll_seconds, as app.py), or a new user_config
    {"conf": …} deployed (`serve deploy`), which Ray Serve hands to every replica in place (reconfigure)."""

    def __init__(self, conf_path: str, max_batch_size: int | None = None, batch_wait_ms: float | None = None,
                 page: str | None = None, model_repository: str | None = None):
        """model_repository: a folder of more models (as app.py's --model-repository names them), each served by
        name beside conf_path's, which stays the default (named by its conf's model_name)."""
        def load(name: str | None, conf: Path) -> Any:
            # The same core as app.py's server (server.load_core), with Ray Serve's batching.
            return load_core(conf, serve_batching=ServeBatching, max_batch_size=max_batch_size,
                             max_batch_wait_ms=batch_wait_ms, name=name)

        self.core = load(None, Path(conf_path))
        self.models = Repository.of(self.core, load)
        if model_repository:
            more, default = discover(Path(model_repository)), self.models.default_name
            if default in more:
                raise ConfError(f"model_repository {model_repository} has a model named {default!r}, the name of "
                                f"conf {conf_path}'s model (the default): rename one")
            loaded = self.core  # the default's core, loaded above: not loaded a second time
            self.models = Repository({**more, default: Path(conf_path)}, default,
                                     lambda name, conf: loaded if name == default else load(name, conf))
            self.models.load_at_start()  # each replica holds every model: any replica answers any name
            for core in self.models.loaded():
                core.health.ready = True
        self.model, self.batcher, self.explainer = self.core.model, self.core.batcher, self.core.explainer
        self.reloader, self.health = self.core.reloader, self.core.health
        self.page = page
        self.health.ready = True  # Ray Serve routes traffic to a replica only once its constructor has returned
        self._stop_polling = threading.Event()
        self.core.poll(self._stop_polling)

    def __serve_build_asgi_app__(self) -> Any:
        # /admin/reload is left out: it would reload only the replica that answers (redeploy user_config instead).
        app = create_app(self.models, reloading=False, title="Image classifier (Ray Serve)")
        if self.page:  # a browser that asks for / is sent to the page's application
            app.add_api_route("/", lambda: RedirectResponse(self.page.strip("/") + "/"), include_in_schema=False)
        return ReplicaHeaders(inference_lane.first(app), serve.get_replica_context().replica_id.unique_id,
                              ray.get_runtime_context().get_node_id())

    async def reconfigure(self, user_config: dict) -> None:
        """A user_config with a "conf" other than the serving one: its model is loaded beside, checked on the
        warm-up photo and swapped in (requests in flight finish on the old one). A broken one is refused, the old
        one kept, and the error raised for Ray Serve to report the update as failed (what it does next: untested)."""
        conf = user_config.get("conf")
        if conf and Path(conf).resolve() != self.reloader.conf_path.resolve():
            await asyncio.to_thread(self.reloader.switch_to, Path(conf), "Ray Serve user_config")

    def facts(self) -> dict:
        """What the page shows and checks before it sends a photo: the model's line, top_k, limits, batching."""
        return {"describe": describe(self.batcher.model), "top_k": self.batcher.model.top_k,
                "limits": limits_of(self.batcher.model), "batching": self.batcher.conf}

    # A bad image, an unknown label or a full replica comes back to the page as the exception, returned, not
    # raised: Ray Serve would log each user's bad upload as a failed request, with its traceback.
    async def classify(self, item: bytes) -> Any:
        try:
            return await self.batcher.classify(item)
        except (ImageError, Overloaded) as exc:
            return exc

    async def explain(self, item: bytes, label: str | None = None) -> Any:
        try:
            return await self.explainer.explain(item, label)
        except (ImageError, LabelError, Overloaded) as exc:
            return exc

    def __del__(self) -> None:
        self._stop_polling.set()


def build(args: dict[str, str]) -> serve.Application:
    """`serve run classifier.serving.ray_serve:build key=value …` (or a config file's `args`): conf,
    model_repository (more models, each by name beside conf's, the default), num_replicas, max_batch_size,
    batch_wait_ms, max_ongoing_requests, page (the page application's route prefix, where / redirects). Without
    num_replicas, the deployment's options (a config file's autoscaling_config, say) decide."""
    conf = Path(args.get("conf", os.environ.get("UAI_SERVICE_CONFIG", "conf.json"))).resolve()
    max_batch_size = int(args["max_batch_size"]) if "max_batch_size" in args else None
    options: dict[str, Any] = {}
    if "num_replicas" in args:
        options["num_replicas"] = int(args["num_replicas"])
    if "max_ongoing_requests" in args:
        options["max_ongoing_requests"] = int(args["max_ongoing_requests"])
    # max_ongoing_requests: Ray Serve's default (5 a replica) is too few to fill a batch of 16; 32 is the default.
    wait = float(args["batch_wait_ms"]) if "batch_wait_ms" in args else None
    repository = str(Path(args["model_repository"]).resolve()) if args.get("model_repository") else None
    return Classifier.options(**options).bind(str(conf), max_batch_size, wait, args.get("page"), repository)


# What `serve build classifier.serving.ray_serve:app` reads (deploy/ray/serve.yaml was made from its output):
# one replica of ./conf.json's model (or $UAI_SERVICE_CONFIG's), bound, not started.
app = build({})


if __name__ == "__main__":  # `eval "$(python -m classifier.serving.ray_serve)"` before `ray start` or `serve run`
    print("\n".join(f"export {key}={shlex.quote(value)}" for key, value in CLUSTER_ENVIRONMENT.items()))
