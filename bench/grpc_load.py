"""The gRPC load generator: one process of grpcio's asyncio client sending requests serialised once beforehand,
KServe v2's ModelInfer or TF Serving's Predict of one real JPEG each, with its own CPU share (no ghz on Debian or
PyPI). Run by the benchmark (drive) as `python -m bench.grpc_load`, which prints its report as JSON."""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MODEL = "checkpoint_dir"
METHODS = {"kserve": "/inference.GRPCInferenceService/ModelInfer",
           "tf_serving": "/tensorflow.serving.PredictionService/Predict"}


def drive(target: str, photos: list[Path], protocol: str, concurrency: int, seconds: float) -> dict:
    """Calls for `seconds` from `concurrency` callers on one channel, in a child process. Returns images/s, the
    latency percentiles, the calls that failed, and the share of the machine's CPU the client used (as wrk's)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    run = subprocess.run([sys.executable, "-m", "bench.grpc_load", target, protocol, str(concurrency), str(seconds),
                          *map(str, photos)], cwd=ROOT, capture_output=True, text=True, timeout=seconds + 120,
                         check=True)
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {"concurrency": concurrency, **json.loads(run.stdout),
            "client_cpu_share": round(cpu / (wall * (os.cpu_count() or 1)), 3)}


def requests_for(protocol: str, photos: list[Path]) -> list[bytes]:
    """One serialised request per photo: the protocol's own messages (ours, wire-compatible with the clients')."""
    if protocol == "kserve":
        from classifier.serving.protos import open_inference_pb2 as pb

        made = []
        for photo in photos:
            request = pb.ModelInferRequest(model_name=MODEL)
            request.inputs.add(name="image", datatype="BYTES", shape=[1])
            body = photo.read_bytes()
            request.raw_input_contents.append(len(body).to_bytes(4, "little") + body)
            made.append(request.SerializeToString())
        return made
    from classifier.serving.protos import tf_serving_pb2 as pb

    made = []
    for photo in photos:
        request = pb.PredictRequest(model_spec=pb.ModelSpec(name=MODEL))
        tensor = request.inputs["image"]
        tensor.dtype = pb.DT_STRING
        tensor.tensor_shape.dim.add(size=1)
        tensor.string_val.append(photo.read_bytes())
        made.append(request.SerializeToString())
    return made


async def load(target: str, protocol: str, concurrency: int, seconds: float, photos: list[Path]) -> dict:
    import grpc

    bodies = requests_for(protocol, photos)
    latencies: list[float] = []
    failed = 0
    async with grpc.aio.insecure_channel(target) as channel:
        call = channel.unary_unary(METHODS[protocol])  # bytes in, bytes out: no protobuf work per call
        await call(bodies[0], timeout=60)  # the connection, before the clock starts
        stop = time.perf_counter() + seconds

        async def caller(offset: int) -> None:
            nonlocal failed
            number = offset
            while time.perf_counter() < stop:
                started = time.perf_counter()
                try:
                    await call(bodies[number % len(bodies)], timeout=60)
                    latencies.append(time.perf_counter() - started)
                except grpc.aio.AioRpcError:
                    failed += 1
                number += 1

        began = time.perf_counter()
        await asyncio.gather(*(caller(offset) for offset in range(concurrency)))
        elapsed = time.perf_counter() - began
    latencies.sort()

    def percentile(p: int) -> float:
        return round(1000 * latencies[min(len(latencies) - 1, len(latencies) * p // 100)], 1) if latencies else 0.0

    return {"requests": len(latencies), "img_s": round(len(latencies) / elapsed, 1), "p50_ms": percentile(50),
            "p90_ms": percentile(90), "p99_ms": percentile(99), "failed": failed}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("target")
    parser.add_argument("protocol", choices=sorted(METHODS))
    parser.add_argument("concurrency", type=int)
    parser.add_argument("seconds", type=float)
    parser.add_argument("photos", nargs="+", type=Path)
    args = parser.parse_args()
    print(json.dumps(asyncio.run(load(args.target, args.protocol, args.concurrency, args.seconds, args.photos))))


if __name__ == "__main__":
    main()
