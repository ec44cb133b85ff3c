"""python -m bench [--quick | --smoke]: measures, in one run on this machine, the numbers README's Performance table shows.

a. the model-only ceiling of every engine and precision, on preprocessed tensors, at batch 1, 2, 4, 8 and 16;
b. JPEG decoding: Pillow draft mode against simplejpeg, small photos and camera-sized ones (bench/decode.py);
c. POST /service end to end on a real server (loopback) under wrk (bench/wrk.py: real JPEG bodies, one client
   thread whose CPU share is reported): c1, c16, c64 with the default config and with the fastest precision the
   guard allows, c1 with batching off, memory before and after a longer run, start to ready, RSS and PSS;
   and the same server's gRPC port at c1 and c16, KServe v2 ModelInfer and TF Serving Predict of the same JPEGs
   (bench/grpc_load.py: one client process whose CPU share is reported);
d. Gradio's API through gradio_client, c1 and c8, beside Gradio's own floor (bench/gradio_floor.py);
e. the naive demo (bench/naive_app.py: Keras model.predict per request) under the same wrk;
f. POST /explain on a 224×224 photo, one at a time;
g. the peers: LitServe serving the same engine with its own batching (bench/litserve_app.py), under the same wrk;
   KServe's ModelServer beside our Open Inference door (the same JSON requests) and BentoML (its multipart
   forms, beside our /service), each in its own environment (bench/peers/);
h. many models by name on one server (bench/many_models.py);
i. the floor: /service on a model that costs nothing (bench/floor.py), c1 and c16, and each served precision's
   share of what decoding plus the model allow (bench/limit.py).
Writes bench/results/latest.json and prints README's tables (bench/report.py).
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
import urllib.request
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np

from bench import decode, grpc_load, limit, many_models, peers, wrk
from bench.floor import serving_floor
from bench.load import drive_gradio
from bench.report import markdown
from bench.server import JPEGS, ROOT, ServerProcess, conf_variant, cpu_name
from bench.under_load import costed, under_load

PHOTOS = ROOT / "tests" / "photos"
ENGINES = {"tensorflow fp32": {"runtime": "tensorflow"}, "litert fp32": {"runtime": "litert"},
           "openvino fp32": {"runtime": "openvino"}, "openvino bf16": {"precision": "bf16"},
           "openvino int8": {"precision": "int8"}}
CEILING_BATCHES = (1, 2, 4, 8, 16)  # 2 and 4: what the batcher forms at c16 (bench/limit.py reads the model there)


def timed_rate(run, images_per_call: int, seconds: float) -> float:
    run()  # warm-up
    count, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        run()
        count += images_per_call
    return count / (time.perf_counter() - started)


def ceiling(folder: Path, seconds: float, rounds: int) -> dict:
    """Images/s of each engine and precision on already-preprocessed tensors, and which ones the guard allowed.

    Each figure is the best of `rounds` runs of `seconds`, the engines in turn in each round: this VM's noise only
    ever slows a run down (int8 at batch 1: 278 img/s in one 1 s run, 347 in a loop of 300 calls minutes before),
    and these figures make the limit each served precision is judged against (bench/limit.py): a slow run must
    not lower the bar."""
    import classifier

    default = classifier.load(ROOT / "conf.json")
    tensor = default.preprocess(JPEGS[0])
    results = {"default_engine": default.runtime.engine, "engines": {}}
    models = {}
    for name, keys in ENGINES.items():
        (folder / name.replace(" ", "_")).mkdir()
        model = classifier.load(conf_variant(folder / name.replace(" ", "_"), tensorflow=keys))
        precision = keys.get("precision", "fp32")
        allowed = precision in model.runtime.engine or precision == "fp32"  # refused: fp32 serves instead
        results["engines"][name] = {"engine": model.runtime.engine, "allowed": allowed}
        if allowed:
            models[name] = model
    for _ in range(rounds):
        for name, model in models.items():
            for size in CEILING_BATCHES:
                rate = round(timed_rate(lambda: model.forward(np.stack([tensor] * size)), size, seconds), 1)
                figures = results["engines"][name]
                figures[f"b{size}"] = max(rate, figures.get(f"b{size}", 0))
    best = {name: max(r[f"b{size}"] for size in CEILING_BATCHES) for name, r in results["engines"].items()
            if r["allowed"]}
    results["default_img_s"] = next(best[name] for name, r in results["engines"].items()
                                    if r["engine"] == default.runtime.engine)
    reduced = {name: rate for name, rate in best.items() if "fp32" not in name}
    results["fastest_precision"] = ENGINES[max(reduced, key=reduced.get)]["precision"] if reduced else None
    results["fastest_precision_img_s"] = max(reduced.values()) if reduced else None
    return results


def explain_times(url: str, repeats: int) -> dict:
    """Seconds per POST /explain of a 224×224 JPEG (the cat photo, resized), median and worst of `repeats`."""
    import io

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
    parser.add_argument("--quick", action="store_true", help="shorter runs (about three minutes)")
    parser.add_argument("--smoke", action="store_true",
                        help="the shortest runs that still write every figure (tests/test_bench.py): they show that "
                             "the benchmark works, and are too short to mean anything")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "latest.json")
    args = parser.parse_args()
    if not wrk.available():
        parser.error("wrk is not installed: apt-get install wrk (Debian's package; ./test.sh installs it as root)")
    quick = args.quick or args.smoke
    seconds = 1 if args.smoke else 5 if quick else 20  # per wrk run
    # A smoke run runs every section's code once with the fewest runs: no c64 (the same loop as c16), no second
    # server for the engine auto chose (the default's server is it).
    levels = (1, 16) if args.smoke else (1, 16, 64)
    report: dict = {"machine": {"cpus": os.cpu_count(), "processor": cpu_name(), "python": platform.python_version()},
                    "quick": quick, "smoke": args.smoke, "date": time.strftime("%Y-%m-%d %H:%M")}
    folder = tempfile.TemporaryDirectory()
    work = Path(folder.name)
    print("a. ceiling …", file=sys.stderr)
    report["ceiling"] = ceiling(work, 0.2 if args.smoke else 1.0 if quick else 4.0, 1 if args.smoke else 3)
    print("b. decode …", file=sys.stderr)
    import classifier

    report["decode"] = decode.compare(classifier.load(ROOT / "conf.json"), JPEGS, 1 if args.smoke else 5 if quick else 30)

    print("i. the floor …", file=sys.stderr)  # the stack's own cost: a model that costs nothing, an 8×8 JPEG
    report["floor"] = serving_floor(work / "floor", (1, 16), seconds)

    print("c. /service …", file=sys.stderr)
    server = ServerProcess()  # the model was converted and checked by a.: it serves without TensorFlow
    try:
        report["service"] = under_load(server, levels, seconds)
        print("c. gRPC …", file=sys.stderr)  # the same server, its gRPC port: right after its REST rows
        report["grpc"] = {protocol: {f"c{c}": costed(server, lambda: grpc_load.drive(server.grpc_target, JPEGS,
                                                                                   protocol, c, seconds))
                                     for c in (1, 16)} for protocol in grpc_load.METHODS}
        print("g. KServe …", file=sys.stderr)  # beside this server's Open Inference door
        report["kserve"] = peers.kserve_beside(server, (1, 16), seconds, work / "v2-requests")
        print("g. BentoML …", file=sys.stderr)
        report["bentoml"] = peers.bentoml_beside(server, (1, 16), seconds, work / "bentoml")
        report["memory"] = {"rss_before_mb": round(server.rss_mb()[0])}
        longer = wrk.drive(server.url, JPEGS, 16, seconds if args.smoke else 3 * seconds)
        report["memory"].update(requests=longer["requests"], non_2xx=longer["non_2xx"],
                                rss_after_mb=round(server.rss_mb()[0]), rss_peak_mb=round(server.rss_mb()[1]))
        print("d. Gradio API …", file=sys.stderr)
        floor = ServerProcess(script=ROOT / "bench" / "gradio_floor.py", ready_path="/healthz")
        try:
            calls = 4 if args.smoke else 20 if quick else 200
            report["gradio"], report["gradio_floor"] = {}, {}
            for c in (1, 8):  # ours and the floor in turn, so that drift hits both alike
                report["gradio"][f"c{c}"] = drive_gradio(server.url, JPEGS, c, calls).summary()
                report["gradio_floor"][f"c{c}"] = drive_gradio(floor.url, JPEGS, c, calls).summary()
        finally:
            floor.stop()
        print("f. /explain …", file=sys.stderr)
        report["explain"] = explain_times(server.url, 2 if args.smoke else 5 if quick else 20)
    finally:
        server.stop()

    # Each agreeing fp32 engine forced, beside auto's row: a wrong choice shows at a glance.
    report["service_engines"] = {}
    chosen = report["ceiling"]["default_engine"]
    for name, engine in report["ceiling"]["engines"].items():
        if args.smoke and engine["engine"] == chosen:
            continue  # the default's server served it
        if name.endswith("fp32") and engine["allowed"] and not name.startswith("tensorflow"):
            (work / f"forced-{name.split()[0]}").mkdir()
            forced = ServerProcess("--conf", str(conf_variant(work / f"forced-{name.split()[0]}",
                                                              tensorflow={"runtime": name.split()[0]})))
            try:
                report["service_engines"][name] = under_load(forced, (1, 16), seconds)
            finally:
                forced.stop()

    if report["ceiling"]["engines"]["litert fp32"]["allowed"]:
        # Three models on one server beside a server of one, both by name (so both in the layout of a server of
        # many models) and on one engine: memory compares like with like. A smoke run compares with the default's
        # server instead, one server fewer (its figures mean nothing anyway).
        print("h. many models …", file=sys.stderr)
        if args.smoke:
            served = report["service_engines"].get("litert fp32") or report["service"]
            one = {**served["c16"], "non_2xx": served["c16"]["non_2xx"] + served["c16"]["socket_errors"],
                   "ready_rss_mb": served["ready_rss_mb"], "rss_after_mb": served["rss_mb"]}
        else:
            one = many_models.one_model(work, "litert", seconds)
        report["many_models"] = many_models.compared(one, many_models.three_models(work, "litert", seconds))

    # Every reduced precision the guard allowed: the fastest at c1, c16 and c64, the others (not in a smoke run)
    # at c1 and c16, for their shares of the limit (bench/limit.py).
    precision = report["ceiling"]["fastest_precision"]
    others = [] if args.smoke else [ENGINES[name]["precision"] for name, e in report["ceiling"]["engines"].items()
                                    if e["allowed"] and "precision" in ENGINES[name]
                                    and ENGINES[name]["precision"] != precision]
    for served in ([precision] if precision else []) + others:
        (work / f"reduced-{served}").mkdir()
        reduced = ServerProcess("--conf", str(conf_variant(work / f"reduced-{served}",
                                                           tensorflow={"precision": served})))
        try:
            if served == precision:
                report["service_reduced"] = {"precision": served, **under_load(reduced, levels, seconds)}
            else:
                report.setdefault("service_other_precisions", {})[served] = under_load(reduced, (1, 16), seconds)
        finally:
            reduced.stop()
    (work / "unbatched").mkdir()
    unbatched = ServerProcess("--conf", str(conf_variant(work / "unbatched", batching={"max_batch_size": 1})))
    try:
        report["service_unbatched"] = under_load(unbatched, (1,), seconds)
    finally:
        unbatched.stop()

    print("g. LitServe …", file=sys.stderr)
    peer = ServerProcess(script=ROOT / "bench" / "litserve_app.py", ready_path="/health")
    try:
        report["litserve"] = under_load(peer, levels, seconds, path="/predict")
    finally:
        peer.stop()

    print("e. naive demo …", file=sys.stderr)
    with folder:
        saved_model = naive_saved_model(work)
        naive = ServerProcess("--saved-model", str(saved_model), "--labels",
                              str(ROOT / "checkpoint_dir" / "label_map.txt"), script=ROOT / "bench" / "naive_app.py",
                              ready_path="/healthz")
        try:
            # At least 2 s: at c16 each of its answers takes ~0.7 s (more beside other work), so a 1 s smoke run
            # might see none at all.
            report["naive"] = under_load(naive, (1, 16), max(seconds, 2))
        finally:
            naive.stop()
    report["limit"] = limit.shares(report)
    report["targets"] = targets(report)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(markdown(report))
    return 0


def targets(r: dict) -> dict:
    """Issue 15's targets, as ratios taken within this run."""
    c16 = r["service"]["c16"]["img_s"]
    found = {"c16_over_default_ceiling": round(c16 / r["ceiling"]["default_img_s"], 2),
             "c16_over_naive": round(c16 / r["naive"]["c16"]["img_s"], 1),
             "c16_over_litserve": round(c16 / r["litserve"]["c16"]["img_s"], 2),
             "gradio_c8_over_floor": round(r["gradio"]["c8"]["img_s"] / r["gradio_floor"]["c8"]["img_s"], 2),
             "c1_p50_over_unbatched_p50": round(r["service"]["c1"]["p50_ms"]
                                                / r["service_unbatched"]["c1"]["p50_ms"], 2)}
    if "c64" in r["service"]:  # not in a smoke run
        found["c64_over_litserve"] = round(r["service"]["c64"]["img_s"] / r["litserve"]["c64"]["img_s"], 2)
    if "kserve" in r["kserve"]:  # its environment could be made
        for level in ("c1", "c16"):
            found[f"v2_{level}_over_kserve"] = round(r["kserve"]["ours"][level]["img_s"]
                                                     / r["kserve"]["kserve"][level]["img_s"], 2)
    if "bentoml" in r["bentoml"]:
        for level in ("c1", "c16"):
            peer = r["bentoml"]["bentoml"][level]["img_s"]
            found[f"{level}_over_bentoml"] = round(r["service"][level]["img_s"] / peer, 2)
    if "grpc" in r:
        for protocol, runs in r["grpc"].items():
            found[f"grpc_{protocol}_c16_over_rest_c16"] = round(runs["c16"]["img_s"] / c16, 2)
            # The server's core time a request beside REST's: the gRPC client, a Python process, takes a bigger
            # share of the same two cores than wrk does, which the rate ratio counts against the server.
            found[f"grpc_{protocol}_c16_core_ms_over_rest"] = round(runs["c16"]["server_core_ms"]
                                                                    / r["service"]["c16"]["server_core_ms"], 2)
    best = max((runs["c16"]["img_s"] for runs in r.get("service_engines", {}).values()), default=None)
    if best:
        found["auto_c16_over_best_forced_engine_c16"] = round(c16 / best, 2)
    for label, share in r["limit"].items():
        found[f"{label.split(' (')[0].replace(' ', '_')}_c16_share_of_limit"] = share["share"]
    found["floor_c16_requests_per_s"] = r["floor"]["c16"]["img_s"]
    if "many_models" in r:
        found["three_models_c16_over_one_c16"] = r["many_models"]["three_over_one_c16"]
    if "service_reduced" in r:
        reduced = r["service_reduced"]["c16"]["img_s"]
        found["reduced_c16_over_default_c16"] = round(reduced / c16, 2)
        found["reduced_c16_over_naive"] = round(reduced / r["naive"]["c16"]["img_s"], 1)
    return found


if __name__ == "__main__":
    sys.exit(main())
