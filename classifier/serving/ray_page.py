"""The page on Ray Serve: a front deployment hosting app.py's Gradio UI, which classifies through a DeploymentHandle
to the Classifier deployment's replicas, so the page and the model scale apart.

    serve run deploy/ray/serve.yaml      # both applications: "classifier" at / and "page" at /ui

The front stays at one replica: Gradio keeps each browser session's state, its queue and its event streams in the
process that opened them, and Ray Serve's ingress spreads a session's requests over replicas with no affinity. One
front is enough: it only decodes uploads and draws the page; the model's work, batching and explanations run in
the Classifier's replicas, which the handle spreads and autoscaling grows. (Needs requirements-ray.txt, as
ray_serve.py.)
"""
from __future__ import annotations

import asyncio
import os
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import gradio as gr
from fastapi import FastAPI

from ..conf import BatchingConf
from ..loader import example_photos
from . import gradio_internals
from .ray_serve import ray, serve  # Ray, or the ImportError that says how to install it
from .ui import CSS, FlagBudget, OneModel, build_demo, delete_old_uploads

UPLOAD_RETENTION_S = 900  # as app.py's --upload-retention


class RemoteBatcher:
    """What the page's tabs use of a Batcher (classify, pending, the model's limits and top_k, the batch size), answered
    by the Classifier deployment through its handle. An error is raised as the Classifier's own (a bad image, a
    busy server), for the page to show its message, never Ray's traceback."""

    def __init__(self, handle: Any, facts: dict):
        self.handle = handle
        # The facts of the replicas' model the page reads (contract.ServableModel's); "none of these" is not asked
        # for through the handle, so the page shows the labels alone.
        self.model = SimpleNamespace(limits=facts["limits"], top_k=facts["top_k"], describe=lambda: facts["describe"],
                                     none_of_these_above=None, model_dir=None, version=None, labels=[])
        self.conf: BatchingConf = facts["batching"]
        self.pending = 0  # requests sent and not yet answered (the live camera drops frames past a batch of them)

    async def classify(self, item: bytes) -> Any:
        self.pending += 1
        try:
            return await unwrapped(self.handle.classify.remote(item))
        finally:
            self.pending -= 1


class RemoteExplainer:
    """An explanation computed on a Classifier replica, next to its batcher (its masked copies batch there)."""

    def __init__(self, handle: Any):
        self.handle = handle

    async def explain(self, item: bytes, label: str | None = None) -> Any:
        return await unwrapped(self.handle.explain.remote(item, label))


async def unwrapped(response: Any) -> Any:
    """The Classifier's answer; an error it returned (a bad image…) or raised, raised here as itself."""
    try:
        result = await response
    except ray.exceptions.RayTaskError as exc:  # the replica's own exception, without the task's traceback around it
        raise exc.cause from None
    if isinstance(result, Exception):
        raise result
    return result


@serve.deployment(num_replicas=1, ray_actor_options={"num_cpus": 0.5}, max_ongoing_requests=64)
@serve.ingress()
class Page:
    """The Gradio page of app.py (Classify and Batch tabs; training runs on one machine: app.py or the CLI), its
    work sent to the Classifier deployment of another application."""

    async def __init__(self, application: str, deployment: str = "Classifier", flagging_dir: str = "flagged"):
        classifier = serve.get_deployment_handle(deployment, app_name=application)
        facts = await classifier.facts.remote()
        self.batcher = RemoteBatcher(classifier, facts)
        self.demo = build_demo(OneModel(self.batcher, RemoteExplainer(classifier)), example_photos(),
                               Path(flagging_dir), Path(os.devnull), None, training_off=(
                                   "on Ray Serve the page only classifies; train with `python -m classifier.retrain` "
                                   "or app.py, then deploy the new model's conf"), flag_budget=FlagBudget())
        self.demo.queue(max_size=self.batcher.conf.max_queue)
        self._sweeping = asyncio.get_running_loop().create_task(delete_old_uploads(self.demo, UPLOAD_RETENTION_S))

    def __serve_build_asgi_app__(self) -> Any:
        app = gr.mount_gradio_app(FastAPI(), self.demo, path="/", css=CSS,
                                  max_file_size=self.batcher.model.limits.max_bytes)
        gradio_internals.mark_launched(self.demo)  # as app.py: Gradio then checks that an API call's file was uploaded
        return app


def build_page(args: dict[str, str]) -> serve.Application:
    """`serve run classifier.serving.ray_page:build_page application=classifier` (or a config file's `args`):
    the page for the Classifier deployment of that application (default "classifier"), with flagging_dir."""
    return Page.bind(args.get("application", "classifier"), args.get("deployment", "Classifier"),
                     args.get("flagging_dir", "flagged"))
