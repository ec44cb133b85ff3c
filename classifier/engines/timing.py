"""How fast an engine serves on this machine: batches as the batcher makes them, decoding beside it, interleaved
rounds and their median; which CPU the figures belong to; and the choice, simplest engine first."""
from __future__ import annotations

import os
import statistics
import threading
import time
from pathlib import Path
from typing import Callable

import numpy as np

# Under /service load on a few cores the batcher forms mostly small batches (1–4 at c16 on 2 cores), sometimes 8.
BATCH_SIZES = (1, 2, 4, 8, 4, 2)
ROUNDS = 5  # interleaved, A B C, B C A, …: the machine's drift hits every candidate alike; the median is kept
ROUND_SECONDS = 0.25
# …or this many batches, if sooner: a model that fast (a few ms a round) gives a stable median with no more, and
# the check of a tiny model does not cost seconds of timing at every first start.
ROUND_BATCHES = 20 * len(BATCH_SIZES)
# A candidate must be this much faster than the engine chosen so far (the simplest first) to be chosen instead.
MARGIN = 1.10
# What decides which engine and kernels are fastest: the vector extensions, and the cores we may use.
CPU_FLAGS = ("avx2", "fma", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_tile", "amx_bf16", "amx_int8")


def cpu() -> dict:
    """This machine as the timing depends on it: the processor's name, its relevant flags, the usable cores."""
    name, flags = "", set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and not name:
                name = value.strip()
            elif key.strip() in ("flags", "Features") and not flags:
                flags = set(value.split())
    except OSError:
        pass
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return {"model": name or os.uname().machine, "flags": [f for f in CPU_FLAGS if f in flags], "cores": cores}


def serving_rate(predict: Callable[[np.ndarray], np.ndarray], batch: np.ndarray, busy: Callable[[], None] | None,
                 seconds: float = ROUND_SECONDS) -> float:
    """Images/s of `predict` for one round (`seconds`, or ROUND_BATCHES batches if sooner): batches of BATCH_SIZES
    in turn, cut from `batch`, while a thread runs `busy` over and over beside it (the decoding of other requests,
    which shares the cores with the model)."""
    stop = threading.Event()
    helper = threading.Thread(target=_repeat, args=(busy, stop), daemon=True) if busy else None
    if helper:
        helper.start()
    try:
        images, started, turn = 0, time.perf_counter(), 0
        while time.perf_counter() - started < seconds and turn < ROUND_BATCHES:
            size = min(BATCH_SIZES[turn % len(BATCH_SIZES)], len(batch))
            predict(batch[:size])
            images, turn = images + size, turn + 1
        return images / (time.perf_counter() - started)
    finally:
        stop.set()
        if helper:
            helper.join()


def _repeat(work: Callable[[], None], stop: threading.Event) -> None:
    while not stop.is_set():
        work()


def side_by_side(candidates: dict[str, Callable[[np.ndarray], np.ndarray]], batch: np.ndarray,
                 busy: Callable[[], None] | None = None, rounds: int = ROUNDS,
                 seconds: float = ROUND_SECONDS) -> dict[str, float]:
    """The median serving_rate of each candidate over `rounds` interleaved rounds."""
    for predict in candidates.values():  # warm-up: each batch size allocates once
        for size in sorted(set(BATCH_SIZES)):
            predict(batch[:size])
    names = list(candidates)
    rates: dict[str, list[float]] = {name: [] for name in names}
    for number in range(rounds):
        for name in names[number % len(names):] + names[:number % len(names)]:
            rates[name].append(serving_rate(candidates[name], batch, busy, seconds))
    return {name: statistics.median(values) for name, values in rates.items()}


def choose(rates: dict[str, float], simplest_first: list[str]) -> tuple[str, str]:
    """The simplest candidate, unless a later one is more than MARGIN faster than the one chosen so far; and the
    reason in words, with the figures and the margin."""
    chosen = simplest_first[0]
    for name in simplest_first[1:]:
        if rates[name] > MARGIN * rates[chosen]:
            chosen = name
    others = [f"{name} {rates[name]:.0f}" for name in simplest_first if name != chosen]
    reason = (f"{chosen} {rates[chosen]:.0f} images/s serving (batches {'/'.join(map(str, sorted(set(BATCH_SIZES))))}"
              f" with decoding beside them, median of {ROUNDS} interleaved rounds)"
              + (f"; {', '.join(others)}; a simpler engine is kept unless another is more than "
                 f"{MARGIN - 1:.0%} faster" if others else ""))
    return chosen, reason
