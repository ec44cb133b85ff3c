"""Many models in one server: a model repository, each model by name with its own core (batcher, engine, limits,
hot reload), loaded and unloaded while the others serve, and its index as Triton's repository extension gives it.

Where the models come from, and their names: from_path (a folder's entries) and model_sources.
"""
from __future__ import annotations

import asyncio
import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import classifier
from ..conf import ArchJsonConfLoader, ConfError
from ..loader import example_photos
from . import metrics
from .access import Access
from .core import Core
from .errors import ModelRefused, ModelUnavailable, UnknownModel, refusal_for
from ..from_path import discover
from .model_sources import read_model_config
from .protocols import ProtocolError, Served

log = logging.getLogger(__name__)

READY, UNAVAILABLE, LOADING = "READY", "UNAVAILABLE", "LOADING"  # Triton's names for a model's state
LOAD_ERRORS = (classifier.ConfError, classifier.ModelError, classifier.LabelsError, OSError)
DRAIN_SECONDS = 30  # an unloaded model's requests in flight get this long to finish


@dataclass
class Entry:
    """One model of the repository: its conf, its state (READY, UNAVAILABLE, LOADING) and why, its core once loaded."""

    name: str
    conf: Path
    state: str = UNAVAILABLE
    reason: str = "not loaded"
    core: Core | None = None
    served: Served | None = None
    used: float = 0.0  # time.monotonic() of its last request
    on_request: bool = False  # not loaded yet (--lazy-load), or unloaded to make room: its next request loads it
    in_folder: bool = False  # found in the --model-repository folder (a rescan may add or remove it)


