"""Gradio's internals this server reaches into, all in one place. Written against Gradio 6.31.

Each reach, and why the public API does not do it:
- `mounted_app`: the Gradio app `gr.mount_gradio_app` mounted (the last route): its login tokens and its stop
  event; mount_gradio_app returns the parent app only.
- `mark_launched`: `Blocks.has_launched`, which Gradio's upload check (processing_utils._check_allowed) waits for;
  launch() sets it, mount_gradio_app does not (Gradio's own reload mode sets it the same way).
- `logged_in`: the login cookie's names (`access-token-<cookie_id>`, its `-unsecure-` twin) and the app's
  tokens: the guard refuses a request without the login before its body is read, which Gradio checks only after.
- `as_logged_in`: the same cookie, of a token of the server's own, added to a request the guard let in by its
  Authorization header (a program's key, or Basic): Gradio's routes know only their cookie, and its
  `auth_dependency`, which would take headers, cannot be used beside the page's login form (`auth`).
- `current_blocks`: `gradio.context.LocalContext.blocks`, the Blocks an event runs in (its received uploads).
- `delete_uploads`: `route_utils.delete_files_created_by_app`, Gradio's own deletion of uploads by age, run on
  the event loop (Gradio's delete_cache runs it in a thread, where it dies on a set changed during iteration).
- `upload_folder`, `is_in_or_equal`, `GradioModel`s: where uploads are kept; Gradio's path containment test;
  its data classes (file_gate reads the file values of events).
- `Blocks.preprocess_data`, `Blocks.postprocess_data`, `Blocks.temp_file_sets`: every event passes the first two;
  the third holds the files received (file_gate.GatedBlocks overrides and reads them).
- `offer_only`: `Blocks.mcp_server_obj.tool_to_endpoint`, the MCP server's tools by endpoint: Gradio offers
  every public API endpoint as a tool (training and serving a model too), and 6.31 has no per-event switch.
- The paths below: Gradio's routes that the guard names (public ones, long-lived event streams).
`missing()` lists what the installed Gradio lacks of these; a test fails with that list.
"""
from __future__ import annotations

import secrets
from typing import Any, Callable

WRITTEN_AGAINST = "6.31"

# Gradio's routes the page needs to show its login form (public under --auth), and its event streams (counted
# per client by the guard: a tab or a gradio_client holds two or three).
LOGIN_PATHS = {"/", "/login", "/login/", "/logout", "/config", "/theme.css", "/favicon.ico", "/manifest.json",
               "/robots.txt", "/gradio_api/login_check", "/gradio_api/user", "/gradio_api/token",
               "/gradio_api/app_id", "/gradio_api/startup-events", "/gradio_api/theme.css"}
ASSET_PREFIXES = ("/assets/", "/static/", "/svelte/", "/pwa_icon")
STREAM_PREFIXES = ("/gradio_api/heartbeat/", "/gradio_api/queue/data", "/gradio_api/call/", "/gradio_api/stream/",
                   "/gradio_api/upload_progress")
UPLOAD_PREFIX = "/gradio_api/upload"
API_PREFIX = "/gradio_api/"  # Gradio's own routes (its API, events, uploads, the MCP server); /config is a LOGIN_PATH


def mounted_app(app: Any) -> Any:
    """The Gradio app that gr.mount_gradio_app mounted on `app` (it is the last route)."""
    return app.routes[-1].app


def mark_launched(blocks: Any) -> None:
    blocks.has_launched = True


def logged_in(gradio_app: Any, cookies: dict[str, str]) -> bool:
    """Whether these cookies hold the login of a user logged in to the mounted Gradio app (its /login sets it)."""
    token = (cookies.get(f"access-token-{gradio_app.cookie_id}")
             or cookies.get(f"access-token-unsecure-{gradio_app.cookie_id}"))
    return token is not None and token in gradio_app.tokens


def as_logged_in(gradio_app: Any) -> Callable[[dict], dict]:
    """A function of an ASGI scope: the scope with Gradio's login cookie added (after any the request sent, so it
    is the one read), of a token registered once for the user "api" and never sent to any client."""
    token = secrets.token_urlsafe(32)
    gradio_app.tokens[token] = "api"
    cookie = f"access-token-{gradio_app.cookie_id}={token}".encode()

    def logged_in_scope(scope: dict) -> dict:
        headers = [(name, value) for name, value in scope["headers"] if name != b"cookie"]
        sent = b"; ".join(value for name, value in scope["headers"] if name == b"cookie")
        return {**scope, "headers": [*headers, (b"cookie", sent + b"; " + cookie if sent else cookie)]}
    return logged_in_scope


def offer_only(blocks: Any, api_name: str) -> None:
    """The MCP server of these Blocks (mcp_server=True) offers the one tool of that API endpoint, and no other."""
    server = blocks.mcp_server_obj
    server.tool_to_endpoint = {tool: endpoint for tool, endpoint in server.tool_to_endpoint.items()
                               if endpoint == f"/{api_name}"}


def stop(gradio_app: Any) -> None:
    """Ends the mounted app's event streams (heartbeats) at once, as launch()'s own shutdown does."""
    gradio_app.stop_event.set()


def current_blocks() -> Any:
    from gradio.context import LocalContext

    return LocalContext.blocks.get(None)


def delete_uploads(blocks: Any, older_than: float | None) -> None:
    from gradio.route_utils import delete_files_created_by_app

    delete_files_created_by_app(blocks, older_than)


def upload_folder() -> str:
    from gradio.utils import get_upload_folder

    return get_upload_folder()


def is_in_or_equal(path: str, folder: str) -> bool:
    from gradio.utils import is_in_or_equal as contained

    return contained(path, folder)


def gradio_models() -> tuple[type, ...]:
    from gradio.data_classes import GradioModel, GradioRootModel

    return GradioModel, GradioRootModel


def missing() -> list[str]:
    """What the installed Gradio lacks of the reaches above (empty: all there)."""
    import gradio
    from gradio import context, data_classes, mcp, route_utils, routes, utils

    wanted = [(gradio.Blocks, "preprocess_data"), (gradio.Blocks, "postprocess_data"),
              (context.LocalContext, "blocks"), (route_utils, "delete_files_created_by_app"),
              (utils, "get_upload_folder"), (utils, "is_in_or_equal"), (data_classes, "GradioModel"),
              (data_classes, "GradioRootModel"), (gradio.Blocks(), "temp_file_sets"),
              (gradio.Blocks(), "has_launched"), (routes.App(), "tokens"), (routes.App(), "cookie_id"),
              (routes.App(), "stop_event"), (gradio.Blocks(), "mcp_server_obj"),
              (mcp.GradioMCPServer, "get_tool_to_endpoint")]  # whose result is the tool_to_endpoint attribute
    return [f"{getattr(owner, '__name__', type(owner).__name__ + '()')}.{name}" for owner, name in wanted
            if not hasattr(owner, name)]


def login_check(gradio_app: Any) -> Callable[[Any], bool]:
    """The guard's test of a connection: logged_in on its cookies."""
    return lambda connection: logged_in(gradio_app, connection.cookies)
