"""The dynamic batcher: concurrent requests from /service and the UI share model calls, within bounds."""
from __future__ import annotations

import asyncio
import logging
import os
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from types import SimpleNamespace
from typing import Any, Callable, NamedTuple, Protocol

import numpy as np

from . import metrics
from ..conf import BatchingConf
from ..contract import ServableModel, servable
from ..images import ImageError, decode, limits_of
from ..model import uai_request
from ..os_threads import name_this_thread
from ..results import Classified, plain

log = logging.getLogger(__name__)

MODEL_CALLS_IN_FLIGHT = 2


class Overloaded(RuntimeError):
    """Too many requests are already admitted; the client should retry later."""


class NoProbabilities(ImageError):
    """A request for probabilities or a ready tensor, on a model class that only has execute() (a 400)."""


class NoVerdict(ImageError):
    """A request for the "none of these" verdict, on a model not calibrated for it (a 400)."""


class Scores(NamedTuple):
    """One image's output row and the model that gave it (its labels: a hot swap may come between requests)."""

    row: np.ndarray
    model: Any

    @property
    def class_probabilities(self) -> np.ndarray:
        return self.row[:len(self.model.labels)]  # a "none of these" score may follow them

    @property
    def verdict(self) -> bool | None:
        """Whether the photo is of none of the model's classes; None for a model that cannot tell."""
        return self.model.is_none_of_these(self.row) if self.model.none_of_these_above is not None else None


class Answer(NamedTuple):
    """One item's model output, and the result the pipeline's finish step made of it (or the exception it raised),
    both worked out in the model's thread: the top-k and the plain data are not the event loop's work, which every
    request shares (a fifth of the loop's time a request on the null-model floor, docs/performance.md)."""

    output: Any
    result: Any


class Pipeline(NamedTuple):
    """How the serving model answers: prepare one request (in a decode thread), run a batch of prepared requests
    in one model call (one output each), finish one output into the request's result (plain data)."""

    prepare: Callable[[Any], Any]
    run: Callable[[list], list]
    finish: Callable[[Any], Any]
    model: Any
    gives_probabilities: bool  # run's outputs are probability rows (a model with preprocess/forward/postprocess)


class BatchForming(Protocol):
    """How a batcher's prepared requests are grouped into model calls (the batcher's seam for another batching).

    submit() takes one prepared item of `pipeline` and returns its Answer (or raises the item's error), having run
    it in some batch through `batcher.run_batch(pipeline, items)`; `waiting` counts the items
    submitted and not yet answered (they count against the batcher's max_queue). A batch waits for more items
    only while `batcher.decoding` says more are on their way."""

    waiting: int

    async def submit(self, batcher: Batcher, pipeline: Pipeline, item: Any) -> Any: ...

    async def close(self) -> None: ...


class OwnQueue:
    """The batcher's own batching: a queue, and a worker that takes the waiting items (of one pipeline: after a
    swap, the old model's items go first) into model calls, MODEL_CALLS_IN_FLIGHT at once."""

    def __init__(self) -> None:
        self._queue: asyncio.Queue | None = None
        self._held: tuple | None = None  # an item prepared for another model than the batch before it
        self._worker: asyncio.Task | None = None
        self._in_flight: asyncio.Semaphore | None = None
        self._answering: set[asyncio.Task] = set()  # the loop holds tasks weakly: keep them until done

    @property
    def waiting(self) -> int:
        return (self._queue.qsize() if self._queue else 0) + (self._held is not None)

    async def submit(self, batcher: Batcher, pipeline: Pipeline, item: Any) -> Any:
        future = asyncio.get_running_loop().create_future()
        if self._worker is None or self._worker.done():
            self._queue = self._queue or asyncio.Queue()
            self._in_flight = self._in_flight or asyncio.Semaphore(MODEL_CALLS_IN_FLIGHT)
            self._worker = asyncio.get_running_loop().create_task(self._run(batcher), name="batcher")
        self._queue.put_nowait((item, future, pipeline))
        return await future

    async def _run(self, batcher: Batcher) -> None:
        loop = asyncio.get_running_loop()
        while True:
            first = self._held or await self._queue.get()
            self._held = None
            if first[1].done():  # its caller has gone (a cancelled call, a passed deadline): no model time for it
                continue
            batch = [first]
            deadline = loop.time() + batcher.conf.max_batch_wait_ms / 1000
            while len(batch) < batcher.conf.max_batch_size:
                if not self._queue.empty():
                    entry = self._queue.get_nowait()
                else:
                    remaining = deadline - loop.time()
                    if batcher.decoding == 0 or remaining <= 0:
                        break
                    try:
                        entry = await asyncio.wait_for(self._queue.get(), remaining)
                    except asyncio.TimeoutError:
                        break
                if entry[1].done():
                    continue
                if entry[2] is not batch[0][2]:  # decoded for another model (a swap happened): next batch
                    self._held = entry
                    break
                batch.append(entry)
            await self._in_flight.acquire()
            task = loop.create_task(self._answer(batcher, batch))
            self._answering.add(task)
            task.add_done_callback(self._answered)

    def _answered(self, task: asyncio.Task) -> None:
        self._answering.discard(task)
        self._in_flight.release()

    async def _answer(self, batcher: Batcher, batch: list) -> None:
        outputs = await batcher.run_batch(batch[0][2], [entry[0] for entry in batch])
        for (_, future, _), output in zip(batch, outputs):
            if future.done():  # the client went away
                continue
            if isinstance(output, Exception):
                future.set_exception(output)
            else:
                future.set_result(output)

    async def close(self) -> None:
        if self._worker:
            self._worker.cancel()


