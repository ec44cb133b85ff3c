"""python -m bench [--quick]: measures, in one run on this machine, the numbers README's Performance table shows.

a. the model-only ceiling: each engine on preprocessed tensors, at several batch sizes;
b. decode + preprocess per photo of tests/photos;
c. POST /service end to end on a real server (loopback), real JPEGs, concurrency 1, 4, 16, 64
   (and concurrency 1 with batching off, for the no-added-latency check);
d. Gradio's API through gradio_client, concurrency 1 and 8;
e. the naive baseline (bench/naive_app.py: Keras model.predict per request) driven like c;
f. POST /explain on a 224×224 photo, one at a time (the heatmap's cost; bench/explain.py compares the methods).
Writes bench/results/latest.json and prints a Markdown table.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np

from bench.load import drive_gradio, drive_http, markdown_row
from bench.server import ROOT, ServerProcess, conf_variant

PHOTOS = ROOT / "tests" / "photos"
JPEGS = sorted((ROOT / "examples").glob("*.jp*g"))  # real photos, 35–112 KB, 451×300 to 741×497


def cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").exists() else []:
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.machine()


def timed_rate(run, images_per_call: int, seconds: float) -> float:
    run()  # warm-up
    count, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        run()
        count += images_per_call
    return count / (time.perf_counter() - started)


def ceiling(seconds: float) -> dict:
    """Images/s of each engine on already-preprocessed tensors."""
    import classifier

    results = {}
    with tempfile.TemporaryDirectory() as folder:
        engines = {"tensorflow": classifier.load(conf_variant(folder, tensorflow={"runtime": "tensorflow"})),
                   "litert": classifier.load(ROOT / "conf.json")}
    tensor = engines["litert"].preprocess(JPEGS[0])
    for name, model in engines.items():
        assert name == "tensorflow" or model.runtime.engine.startswith("LiteRT"), model.runtime.engine
        for batch_size in (1, 4, 8, 16, 32):
            batch = np.stack([tensor] * batch_size)
            results[f"{name}_b{batch_size}"] = round(timed_rate(lambda: model.forward(batch), batch_size, seconds), 1)
    return results


def decode_times(repeats: int) -> dict:
    import classifier

    model = classifier.load(ROOT / "conf.json")
    times = {}
    for photo in sorted(p for p in PHOTOS.iterdir() if p.suffix in (".png", ".jpg", ".jpeg")):
        data = photo.read_bytes()
        samples = []
        for _ in range(repeats):
            started = time.perf_counter()
            model.preprocess(data)
            samples.append((time.perf_counter() - started) * 1000)
        times[photo.name] = round(statistics.median(samples), 2)
    return times


def explain_times(url: str, repeats: int) -> dict:
    """Seconds per POST /explain of a 224×224 JPEG (the cat photo, resized), median and worst of `repeats`."""
    import io
    import urllib.request

    from PIL import Image

    buffer = io.BytesIO()
    Image.open(PHOTOS / "cat.jpeg").convert("RGB").resize((224, 224)).save(buffer, "JPEG", quality=90)
    samples = []
    for _ in range(repeats + 1):  # the first one warms up
        started = time.perf_counter()
        with urllib.request.urlopen(urllib.request.Request(f"{url}/explain", data=buffer.getvalue()), timeout=60) as r:
            r.read()
        samples.append(time.perf_counter() - started)
    return {"median_s": round(statistics.median(samples[1:]), 3), "max_s": round(max(samples[1:]), 3),
            "requests": repeats}


def merge(runs: list) -> dict:
    """One summary for several runs of the same kind."""
    from bench.load import Stats

    merged = Stats(runs[0].concurrency, sum(r.requests for r in runs), sum(r.seconds for r in runs),
                   [latency for r in runs for latency in r.latencies_ms])
    for r in runs:
        merged.statuses.update(r.statuses)
    return merged.summary()


def naive_saved_model(folder: Path) -> Path:
    """The default model as a SavedModel, so the baseline runs the very same graph through Keras."""
    import tensorflow as tf

    from classifier.retrain import write_saved_model

    graph_def = tf.compat.v1.GraphDef()
    graph_def.ParseFromString((ROOT / "checkpoint_dir" / "frozen_inference_graph.pb").read_bytes())
    write_saved_model(graph_def, "final_result", folder / "saved_model")
    return folder / "saved_model"


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer requests and shorter runs (about a minute)")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "latest.json")
    args = parser.parse_args()
    quick = args.quick
    per_level = 60 if quick else 1000  # requests per concurrency level
    soak = 300 if quick else 10_000  # requests for the memory check
    bodies = [p.read_bytes() for p in JPEGS]
    report: dict = {"machine": {"cpus": os.cpu_count(), "processor": cpu_name(), "python": platform.python_version()},
                    "quick": quick, "date": time.strftime("%Y-%m-%d %H:%M")}
    print("a. ceiling …", file=sys.stderr)
    report["ceiling"] = ceiling(1.0 if quick else 4.0)
    report["ceiling_img_s"] = max(report["ceiling"].values())
    print("b. decode …", file=sys.stderr)
    report["decode_ms"] = decode_times(5 if quick else 30)

    print("c. /service …", file=sys.stderr)
    folder = tempfile.TemporaryDirectory()
    unbatched_conf = conf_variant(folder.name, batching={"max_batch_size": 1})
    started = time.perf_counter()
    server = ServerProcess()  # the model was converted and checked by a. above: it serves without TensorFlow
    report["server_start"] = {"ready_s": round(time.perf_counter() - started, 1), "rss_mb": round(server.rss_mb()[0])}
    unbatched = ServerProcess("--conf", str(unbatched_conf))
    try:
        # Concurrency 1, with and without batching, in alternating rounds so that drift in this noisy machine's
        # speed hits both alike.
        for s in (server, unbatched):
            drive_http(s.url, bodies, 4, 40)  # warm-up
        rounds = {"batched": [], "unbatched": []}
        for _ in range(5):
            for name, s in (("batched", server), ("unbatched", unbatched)):
                rounds[name].append(drive_http(s.url, bodies, 1, per_level // 10))
        unbatched.stop()
        report["service"] = {"c1": merge(rounds["batched"])}
        report["service_unbatched_c1"] = merge(rounds["unbatched"])
        report["service"].update({f"c{c}": drive_http(server.url, bodies, c, per_level).summary() for c in (4, 16, 64)})
        rss_before = server.rss_mb()[0]
        memory_run = drive_http(server.url, bodies, 16, soak).summary()
        rss_after, rss_peak = server.rss_mb()
        report["memory"] = {"requests": soak, "rss_before_mb": round(rss_before), "rss_after_mb": round(rss_after),
                            "rss_peak_mb": round(rss_peak), "statuses": memory_run["statuses"]}
        print("d. Gradio API …", file=sys.stderr)
        report["gradio"] = {f"c{c}": drive_gradio(server.url, JPEGS, c, 20 if quick else 200).summary()
                            for c in (1, 8)}
        print("f. /explain …", file=sys.stderr)
        report["explain"] = explain_times(server.url, 5 if quick else 20)
    finally:
        server.stop()
        unbatched.stop()

    with folder:
        print("e. naive baseline …", file=sys.stderr)
        saved_model = naive_saved_model(Path(folder.name))
        naive = ServerProcess("--saved-model", str(saved_model), "--labels",
                              str(ROOT / "checkpoint_dir" / "label_map.txt"), script=ROOT / "bench" / "naive_app.py",
                              ready_path="/healthz")
        try:
            drive_http(naive.url, bodies, 1, 5)
            report["naive"] = {f"c{c}": drive_http(naive.url, bodies, c, per_level // (2 if c == 1 else 1))
                               .summary() for c in (1, 16)}
            report["naive"]["peak_rss_mb"] = round(naive.rss_mb()[1])
        finally:
            naive.stop()
    report["naive_img_s"] = report["naive"]["c16"]["img_s"]
    c16, c1 = report["service"]["c16"], report["service"]["c1"]
    report["targets"] = {
        "c16_over_ceiling": round(c16["img_s"] / report["ceiling_img_s"], 2),
        "c16_over_naive": round(c16["img_s"] / report["naive_img_s"], 1),
        "c1_p99_over_p50": round(c1["p99_ms"] / c1["p50_ms"], 2),
        "c1_p50_over_unbatched_p50": round(c1["p50_ms"] / report["service_unbatched_c1"]["p50_ms"], 2)}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(markdown(report))
    return 0


def markdown(r: dict) -> str:
    rows = ["| path | concurrency | images/s | p50 ms | p90 ms | p99 ms |", "|---|---|---|---|---|---|"]
    for name, runs in (("POST /service", r["service"]), ("Gradio API (gradio_client)", r["gradio"]),
                       ("naive: Keras model.predict per request", {k: v for k, v in r["naive"].items()
                                                                    if k.startswith("c")})):
        for level, s in runs.items():
            rows.append(markdown_row(name, s))
    rows.append(markdown_row("POST /service, batching off", r["service_unbatched_c1"]))
    ceiling_rows = ", ".join(f"{k.replace('_b', ' batch ')}: {v}" for k, v in r["ceiling"].items())
    m, t = r["memory"], r["targets"]
    return "\n".join(rows + [
        "", f"Model-only ceiling (images/s on preprocessed tensors): {ceiling_rows}. Best: {r['ceiling_img_s']}.",
        "Decode + preprocess per photo (ms, median): "
        + ", ".join(f"{k} {v}" for k, v in r["decode_ms"].items()) + ".",
        f"Memory: server RSS {m['rss_before_mb']} MB before and {m['rss_after_mb']} MB after {m['requests']} more "
        f"requests (peak {m['rss_peak_mb']} MB; statuses {m['statuses']}). "
        f"Naive app peak RSS {r['naive']['peak_rss_mb']} MB.",
        f"Server start to ready (/readyz 200): {r['server_start']['ready_s']} s, RSS then "
        f"{r['server_start']['rss_mb']} MB.",
        f"POST /explain of a 224×224 photo, one at a time: median {r['explain']['median_s']} s, worst "
        f"{r['explain']['max_s']} s over {r['explain']['requests']} requests.",
        f"Targets: /service c16 = {t['c16_over_ceiling']:.0%} of the ceiling, {t['c16_over_naive']}× the naive "
        f"baseline; c1 p99/p50 = {t['c1_p99_over_p50']}; c1 p50 with/without batching = "
        f"{t['c1_p50_over_unbatched_p50']}.",
        f"Machine: {r['machine']['cpus']} CPUs, {r['machine']['processor']}, Python {r['machine']['python']}; "
        f"{'--quick' if r['quick'] else 'full'} run on {r['date']}."])


if __name__ == "__main__":
    sys.exit(main())
