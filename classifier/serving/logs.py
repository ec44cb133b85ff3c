"""Log lines: text for people (the default), or one JSON object a line for log pipelines (python-json-logger)."""
from __future__ import annotations

import logging
from typing import Any

FORMATS = ("text", "json")
TEXT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
REQUESTS = logging.getLogger("classifier.requests")  # one line a request, in JSON mode: the access log
# Whether request() writes REQUESTS' lines: JSON mode only (text: uvicorn's access lines say it already). A flag of
# our own, not REQUESTS.disabled: uvicorn's dictConfig sets every existing logger's `disabled` back to False,
# which gave text mode two lines a request (and the loop thread 6.5 % more work at the floor).
_request_lines = False


def configure(log_format: str = "text") -> None:
    """The root logger's one handler, on stderr, in that format, for every logger (uvicorn's too: see
    uvicorn_logging). force: TensorFlow (absl) has already put a handler there, which would swallow INFO lines."""
    handler = logging.StreamHandler()
    if log_format == "json":
        from pythonjsonlogger.json import JsonFormatter

        # time, level, logger, message; a request's fields (extra=) beside them; an exception as exc_info.
        handler.setFormatter(JsonFormatter("%(asctime)s %(levelname)s %(name)s %(message)s", json_ensure_ascii=False,
                                           rename_fields={"asctime": "time", "levelname": "level", "name": "logger"}))
    else:
        handler.setFormatter(logging.Formatter(TEXT))
    logging.basicConfig(level=logging.INFO, handlers=[handler], force=True)
    global _request_lines
    _request_lines = log_format == "json"


def uvicorn_logging(log_format: str) -> dict[str, Any]:
    """uvicorn.Config's logging arguments. text: uvicorn's own handlers and access lines, as before. json: none of
    its own (its records go to the root handler, in JSON), and its access log off, for the request log
    (metrics.MetricsMiddleware) says more: the route, the model, the images, the milliseconds."""
    return {"log_config": None, "access_log": False} if log_format == "json" else {}


def request(route: str, path: str, method: str, model: str, status: int, images: int | None, seconds: float,
            client: tuple[str, int] | None) -> None:
    """One request's line (JSON mode only: otherwise this costs a flag check and nothing is formatted). client:
    the ASGI scope's (host, port)."""
    if _request_lines:
        REQUESTS.info(f"{method} {path} {status}", extra={
            "route": route, "path": path, "method": method, "model": model, "status": status, "images": images,
            "ms": round(seconds * 1000, 1), "client": f"{client[0]}:{client[1]}" if client else ""})
