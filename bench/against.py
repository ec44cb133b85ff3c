"""python -m bench.against REVISION: this tree's server against an earlier commit's, side by side in one run.

What a change gained or cost, alone: the earlier commit is checked out in a temporary git worktree, and both
servers serve the same model files (this tree's checkpoint_dir, so neither converts anything) in interleaved
rounds (A B, B A, …), each measured by the same clients: /service under wrk at c1, c16 and c64, KServe v2
ModelInfer on the gRPC port at c16, Gradio's API at c1 and c8, and the server's memory when ready and after.
Each round starts both servers afresh. This VM's noise is about ±10 % between runs minutes apart, so read the
medians, and the rounds beside them. The earlier commit's app.py must take --conf and --grpc-port.

  python -m bench.against ce1321d^                     # the default precision
  python -m bench.against ce1321d^ --precision int8    # OpenVINO's int8 on both
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from bench import grpc_load
from bench.load import drive_gradio
from bench.server import JPEGS, ROOT, ServerProcess, conf_variant, cpu_name
from bench.under_load import costed, under_load

FIGURES = {"c1": "/service c1, img/s", "c1_p50_ms": "/service c1, p50 ms", "c16": "/service c16, img/s",
           "c64": "/service c64, img/s", "grpc_c16": "gRPC ModelInfer c16, img/s", "gradio_c1": "Gradio API c1, img/s",
           "gradio_c8": "Gradio API c8, img/s", "ready_rss_mb": "RSS when ready, MB", "rss_mb": "RSS after, MB"}


def measured(tree: Path, conf: Path, seconds: float, gradio_calls: int) -> dict:
    """One server of `tree` (its app.py and its classifier package) on `conf`, under each client in turn."""
    server = ServerProcess("--conf", str(conf), "--no-train", script=tree / "app.py", env={"PYTHONPATH": str(tree)})
    try:
        rest = under_load(server, (1, 16, 64), seconds)
        grpc = costed(server, lambda: grpc_load.drive(server.grpc_target, JPEGS, "kserve", 16, seconds))
        gradio = {c: drive_gradio(server.url, JPEGS, c, gradio_calls).summary()["img_s"] for c in (1, 8)}
        return {"c1": rest["c1"]["img_s"], "c1_p50_ms": rest["c1"]["p50_ms"], "c16": rest["c16"]["img_s"],
                "c64": rest["c64"]["img_s"], "grpc_c16": grpc["img_s"], "gradio_c1": gradio[1],
                "gradio_c8": gradio[8], "ready_rss_mb": rest["ready_rss_mb"], "rss_mb": round(server.rss_mb()[0])}
    finally:
        server.stop()


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.against", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("revision", help="the earlier commit (anything git rev-parse takes)")
    parser.add_argument("--precision", choices=("fp32", "bf16", "int8"), default="fp32",
                        help="fp32: the project's conf.json as it is; bf16, int8: OpenVINO at that precision")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (default: 3)")
    parser.add_argument("--seconds", type=float, default=5, help="per wrk or gRPC run (default: 5)")
    parser.add_argument("--gradio-calls", type=int, default=20, help="calls per Gradio API run (default: 20)")
    parser.add_argument("--out", type=Path, default=None, help="also write every round's figures as JSON here")
    args = parser.parse_args()
    commit = subprocess.run(["git", "rev-parse", "--short", args.revision], cwd=ROOT, capture_output=True,
                            text=True, check=True).stdout.strip()
    rounds: dict[str, list[dict]] = {commit: [], "this tree": []}
    with tempfile.TemporaryDirectory() as folder:
        earlier = Path(folder) / "earlier"
        subprocess.run(["git", "worktree", "add", "--detach", str(earlier), commit], cwd=ROOT, check=True,
                       capture_output=True)
        try:
            reduced = {} if args.precision == "fp32" else {"precision": args.precision, "runtime": "openvino"}
            conf = conf_variant(Path(folder), tensorflow=reduced)
            trees = [(commit, earlier), ("this tree", ROOT)]
            for number in range(args.rounds):
                for name, tree in trees if number % 2 == 0 else trees[::-1]:
                    rounds[name].append(measured(tree, conf, args.seconds, args.gradio_calls))
                    print(f"round {number + 1}: {name}: {rounds[name][-1]}", file=sys.stderr)
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(earlier)], cwd=ROOT, capture_output=True)
    print(f"{commit} against this tree ({args.precision}), medians of {args.rounds} interleaved rounds of "
          f"{args.seconds:g} s; {cpu_name()}, {len(os.sched_getaffinity(0))} cores\n")
    print(f"| | {commit} | this tree | ratio | the rounds ({commit}; this tree) |\n|---|---|---|---|---|")
    for key, label in FIGURES.items():
        before, after = (statistics.median(row[key] for row in rounds[name]) for name in (commit, "this tree"))
        each = "; ".join(" · ".join(f"{row[key]:g}" for row in rounds[name]) for name in (commit, "this tree"))
        print(f"| {label} | {before:g} | {after:g} | {after / before:.2f} | {each} |")
    if args.out:
        args.out.write_text(json.dumps({"cpu": cpu_name(), "revision": commit, "precision": args.precision,
                                        "rounds": rounds}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
