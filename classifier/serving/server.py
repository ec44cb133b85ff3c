"""The server as one object: typed settings in, every part built by one factory (build_server), one lifecycle.

    settings ──► build_server ──► Server: core (model, batcher, explainer, reloader, health)
                                          guard · HTTP routes · the page · gRPC · lifespan (warm-up, polling, stop)

app.py builds it from argv, the tests from Settings on a tiny model; Ray Serve's replicas build its core
(load_core) with their own batcher; building one loads the model but binds no port (`run()` does).
"""
from __future__ import annotations

import asyncio
import logging
import resource
import secrets
import shutil
import signal
import tempfile
import threading
import warnings
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, AsyncIterator

import gradio as gr
import uvicorn
from gradio import networking

import classifier
from ..loader import example_photos
from .access import ADMIN_NEEDS_LOGIN, Access, KeyFile
from .api import create_app
from .connections import with_read_timeout
from .core import Core, load_core
from .repository import Repository, warm_up as warm
from .grpc_server import GrpcServer
from . import gradio_internals, inference_lane
from .guard import GuardConf, UploadBudget
from .bodies import request_limit
from . import logs
from .errors import ModelRefused
from ..from_path import checked_name
from .model_sources import moved_in, staged
from .ui import CSS, TOOL, FlagBudget, build_demo, delete_old_uploads

log = logging.getLogger(__name__)

MAX_ZIP_BYTES = 500 * 1024 * 1024
# Gradio's JSON routes (events, queue): a few photos' names and labels; 4 MiB leaves room for a base64 photo.
GRADIO_JSON_LIMIT = 4 * 1024 * 1024
MULTIPART_OVERHEAD = 1024 * 1024  # an upload's form fields and boundaries, beside the file itself
KEEP_ALIVE_SECONDS = 5
GRPC_GRACE_SECONDS = 10  # at shutdown, gRPC calls in flight get this long to finish


def file_limit() -> int:
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


@dataclass(frozen=True)
class Settings:
    """Everything a server is built from (app.py's flags, typed). conf: the conf.json to serve. training_off: why
    the Train tab is off (None: on; app.py decides it from the flags and who can reach the server)."""

    conf: Path
    models: dict[str, Path] = field(default_factory=dict)  # a repository's: name → conf (empty: conf alone)
    default_model: str | None = None  # the one /service and the page serve (else the only one, else the first)
    lazy_load: bool = False  # each model but the default loads on its first request
    max_loaded_models: int | None = None  # past it, the least recently used model is unloaded
    model_repository: Path | None = None  # the folder of models (its entries are among `models`)
    model_config_file: Path | None = None  # TF Serving's model list (its models are `models`)
    repository_poll_seconds: float = 0  # how often to look at either for models added or removed (0: never)
    host: str = "127.0.0.1"
    port: int = 8080
    grpc_port: int = 0
    root_path: str = ""  # "/classifier", or ""
    credentials: tuple[str, str] | None = None  # --auth: the page's login (and everything else's)
    api_keys: Path | None = None  # programs' keys, one a line (access.KeyFile)
    admin_keys: Path | None = None  # keys that also change what is served
    allowed_hosts: list[str] | None = field(default_factory=lambda: ["localhost", "127.0.0.1"])
    cors_origins: list[str] = field(default_factory=list)
    open_admin: bool = False
    share: bool = False
    top_k: int | None = None
    flagging_dir: Path = Path("flagged")
    flag_budget: FlagBudget = FlagBudget()
    train_dir: Path = Path("trained")
    training_off: str | None = "it was not asked for"
    upload_retention: int = 900
    upload_quota: int = 1024 * 2 ** 20
    max_uploads: int = 4096 * 2 ** 20
    read_timeout: float = 30
    max_connections: int = 1000
    log_format: str = "text"  # or "json": one JSON object a line (logs.py)
    mcp: bool = True  # Gradio's MCP server (/gradio_api/mcp), offering the Classify tool to LLM agents
    streams_per_client: int = 32
    blocked: tuple[Path, ...] = ()  # folders Gradio must never serve a file from (app.py: its own, the cwd)