class Batcher:
    """Decodes each request in a thread pool, then runs the waiting requests together in one model call.

    A lone request on an idle server runs at once. A batch waits (at most max_batch_wait_ms) only while other
    requests are still being decoded, that is, when more work is known to be on its way.
    """

    def __init__(self, model: Any, conf: BatchingConf = BatchingConf(), decode_threads: int | None = None,
                 forming: BatchForming | None = None, name: str = "model"):
        """forming: how prepared requests are grouped into model calls (the seam for another batching: Ray
        Serve's @serve.batch, ray_serve.ServeBatching); by default this batcher's own queue (OwnQueue). name: the
        model's, which labels its series in /metrics."""
        self.conf, self.name = conf, name
        self.model = servable(model)  # a user's UAI class is wrapped once (contract.UaiClass)
        self._pipeline = pipeline_steps(self.model)
        self._decoder = ThreadPoolExecutor(decode_threads or os.cpu_count() or 2, thread_name_prefix="decode",
                                           initializer=name_this_thread)
        # Two batches in flight: while one finishes (its last images, the results), the next one starts. With one,
        # a profile under load showed the engine's threads idle ~17 % of the time at batch boundaries.
        self._model_threads = ThreadPoolExecutor(MODEL_CALLS_IN_FLIGHT, thread_name_prefix="model",
                                                 initializer=name_this_thread)
        self.decoding = 0  # admitted requests being decoded (more work is on its way while there are any)
        self.batch_sizes: deque[int] = deque(maxlen=1000)  # recent batch sizes (/metrics has the histogram)
        self.forming = forming or OwnQueue()

    def swap(self, model: Any) -> None:
        """Serve another model from now on. Requests already decoded for the old one still run on the old one."""
        self.model = servable(model)
        self._pipeline = pipeline_steps(self.model)

    @property
    def pending(self) -> int:
        """Requests admitted and not yet answered by the model."""
        return self.decoding + self.forming.waiting

    def _admit(self) -> None:
        if self.pending >= self.conf.max_queue:
            metrics.CLASSIFICATIONS.labels(self.name, "Overloaded").inc()
            raise Overloaded(f"the server is busy ({self.pending} requests waiting); retry shortly")

    async def prepare(self, item: Any) -> Any:
        """The serving model's input tensor for one image, decoded in the pool: for callers that send it, or
        variations of it, back through classify(prepared=True) (the explanations). Raises ImageError, Overloaded,
        or NoProbabilities for a model class with only execute()."""
        self._admit()
        pipeline = self._pipeline
        needs_probabilities(pipeline)
        return await self._prepare(pipeline, item)

    async def _prepare(self, pipeline: Pipeline, item: Any) -> Any:
        self.decoding += 1
        try:
            return await asyncio.get_running_loop().run_in_executor(self._decoder, pipeline.prepare, item)
        finally:
            self.decoding -= 1

    async def _classify(self, item: Any, probabilities: bool, prepared: bool) -> Any:
        self._admit()
        pipeline = self._pipeline
        if probabilities or prepared:
            needs_probabilities(pipeline)
        if not prepared:
            item = await self._prepare(pipeline, item)
        answer = await self.forming.submit(self, pipeline, item)
        if probabilities:
            return Scores(answer.output, pipeline.model)
        if isinstance(answer.result, Exception):  # a postprocess that failed fails its own request only
            raise answer.result
        return answer.result

    async def run_batch(self, pipeline: Pipeline, items: list) -> list:
        """One model call for prepared items of one pipeline, on the model threads: an Answer per item, or the
        exception for that item. A call that fails is retried item by item, so one bad input fails alone. What
        every BatchForming calls; each call is counted in batch_sizes and /metrics."""
        loop = asyncio.get_running_loop()
        self.batch_sizes.append(len(items))
        metrics.BATCH_SIZE.labels(self.name).observe(len(items))
        try:
            return await loop.run_in_executor(self._model_threads, answered, pipeline, items)
        except Exception as exc:
            if len(items) == 1:
                log.exception("model call failed")
                return [exc]
        outputs = []
        for item in items:  # one bad input must not spoil its batch: each alone
            try:
                outputs += await loop.run_in_executor(self._model_threads, answered, pipeline, [item])
            except Exception as exc:
                log.exception("model call failed")
                outputs.append(exc)
        return outputs

    async def classify(self, item: Any, *, probabilities: bool = False, prepared: bool = False) -> Any:
        """One request's result (plain data: for the default model, top-k [label, p] pairs).

        probabilities=True: a Scores (the whole probability row) instead. prepared=True: item is already the
        model's input tensor (float32 [H, W, 3]; checked by the caller). Raises images.ImageError for a bad image,
        Overloaded when full.
        """
        if not prepared:  # a request's own image (an explanation's masked copies are not counted)
            metrics.count_image()
        try:
            result = await self._classify(item, probabilities, prepared)
        except Exception as exc:
            metrics.CLASSIFICATIONS.labels(self.name, type(exc).__name__).inc()
            raise
        metrics.CLASSIFICATIONS.labels(self.name, "ok").inc()
        return result

    async def classify_with_verdict(self, item: Any) -> Classified:
        """The labels classify gives, with whether the photo is of none of the classes. Raises NoVerdict for a
        model that has no calibrated "none of these" output (conf's none_of_these)."""
        scores = await self.classify(item, probabilities=True)
        if scores.verdict is None:
            raise NoVerdict("this model has no 'none of these' verdict: retrain it with this version "
                            "(python -m classifier.retrain, or the Train tab) to calibrate one")
        return Classified(plain(scores.model.postprocess(scores.row)), scores.verdict)

    async def close(self) -> None:
        await self.forming.close()
        self._decoder.shutdown(wait=False, cancel_futures=True)
        self._model_threads.shutdown(wait=False, cancel_futures=True)