class Repository:
    """The models one server serves, by name, with the one that /service, the page and nameless calls answer (the
    default). Each loaded model has its own core; loading one runs in a thread and never holds the others."""

    def __init__(self, confs: dict[str, Path], default: str | None, load: Callable[[str, Path], Core],
                 access: Access | None = None, named_by_conf: bool = False, lazy: bool = False,
                 max_loaded: int | None = None, folder: Path | None = None, config_file: Path | None = None):
        """load(name, conf) → its Core (raises the library's errors for a broken model). default: None for the first
        by name that loads (load_at_start decides). named_by_conf: one model served under its conf's model_name,
        which a hot reload or the Train tab may change (the single-model server, as before there was a
        repository). lazy: load each model but the default on its first request. max_loaded: at most that many
        loaded at once; loading one more unloads the least recently used (never the default). folder: the
        --model-repository folder (its entries among confs), which rescan() looks at again. config_file: the
        --model-config-file whose models confs are, which rescan() reads again. access: who may call (and change
        what is served); by default anyone may call and nobody may change it."""
        if default is not None and default not in confs:
            raise ConfError(f"--default-model {default}: no model of that name (there are {', '.join(confs)})")
        if max_loaded is not None and max_loaded < 1:
            raise ConfError(f"--max-loaded-models {max_loaded}: at least 1 (the default model)")
        self.lazy, self.max_loaded = lazy, max_loaded
        self.folder, self.config_file = folder, config_file
        # Which names came from the folder, by discover()'s naming rule, without discovering again (that would hash
        # every .zip and write every conf a second time at start).
        in_folder = {entry.stem if entry.is_file() else entry.name for entry in folder.iterdir()} if folder else set()
        self.entries = {name: Entry(name, conf, in_folder=name in in_folder)  # the index, by name
                        for name, conf in sorted(confs.items())}
        self.default_name, self.access = default, access or Access()
        self._load, self._named_by_conf = load, named_by_conf
        self._locks: dict[str, asyncio.Lock] = {}
        self._polling = False  # each loaded model polls for new version folders (once the server runs)
        self._guard = threading.Lock()

    @classmethod
    def of(cls, core: Core, load: Callable[[str, Path], Core], access: Access | None = None) -> Repository:
        """A repository of one model, loaded already (a server of one conf; each Ray Serve replica's). load(name,
        conf): how a model added later (the Train tab's) is loaded, as the server loads its models."""
        name = ArchJsonConfLoader(core.model.conf).get_model_name()
        repository = cls({name: core.conf_path}, name, load, access, named_by_conf=True)
        repository._serve(repository.entries[name], core)
        return repository

    # Lookup: every door asks by name (None: the default).
    def entry(self, name: str | None = None) -> Entry:
        if name is None:
            return self.entries[self.default_name]
        if name in self.entries:
            return self.entries[name]
        default = self.entries[self.default_name]
        if self._named_by_conf and default.served and default.served.name == name:
            return default
        raise UnknownModel(f"unknown model {name!r}: this server serves {', '.join(map(repr, self.names))}")

    @property
    def pickable(self) -> bool:
        """Models by name (not one served as before): the page has a model picker, its API a model_name."""
        return not self._named_by_conf

    @property
    def names(self) -> list[str]:
        return [self.served_name(entry) for entry in self.entries.values()]

    def served_name(self, entry: Entry) -> str:
        return entry.served.name if entry.served else entry.name

    def core(self, name: str | None = None) -> Core:
        """The loaded model's core, as it is now (nothing is loaded); UnknownModel, or ModelUnavailable with its
        state and reason."""
        entry = self.entry(name)
        if entry.state != READY or entry.core is None:
            raise ModelUnavailable(f"model {entry.name!r} is {entry.state.lower()}: {entry.reason}")
        entry.used = time.monotonic()
        return entry.core

    async def get(self, name: str | None = None) -> Core:
        """The model's core for a request: loaded first if it waits for its first request (--lazy-load) or was
        unloaded to make room (--max-loaded-models). UnknownModel; ModelUnavailable (unloaded by an admin, refused
        at load); ModelRefused if loading it now fails."""
        entry = self.entry(name)
        if entry.on_request and entry.core is None:
            await self._load_on_request(entry)
        return self.core(name)

    @property
    def default(self) -> Core:
        return self.core(None)

    async def served(self, name: str | None, version: str | None = None, load: bool = True) -> Served:
        """What the protocols serve under `name` (and `version`), loaded first if it waits for a request (unless
        `load` is false: a readiness or status question); their 404, 409 or 503 otherwise."""
        try:
            await self.get(name) if load else self.core(name)
        except (UnknownModel, ModelUnavailable, ModelRefused) as exc:
            raise ProtocolError(refusal_for(exc).status, str(exc)) from None
        served = self.entry(name).served
        served.check_version(version)
        return served

    @property
    def body_limit(self) -> int:
        """The largest request body any loaded model takes (the gRPC port's message limit, set when it starts)."""
        return max(entry.served.body_limit for entry in self.entries.values() if entry.served)

    def index(self) -> list[dict]:
        """Triton's repository index: each model's name, version, state and reason."""
        return [{"name": self.served_name(entry), "version": entry.served.version if entry.served else "",
                 "state": entry.state, "reason": "" if entry.state == READY else entry.reason}
                for entry in self.entries.values()]

    def served_folders(self) -> list[Path]:
        """The folder of each model's conf (loaded or not): what must not be deleted from under the server."""
        return [entry.conf.parent for entry in self.entries.values()]

    def loaded(self) -> list[Core]:
        """The loaded models' cores, the default first."""
        entries = sorted(self.entries.values(), key=lambda entry: entry.name != self.default_name)
        return [entry.core for entry in entries if entry.core is not None]

    # Loading and unloading.
    def load_at_start(self) -> None:
        """Every model, one after the other, by name. A model that fails is UNAVAILABLE, with its reason, and the
        others serve; but the default must load (it serves /service and the page), else this raises its error.
        With no default named, the first that loads is the default."""
        failures = []
        for entry in self.entries.values():
            if self.default_name not in (None, entry.name) and (self.lazy or self._full()):
                entry.on_request, entry.reason = True, ("not loaded yet: it loads on its first request" if self.lazy
                                                        else f"not loaded: --max-loaded-models {self.max_loaded}; it "
                                                             "loads on its first request")
                continue
            entry.state, entry.reason = LOADING, "loading"
            try:
                self._serve(entry, self._load(entry.name, entry.conf))
            except LOAD_ERRORS as exc:
                if entry.name == self.default_name:
                    raise
                entry.state, entry.reason = UNAVAILABLE, str(exc)
                failures.append(exc)
                log.error("model %r is unavailable: %s", entry.name, exc)
            else:
                self.default_name = self.default_name or entry.name
        if self.default_name is None:
            raise failures[0]

    def start_polling(self) -> None:
        """Every loaded model, and each one loaded from now on, looks for new version folders (its conf's
        reload_poll_seconds), until it is unloaded or stop_polling()."""
        self._polling = True
        for core in self.loaded():
            core.poll()

    def stop_polling(self) -> None:
        self._polling = False
        for core in self.loaded():
            core.stop_polling()

    def _serve(self, entry: Entry, core: Core) -> None:
        if self._polling:
            core.poll()
        entry.core, entry.used = core, time.monotonic()
        entry.served = Served(core.batcher, core.limits, core.health,
                              name=None if self._named_by_conf else entry.name)
        entry.state, entry.reason = READY, ""

    async def watch(self, seconds: float) -> None:
        """Looks at the repository folder every `seconds` (Triton's --repository-poll-secs), until cancelled."""
        while True:
            await asyncio.sleep(seconds)
            await self.rescan()

    async def rescan(self) -> None:
        """The models' source looked at again: the repository folder (scan_folder) or the config file, whose
        changed model list is applied as HandleReloadConfigRequest applies one (reconfigure)."""
        if self.folder is not None:
            await self.scan_folder()
        elif self.config_file is not None:
            try:
                confs = await asyncio.to_thread(read_model_config, self.config_file)
                if confs != {name: entry.conf for name, entry in self.entries.items()}:
                    await self.reconfigure(confs)
            except (ConfError, ModelRefused) as exc:  # the models served stay as they are (or as far as applied)
                log.error("the model config file was not applied whole: %s", exc)

    async def scan_folder(self) -> None:
        """A model added to the repository folder is served (loaded now, or on its first request under --lazy-load
        or a full --max-loaded-models); one removed is unloaded once its requests have finished and leaves the
        index. The default model, and models named by --model NAME=PATH, stay."""
        try:
            found = await asyncio.to_thread(discover, self.folder)
        except ConfError as exc:  # a bad new name, an emptied folder: the models served stay as they are
            log.error("the model repository was not rescanned: %s", exc)
            return
        for name in [name for name in found if name not in self.entries]:
            try:
                await self.add(name, found[name], in_folder=True)
            except ModelRefused as exc:
                log.error("model %r, added to the repository, is unavailable: %s", name, exc)
        for name in [name for name, entry in self.entries.items() if entry.in_folder and name not in found]:
            if name == self.default_name:
                log.warning("model %r, the default, was removed from the repository; it keeps serving", name)
                continue
            await self.unload(name, why="removed from the repository")
            del self.entries[name]

    def _full(self) -> bool:
        return self.max_loaded is not None and len(self.loaded()) >= self.max_loaded

    async def _load_on_request(self, entry: Entry) -> None:
        async with self._lock(entry.name):
            if entry.core is None:  # not loaded meanwhile by a request before this one
                await self._load_into(entry)
                metrics.MODEL_LOADS.labels(entry.name, "on request").inc()
        await self._make_room(keep=entry)

    async def _make_room(self, keep: Entry) -> None:
        """Past max_loaded, the least recently used models (not the default, not `keep`) are unloaded; their
        requests in flight finish first, and their next request loads them again."""
        while self.max_loaded is not None and len(self.loaded()) > self.max_loaded:
            candidates = [entry for entry in self.entries.values()
                          if entry.core is not None and entry is not keep and entry.name != self.default_name]
            if not candidates:
                return
            oldest = min(candidates, key=lambda entry: entry.used)
            await self.unload(oldest.name, why=f"unloaded to make room (--max-loaded-models {self.max_loaded}): it "
                                               "loads again on its next request")
            oldest.on_request = True

    async def _started(self, name: str, conf: Path) -> Core:
        """conf's model loaded in a thread (the others serve meanwhile) and warmed up; refused (counted in
        /metrics): _Refusal, with why."""
        try:
            core = await asyncio.to_thread(self._load, name, conf)
        except LOAD_ERRORS as exc:
            metrics.MODEL_LOADS.labels(name, "refused").inc()
            raise _Refusal(str(exc), "cannot be loaded", exc) from None
        try:
            await warm_up(core)
        except Exception as exc:  # loaded, but it cannot classify the warm-up photo
            await core.batcher.close()
            metrics.MODEL_LOADS.labels(name, "refused").inc()
            raise _Refusal(f"warm-up failed: {exc}", "failed its warm-up", exc) from None
        return core

    async def _load_into(self, entry: Entry) -> None:
        """Loads the entry's model, warms it up, serves it; refused, it is UNAVAILABLE with why (ModelRefused)."""
        entry.state, entry.reason = LOADING, "loading"
        try:
            core = await self._started(entry.name, entry.conf)
        except _Refusal as refusal:
            entry.state, entry.reason, entry.on_request = UNAVAILABLE, refusal.reason, False
            raise ModelRefused(f"model {entry.name!r} {refusal.what}: {refusal.cause}") from None
        self._serve(entry, core)
        entry.on_request = False
        log.info("model %r loaded", entry.name)

    async def load(self, name: str) -> Entry:
        """Loads a model (a loaded one: loaded again from its files, beside the serving one, and swapped in, as a
        hot reload does), warms it up, and serves it. ModelRefused, with the reason, if it is refused."""
        entry = self.entry(name)
        async with self._lock(entry.name):
            if entry.core is not None:
                try:
                    await asyncio.wrap_future(entry.core.reloader.reload_shared(f"load of {entry.name!r}"))
                except Exception as exc:
                    raise ModelRefused(f"model {entry.name!r} was refused, the previous one still serves: "
                                       f"{exc}") from None
                return entry
            await self._load_into(entry)
            metrics.MODEL_LOADS.labels(entry.name, "asked").inc()
        await self._make_room(keep=entry)
        return entry

    async def unload(self, name: str, why: str = "unloaded") -> Entry:
        """Stops serving a model: new requests get 503; those in flight finish (up to DRAIN_SECONDS) before its
        batcher stops and its memory is freed. The default model serves /service and the page: it stays."""
        entry = self.entry(name)
        if entry.name == self.default_name:
            raise ModelRefused(f"model {entry.name!r} is the default (it serves /service and the page) and "
                               "cannot be unloaded; start the server with another --default-model")
        async with self._lock(entry.name):
            core, entry.core, entry.served = entry.core, None, None
            entry.state, entry.reason, entry.on_request = UNAVAILABLE, why, False
            if core is not None:
                await retire(core)
                metrics.drop_model(entry.name)
                metrics.MODEL_UNLOADS.labels(entry.name).inc()
                log.info("model %r %s", entry.name, why)
            return entry

    async def reconfigure(self, confs: dict[str, Path]) -> None:
        """TF Serving's HandleReloadConfigRequest, and a changed --model-config-file: the models served become
        confs'. One left out is unloaded once its requests finish and leaves the index; a new one loads (under
        --lazy-load or a full --max-loaded-models, on its first request); one whose conf changed loads beside the
        serving one and takes its place. Refused before anything changes (ModelRefused) for a server whose models
        come from a --model-repository folder, or a list without the default model. After the change,
        ModelRefused names the models that could not be loaded: they are UNAVAILABLE, with why; the others serve."""
        if self.folder is not None:
            raise ModelRefused(f"this server's models come from --model-repository {self.folder}: add or remove "
                               "models there")
        default = self.entry(None)
        if self.served_name(default) not in confs:
            raise ModelRefused(f"the new model list leaves out {self.served_name(default)!r}, the default model (it "
                               "serves /service and the page); keep it, or start the server with another "
                               "--default-model")
        for name in [name for name in self.entries if name not in confs and self.entries[name] is not default]:
            await self.unload(name, why="left out of the model list")
            del self.entries[name]
        failures = []
        for name, conf in confs.items():
            entry = default if name == self.served_name(default) else self.entries.get(name)
            try:
                if entry is None:
                    await self.add(name, conf)
                elif entry.conf != conf:
                    await self.replace(entry.name, conf)
            except ModelRefused as exc:
                failures.append(str(exc))
        if failures:
            raise ModelRefused("; ".join(failures))

    async def add(self, name: str, conf: Path, in_folder: bool = False) -> None:
        """A new model in the index: loaded now, or on its first request (--lazy-load, a full
        --max-loaded-models). ModelRefused if it cannot be loaded (it stays listed, UNAVAILABLE), or if a model of
        that name is served already (replace() serves another in its place)."""
        if name in self.names:
            raise ModelRefused(f"a model named {name!r} is served already")
        self.entries[name] = entry = Entry(name, conf, in_folder=in_folder)
        self.entries = dict(sorted(self.entries.items()))
        if self.lazy or self._full():
            entry.on_request, entry.reason = True, "not loaded yet: it loads on its first request"
        else:
            await self.load(name)

    async def replace(self, name: str, conf: Path) -> None:
        """A model served from another conf: loaded and warmed up beside the serving one, which keeps serving
        until then (and if the new one is refused); its requests in flight finish before it is freed."""
        entry = self.entry(name)
        async with self._lock(entry.name):
            old = entry.core
            if old is None:  # not loaded: its next load reads the new conf
                entry.conf = conf
                return
            try:
                core = await self._started(entry.name, conf)
            except _Refusal as refusal:
                raise ModelRefused(f"model {entry.name!r} {refusal.what} from its new files, the previous one still "
                                   f"serves: {refusal.cause}") from None
            entry.conf = conf
            self._serve(entry, core)
            metrics.MODEL_LOADS.labels(entry.name, "asked").inc()
            log.info("model %r loaded from its new files", entry.name)
        await retire(old)

    def _lock(self, name: str) -> asyncio.Lock:
        with self._guard:
            return self._locks.setdefault(name, asyncio.Lock())


class _Refusal(Exception):
    """A model refused at load (_started): why, for the index; what happened and its cause, for the message."""

    def __init__(self, reason: str, what: str, cause: Exception):
        super().__init__(reason)
        self.reason, self.what, self.cause = reason, what, cause


async def retire(core: Core) -> None:
    """A core no longer served: its requests in flight finish (up to DRAIN_SECONDS), then its batcher stops."""
    core.stop_polling()
    deadline = time.monotonic() + DRAIN_SECONDS
    while core.batcher.pending and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    await core.batcher.close()


async def warm_up(core: Core) -> None:
    """One request through the whole path (decode, batcher, model) before the model says ready."""
    await core.batcher.classify(example_photos()[0].read_bytes())
    core.health.ready = True