class Server:
    """One server: its core, the page, the gRPC port and the ASGI app (`app`) that serves them all, with a
    lifespan that warms the model up before /readyz says yes and stops every part in order."""

    def __init__(self, settings: Settings, models: Repository):
        self.settings, self.models = settings, models
        self.core = core = models.default
        # What the page gives out (CSVs, thumbnails, model zips) is written here, and nothing else is given out.
        # Deleted when the server stops, or when it is dropped or the process exits without having run.
        self._page_files = tempfile.TemporaryDirectory(prefix="classifier-page-")
        self.page_files = Path(self._page_files.name)
        self.demo = build_demo(models, example_photos(), settings.flagging_dir, settings.train_dir,
                               self.serve_trained, settings.training_off, settings.flag_budget, self.page_files)
        self.demo.queue(max_size=core.batcher.conf.max_queue)
        # The gRPC port: both protocols on each model's batcher and limits, the login as their REST forms, in
        # this loop;
        # its connections: a quarter of the file limit (HTTP's --max-connections takes at most half), ≤ 256.
        self.grpc = GrpcServer(models, settings.host, settings.grpc_port, max_calls=settings.max_connections,
                               max_connections=max(16, min(256, file_limit() // 4))) if settings.grpc_port else None
        self.app = self._asgi_app()

    @property
    def model(self) -> Any:
        return self.core.model

    async def serve_trained(self, trained: Path, name: str, replace: bool = False) -> str:
        """The Train tab's "Serve this model": the trained model served beside the others, as `name`; in the
        --model-repository folder if there is one it can write, else from the train folder. It changes what every
        client is offered, so it needs the login (or open_admin: admin keys are for programs); taking the place
        of a model of that name must be asked for (replace), and the old one's requests finish first."""
        if not self.settings.credentials and not self.settings.open_admin:
            raise gr.Error(f"Serving a trained model from the page is off: {ADMIN_NEEDS_LOGIN}. The model is in "
                           "the train folder: download it, or serve it with --model.")
        models = self.models
        try:
            name = checked_name(name.strip(), "the model's name")
        except classifier.ConfError as exc:
            raise gr.Error(str(exc)) from None
        if name in models.names and not replace:
            raise gr.Error(f"a model named {name!r} is served already: tick \"Replace it\" to serve this one in "
                           "its place, or give another name")
        conf, previous, where = trained / "conf.json", None, f"`{trained.name}` in the train folder"
        if models.folder is not None:
            try:
                staging = await asyncio.to_thread(staged, models.folder, name, trained)
                conf, previous = moved_in(models.folder, name, staging)
                where = f"the model repository, as `{name}`"
            except OSError as exc:  # a read-only repository: the train folder serves it
                log.warning("the trained model stays in the train folder: the model repository cannot be "
                            "written (%s)", exc)
        try:
            if name in models.names:
                await models.replace(name, conf)
            else:
                await models.add(name, conf, in_folder=models.folder is not None and conf.is_relative_to(models.folder))
        except ModelRefused as exc:
            raise gr.Error(str(exc)) from None
        finally:
            if previous is not None:
                await asyncio.to_thread(shutil.rmtree, previous, True)
        model = (await models.get(name)).model
        return (f"Now serving **{classifier.describe(model)}** as **{name}** ({where}), beside the other models: "
                f"pick it above, or call `/service/{name}`.")

    def _asgi_app(self) -> Any:
        settings, core = self.settings, self.core
        limits = core.limits
        # Gradio's upload limit is the image limit, unless the Train tab is on: then it must admit a .zip of photos.
        upload_limit = limits.max_bytes if settings.training_off else max(limits.max_bytes, MAX_ZIP_BYTES)
        # Before any route: the login, each route's body limit (first matching prefix), the open event streams,
        # the uploads' disk budget (kept as long as uploads are, and the sweep looks every minute).
        guard = GuardConf(self.models.access,
                          body_limits=[("/service", request_limit(limits)), ("/explain", limits.max_bytes),
                                       ("/v1/", request_limit(limits)), ("/v2/", request_limit(limits)),
                                       ("/gradio_api/upload", upload_limit + MULTIPART_OVERHEAD),
                                       ("/gradio_api/", GRADIO_JSON_LIMIT)],
                          streams_per_client=settings.streams_per_client,
                          uploads=UploadBudget(settings.upload_quota, settings.max_uploads,
                                               settings.upload_retention + 60))
        # /service, /explain, the protocols existing clients speak (KServe v2, TF Serving REST), probes, /metrics.
        app = create_app(self.models, guard, allowed_hosts=settings.allowed_hosts,
                         cors_origins=settings.cors_origins, lifespan=self._lifespan)
        # Gradio is mounted last: a mount at "/" takes every path that no route above has claimed.
        # Gradio's MCP server at /gradio_api/mcp offers the one tool (ui.TOOL), behind the guard as every route.
        # Its warning about events with state is of tools it will not offer (offer_only, below).
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", "This MCP server includes a tool that has a gr.State input")
            app = gr.mount_gradio_app(app, self.demo, path="/", auth=settings.credentials, mcp_server=settings.mcp,
                                      max_file_size=upload_limit, css=CSS, root_path=settings.root_path or None,
                                      enable_monitoring=False,
                                      blocked_paths=blocked_paths([*settings.blocked, settings.flagging_dir,
                                                                   settings.train_dir], keep=[self.page_files]))
        self.gradio_app = gradio_internals.mounted_app(app)  # its login tokens, its stop event
        guard.logged_in = gradio_internals.login_check(self.gradio_app)
        if settings.credentials:  # Gradio checks its own login: a program's key or Basic passes it as the page's
            guard.as_logged_in = gradio_internals.as_logged_in(self.gradio_app)
        gradio_internals.mark_launched(self.demo)  # Gradio's own check of uploaded files waits for it
        if settings.mcp:
            gradio_internals.offer_only(self.demo, TOOL)
        return inference_lane.first(app)

    @asynccontextmanager
    async def _lifespan(self, _app: Any) -> AsyncIterator[None]:
        core, settings = self.core, self.settings

        async def warm_up() -> None:
            for loaded in self.models.loaded():  # the default first: /readyz waits for it alone
                try:  # one request through the whole path (decode, batcher, model) before it says ready
                    await warm(loaded)
                except Exception as exc:
                    loaded.health.reason = f"warm-up failed: {exc}"
                    log.exception("warm-up failed")
                if loaded is core and core.health.ready and self.grpc:
                    await self.grpc.ready()

        if self.grpc:
            await self.grpc.start()
        task = asyncio.create_task(warm_up())
        sweeping = asyncio.create_task(delete_old_uploads(self.demo, settings.upload_retention))
        watching = asyncio.create_task(self.models.watch(settings.repository_poll_seconds)) \
            if (settings.model_repository or settings.model_config_file) and settings.repository_poll_seconds else None
        if settings.share:
            threading.Thread(target=open_share_link, args=(settings.port,), daemon=True).start()
        if threading.current_thread() is threading.main_thread():  # signals are for the main thread only
            signal.signal(signal.SIGHUP, lambda signum, frame: self.on_sighup())
        self.models.start_polling()
        yield
        self.models.stop_polling()
        task.cancel()
        if watching:
            watching.cancel()
        if self.grpc:  # after the HTTP requests in flight have finished (uvicorn's graceful shutdown)
            await self.grpc.stop(GRPC_GRACE_SECONDS)
        sweeping.cancel()
        with suppress(asyncio.CancelledError):
            await sweeping  # its last act: the uploads still in the cache are deleted
        for loaded in self.models.loaded():
            await loaded.batcher.close()
        self._page_files.cleanup()

    def on_sighup(self) -> None:
        """SIGHUP: the key files read again, and the default model's conf (a new version, a new conf)."""
        self.models.access.reload_keys()
        self.core.reloader.reload_in_background("SIGHUP")

    def run(self) -> None:
        """Serves on settings.host:port until SIGTERM or Ctrl-C (uvicorn's graceful shutdown)."""
        StoppingGradio(self.uvicorn_config(), self.gradio_app).run()

    def uvicorn_config(self, **overrides: Any) -> uvicorn.Config:
        """How run() serves the app with uvicorn (overrides: other uvicorn.Config arguments, e.g. log_level)."""
        settings = self.settings
        # Slow and idle clients: a request's headers, or the next part of its body, must arrive within
        # read_timeout (connections.with_read_timeout: uvicorn has no such deadline); an idle keep-alive
        # connection is closed after 5 s (uvicorn's timeout_keep_alive); past max_connections, uvicorn answers
        # 503 at once (limit_concurrency) instead of queueing.
        chosen = dict(host=settings.host, port=settings.port, timeout_graceful_shutdown=30, log_level="info",
                      http=with_read_timeout(settings.read_timeout), timeout_keep_alive=KEEP_ALIVE_SECONDS,
                      limit_concurrency=settings.max_connections, root_path=settings.root_path)
        return uvicorn.Config(self.app, **{**chosen, **logs.uvicorn_logging(settings.log_format), **overrides})


class StoppingGradio(uvicorn.Server):
    """uvicorn's server, which on SIGTERM or Ctrl-C also tells the mounted Gradio app to stop, as Gradio's own
    launch() does: its heartbeat streams (one per open tab) then end at once, instead of holding the graceful
    shutdown for its whole 30 s while requests in flight still finish."""

    def __init__(self, config: uvicorn.Config, gradio_app: Any):
        super().__init__(config)
        self.gradio_app = gradio_app

    def handle_exit(self, sig: int, frame: Any) -> None:
        gradio_internals.stop(self.gradio_app)
        super().handle_exit(sig, frame)


def build_server(settings: Settings, core: Core | None = None) -> Server:
    """The whole server from its settings: every model loaded (or `core`, already loaded: one model), every part
    built, no port bound. Raises the library's errors for a broken conf or default model (another model that
    fails to load is listed UNAVAILABLE, with why, and the others serve)."""
    return Server(settings, repository_of(settings, core))


# The engines' settings of a server of models by name (--model-repository, --model-config-file, --model NAME=PATH):
# LiteRT's lean layout, one interpreter fewer a model. bench.many_models, 2026-12-05: 78 MB added by each
# EfficientNet-Lite0 against 105 MB in the per-core layout, for ~5 % of one model's c16 (docs/performance.md).
MANY_MODELS_ENGINES = {"litert": {"layout": "lean"}}


def repository_of(settings: Settings, core: Core | None = None) -> Repository:
    """The server's models: settings.models by name, or settings.conf alone (named by its conf, as before). A
    model the Train tab adds is loaded as the server's own are (load)."""
    many = bool(settings.models)

    def load(name: str | None, conf: Path) -> Core:  # None: named by its conf
        return load_core(conf, top_k=settings.top_k, name=name, engine_defaults=MANY_MODELS_ENGINES if many else None)

    access = access_of(settings)  # first: a key file that cannot be read stops start-up before any model loads
    if core is not None:
        return Repository.of(core, load, access)
    if not many:
        repository = Repository.of(load(None, settings.conf), load, access)
    else:
        # The named one, else the only one, else the first by name that loads.
        repository = Repository(settings.models, settings.default_model, load, access,
                                lazy=settings.lazy_load, max_loaded=settings.max_loaded_models,
                                folder=settings.model_repository, config_file=settings.model_config_file)
        repository.load_at_start()
    return repository


def access_of(settings: Settings) -> Access:
    """Who may call the server, and who may change what it serves; a key file that cannot be read, or a malformed
    one, raises access.KeyFileError."""
    return Access(settings.credentials, KeyFile(settings.api_keys) if settings.api_keys else None,
                  KeyFile(settings.admin_keys) if settings.admin_keys else None, settings.open_admin)


def blocked_paths(folders: list[Path], keep: list[Path]) -> list[str]:
    """Gradio's blocked_paths: the server's own folders (its code, conf, flagged photos, trained models), which
    Gradio would otherwise copy into its cache if an event named them. A folder holding Gradio's upload cache or
    one of `keep` (which blocking would block too) is not blocked; the page's file gate still covers it."""
    inside = [Path(gradio_internals.upload_folder()).resolve(), *(folder.resolve() for folder in keep)]
    resolved = {folder.resolve() for folder in folders}
    return sorted(str(folder) for folder in resolved if not any(p.is_relative_to(folder) for p in inside))


def open_share_link(port: int) -> None:
    """Gradio's share tunnel to this server. Without internet it fails fast; the server keeps serving locally."""
    try:
        url = networking.setup_tunnel("127.0.0.1", port, secrets.token_urlsafe(32), None, None)
        print(f"* Public share link: {url}", flush=True)
    except Exception as exc:
        print(f"* Could not open a share link ({exc.__class__.__name__}: {exc}). Is there internet access? "
              f"The app is still serving locally.", flush=True)
