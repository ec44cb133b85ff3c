"""The peer KServe: its own Python ModelServer serving our model with the same engine, for the benchmark only.

python bench/peers/kserve_app.py --host 127.0.0.1 --port 8001 [--conf conf.json] (in the venv
bench/peers/envs.py makes from kserve.txt); POST /v2/models/classifier/infer in the Open Inference REST protocol,
the JPEG base64 in one BYTES element (bench/wrk.py's v2_requests). The answer: the top 5 as
"probability:index:label" strings, what our own /v2 door gives for the same request.

Laid out as KServe's documentation shows a custom model (a kserve.Model with load and a synchronous predict,
started by kserve.ModelServer), with 2 workers (uvicorn processes) for the two cores and one
single-threaded engine each, as the LitServe peer's winning layout has. KServe's Python server has no batching of
its own: its batcher is the Kubernetes agent's sidecar, outside this process, so each request is its own batch.
"""
import base64
import sys
from pathlib import Path

import kserve
import numpy as np
import uvicorn
from kserve import InferOutput, InferRequest, InferResponse
from kserve.utils.utils import generate_uuid

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))  # classifier and bench.peers.engine, from this checkout

CONF = ROOT / "conf.json"


class LoopbackConfig(uvicorn.Config):
    """KServe's REST server listens on 0.0.0.0, with no option to change it (kserve/protocol/rest/server.py); the
    bench keeps every socket on loopback, so the uvicorn Config it builds is given 127.0.0.1 instead."""

    def __init__(self, *given, **options):
        super().__init__(*given, **{**options, "host": "127.0.0.1"})


class Classifier(kserve.Model):
    def __init__(self, name: str, conf: Path):
        super().__init__(name)
        self.conf = conf
        self.load()

    def load(self) -> bool:
        from bench.peers.engine import single_threaded

        self.model, self.engine = single_threaded(self.conf)
        self.ready = True
        return self.ready

    # With workers > 1 KServe hands its models to each uvicorn worker by pickling them: the engine is loaded there.
    def __getstate__(self) -> dict:
        return {key: value for key, value in self.__dict__.items() if key not in ("model", "engine")}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self.load()

    def predict(self, payload: InferRequest, headers: dict | None = None) -> InferResponse:
        photos = [base64.b64decode(photo) for photo in payload.inputs[0].data]
        tensors = np.stack([self.model.preprocess(photo) for photo in photos])
        probabilities = self.model.runtime.probabilities(self.engine(tensors))
        labels = list(self.model.labels)
        best = [[f"{row[i]:f}:{i}:{labels[i]}" for i in np.argsort(row)[::-1][:5]] for row in probabilities]
        output = InferOutput("probabilities", [len(best), 5], "BYTES", np.array(best, dtype=object))
        return InferResponse(payload.id or generate_uuid(), self.name, [output])


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", choices=["127.0.0.1"], default="127.0.0.1")  # the harness's flags (LoopbackConfig)
    parser.add_argument("--port", type=int, default=8001)
    parser.add_argument("--conf", type=Path, default=CONF)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    uvicorn.Config = LoopbackConfig
    server = kserve.ModelServer(http_port=args.port, workers=args.workers, enable_grpc=False)
    server.start([Classifier("classifier", args.conf.resolve())])
