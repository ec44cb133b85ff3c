"""The baseline: a minimal Gradio demo calling Keras model.predict on one image per request, on our model.

It is what many demos do (Gradio's own image_classifier demo among them). For a like-for-like comparison it
also answers POST /service with the same function. Run by `python -m bench`; not part of the product.
"""
from __future__ import annotations

import argparse
import io
import os
import sys
from pathlib import Path

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

import gradio as gr
import keras
import numpy as np
import uvicorn
from fastapi import FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from classifier.labels import read_labels  # noqa: E402

parser = argparse.ArgumentParser()
parser.add_argument("--saved-model", required=True, help="the default model as a SavedModel (bench makes it)")
parser.add_argument("--labels", required=True)
parser.add_argument("--host", default="127.0.0.1")
parser.add_argument("--port", type=int, default=7860)
args = parser.parse_args()

model = keras.Sequential([keras.Input((224, 224, 3)),
                          keras.layers.TFSMLayer(args.saved_model, call_endpoint="serving_default")])
labels = read_labels(Path(args.labels))


def predict(image: Image.Image) -> dict[str, float]:
    x = np.asarray(image.convert("RGB").resize((224, 224)), dtype=np.float32)[None] / 255.0
    probabilities = model.predict(x, verbose=0)["probabilities"][0]
    return {labels[i]: float(probabilities[i]) for i in np.argsort(-probabilities)[:5]}


app = FastAPI()


@app.post("/service")
async def service(request: Request):
    image = Image.open(io.BytesIO(await request.body()))
    result = await run_in_threadpool(predict, image)  # as a plain `def` route would: one thread per request
    return [[label, p] for label, p in result.items()]


@app.get("/healthz")
def healthz():
    return {"status": "ok"}


demo = gr.Interface(predict, gr.Image(type="pil"), gr.Label(num_top_classes=5))
app = gr.mount_gradio_app(app, demo, path="/")

if __name__ == "__main__":
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
