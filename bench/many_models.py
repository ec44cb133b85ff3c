"""python -m bench.many_models [--seconds S]: one server of three models against a server of one, in one run
(also a section of python -m bench). Both serve their models by name, so both hold LiteRT in the layout of a
server of many models (classifier/serving/server.py's MANY_MODELS_ENGINES: "lean").

a. POST /service c16 on a server of one model;
b. c16 spread over three models by name (/service/NAME: three wrk clients, 6 + 5 + 5 connections) on a server of
   three, in the same run: its rate over (a)'s;
c. the two servers' RSS after their c16 runs (every model has served): what each added model costs;
d. a third model loaded (POST /v2/repository/models/NAME/load) while two serve under c16: how long it took, and the
   two's p99 during it beside their p99 in the same run without it.

The three models are the default EfficientNet-Lite0 under three names (each a folder whose conf.json serves
checkpoint_dir/). Each is loaded as a model of its own, with its own engine and batcher. A model retrained here is
that network with another last layer, so it is the same size. Every model runs on one engine (--runtime, LiteRT by
default): left to `auto`, a busy machine's timing can pick another engine for one server than for the other, and
the memory per model would then compare two engines.
"""
from __future__ import annotations

import argparse
import json
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

from bench import wrk
from bench.server import JPEGS, ROOT, ServerProcess, conf_variant, cpu_name

NAMES = ("a", "b", "c")


def repository(folder: Path, names: tuple[str, ...], runtime: str) -> Path:
    for name in names:
        (folder / name).mkdir(parents=True)
        conf_variant(folder / name, tensorflow={"runtime": runtime})
    return folder


def spread(url: str, shares: dict[str, int], seconds: float) -> dict:
    """wrk on /service/NAME for each model at once (its share of the connections): the summed rate, the worst p99."""
    runs: dict[str, dict] = {}

    def drive(name: str, connections: int) -> None:
        runs[name] = wrk.drive(url, JPEGS, connections, seconds, path=f"/service/{name}")

    threads = [threading.Thread(target=drive, args=item) for item in shares.items()]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return {"img_s": round(sum(run["img_s"] for run in runs.values()), 1),
            "p99_ms": max(run["p99_ms"] for run in runs.values()),
            "non_2xx": sum(run["non_2xx"] + run["socket_errors"] for run in runs.values()), "by_model": runs}


def post(url: str) -> float:
    started = time.perf_counter()
    with urllib.request.urlopen(urllib.request.Request(url, data=b"", method="POST"), timeout=300) as answer:
        answer.read()
    return time.perf_counter() - started


def one_model(work: Path, runtime: str, seconds: float) -> dict:
    """(a) and its part of (c): c16 on a server of one model, and its RSS after."""
    one = ServerProcess("--model-repository", str(repository(work / "one", NAMES[:1], runtime)))
    try:
        return {"ready_rss_mb": round(one.ready_rss_mb), **spread(one.url, {"a": 16}, seconds),
                "rss_after_mb": round(one.rss_mb()[0])}
    finally:
        one.stop()


def three_models(work: Path, runtime: str, seconds: float) -> dict:
    """(b), its part of (c), and (d), on one server of three models."""
    report: dict = {"runtime": runtime}
    three = ServerProcess("--model-repository", str(repository(work / "three", NAMES, runtime)), "--open-admin")
    try:
        report["three"] = {"ready_rss_mb": round(three.ready_rss_mb),
                           **spread(three.url, {"a": 6, "b": 5, "c": 5}, seconds),
                           "rss_after_mb": round(three.rss_mb()[0])}
        post(f"{three.url}/v2/repository/models/c/unload")
        report["two_alone"] = spread(three.url, {"a": 8, "b": 8}, seconds)
        loading: dict = {}

        def load_c() -> None:
            time.sleep(seconds / 3)
            loading["seconds"] = round(post(f"{three.url}/v2/repository/models/c/load"), 2)

        loader = threading.Thread(target=load_c)
        loader.start()
        report["two_while_c_loads"] = spread(three.url, {"a": 8, "b": 8}, seconds)
        loader.join()
        report["load_seconds"] = loading["seconds"]
    finally:
        three.stop()
    return report


def compared(one: dict, three: dict) -> dict:
    """The three-model server's figures beside the one-model server's: the rate ratio, the memory per added model
    (after each server's c16 run: every model has served and grown its engine's buffers, not only loaded)."""
    return {"one": one, **three, "three_over_one_c16": round(three["three"]["img_s"] / one["img_s"], 3),
            "rss_per_added_model_mb": round((three["three"]["rss_after_mb"] - one["rss_after_mb"]) / 2),
            "non_2xx": sum(run["non_2xx"] for run in (one, three["three"], three["two_alone"],
                                                      three["two_while_c_loads"]))}


def rows(r: dict) -> str:
    return (f"| measured | value |\n|---|---|\n"
            f"| /service c16, one model | {r['one']['img_s']} img/s |\n"
            f"| /service c16 over three models by name | {r['three']['img_s']} img/s "
            f"({r['three_over_one_c16']:.0%} of one) |\n"
            f"| RSS after its c16 run: one model, three models | {r['one']['rss_after_mb']} MB, "
            f"{r['three']['rss_after_mb']} MB ({r['rss_per_added_model_mb']} MB per added model) |\n"
            f"| one more model loaded under c16 | {r['load_seconds']} s |\n"
            f"| the two serving: p99 without, during that load | {r['two_alone']['p99_ms']} ms, "
            f"{r['two_while_c_loads']['p99_ms']} ms |\n"
            f"| non-2xx or socket errors, all runs | {r['non_2xx']} |")


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.many_models", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=10, help="each wrk run (default 10)")
    parser.add_argument("--runtime", default="litert", help="every model's engine (default litert)")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "many_models.json")
    args = parser.parse_args()
    report: dict = {"machine": {"processor": cpu_name()}, "date": time.strftime("%Y-%m-%d %H:%M"),
                    "seconds": args.seconds}
    with tempfile.TemporaryDirectory(prefix="bench-many-") as work:
        report.update(compared(one_model(Path(work), args.runtime, args.seconds),
                               three_models(Path(work), args.runtime, args.seconds)))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1))
    print(rows(report))

if __name__ == "__main__":
    main()
