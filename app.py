"""One server for the classifier: the Gradio page at /, POST /service and /explain, /v2 and /v1. Run: python app.py."""
from __future__ import annotations

import os

# Gradio reports usage to its servers unless told not to; an offline server must not phone home.
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

import sys  # noqa: E402

from classifier import quiet  # noqa: E402

if "--verbose" in sys.argv:  # before the imports below load TensorFlow, which reads its log level once
    quiet.set_verbose()

import argparse
import asyncio
import ipaddress
import logging
import resource
import secrets
import shutil
import tempfile
import threading
import time
from contextlib import asynccontextmanager, suppress
from pathlib import Path

import gradio as gr
import uvicorn
from gradio import networking

import classifier
from classifier.engines.cache import installed
from classifier.from_path import chosen_conf
from classifier.images import limits_of
from classifier.model import example_photos
from classifier.serving import metrics
from classifier.serving.batching import Batcher
from classifier.serving import explanations
from classifier.serving.api import create_app
from classifier.serving.connections import with_read_timeout
from classifier.serving.grpc_server import GrpcServer, port_in_use
from classifier.serving.guard import GuardConf, UploadBudget, gradio_login_check
from classifier.serving.protocols import Served
from classifier.serving.reload import Reloader
from classifier.serving.service import ADMIN_NEEDS_LOGIN, Health, request_limit
from classifier.serving.ui import CSS, FlagBudget, build_demo, delete_old_uploads

