"""The ML backend's server process: ``uvicorn --factory serving.ml_backend_app:create_app``.

Composes :mod:`annotator.ml_backend` with the champion from the registry: without SAM a click or
a box is answered by the champion, kept current by a :class:`ModelSlot` (it polls the
registry and swaps in a newly promoted champion, as the counting server does). Lives here, not
in ``annotator/``, so that the annotator imports nothing from the trainer.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
from fastapi import FastAPI

from annotator import ml_backend
from bookcounter.settings import Settings, get_settings
from serving.metrics import ServingMetrics
from serving.model_slot import ModelSlot, Registry

CHAMPION_POLL_S = 5.0  # how often the no-SAM backend asks the registry for a new champion


def create_app(settings: Settings | None = None, registry: Registry | None = None) -> FastAPI:
    """The ML backend app; ``registry`` defaults to :mod:`trainer.registry` (MLflow).

    Without SAM the champion is loaded at startup, before the first request (Label Studio's
    ``/setup`` has a 3 s timeout), and polled every :data:`CHAMPION_POLL_S` seconds.
    """
    if settings is None:  # the server process: our log lines go to its log next to uvicorn's
        logging.basicConfig(level=logging.INFO, format="%(levelname)s:     %(name)s: %(message)s")
        settings = get_settings()
    if registry is None:
        from trainer import registry as trainer_registry

        registry = trainer_registry
    slot = ModelSlot(registry, ServingMetrics(), poll_seconds=CHAMPION_POLL_S)
    backend = ml_backend.load_backend(settings, slot.detector)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if backend.segmenter is not None:  # SAM answers everything: no champion needed
            yield
            return
        await anyio.to_thread.run_sync(slot.start)
        try:
            yield
        finally:
            await anyio.to_thread.run_sync(slot.stop)

    app = ml_backend.create_app(backend, lifespan)
    app.state.slot = slot
    return app
