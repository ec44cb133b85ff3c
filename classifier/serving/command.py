"""The serve command: argv → Settings → Server → uvicorn, for `python app.py` and `classifier serve`. Importing it
loads nothing and binds nothing: main() reads argv, builds the server (classifier.serving.server) and runs it.
One server for the classifier: the Gradio page at /, POST /service and /explain, /v2 and /v1, gRPC, MCP."""
from __future__ import annotations

import argparse
import ipaddress
import logging
import os
import resource
import shutil
import sys
from pathlib import Path

from .. import bundled
from . import logs  # the standard library's logging only: importing this module still loads nothing

log = logging.getLogger("app")  # the banner's logger, as when this was app.py
FLAG_PHOTOS, FLAG_MB = 1000, 500  # the flagging folder's default bounds (classifier.serving.ui.FlagBudget's)


def parse_args(argv: list[str], prog: str | None = None, strict: bool = True) -> argparse.Namespace:
    """The command line, as settings_from reads it. strict: an unknown flag is an error (exit 2), so that a typo
    (--prot 8080) is not a server started on another port; not strict only under `gradio app.py` (reload mode),
    where the command line is Gradio's."""
    parser = argparse.ArgumentParser(prog=prog, description=__doc__)
    parser.add_argument("--conf", type=Path, default=None,
                        help="conf.json to serve (default: --model's, else $UAI_SERVICE_CONFIG, else the project's "
                             "conf.json)")
    parser.add_argument("--model", action="append", metavar="[NAME=]PATH",
                        help="serve this model with no conf.json: a model folder, a .pb, .keras, .h5, .tflite or "
                             ".onnx file, or a Teachable Machine .zip export (default: $CLASSIFIER_MODEL; --conf "
                             "wins). NAME=PATH, repeatable: several models, each by name")
    parser.add_argument("--model-repository", type=Path, default=None, metavar="DIR",
                        help="serve every model in DIR, each named by its folder name or file stem (a folder "
                             "holding a conf.json is served as it says)")
    parser.add_argument("--model-config-file", type=Path, default=None, metavar="FILE",
                        help="serve the models of TF Serving's model_config_list in FILE (text protobuf: each "
                             "config's name and base_path)")
    parser.add_argument("--repository-poll-secs", type=float, default=0, metavar="SECONDS",
                        help="look at --model-repository (or --model-config-file) every SECONDS: a model added is "
                             "served, one removed is unloaded (Triton's flag; default 0: never)")
    parser.add_argument("--lazy-load", action="store_true",
                        help="with several models: load each (but the default) on its first request, not at start")
    parser.add_argument("--max-loaded-models", type=int, default=None, metavar="N",
                        help="with several models: at most N loaded at once; loading one more unloads the least "
                             "recently used (never the default), which loads again on its next request")
    parser.add_argument("--default-model", default=None, metavar="NAME",
                        help="with several models: the one /service and the page serve (default: the only one, "
                             "else the first by name)")
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
    parser.add_argument("--api-keys", type=Path, default=os.environ.get("CLASSIFIER_API_KEYS"), metavar="FILE",
                        help="programs' keys, one a line (or sha256:<hex> of one): every route a program calls "
                             "(/service, /explain, /v1, /v2, Gradio's API, gRPC) then takes `Authorization: Bearer "
                             "KEY`; the page keeps --auth's login. Read again on SIGHUP (default: "
                             "$CLASSIFIER_API_KEYS)")
    parser.add_argument("--admin-keys", type=Path, default=os.environ.get("CLASSIFIER_ADMIN_KEYS"), metavar="FILE",
                        help="as --api-keys, for keys that may also change what is served (/admin/reload, the "
                             "repository's load and unload, TF Serving's model list) (default: "
                             "$CLASSIFIER_ADMIN_KEYS)")
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
                        help="without --auth or --admin-keys, still allow what changes the served model (POST "
                             "/admin/reload, the Train tab's Serve this model); for a machine of your own (default: "
                             "they need --auth or an admin key)")
    parser.add_argument("--no-mcp", action="store_true",
                        help="turn off the MCP server (/gradio_api/mcp: the classify_photo tool for LLM agents, under "
                             "the same login, keys and limits)")
    parser.add_argument("--top-k", type=int, default=None, help="labels per image (default: conf's top_k)")
    parser.add_argument("--flagging-dir", type=Path, default=Path("flagged"),
                        help="where the Flag button saves photos and their labels (default: ./flagged)")
    parser.add_argument("--max-flagged", type=int, default=FLAG_PHOTOS, metavar="PHOTOS",
                        help="photos the flagging folder may hold; past it, Flag is refused (default: %(default)s)")
    parser.add_argument("--max-flagged-mb", type=int, default=FLAG_MB, metavar="MB",
                        help="megabytes the flagging folder may hold (default: %(default)s)")
    parser.add_argument("--train-dir", type=Path, default=Path("trained"),
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
    parser.add_argument("--log-format", choices=logs.FORMATS, default=os.environ.get("CLASSIFIER_LOG_FORMAT",
                                                                                       "text"),
                        help="text lines (default: $CLASSIFIER_LOG_FORMAT, else text), or one JSON object a line "
                             "for log pipelines: time, level, logger, message, and for each request route, path, "
                             "method, model, status, images, ms, client (the access log)")
    parser.add_argument("--verbose", action="store_true",
                        help="also show TensorFlow's and LiteRT's own start-up lines (or set CLASSIFIER_VERBOSE=1)")
    return parser.parse_args(argv) if strict else parser.parse_known_args(argv)[0]


def why_training_is_off(args: argparse.Namespace, credentials: tuple[str, str] | None) -> str | None:
    """Training writes files and swaps the served model: without a login, only on this machine's loopback."""
    if args.no_train:
        return "--no-train was given"
    from classifier.engines.cache import installed

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


def remove_unfinished_training(train_dir: Path) -> None:
    """What a killed Train tab leaves: its unpacked upload (.upload-*), a checkpoint still being written (.model-…,
    renamed into place only when complete) and the classes visitors were making (.classes-*: their sessions are
    gone). Finished models are never touched."""
    leftovers = [".upload-*", ".model-*", ".classes-*"]
    for leftover in [p for pattern in leftovers for p in train_dir.glob(pattern)] if train_dir.is_dir() else []:
        shutil.rmtree(leftover, ignore_errors=True)
        log.info("removed %s, left by a Train tab run that did not finish", leftover)


def settings_from(args: argparse.Namespace):
    """The server's typed settings from the parsed flags; SystemExit with the reason for flags that cannot be."""
    from classifier import ConfError
    from classifier.from_path import chosen_conf
    from classifier.serving.server import Settings
    from classifier.serving.ui import FlagBudget

    models = args.model or ([os.environ["CLASSIFIER_MODEL"]] if os.environ.get("CLASSIFIER_MODEL") else [])
    try:
        named = models_by_name(args.model_repository, models, args.model_config_file)
        if named:
            if args.default_model and args.default_model not in named:
                raise ConfError(f"--default-model {args.default_model}: no model of that name (there are "
                                f"{', '.join(named)})")
            conf = named[args.default_model or min(named)]  # the server's default may be the next that loads
        else:
            conf = chosen_conf(args.conf, models[0] if models else None, args.labels, default=bundled.DEFAULT_CONF)
    except ConfError as exc:
        sys.exit(f"error: cannot start: {exc}")
    credentials = tuple(args.auth.split(":", 1)) if args.auth and ":" in args.auth else None
    if args.auth and not credentials:
        sys.exit("error: --auth must be USER:PASS")
    return Settings(
        conf=conf, models=named, default_model=args.default_model, lazy_load=args.lazy_load,
        max_loaded_models=args.max_loaded_models, model_repository=args.model_repository,
        model_config_file=args.model_config_file,
        repository_poll_seconds=args.repository_poll_secs, host=args.host, port=args.port,
        grpc_port=args.grpc_port,
        root_path="/" + args.root_path.strip("/") if args.root_path.strip("/") else "",
        credentials=credentials, api_keys=args.api_keys, admin_keys=args.admin_keys,
        allowed_hosts=allowed_hosts(args),
        cors_origins=[origin.strip() for origin in args.cors_origins.split(",") if origin.strip()],
        open_admin=args.open_admin, share=args.share, top_k=args.top_k, flagging_dir=args.flagging_dir,
        flag_budget=FlagBudget(args.max_flagged, args.max_flagged_mb * 2 ** 20), train_dir=args.train_dir,
        training_off=why_training_is_off(args, credentials), upload_retention=args.upload_retention,
        upload_quota=args.upload_quota_mb * 2 ** 20, max_uploads=args.max_uploads_mb * 2 ** 20,
        read_timeout=args.read_timeout, max_connections=args.max_connections, log_format=args.log_format,
        streams_per_client=args.streams_per_client, mcp=not args.no_mcp,
        blocked=(bundled.FOLDER, Path(bundled.__file__).parent, Path.cwd()))  # the code, the conf, the cwd


def models_by_name(repository: Path | None, models: list[str], config_file: Path | None = None) -> dict:
    """Several models, each by name (--model-repository, --model NAME=PATH, --model given more than once, or
    --model-config-file, whose list is the server's whole: a reload of it replaces every model), or {} for one
    model served as before (--conf, one --model PATH, the default)."""
    from classifier import ConfError
    from classifier.from_path import NAME, discover
    from classifier.serving.model_sources import named, read_model_config

    if config_file is not None:
        if repository is not None or models:
            raise ConfError("--model-config-file lists every model of the server: give it alone, without "
                            "--model-repository or --model")
        return read_model_config(config_file)

    if repository is None and len(models) <= 1 and not any(NAME.fullmatch(m.partition("=")[0]) and "=" in m
                                                           for m in models):
        return {}
    found = discover(repository) if repository else {}
    # A plain PATH among several is named by its folder name or file stem.
    pairs = [spec if "=" in spec and NAME.fullmatch(spec.partition("=")[0]) else f"{Path(spec).stem}={spec}"
             for spec in models]
    for name, conf in named(pairs).items():
        if name in found:
            raise ConfError(f"--model {name}=…: a model named {name!r} is served already")
        found[name] = conf
    return found


def build(argv: list[str], strict: bool = True):
    """The server argv asks for, built (the model loaded, no port bound); SystemExit with a clear message and exit
    code 1 for a broken conf, model or key file, or a gRPC port in use (2 for an unknown flag, when strict)."""
    return built(parse_args(argv, strict=strict))


def built(args: argparse.Namespace):
    """build()'s, from argv already parsed."""
    import classifier
    from classifier.serving.access import KeyFileError
    from classifier.serving.grpc_server import port_in_use
    from classifier.serving.server import build_server

    settings = settings_from(args)
    if settings.grpc_port and port_in_use(settings.host, settings.grpc_port):  # before the model loads: fail fast
        sys.exit(f"error: cannot start: the gRPC port {settings.grpc_port} is in use (another server?); choose "
                 "another with --grpc-port PORT, or --grpc-port 0 for none")
    remove_unfinished_training(settings.train_dir)
    try:
        return build_server(settings)
    except (classifier.ConfError, classifier.ModelError, classifier.LabelsError, KeyFileError) as exc:
        sys.exit(f"error: cannot start: {exc}")


def main(argv: list[str] | None = None, prog: str | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    from classifier import quiet

    if "--verbose" in argv:  # before the model's imports load TensorFlow, which reads its log level once
        quiet.set_verbose()
    args = parse_args(argv, prog)
    logs.configure(args.log_format)  # before the model loads: its lines are in the chosen format too
    server = built(args)
    if args.log_format == "json":  # every line a JSON object, the banner's too
        print_banner(server, log.info)
    else:
        print_banner(server)
    server.run()


def print_banner(server, say=lambda line: print(line, flush=True)) -> None:
    import classifier

    settings = server.settings
    shown = "localhost" if settings.host in ("0.0.0.0", "::") else settings.host
    say(f"* Model: {classifier.describe(server.model)} (from {getattr(server.model, 'model_dir', settings.conf)})")
    if len(server.models.entries) > 1:
        listed = ", ".join(f"{row['name']}{' (default)' if row['name'] == server.models.default_name else ''}"
                           f"{'' if row['state'] == 'READY' else ' UNAVAILABLE: ' + row['reason']}"
                           for row in server.models.index())
        say(f"* Models:  {listed}; each at /service/NAME, /v2/models/NAME, /v1/models/NAME")
    say(f"* Page:    http://{shown}:{settings.port}/")
    say(f"* Service: curl -T photo.jpg http://{shown}:{settings.port}/service")
    if settings.mcp:
        say(f"* MCP:     http://{shown}:{settings.port}{settings.root_path}/gradio_api/mcp/ (the classify_photo tool)")
    if settings.grpc_port:
        say(f"* gRPC:    {shown}:{settings.grpc_port} (KServe v2, TF Serving, grpc.health.v1)")
    if settings.root_path:
        say(f"* Behind the proxy: https://<host>{settings.root_path}/ (--root-path)")
    off = settings.training_off
    if off and off != "--no-train was given":
        say(f"* Train tab: off, because {off}.")
    if (settings.api_keys or settings.admin_keys) and not settings.credentials:
        say("* Keys: every call needs `Authorization: Bearer KEY`; the page, which cannot send one, needs --auth.")
    if settings.share and not settings.credentials:
        say("* Warning: --share without --auth puts this server on the internet for anyone with the link.")
