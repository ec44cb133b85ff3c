"""Explanations served: the masked copies go through the shared batcher; POST /explain answers with JSON."""
from __future__ import annotations

import asyncio
from contextlib import contextmanager
from typing import Any, Iterator

import numpy as np
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from PIL import Image

from ..explain import Explanation, heat, hidden, hiding_masks, label_index, occludable, stand_in
from ..images import decode
from .batching import Batcher, Overloaded
from .service import error_for, json_response, read_image_body, unauthorised

# Explanations at once: each holds up to CHUNKS_IN_FLIGHT × max_batch_size copies of the photo (600 KB each at
# 224²) and 100 model inputs' worth of the engine; more wait their turn instead of crowding out /service.
EXPLANATIONS_AT_ONCE = 2
# Explanations that may wait for their turn; more get 503 before their body is read (each holds its photo, up to
# 20 MiB, while it waits: 60 waiting took 2.1 GB).
EXPLANATIONS_WAITING = 8
CHUNKS_IN_FLIGHT = 2  # two batches of copies in the batcher keep both of its model calls busy


class Explainer:
    """Explains one image for one label with the serving model, through the batcher (the copies share batches
    with every other request, and a hot swap between them is noticed)."""

    def __init__(self, batcher: Batcher):
        self.batcher = batcher
        self._turns = asyncio.Semaphore(EXPLANATIONS_AT_ONCE)
        self.admitted = 0  # requests between their admission and their answer (explaining, waiting, being read)

    @contextmanager
    def admission(self) -> Iterator[None]:
        """A place for one request, from before its body is read to its answer; Overloaded when all are taken."""
        if self.admitted >= EXPLANATIONS_AT_ONCE + EXPLANATIONS_WAITING:
            raise Overloaded(f"{self.admitted} explanations are under way or waiting, the most allowed; retry")
        self.admitted += 1
        try:
            yield
        finally:
            self.admitted -= 1

    async def explain(self, item: Any, label: str | None = None) -> Explanation:
        async with self._turns:
            tensor = await self.batcher.prepare(item)
            pixels, as_inputs = await asyncio.to_thread(occludable, tensor)
            masks = hiding_masks()
            hiding = stand_in(pixels)
            chunk = CHUNKS_IN_FLIGHT * self.batcher.conf.max_batch_size
            scores = []
            for start in range(0, len(masks), chunk):  # the photo itself goes with the first chunk
                copies = [*([tensor] if start == 0 else []), *await asyncio.to_thread(
                    lambda part: as_inputs(hidden(pixels, part, hiding)), masks[start:start + chunk])]
                scores += await asyncio.gather(*(self.batcher.classify(copy, probabilities=True, prepared=True)
                                                 for copy in copies))
        model = scores[0].model
        if any(score.model is not model for score in scores):
            raise Overloaded("the model was replaced during the explanation; send it again")
        whole, masked = scores[0].class_probabilities, np.stack([score.class_probabilities for score in scores[1:]])
        index = label_index(list(model.labels), label, whole)
        return Explanation(model.labels[index], float(whole[index]), heat(whole, masked, masks, index))


def create_router(models: Any) -> APIRouter:
    """POST /explain (the default model) and /explain/{name}. models: the repository (repository.Repository)."""
    router = APIRouter()

    async def explain_request(request: Request, name: str | None, label: str | None) -> Any:
        if refused := unauthorised(request, models.access):
            return refused
        try:
            core = await models.get(name)
            with core.explainer.admission():
                body = await read_image_body(request, core.limits.max_bytes)
                if isinstance(body, JSONResponse):
                    return body
                explanation = await core.explainer.explain(body, label)
                photo: Image.Image = await asyncio.to_thread(decode, body, core.limits)
                return json_response(await asyncio.to_thread(explanation.as_json, photo))
        except Exception as exc:
            return error_for(exc)

    @router.post("/explain")
    async def explain(request: Request, label: str | None = None) -> Any:
        """A raw image body (as /service) → {label, probability, grid, overlay_png}; ?label= picks the label
        (default: the top one)."""
        return await explain_request(request, None, label)

    @router.post("/explain/{name}")
    async def explain_by_name(request: Request, name: str, label: str | None = None) -> Any:
        """As POST /explain, on the model of that name."""
        return await explain_request(request, name, label)

    return router
