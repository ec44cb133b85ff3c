"""README's Performance tables, written from one benchmark run's results (bench/results/latest.json)."""
from __future__ import annotations

import argparse
import json
from pathlib import Path


def row(*cells) -> str:
    return "| " + " | ".join(str(cell) for cell in cells) + " |"


def load_rows(r: dict) -> list[str]:
    rows = [row("server", "path", "concurrency", "images/s", "p50 ms", "p90 ms", "p99 ms", "non-2xx",
                "client CPU", "server core ms/req"), row(*["---"] * 10)]
    reduced = r.get("service_reduced", {})
    forced = [(f"ours, {name} forced", "POST /service", runs) for name, runs in r.get("service_engines", {}).items()]
    others = [(f"ours, precision {precision}", "POST /service", runs)
              for precision, runs in r.get("service_other_precisions", {}).items()]
    for name, path, runs in (
            (f"ours, default: auto ({r['ceiling']['default_engine']})", "POST /service", r["service"]), *forced,
            (f"ours, precision {reduced.get('precision')}", "POST /service", reduced), *others,
            ("ours, batching off", "POST /service", r["service_unbatched"]),
            ("LitServe, same engine, its batching", "POST /predict", r["litserve"]),
            ("BentoML (2 workers), same engine, its batching", "POST /classify (multipart)",
             r.get("bentoml", {}).get("bentoml", {})),
            ("naive demo (Keras model.predict per request)", "POST /service", r["naive"]),
            # The Open Inference REST protocol, a base64 JPEG in JSON: ours beside KServe's on the same requests.
            ("ours, default", "POST /v2/…/infer (JSON)", r.get("kserve", {}).get("ours", {})),
            ("KServe ModelServer (2 workers), same engine", "POST /v2/…/infer (JSON)",
             r.get("kserve", {}).get("kserve", {}))):
        for level, s in runs.items():
            if level.startswith("c"):
                rows.append(row(name, path, s["concurrency"], s["img_s"], s["p50_ms"], s["p90_ms"], s["p99_ms"],
                                s["non_2xx"] + s["socket_errors"], f"{s['client_cpu_share']:.0%}",
                                s.get("server_core_ms", "—")))
    methods = {"kserve": "gRPC KServe v2 ModelInfer", "tf_serving": "gRPC TF Serving Predict"}
    for protocol, runs in r.get("grpc", {}).items():  # bench/grpc_load.py: its failed calls in the non-2xx column
        for s in runs.values():
            rows.append(row("ours, default", methods[protocol], s["concurrency"], s["img_s"], s["p50_ms"],
                            s["p90_ms"], s["p99_ms"], s["failed"], f"{s['client_cpu_share']:.0%}",
                            s.get("server_core_ms", "—")))
    for name, runs in (("ours", r["gradio"]), ("Gradio's floor (a fixed answer)", r["gradio_floor"])):
        for level, s in runs.items():
            rows.append(row(name, "Gradio API (gradio_client)", s["concurrency"], s["img_s"], s["p50_ms"],
                            s["p90_ms"], s["p99_ms"], 0, "—", "—"))
    return rows


def engine_rows(r: dict) -> list[str]:
    rows = [row("engine", "batch 1", "batch 8", "batch 16", "served as"), row(*["---"] * 5)]
    for name, e in r["ceiling"]["engines"].items():
        if e["allowed"]:
            rows.append(row(name, e["b1"], e["b8"], e["b16"], e["engine"]))
        else:
            rows.append(row(name, "—", "—", "—", f"refused by the guard; {e['engine']} served"))
    return rows


def decode_rows(r: dict) -> list[str]:
    rows = [row("photo", "KB", "Pillow draft ms", "simplejpeg ms", "same top-1"), row(*["---"] * 5)]
    rows += [row(name, d["kb"], d["pillow_ms"], d["simplejpeg_ms"], "yes" if d["same_top1"] else "no")
             for name, d in r["decode"].items()]
    return rows


def memory_rows(r: dict) -> list[str]:
    rows = [row("server", "start to ready s", "RSS MB at ready", "PSS MB at ready", "RSS MB after its load runs",
                "PSS MB after"), row(*["---"] * 6)]
    peers = {name: r.get(name, {}).get(name) for name in ("kserve", "bentoml")}  # beside ours in bench/peers/
    for name, s in (("ours, default", r.get("service")), ("ours, reduced precision", r.get("service_reduced")),
                    ("LitServe (2 workers; PSS counts all its processes)", r.get("litserve")),
                    ("KServe ModelServer (2 workers; PSS counts all its processes)", peers["kserve"]),
                    ("BentoML (2 workers; PSS counts all its processes)", peers["bentoml"]),
                    ("naive demo", r.get("naive"))):
        if s:
            rows.append(row(name, s["ready_s"], s["ready_rss_mb"], s["ready_pss_mb"], s["rss_mb"], s["pss_mb"]))
    return rows


def many_rows(r: dict) -> list[str]:
    if "many_models" not in r:
        return []
    from bench.many_models import rows  # bench/many_models.py: the section's own table

    return ["Many models (three EfficientNet-Lite0s by name on one server, beside a server of one by name; LiteRT):",
            "", rows(r["many_models"]), ""]


def limit_rows(r: dict) -> list[str]:
    from bench.limit import rows  # bench/limit.py: the section's own table

    return rows(r) if "limit" in r else []  # a run before 2026-12-05 has none


def markdown(r: dict) -> str:
    m, t = r["memory"], r["targets"]
    return "\n".join(
        ["Model-only ceiling (images/s on preprocessed tensors):", "", *engine_rows(r), "",
         "Under load (wrk, one client thread; gRPC: bench/grpc_load.py, one client process; real JPEGs):", "", *load_rows(r), "",
         *memory_rows(r), "",
         f"Memory under load: {m['rss_before_mb']} MB before and {m['rss_after_mb']} MB after {m['requests']} more "
         f"requests at c16 (peak {m['rss_peak_mb']} MB, {m['non_2xx']} non-2xx).", "",
         "JPEG decode + resize + scale, per photo (median):", "", *decode_rows(r), "",
         "The stack's own cost: each served precision against what decoding plus the model allow (bench/limit.py), "
         "and the floor:", "", *limit_rows(r), "",
         *many_rows(r),
         f"POST /explain of a 224×224 photo, one at a time: median {r['explain']['median_s']} s, worst "
         f"{r['explain']['max_s']} s over {r['explain']['requests']} requests.", "",
         "Targets (ratios within this run): " + ", ".join(f"{k} = {v}" for k, v in t.items()) + ".", "",
         f"Machine: {r['machine']['cpus']} CPUs, {r['machine']['processor']}, Python {r['machine']['python']}; "
         f"{'--quick' if r['quick'] else 'full'} run on {r['date']}."])


if __name__ == "__main__":  # python -m bench.report [results.json]: the tables again, from a saved run
    parser = argparse.ArgumentParser(prog="python -m bench.report", description=__doc__)
    parser.add_argument("results", nargs="?", type=Path, default=Path(__file__).with_name("results") / "latest.json",
                        help="a run's JSON (default: bench/results/latest.json; --quick runs: results/quick.json)")
    args = parser.parse_args()
    if not args.results.is_file():
        parser.error(f"{args.results}: no such file (python -m bench writes it)")
    print(markdown(json.loads(args.results.read_text())))