def answered(pipeline: Pipeline, items: list) -> list:
    """pipeline.run on the items, then each output finished (an item's error stays as it is). Finishing is done for
    every item, also for the callers that want the probability row (the protocols, the explanations): a top-k of
    a row costs tens of microseconds, and the items carry no mark of who wants what."""
    answers: list = []
    for output in pipeline.run(items):
        if isinstance(output, Exception):
            answers.append(output)
            continue
        try:
            answers.append(Answer(output, pipeline.finish(output)))
        except Exception as exc:
            log.exception("finishing a result failed")
            answers.append(Answer(output, exc))
    return answers


def needs_probabilities(pipeline: Pipeline) -> None:
    if not pipeline.gives_probabilities:
        raise NoProbabilities(f"the serving model ({type(pipeline.model).__name__}) has only execute(): it takes "
                              "encoded images and returns its own results, not probabilities")


def pipeline_steps(model: ServableModel) -> Pipeline:
    """How to prepare one request, run a batch of them and finish each result, for the model conf.json loaded.

    A RetrainedClassificationModel (or anything with its three steps) decodes in parallel threads, runs decoded
    tensors as one batch, and postprocesses each probability row. A UAI-style class with only execute() gets the
    request objects UAI gave it (`.body` holds the bytes), batched as UAI's server batched them.
    """
    if model.gives_probabilities:
        def forward(tensors: list[np.ndarray]) -> list[np.ndarray]:
            return list(model.forward(np.stack(tensors)))
        return Pipeline(model.preprocess, checked(forward), lambda row: plain(model.postprocess(row)), model, True)

    limits = limits_of(model)

    def as_request(body: bytes) -> SimpleNamespace:
        decode(body, limits)  # a bad image gets its clear 4xx here, before it can fail the user's execute()
        return uai_request(body)

    return Pipeline(as_request, checked(lambda requests: model.execute(requests, len(requests))), plain, model, False)


class ModelOutputError(RuntimeError):
    """A model call whose results do not match its inputs: the model's fault, a 500 for each request."""


def checked(run_batch: Callable[[list], Any]) -> Callable[[list], list]:
    """run_batch, made to return one output per item, or an ImageError for an item execute() answered with
    {"error": …}. A result list of the wrong length raises ModelOutputError: answering by position would leave
    requests unanswered. (Each output becomes plain data, numbers and lists, in the pipeline's finish step.)"""
    def run(items: list) -> list:
        results = run_batch(items)
        if not isinstance(results, (list, tuple)) or len(results) != len(items):
            count = len(results) if isinstance(results, (list, tuple)) else f"a {type(results).__name__}, not"
            raise ModelOutputError(f"the model returned {count} results for {len(items)} images")
        return [ImageError(result["error"]) if isinstance(result, dict) and "error" in result else result
                for result in results]
    return run
