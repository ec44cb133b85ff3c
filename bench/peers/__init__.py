"""The Python servers users pick instead of ours, serving the same model with the same engine, for the benchmark.

LitServe shares our environment (bench/litserve_app.py); KServe's and BentoML's pins conflict with our lock, so
each runs in an environment of its own (envs.py, from kserve.txt and bentoml.txt). Each is measured under the same
wrk beside the door of ours that speaks its protocol (KServe: our Open Inference door; BentoML, whose protocol is
its own: our POST /service, the same photos as raw bodies).
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
        same = all(v2_top5(peer.url + KSERVE_V2, body) == v2_top5(ours.url + OURS_V2, body) for body in bodies.paths)
        return {"kserve": under_load(peer, levels, seconds, KSERVE_V2, bodies),
                "ours": under_load(ours, levels, seconds, OURS_V2, bodies), "same_top5": same}
    finally:
        peer.stop()


def v2_top5(url: str, body: Path) -> list[str]:
    """The top 5 labels a server answers an Open Inference request file with (its "probability:index:label"
    strings, the probabilities left out: two engines' may differ in the last digits)."""
    return [entry.split(":", 2)[2] for entry in post(url, body.read_bytes(), "application/json")["outputs"][0]["data"]]


def labels(pairs: list) -> list[str]:
    """The labels of an answer's [label, probability] pairs."""
    return [label for label, _ in pairs]


def post(url: str, body: bytes, content_type: str):
    request = urllib.request.Request(url, data=body, headers={"Content-Type": content_type})
    with urllib.request.urlopen(request, timeout=60) as response:
        return json.loads(response.read())


def bentoml_beside(ours: ServerProcess, levels: tuple[int, ...], seconds: float, folder: Path) -> dict:
    """BentoML (bentoml_service.py) under wrk at each level, the photos as multipart forms, having checked that it
    answers each photo's top 5 as our /service does; {"error": why} when its environment cannot be made
    (offline). Our /service's rows, the photos as raw bodies, are the bench's own."""
    try:
        python = envs.python_for("bentoml")
    except RuntimeError as exc:
        return {"error": str(exc)}
    Path(folder).mkdir(parents=True, exist_ok=True)
    forms = wrk.multipart_requests(JPEGS, "images", Path(folder))
    peer = ServerProcess(script=HERE / "bentoml_service.py", python=python, ready_path="/readyz",
                         env={"BENTOML_HOME": str(Path(folder) / "bentoml-home"), "BENTOML_DO_NOT_TRACK": "True"})
    try:
        same = all(labels(post(peer.url + "/classify", form.read_bytes(), forms.content_type)[0])  # one per image
                   == labels(post(ours.url + "/service", photo.read_bytes(), "application/octet-stream"))
                   for form, photo in zip(forms.paths, JPEGS))
        return {"bentoml": under_load(peer, levels, seconds, "/classify", forms), "same_top5": same}
    finally:
        peer.stop()
