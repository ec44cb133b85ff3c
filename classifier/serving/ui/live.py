"""The live camera: the webcam's frames classified as they come, through the batcher, one stream per visitor."""
from __future__ import annotations

import time
from typing import Any, Awaitable, Callable

import gradio as gr

from .. import metrics
from ..batching import Overloaded
from .picker import PageModels, picked
from .uploads import Photo, photo_bytes

FRAME_SECONDS = 0.25  # the page sends a frame every quarter second: four a second at most, per visitor
STREAM_SECONDS = 300  # a stream stops after five minutes; the visitor starts it again
IDLE_SECONDS = 3.0  # a stream that sent no frame for this long no longer holds its visitor's place
# The rear camera on a phone (a laptop has only the one it has), unmirrored: what it sees, as it is.
CAMERA = gr.WebcamOptions(mirror=False, constraints={"video": {"facingMode": {"ideal": "environment"}}})
FRAMES = metrics.LIVE_FRAMES


class LiveStreams:
    """Which of a visitor's sessions holds their one live stream: a second one (another tab) gets no answers until
    the first has sent nothing for IDLE_SECONDS. At most one entry per visitor; idle ones are dropped."""

    def __init__(self) -> None:
        self._holders: dict[str, tuple[str, float]] = {}

    def admit(self, visitor: str, session: str, now: float | None = None) -> bool:
        now = time.monotonic() if now is None else now
        self._holders = {v: held for v, held in self._holders.items() if now - held[1] < IDLE_SECONDS}
        holder = self._holders.get(visitor)
        if holder and holder[0] != session:
            return False
        self._holders[visitor] = (session, now)
        return True


def batched(models: PageModels) -> Callable[[bytes | str, str | None], Awaitable[list | None]]:
    """The picked model's answer for a frame, through its batcher; None (dropped) when that model is busy."""
    async def classify(frame: bytes | str, model_name: str | None = None) -> list | None:
        batcher = (await picked(models, model_name)).batcher
        # A frame waits for nothing: with a full batch already waiting it would answer late, so it is dropped, and
        # the next one, a quarter second newer, tries again.
        if batcher.pending >= batcher.conf.max_batch_size:
            return None
        try:
            return await batcher.classify(await photo_bytes(frame, batcher.model))
        except Overloaded:
            return None
    return classify


def live_camera(classify: Callable[..., Awaitable[list | None]], top_k: int, title: str, elem_id: str,
                extra_input: Any = None) -> None:
    """A camera and its top labels updated in place: each frame (and extra_input's value, if given) goes to
    classify, which gives its [label, p] pairs, or None when the frame is dropped."""
    streams = LiveStreams()

    async def classify_frame(frame: bytes | str | None, request: gr.Request, extra: Any = None) -> Any:
        if frame is None:
            return gr.skip()
        visitor = request.client.host if request and request.client else "unknown"
        if not streams.admit(visitor, getattr(request, "session_hash", None) or "unknown"):
            FRAMES.labels("refused").inc()
            return gr.skip()
        try:
            pairs = await (classify(frame, extra) if extra_input is not None else classify(frame))
        except Exception as exc:  # the same clear message /service sends
            raise gr.Error(str(exc)) from None
        if pairs is None:
            FRAMES.labels("dropped").inc()
            return gr.skip()
        FRAMES.labels("classified").inc()
        return {label: probability for label, probability in pairs}

    with gr.Accordion(title, open=False):
        with gr.Row():
            # Photo, not gr.Image: a frame comes as the JPEG the page sent, checked as any upload (a payload naming a
            # server file is refused), and decoded within the model's limits like every photo.
            camera = Photo(sources=["webcam"], streaming=True, type="filepath", label="Camera", webcam_options=CAMERA,
                           elem_id=f"{elem_id}-camera")
            labels = gr.Label(num_top_classes=top_k, label="Live: top labels", elem_id=f"{elem_id}-labels")
    # No concurrency limit: a frame never waits in Gradio's queue; classify answers it or drops it at once. (The
    # trigger modes "once" and "always_last" let the page send one frame only, measured in Chromium.)
    inputs = [camera] if extra_input is None else [camera, extra_input]
    camera.stream(classify_frame, inputs, labels, stream_every=FRAME_SECONDS, time_limit=STREAM_SECONDS,
                  concurrency_limit=None, show_progress="hidden", api_visibility="private")
