"""python -m bench.engine_settings: each engine's threading settings under /service load, side by side.

Every setting is served in turn by a real server (the engine forced in conf.json, the setting through
$CLASSIFIER_ENGINE_SETTINGS) under wrk at c1 and c16, in interleaved rounds; the medians are printed as README's
table. The defaults in classifier/engines/settings.py are the winners of this run on the machines named there.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
from pathlib import Path

from bench import wrk
from bench.server import JPEGS, ServerProcess, conf_variant, cpu_name

SETTINGS = {
    "LiteRT, one single-threaded interpreter per core (per-core)": ("litert", {"litert": {"layout": "per-core"}}),
    "LiteRT, per-core with the lone image's interpreter one of the batch's (lean)": ("litert", {"litert": {
        "layout": "lean"}}),
    "LiteRT, one interpreter with every core (shared)": ("litert", {"litert": {"layout": "shared"}}),
    "OpenVINO, PERFORMANCE_HINT LATENCY": ("openvino", {"openvino": {"PERFORMANCE_HINT": "LATENCY"}}),
    "OpenVINO, PERFORMANCE_HINT THROUGHPUT": ("openvino", {"openvino": {"PERFORMANCE_HINT": "THROUGHPUT"}}),
    "OpenVINO, LATENCY, 2 streams": ("openvino", {"openvino": {"PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": 2}}),
    "OpenVINO, LATENCY, CPU pinning off": ("openvino", {"openvino": {"PERFORMANCE_HINT": "LATENCY",
                                                                     "ENABLE_CPU_PINNING": False}}),
    # Each infer request on one thread of its own, two of them (the batcher's two batches in flight): the layout
    # LiteRT's per-core interpreters have, so the engine never spins on a core a decoder wants.
    "OpenVINO, THROUGHPUT, 2 streams of 1 thread": ("openvino", {"openvino": {
        "PERFORMANCE_HINT": "THROUGHPUT", "NUM_STREAMS": 2, "INFERENCE_NUM_THREADS": 2}}),
}


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.engine_settings", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=10, help="per wrk run (default: 10)")
    parser.add_argument("--rounds", type=int, default=2, help="interleaved rounds (default: 2)")
    parser.add_argument("--engine", choices=sorted({engine for engine, _ in SETTINGS.values()}), default=None,
                        help="only this engine's settings (default: every engine's)")
    parser.add_argument("--precision", choices=("fp32", "bf16", "int8"), default="fp32",
                        help="OpenVINO's precision for its settings (default: fp32; LiteRT's are fp32 only)")
    parser.add_argument("--out", type=Path, default=None, help="also write the figures as JSON here")
    args = parser.parse_args()
    chosen = {name: setting for name, setting in SETTINGS.items() if args.engine in (None, setting[0])}
    figures: dict[str, dict[str, list[float]]] = {name: {"c1": [], "c16": []} for name in chosen}
    with tempfile.TemporaryDirectory() as folder:
        for number in range(args.rounds):
            for name, (engine, override) in chosen.items():
                scratch = Path(folder) / f"{number}-{len(figures[name]['c1'])}-{engine}-{abs(hash(name))}"
                scratch.mkdir()
                reduced = {"precision": args.precision} if engine == "openvino" and args.precision != "fp32" else {}
                conf = conf_variant(scratch, tensorflow={"runtime": engine, **reduced})
                server = ServerProcess("--conf", str(conf), "--no-train",
                                       env={"CLASSIFIER_ENGINE_SETTINGS": json.dumps(override)})
                try:
                    wrk.drive(server.url, JPEGS, 4, 2)  # warm-up
                    for level in ("c1", "c16"):
                        figures[name][level].append(wrk.drive(server.url, JPEGS, int(level[1:]), args.seconds)["img_s"])
                finally:
                    server.stop()
                print(f"round {number + 1}: {name}: {figures[name]}", file=sys.stderr)
    print(f"/service img/s under wrk, median of {args.rounds} interleaved rounds of {args.seconds:g} s; "
          f"{cpu_name()}, {len(os.sched_getaffinity(0))} cores\n")
    print("| setting | c1 img/s | c16 img/s |\n|---|---|---|")
    for name, levels in figures.items():
        print(f"| {name} | {statistics.median(levels['c1']):.1f} | {statistics.median(levels['c16']):.1f} |")
    if args.out:
        args.out.write_text(json.dumps({"cpu": cpu_name(), "figures": figures}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
