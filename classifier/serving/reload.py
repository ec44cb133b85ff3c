"""Hot reload: load a model beside the serving one, warm it up, swap it in atomically; refuse a broken one."""
from __future__ import annotations

import concurrent.futures
import logging
import threading
import time
from pathlib import Path
from typing import Any, Callable

from .. import describe, load
from ..conf import JsonConfLoader
from ..formats import latest_version
from . import metrics
from .batching import Batcher

log = logging.getLogger(__name__)


class Reloader:
    """Owns "which model serves". Every switch (a new version, SIGHUP, /admin/reload, the Train tab) goes here.

    The new model is loaded and warmed up while the old one keeps serving; then the batcher swaps it in, so
    requests already decoded finish on the old model. A model that fails to load or to classify the warm-up
    photo is refused with a log line, and the old one keeps serving.
    """

    def __init__(self, conf_path: Path, batcher: Batcher, warm_up_photo: Path, name: str | None = None,
                 load_model: Callable[[Path], Any] | None = None):
        """name: the model's name in /metrics (its repository name; by default its conf's model_name).
        load_model(conf): how each new model is loaded, as the first one was (load_core's); by default
        classifier.load."""
        self.conf_path, self.name, self.load_model = Path(conf_path), name, load_model
        self.batcher = batcher
        self.warm_up_photo = warm_up_photo
        self._lock = threading.Lock()  # one switch at a time
        # The reload under way, which every reload asked for meanwhile joins: a burst of them loads the model once
        # (each load is a whole model in memory; 363 reloads sent at once grew the process by 1.2 GB).
        self._running: concurrent.futures.Future | None = None
        self._running_lock = threading.Lock()
        # (version, its files' names, sizes and times) of the last version polling refused: polling tries it
        # again only when its files change, e.g. once a copy that was caught half-way has finished.
        self._refused: tuple[int, tuple] | None = None

    @property
    def model(self) -> Any:
        return self.batcher.model

    def switch_to(self, conf_path: Path, reason: str) -> Any:
        """Loads conf_path's model, checks it, swaps it in; raises (and keeps the old model) if it is broken."""
        with self._lock:
            started = time.monotonic()
            try:
                model = (self.load_model or load)(conf_path)
                [result] = model.execute([self.warm_up_photo], 1)
                if isinstance(result, dict):
                    raise ValueError(f"the warm-up photo fails: {result['error']}")
            except Exception as exc:
                metrics.MODEL_REFUSED.inc()
                log.error("refused the model of %s (%s): %s; still serving %s", conf_path, reason, exc,
                          describe(self.model))
                raise
            self.batcher.swap(model)
            model = self.batcher.model  # as serving sees it (contract.servable)
            self.conf_path = Path(conf_path)
            seconds = time.monotonic() - started
            self.name = self.name or JsonConfLoader(model.conf).get_model_name()
            metrics.describe_model(model, seconds, self.name)
            log.info("now serving %s (%s, loaded in %.1f s)", describe(model), reason, seconds)
            return model

    def reload(self, reason: str) -> Any:
        """Loads the conf's model again (the highest version folder, or the changed files) and returns it; a reload
        already under way is joined instead of starting another."""
        return self.reload_shared(reason).result()

    def reload_shared(self, reason: str) -> concurrent.futures.Future:
        """The reload under way, or a new one begun in a thread: a future of the model now serving."""
        with self._running_lock:
            if self._running is not None:
                return self._running
            running = self._running = concurrent.futures.Future()
        threading.Thread(target=self._reload_into, args=(running, reason), daemon=True).start()
        return running

    def _reload_into(self, running: concurrent.futures.Future, reason: str) -> None:
        try:
            model = self.switch_to(self.conf_path, reason)
        except BaseException as exc:
            with self._running_lock:
                self._running = None
            running.set_exception(exc)
        else:
            with self._running_lock:
                self._running = None
            running.set_result(model)

    def newer_version(self) -> tuple[int, tuple] | None:
        """The highest version folder in model_dir and its files' state, unless it is the one serving, or one
        refused before whose files have not changed since."""
        model_dir = self.model.model_dir
        if model_dir is None:
            return None
        folder, newest = latest_version(Path(model_dir))
        if newest is None or newest == self.model.version:
            return None
        candidate = (newest, _files_state(folder))
        return None if candidate == self._refused else candidate

    def poll_once(self) -> bool:
        """Loads a new version folder if there is one; True if it now serves."""
        if (candidate := self.newer_version()) is None:
            return False
        try:
            self.reload(f"version {candidate[0]} appeared")
        except Exception:  # logged by switch_to; retried when its files change, a higher version still counts
            self._refused = candidate
            return False
        self._refused = None
        return True

    def poll(self, seconds: float, stop: threading.Event) -> None:
        """Checks model_dir every `seconds` for a new version folder (a daemon thread runs this)."""
        while not stop.wait(seconds):
            self.poll_once()

    def reload_in_background(self, reason: str) -> None:
        """A reload in a thread of its own (SIGHUP's: a signal handler must not wait); failures are logged."""
        threading.Thread(target=self._reload_quietly, args=(reason,), daemon=True).start()

    def _reload_quietly(self, reason: str) -> None:
        try:
            self.reload(reason)
        except Exception:
            pass  # logged by switch_to


def _files_state(folder: Path) -> tuple:
    """Each file's path, size and modification time: changes while a version folder is still being copied."""
    return tuple(sorted((str(p.relative_to(folder)), p.stat().st_size, p.stat().st_mtime_ns)
                        for p in folder.rglob("*") if p.is_file()))
