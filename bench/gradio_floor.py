"""Gradio's own floor, for the benchmark: a trivial function behind the same Gradio, mounted as app.py mounts ours.

python bench/gradio_floor.py --host 127.0.0.1 --port 8002. Its /classify takes a photo as a file path (as our
page's does) and answers a fixed gr.Label: what gradio_client gets from Gradio when the model costs nothing.
"""
from __future__ import annotations

import argparse
import os

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # as app.py: no calls home (none get out here anyway)

import gradio as gr  # noqa: E402
import uvicorn  # noqa: E402
from fastapi import FastAPI  # noqa: E402

FIXED = {"Egyptian cat": 0.81, "tiger cat": 0.08, "tabby": 0.07, "lynx": 0.01, "Persian cat": 0.005}


def classify(photo: str | None) -> dict[str, float]:
    return FIXED


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8002)
    args = parser.parse_args()
    with gr.Blocks() as demo:
        photo = gr.Image(type="filepath", label="Photo")
        labels = gr.Label(num_top_classes=5)
        photo.change(classify, photo, labels, api_name="classify", concurrency_limit=16)  # as our page's
    demo.queue(max_size=256)
    app = FastAPI()
    app.get("/healthz")(lambda: {"status": "ok"})
    app = gr.mount_gradio_app(app, demo, path="/")
    uvicorn.run(app, host=args.host, port=args.port, log_level="info")


if __name__ == "__main__":
    main()
