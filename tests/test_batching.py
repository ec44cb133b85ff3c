"""The dynamic batcher: same results as unbatched, order kept, bad inputs isolated, bounded, UAI classes too."""
from __future__ import annotations

import asyncio
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from classifier.serving.batching import Batcher, BatchingConf, Overloaded
from classifier.images import ImageError

NAMES = ["chelsea.png", "coffee.jpeg", "motorcycle_left.png", "rocket.jpg", "astronaut.png", "cat.jpeg"]


def run(coroutine):
    return asyncio.run(coroutine)


async def classify_all(batcher: Batcher, items: list) -> list:
    try:
        return await asyncio.gather(*(batcher.classify(item) for item in items), return_exceptions=True)
    finally:
        await batcher.close()


def test_concurrent_requests_share_batches_and_match_unbatched(default_model, photo_bytes):
    items = [photo_bytes[n] for n in NAMES] * 3
    batcher = Batcher(default_model, BatchingConf(max_batch_size=8, max_batch_wait_ms=50))
    batched = run(classify_all(batcher, items))
    assert max(batcher.batch_sizes) > 1 and sum(batcher.batch_sizes) == len(items)
    assert max(batcher.batch_sizes) <= 8
    for item, result in zip(items, batched):
        [alone] = default_model.execute([item], 1)
        assert [label for label, _ in result] == [label for label, _ in alone]
        assert np.allclose([p for _, p in result], [p for _, p in alone], atol=1e-5)


def test_a_bad_image_does_not_spoil_its_batch(default_model, photo_bytes):
    items = [photo_bytes["cat.jpeg"], b"not an image", photo_bytes["coffee.jpeg"], b"", photo_bytes["chelsea.png"]]
    results = run(classify_all(Batcher(default_model), items))
    assert isinstance(results[1], ImageError) and isinstance(results[3], ImageError)
    assert [r[0][0] for r in (results[0], results[2], results[4])] == [
        default_model.execute([items[i]], 1)[0][0][0] for i in (0, 2, 4)]


def test_a_lone_request_runs_at_once(default_model, photo_bytes):
    batcher = Batcher(default_model, BatchingConf(max_batch_wait_ms=60_000))
    started = time.monotonic()
    [result] = run(classify_all(batcher, [photo_bytes["cat.jpeg"]]))
    assert time.monotonic() - started < 30  # it did not sit out the 60 s window: nothing else was coming
    assert list(batcher.batch_sizes) == [1] and result[0][0] == "Egyptian cat"


def test_results_are_finished_in_the_model_threads_and_a_failed_one_fails_alone(default_model, photo_bytes):
    """The top-k and plain data are worked out beside the model call, not on the event loop; a postprocess that
    fails for one image fails that request only; the probability rows still come whole."""
    threads = []
    postprocess = default_model.postprocess

    def watched(row, top_k=None):
        threads.append(threading.current_thread().name)
        if row.argmax() == default_model.labels.index("espresso"):
            raise ValueError("a postprocess that fails on espresso")
        return postprocess(row, top_k)

    async def classify_them() -> list:
        batcher = Batcher(default_model, BatchingConf(max_batch_size=8, max_batch_wait_ms=50))
        try:
            items = [photo_bytes[n] for n in ("cat.jpeg", "coffee.jpeg", "rocket.jpg")]
            answers = await asyncio.gather(*(batcher.classify(item) for item in items), return_exceptions=True)
            scores = await batcher.classify(photo_bytes["coffee.jpeg"], probabilities=True)
            return [*answers, scores]
        finally:
            await batcher.close()

    default_model.postprocess = watched
    try:
        cat, coffee, rocket, scores = run(classify_them())
    finally:
        del default_model.postprocess
    assert threads and all(name.startswith("model") for name in threads), threads
    rocket_alone = default_model.execute([photo_bytes["rocket.jpg"]], 1)[0]
    assert cat[0][0] == "Egyptian cat" and rocket[0][0] == rocket_alone[0][0]
    assert isinstance(coffee, ValueError) and "espresso" in str(coffee)
    assert scores.row.shape == (len(default_model.labels),) and scores.row.argmax() == default_model.labels.index(
        "espresso")


def test_past_the_queue_bound_requests_are_refused(default_model, photo_bytes):
    results = run(classify_all(Batcher(default_model, BatchingConf(max_queue=3)), [photo_bytes["cat.jpeg"]] * 8))
    refused = [r for r in results if isinstance(r, Overloaded)]
    assert len(refused) == 5 and "retry" in str(refused[0])
    assert all(r[0][0] == "Egyptian cat" for r in results if not isinstance(r, Exception))


class ExecuteOnly:
    """A UAI-style class: only execute(data, batch_size), reading data[i].body."""

    def __init__(self, model):
        self.model, self.calls = model, []

    def execute(self, data, batch_size):
        self.calls.append(batch_size)
        return self.model.execute([d.body for d in data], batch_size)


def test_uai_execute_only_classes_are_batched_too(default_model, photo_bytes):
    uai = ExecuteOnly(default_model)
    items = [photo_bytes[n] for n in NAMES] + [b"junk"]
    results = run(classify_all(Batcher(uai, BatchingConf(max_batch_size=4, max_batch_wait_ms=50)), items))
    assert isinstance(results[-1], ImageError)  # refused before it reaches the user's execute()
    assert sum(uai.calls) == len(NAMES) and max(uai.calls) > 1
    assert [r[0][0] for r in results[:-1]] == [default_model.execute([i], 1)[0][0][0] for i in items[:-1]]


def test_another_batching_plugs_in_through_the_seam(default_model, photo_bytes):
    """Batcher(forming=…): what Ray Serve's @serve.batch plugs into (ray_serve.ServeBatching), here a batching
    that sends pairs of items in one model call; the batcher keeps its admission, decoding and results."""
    from classifier.serving.batching import BatchForming

    class Pairs:
        def __init__(self) -> None:
            self.waiting, self.calls, self._pending = 0, [], []

        async def submit(self, batcher, pipeline, item):
            self.waiting += 1
            future = asyncio.get_running_loop().create_future()
            self._pending.append((item, future))
            if len(self._pending) == 2 or batcher.decoding == 0:
                pending, self._pending = self._pending, []
                self.calls.append(len(pending))
                for (_, waiting), output in zip(pending, await batcher.run_batch(pipeline, [i for i, _ in pending])):
                    waiting.set_result(output)
            try:
                return await future
            finally:
                self.waiting -= 1

        async def close(self) -> None:
            pass

    forming: BatchForming = Pairs()
    batcher = Batcher(default_model, forming=forming)
    items = [photo_bytes[name] for name in NAMES[:4]]
    results = run(classify_all(batcher, items))
    assert [r[0][0] for r in results] == [default_model.execute([item], 1)[0][0][0] for item in items]
    assert sum(forming.calls) == 4 and max(forming.calls) == 2 and list(batcher.batch_sizes) == forming.calls
    assert batcher.pending == 0


def test_the_decode_and_model_threads_carry_their_names_in_the_os(default_model, photo_bytes):
    """top -H, perf and the benchmark's split of the server's core time tell them apart by these names."""
    if not sys.platform.startswith("linux"):
        pytest.skip("prctl names threads on Linux only")
    seen = set()

    async def classify_and_look() -> None:
        batcher = Batcher(default_model)
        try:
            await batcher.classify(photo_bytes["cat.jpeg"])
            seen.update((task / "comm").read_text().strip() for task in Path("/proc/self/task").iterdir())
        finally:
            await batcher.close()

    run(classify_and_look())
    assert {"decode_0", "model_0"} <= seen, seen
