"""The Python servers users pick instead of ours, serving the same model with the same engine, for the benchmark.

LitServe shares our environment (bench/litserve_app.py); KServe's pins conflict with our lock, so it runs in an
environment of its own (envs.py, from kserve.txt). Each is measured under the same wrk beside the door of ours
that speaks its protocol.
"""
from __future__ import annotations

import json
import urllib.request
from pathlib import Path

from bench import wrk
from bench.peers import envs
from bench.server import JPEGS, ServerProcess
from bench.under_load import under_load

HERE = Path(__file__).resolve().parent
OURS_V2 = "/v2/models/checkpoint_dir/infer"  # the default model's name: its folder's
KSERVE_V2 = "/v2/models/classifier/infer"


def kserve_beside(ours: ServerProcess, levels: tuple[int, ...], seconds: float, folder: Path) -> dict:
    """KServe's ModelServer (kserve_app.py) and our own Open Inference door, the same JSON requests (a JPEG base64
    in each), in turn at each level; {"error": why} when KServe's environment cannot be made (offline)."""
    try:
        python = envs.python_for("kserve")
    except RuntimeError as exc:
        return {"error": str(exc)}
    Path(folder).mkdir(parents=True, exist_ok=True)
    bodies = wrk.v2_requests(JPEGS, Path(folder))
    peer = ServerProcess(script=HERE / "kserve_app.py", python=python, ready_path="/v2/models/classifier/ready")
    try:
        same = all(best(peer.url + KSERVE_V2, body) == best(ours.url + OURS_V2, body) for body in bodies)
        return {"kserve": under_load(peer, levels, seconds, KSERVE_V2, bodies, wrk.V2_LUA),
                "ours": under_load(ours, levels, seconds, OURS_V2, bodies, wrk.V2_LUA), "same_top5": same}
    finally:
        peer.stop()


def best(url: str, body: Path) -> list[str]:
    """The top 5 labels a server answers an Open Inference request file with (its "probability:index:label"
    strings, the probabilities left out: the two may differ in the last digits)."""
    request = urllib.request.Request(url, data=body.read_bytes(), headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=60) as response:
        return [entry.split(":", 2)[2] for entry in json.loads(response.read())["outputs"][0]["data"]]
