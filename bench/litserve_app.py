"""The peer: LitServe serving our model with the same engine and its own batching, for the benchmark only.

python bench/litserve_app.py --host 127.0.0.1 --port 8001 [--conf conf.json]; POST /predict with a raw JPEG body.
Its best layout on the 2-vCPU machine (of nine tried, issue 15): two worker processes, each running its batch
image by image on one single-threaded engine, max_batch_size 16, batch_timeout 5 ms.
"""
# No `from __future__ import annotations` here: LitServe (FastAPI) reads decode_request's annotation at run time.
import argparse
import sys
from pathlib import Path
from typing import Annotated

import litserve as ls
import numpy as np
from fastapi import Body

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # the workers LitServe spawns import this file anew: there too, classifier is found


class ClassifierAPI(ls.LitAPI):
    def __init__(self, conf: Path, **kwargs):
        super().__init__(**kwargs)
        self.conf = conf

    def setup(self, device):
        from bench.peers.engine import single_threaded

        self.model, self.engine = single_threaded(self.conf)

    def decode_request(self, request: Annotated[bytes, Body(media_type="application/octet-stream")]):
        return self.model.preprocess(request)

    def batch(self, inputs):
        return np.stack(inputs)

    def predict(self, batch):
        return self.model.runtime.probabilities(self.engine(batch))

    def unbatch(self, output):
        return list(output)

    def encode_response(self, probabilities):
        return {"predictions": self.model.postprocess(probabilities)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8001)
    parser.add_argument("--conf", type=Path, default=ROOT / "conf.json")
    args = parser.parse_args()
    # LitServe 0.2.19 starts its MCP server when the `mcp` package is installed (ours is, for Gradio's MCP server)
    # but imports it only when `fastmcp` is too, so it dies on a NameError; this peer offers no MCP tool anyway.
    import litserve.server

    litserve.server._MCP_AVAILABLE = False
    api = ClassifierAPI(args.conf.resolve(), max_batch_size=16, batch_timeout=0.005)
    server = ls.LitServer(api, accelerator="cpu", workers_per_device=2)
    server.run(host=args.host, port=args.port, generate_client_file=False, log_level="warning")


if __name__ == "__main__":
    main()
