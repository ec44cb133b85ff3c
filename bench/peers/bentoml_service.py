"""The peer BentoML: a BentoML service serving our model with the same engine, for the benchmark only.

python bench/peers/bentoml_service.py --host 127.0.0.1 --port 8001 (in the venv bench/peers/envs.py makes from
bentoml.txt) runs `bentoml serve` on this file's Classifier; POST /classify with a multipart form, the JPEG as
the file `images` (bench/wrk.py's multipart_requests), as BentoML's clients send files. The answer: the top 5 as
[label, probability] pairs, the content of our /service's answer. $CLASSIFIER_CONF names another conf.json than the
checkout's (bentoml serve takes no flags of ours).

Laid out as BentoML's documentation shows an image classifier: a @bentoml.service class that loads its model
once, a batchable @bentoml.api taking a list of files, adaptive batching on (max_batch_size 16, as ours and the
LitServe peer batch; max_latency_ms left at its default, the bound its docs say it is), and 2 workers for the
two cores, each with one single-threaded engine, the LitServe peer's winning layout.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

import bentoml

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))  # classifier and bench.peers.engine, from this checkout (its workers too)


@bentoml.service(workers=2)
class Classifier:
    def __init__(self) -> None:
        from bench.peers.engine import single_threaded

        self.model, self.engine = single_threaded(Path(os.environ.get("CLASSIFIER_CONF", ROOT / "conf.json")))

    @bentoml.api(batchable=True, max_batch_size=16)
    def classify(self, images: list[Path]) -> list[list]:
        import numpy as np

        tensors = np.stack([self.model.preprocess(image.read_bytes()) for image in images])
        probabilities = self.model.runtime.probabilities(self.engine(tensors))
        return [self.model.postprocess(row) for row in probabilities]


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8001)
    args = parser.parse_args()
    here = Path(__file__).resolve().parent
    os.execv(sys.executable, [sys.executable, "-m", "bentoml", "serve", f"{Path(__file__).stem}:Classifier",
                              "--working-dir", str(here), "--host", args.host, "--port", str(args.port)])