ROOT = Path(__file__).resolve().parent
EXAMPLES = example_photos()
MAX_ZIP_BYTES = 500 * 1024 * 1024
# Gradio's JSON routes (events, queue): a few photos' names and labels; 4 MiB leaves room for a base64 photo.
GRADIO_JSON_LIMIT = 4 * 1024 * 1024
MULTIPART_OVERHEAD = 1024 * 1024  # an upload's form fields and boundaries, beside the file itself
KEEP_ALIVE_SECONDS = 5
GRPC_GRACE_SECONDS = 10  # at shutdown, gRPC calls in flight get this long to finish
log = logging.getLogger("app")


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--conf", type=Path, default=None,
                        help="conf.json to serve (default: --model's, else $UAI_SERVICE_CONFIG, else the project's "
                             "conf.json)")
    parser.add_argument("--model", default=os.environ.get("CLASSIFIER_MODEL"), metavar="PATH",
                        help="serve this model with no conf.json: a model folder, a .pb, .keras, .h5 or .tflite "
                             "file, or a Teachable Machine .zip export (default: $CLASSIFIER_MODEL; --conf wins)")
    parser.add_argument("--labels", default=None, metavar="FILE",
                        help="with --model: its labels file (default: the one beside the model, or packed in it)")
    parser.add_argument("--host", default=os.environ.get("CLASSIFIER_HOST", "127.0.0.1"),
                        help="address to listen on (default: $CLASSIFIER_HOST, else 127.0.0.1, this machine only; "
                             "0.0.0.0: every interface)")
    parser.add_argument("--port", type=int, default=int(os.environ.get("CLASSIFIER_PORT", 8080)),
                        help="port (default: $CLASSIFIER_PORT, else 8080, as the UAI service)")
    parser.add_argument("--grpc-port", type=int, default=int(os.environ.get("CLASSIFIER_GRPC_PORT", 8500)),
                        metavar="PORT",
                        help="the gRPC port: KServe v2's and TF Serving's gRPC services and grpc.health.v1, on "
                             "--host (default: $CLASSIFIER_GRPC_PORT, else 8500, TF Serving's; 0: none)")
    parser.add_argument("--share", action="store_true", help="also open a public Gradio share link")
    parser.add_argument("--root-path", default=os.environ.get("CLASSIFIER_ROOT_PATH", ""), metavar="PREFIX",
                        help="the public path prefix when a reverse proxy serves the app under one (e.g. "
                             "/classifier, the proxy stripping it): the page, its API, /service and the "
                             "protocols all work at https://host/PREFIX/… (default: $CLASSIFIER_ROOT_PATH, none)")
    parser.add_argument("--auth", default=os.environ.get("CLASSIFIER_AUTH"), metavar="USER:PASS",
                        help="require this login for the page, its API and /service (default: $CLASSIFIER_AUTH)")
    parser.add_argument("--allowed-hosts", default=os.environ.get("CLASSIFIER_ALLOWED_HOSTS"), metavar="NAMES",
                        help="comma-separated Host names the server answers (\"*.example.com\" for subdomains, \"*\" "
                             "any); others get 400, so a page of another site whose name re-resolves here (DNS "
                             "rebinding) is refused. Behind a proxy, name the public host (default: "
                             "$CLASSIFIER_ALLOWED_HOSTS, else localhost and 127.0.0.1 plus --host; any with "
                             "--host 0.0.0.0 or --share)")
    parser.add_argument("--cors-origins", default=os.environ.get("CLASSIFIER_CORS_ORIGINS", ""), metavar="URLS",
                        help="comma-separated origins (https://app.example.com) whose pages may call this server "
                             "from a browser (default: $CLASSIFIER_CORS_ORIGINS, else none: no CORS headers)")
    parser.add_argument("--open-admin", action="store_true",
                        help="without --auth, still allow what changes the served model (POST /admin/reload, the "
                             "Train tab's Serve this model); for a machine of your own (default: they need --auth)")
    parser.add_argument("--top-k", type=int, default=None, help="labels per image (default: conf's top_k)")
    parser.add_argument("--flagging-dir", type=Path, default=ROOT / "flagged",
                        help="where the Flag button saves photos and their labels (default: ./flagged)")
    parser.add_argument("--max-flagged", type=int, default=FlagBudget.max_photos, metavar="PHOTOS",
                        help="photos the flagging folder may hold; past it, Flag is refused (default: %(default)s)")
    parser.add_argument("--max-flagged-mb", type=int, default=FlagBudget.max_bytes // 2 ** 20, metavar="MB",
                        help="megabytes the flagging folder may hold (default: %(default)s)")
    parser.add_argument("--train-dir", type=Path, default=ROOT / "trained",
                        help="where the Train tab writes new models (default: ./trained)")
    parser.add_argument("--no-train", action="store_true", help="turn the Train tab off (for public demos)")
    parser.add_argument("--train", action="store_true",
                        help="keep the Train tab on without --auth even when others can reach the app "
                             "(--share, or a --host other than loopback)")
    parser.add_argument("--upload-retention", type=int, default=900, metavar="SECONDS",
                        help="delete photos and zips uploaded to the page this long after upload (default: 900; "
                             "looked for every minute). Flagged photos are kept.")
    parser.add_argument("--upload-quota-mb", type=int, default=1024, metavar="MB",
                        help="megabytes one client address may upload to the page within --upload-retention; "
                             "past it, 429 (default: %(default)s)")
    parser.add_argument("--max-uploads-mb", type=int, default=4096, metavar="MB",
                        help="megabytes of uploads the server keeps from all clients together within "
                             "--upload-retention; past it, 429 (default: %(default)s)")
    parser.add_argument("--read-timeout", type=float, default=30, metavar="SECONDS",
                        help="close a connection whose request headers, or the next part of its body, take longer "
                             "(default: 30)")
    file_limit = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    parser.add_argument("--max-connections", type=int, default=min(1000, file_limit // 2),
                        help="open connections at once; past it, requests get 503 at once (default: 1000, or half "
                             "the process's file limit if that is lower)")
    parser.add_argument("--streams-per-client", type=int, default=32,
                        help="Gradio event streams one client address may hold open (a browser tab or a "
                             "gradio_client holds two or three); more get 429 (default: 32)")
    parser.add_argument("--verbose", action="store_true",
                        help="also show TensorFlow's and LiteRT's own start-up lines (or set CLASSIFIER_VERBOSE=1)")
    # parse_known_args: under `gradio app.py` (reload mode) the command line is Gradio's, not ours.
    return parser.parse_known_args(argv)[0]


def why_training_is_off(args: argparse.Namespace, credentials: tuple[str, str] | None) -> str | None:
    """Training writes files and swaps the served model: without a login, only on this machine's loopback."""
    if args.no_train:
        return "--no-train was given"
    if not installed("tensorflow"):
        return "TensorFlow, which retrains, is not installed here (a serving-only install)"
    if credentials or args.train:
        return None
    if args.share:
        return "the app is shared without --auth"
    if not is_loopback(args.host):
        return (f"the app listens on {args.host} without --auth (anyone who reaches it could train and swap the "
                "model); add --auth USER:PASS, or --train to allow it anyway")
    return None


def allowed_hosts(args: argparse.Namespace) -> list[str]:
    """--allowed-hosts, else this machine's loopback names and the listening address (any, when it listens on
    every interface or shares a public link: then the login, not the name, is what keeps strangers out)."""
    if args.allowed_hosts:
        return [name.strip() for name in args.allowed_hosts.split(",") if name.strip()]
    if args.share or args.host in ("0.0.0.0", "::", ""):
        return ["*"]
    return sorted({"localhost", "127.0.0.1", args.host, *([f"[{args.host}]"] if ":" in args.host else [])})


def is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def load_model(conf: Path):
    """The model conf.json names; a broken conf or model stops start-up with a clear message and exit code 1."""
    started = time.monotonic()
    try:
        loaded = classifier.load(conf)
    except (classifier.ConfError, classifier.ModelError, classifier.LabelsError) as exc:
        sys.exit(f"error: cannot start: {exc}")
    metrics.describe_model(loaded, time.monotonic() - started)
    return loaded


def remove_unfinished_training(train_dir: Path) -> None:
    """What a killed Train tab leaves: its unpacked upload (.upload-*), a checkpoint still being written (.model-…,
    renamed into place only when complete) and the classes visitors were making (.classes-*: their sessions are
    gone). Finished models are never touched."""
    leftovers = [".upload-*", ".model-*", ".classes-*"]
    for leftover in [p for pattern in leftovers for p in train_dir.glob(pattern)] if train_dir.is_dir() else []:
        shutil.rmtree(leftover, ignore_errors=True)
        log.info("removed %s, left by a Train tab run that did not finish", leftover)


def serve_checkpoint(conf: Path) -> str:
    """The Train tab's "Serve this model": new requests use it, requests in flight finish on the old one. It
    changes what every client is served, so it needs the login (or --open-admin)."""
    if not credentials and not args.open_admin:
        raise gr.Error(f"Serving a trained model from the page is off: {ADMIN_NEEDS_LOGIN}. The model is in "
                       "the train folder: download it, or serve it with --conf.")
    new_model = reloader.switch_to(conf, "Train tab")
    return (f"Now serving **{classifier.describe(new_model)}** (`{conf.parent.name}` in the train folder), "
            "on this page, its API and /service.")


def blocked_paths(folders: list[Path], keep: list[Path]) -> list[str]:
    """Gradio's blocked_paths: the server's own folders (its code, conf, flagged photos, trained models), which
    Gradio would otherwise copy into its cache if an event named them. A folder holding Gradio's upload cache or
    one of `keep` (which blocking would block too) is not blocked; the page's file gate still covers it."""
    from gradio.utils import get_upload_folder

    inside = [Path(get_upload_folder()).resolve(), *(folder.resolve() for folder in keep)]
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


# force: TensorFlow (absl) has already put a handler on the root logger, which would swallow our INFO lines.
logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", force=True)
args = parse_args(sys.argv[1:])
root_path = "/" + args.root_path.strip("/") if args.root_path.strip("/") else ""  # "/classifier", or none
try:
    args.conf = chosen_conf(args.conf, args.model, args.labels, default=ROOT / "conf.json")
except classifier.ConfError as exc:
    sys.exit(f"error: cannot start: {exc}")
if args.grpc_port and port_in_use(args.host, args.grpc_port):  # before the model loads: fail fast
    sys.exit(f"error: cannot start: the gRPC port {args.grpc_port} is in use (another server?); choose another "
             "with --grpc-port PORT, or --grpc-port 0 for none")
credentials = tuple(args.auth.split(":", 1)) if args.auth and ":" in args.auth else None
if args.auth and not credentials:
    sys.exit("error: --auth must be USER:PASS")
remove_unfinished_training(args.train_dir)
model = load_model(args.conf)
if args.top_k:
    model.top_k = args.top_k
conf_loader = classifier.JsonConfLoader(model.conf)
limits = limits_of(model)
batcher = Batcher(model, conf_loader.get_batching())
metrics.QUEUE_DEPTH.set_function(lambda: batcher.pending)
reloader = Reloader(args.conf, batcher, EXAMPLES[0])
health = Health()
training_off = why_training_is_off(args, credentials)
explainer = explanations.Explainer(batcher)
# What the page gives out (CSVs, thumbnails, model zips) is written here, and nothing else is given out.
page_files = Path(tempfile.mkdtemp(prefix="classifier-page-"))
demo = build_demo(model, batcher, explainer, EXAMPLES, args.flagging_dir, args.train_dir, serve_checkpoint,
                  training_off, FlagBudget(args.max_flagged, args.max_flagged_mb * 2 ** 20), page_files)
demo.queue(max_size=batcher.conf.max_queue)
# The gRPC port: both protocols on the same batcher, limits and login as their REST forms, in this process's loop.
# Its connections: a quarter of the process's file limit (HTTP's --max-connections takes at most half), at most 256.
grpc_server = GrpcServer(Served(batcher, limits, credentials, health), args.host, args.grpc_port,
                         max_calls=args.max_connections,
                         max_connections=max(16, min(256, resource.getrlimit(resource.RLIMIT_NOFILE)[0] // 4))) \
    if args.grpc_port else None


@asynccontextmanager
async def lifespan(_app):
    async def warm_up() -> None:
        try:  # one request through the whole path (decode, batcher, model) before /readyz says yes
            await batcher.classify(EXAMPLES[0].read_bytes())
            health.ready = True
            if grpc_server:
                await grpc_server.ready()
        except Exception as exc:
            health.reason = f"warm-up failed: {exc}"
            log.exception("warm-up failed")

    if grpc_server:
        await grpc_server.start()
    task = asyncio.create_task(warm_up())
    sweeping = asyncio.create_task(delete_old_uploads(demo, args.upload_retention))
    if args.share:
        threading.Thread(target=open_share_link, args=(args.port,), daemon=True).start()
    reloader.reload_on_sighup()
    stop_polling = threading.Event()
    if poll_seconds := conf_loader.get_reload_poll_seconds():
        threading.Thread(target=reloader.poll, args=(poll_seconds, stop_polling), daemon=True).start()
    yield
    stop_polling.set()
    task.cancel()
    if grpc_server:  # after the HTTP requests in flight have finished (uvicorn's graceful shutdown)
        await grpc_server.stop(GRPC_GRACE_SECONDS)
    sweeping.cancel()
    with suppress(asyncio.CancelledError):
        await sweeping  # its last act: the uploads still in the cache are deleted
    await batcher.close()
    shutil.rmtree(page_files, ignore_errors=True)


# Gradio's upload limit is the image limit, unless the Train tab is on: then it must admit a .zip of photos.
upload_limit = limits.max_bytes if training_off else max(limits.max_bytes, MAX_ZIP_BYTES)
# Before any route: the login, each route's body limit (first matching prefix), the cap on open event streams.
guard = GuardConf(credentials, body_limits=[("/service", request_limit(limits)), ("/explain", limits.max_bytes),
                                            ("/v1/", request_limit(limits)), ("/v2/", request_limit(limits)),
                                            ("/gradio_api/upload", upload_limit + MULTIPART_OVERHEAD),
                                            ("/gradio_api/", GRADIO_JSON_LIMIT)],
                  streams_per_client=args.streams_per_client,
                  uploads=UploadBudget(args.upload_quota_mb * 2 ** 20, args.max_uploads_mb * 2 ** 20,
                                       args.upload_retention + 60))  # the sweep looks every minute
# /service, /explain, the protocols existing clients speak (KServe v2, TF Serving REST), the probes, /metrics.
app = create_app(batcher, limits, health, credentials, reloader, guard, explainer, allowed_hosts=allowed_hosts(args),
                 cors_origins=[origin.strip() for origin in args.cors_origins.split(",") if origin.strip()],
                 open_admin=args.open_admin, lifespan=lifespan)
# Gradio is mounted last: a mount at "/" takes every path that no route above has claimed.
app = gr.mount_gradio_app(app, demo, path="/", auth=credentials, max_file_size=upload_limit, css=CSS,
                          root_path=root_path or None, enable_monitoring=False,
                          blocked_paths=blocked_paths([ROOT, Path.cwd(), args.flagging_dir, args.train_dir],
                                                      keep=[page_files]))
gradio_app = app.routes[-1].app  # the mount's Gradio app: its login tokens, its stop event
guard.logged_in = gradio_login_check(gradio_app)
# Gradio checks that a file an API caller names was really uploaded (processing_utils._check_allowed) only once
# the Blocks "has launched"; launch() sets that, mount_gradio_app does not, so any {"path": "/etc/…"} was
# accepted. Set it as Gradio's own reload mode does for a mounted app (utils.SourceFileReloader.swap_blocks).
demo.has_launched = True


def main() -> None:
    shown = "localhost" if args.host in ("0.0.0.0", "::") else args.host
    print(f"* Model: {classifier.describe(model)} (from {getattr(model, 'model_dir', args.conf)})", flush=True)
    print(f"* Page:    http://{shown}:{args.port}/", flush=True)
    print(f"* Service: curl -T photo.jpg http://{shown}:{args.port}/service", flush=True)
    if grpc_server:
        print(f"* gRPC:    {shown}:{args.grpc_port} (KServe v2, TF Serving, grpc.health.v1)", flush=True)
    if root_path:
        print(f"* Behind the proxy: https://<host>{root_path}/ (--root-path)", flush=True)
    if training_off and not args.no_train:
        print(f"* Train tab: off, because {training_off}.", flush=True)
    if args.share and not credentials:
        print("* Warning: --share without --auth puts this server on the internet for anyone with the link.",
              flush=True)
    # Slow and idle clients: a request's headers, or the next part of its body, must arrive within
    # --read-timeout (connections.with_read_timeout: uvicorn has no such deadline); an idle keep-alive connection
    # is closed after 5 s (uvicorn's timeout_keep_alive); past --max-connections, uvicorn answers 503 at once
    # (limit_concurrency) instead of queueing.
    config = uvicorn.Config(app, host=args.host, port=args.port, timeout_graceful_shutdown=30, log_level="info",
                            http=with_read_timeout(args.read_timeout), timeout_keep_alive=KEEP_ALIVE_SECONDS,
                            limit_concurrency=args.max_connections, root_path=root_path)
    StoppingGradio(config).run()


class StoppingGradio(uvicorn.Server):
    """uvicorn's server, which on SIGTERM or Ctrl-C also tells the mounted Gradio app to stop, as Gradio's own
    launch() does: its heartbeat streams (one per open tab) then end at once, instead of holding the graceful
    shutdown for its whole 30 s while requests in flight still finish."""

    def handle_exit(self, sig: int, frame) -> None:
        gradio_app.stop_event.set()
        super().handle_exit(sig, frame)


if __name__ == "__main__":
    main()
