"""A server built in the tests' own process by app.py's wiring (app.build), served by uvicorn in a thread on free
loopback ports: real HTTP and gRPC ports for real clients, without a process's ~10 s of imports and model loading.

A real process (conftest's Server) is still what a test needs for signals (SIGHUP, SIGTERM, SIGKILL), app.py's
printed banner and exit codes, per-process state (Gradio's upload folder is fixed at its import from
GRADIO_TEMP_DIR), memory and file counts, and load measured against the clock.
"""
from __future__ import annotations

import io
import logging
import threading
import time
import urllib.request
from typing import Any

import uvicorn

import app
from bench.server import free_port
from classifier.serving import gradio_internals


class InProcessServer:
    """`app.build(["--host", "127.0.0.1", "--port", <free>, "--grpc-port", <free>, *args])`, served by uvicorn
    (the server's own uvicorn_config) in a daemon thread, waited on until /readyz answers 200."""

    def __init__(self, *args: str, timeout: float = 60):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.grpc_port = free_port() if "--grpc-port" not in args else None
        grpc = ("--grpc-port", str(self.grpc_port)) if self.grpc_port else ()
        self.grpc_target = f"127.0.0.1:{self.grpc_port}"
        # What the process would have printed, warnings and errors with their tracebacks: uvicorn's loggers left
        # unconfigured (log_config=None) propagate to the root logger, where this handler keeps them.
        self._log = io.StringIO()
        self._handler = logging.StreamHandler(self._log)
        self._handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
        logging.getLogger().addHandler(self._handler)
        self.server = app.build(["--host", "127.0.0.1", "--port", str(self.port), *grpc, *args])
        self._uvicorn = uvicorn.Server(self.server.uvicorn_config(log_config=None))
        self._thread = threading.Thread(target=self._uvicorn.run, name=f"server-{self.port}", daemon=True)
        self._thread.start()
        self._wait_until_ready(timeout)

    @property
    def model(self) -> Any:
        return self.server.model

    def output(self) -> str:
        """The log records of this process (every in-process server's, from this one's start) at the root
        logger's level (warnings and errors, with their tracebacks)."""
        return self._log.getvalue()

    def _wait_until_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self._thread.is_alive():
                raise RuntimeError("the in-process server's thread ended before it was ready")
            try:
                with urllib.request.urlopen(self.url + "/readyz", timeout=2) as response:
                    if response.status == 200:
                        return
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"not ready in {timeout:.0f} s: {self.server.core.health.reason}")

    def stop(self) -> None:
        """uvicorn's graceful shutdown (the lifespan stops gRPC, the batcher, the sweep), as on SIGTERM; Gradio is
        told to stop first, as StoppingGradio does, so that open pages' streams end at once."""
        gradio_internals.stop(self.server.gradio_app)
        self._uvicorn.should_exit = True
        self._thread.join(60)
        logging.getLogger().removeHandler(self._handler)

    def __enter__(self) -> InProcessServer:
        return self

    def __exit__(self, *_: Any) -> None:
        self.stop()
