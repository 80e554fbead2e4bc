"""The HTTP API and web page: ``create_app()`` builds the FastAPI app that ``bookcounter serve`` runs.

The routes are in :mod:`serving.routes`, the middlewares in :mod:`serving.middleware`.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from fastapi.staticfiles import StaticFiles

from bookcounter.settings import Settings, get_settings
from serving import routes
from serving.metrics import ServingMetrics
from serving.middleware import ApiKeyGate, BodyLimit, InFlightLimit, RequestMetrics, TooLarge
from serving.model_slot import ModelSlot, Registry

log = logging.getLogger(__name__)

MULTIPART_OVERHEAD = 64 * 1024  # bytes a multipart body may carry beyond the photo itself


def create_app(settings: Settings | None = None, registry: Registry | None = None) -> FastAPI:
    """The serving app; ``registry`` defaults to :mod:`trainer.registry` (MLflow)."""
    settings = settings or get_settings()
    if registry is None:
        from trainer import registry as trainer_registry

        registry = trainer_registry
    metrics = ServingMetrics()
    slot = ModelSlot(registry, metrics, poll_seconds=settings.reload_poll_seconds)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await anyio.to_thread.run_sync(slot.start)
        try:
            yield
        finally:
            await anyio.to_thread.run_sync(slot.stop)

    app = FastAPI(
        title="bookcounter",
        summary="Count the books in a photo with the champion Mask R-CNN.",
        lifespan=lifespan,
    )
    app.state.slot, app.state.metrics, app.state.settings = slot, metrics, settings
    # outermost last: metrics see every answer; a refused key or an over-limit Content-Length takes no slot
    app.add_middleware(InFlightLimit, limit=settings.max_in_flight, metrics=metrics)
    max_body = routes.upload_limit(settings.max_upload_mb) + MULTIPART_OVERHEAD
    app.add_middleware(BodyLimit, max_bytes=max_body, message=routes.too_large_message(settings.max_upload_mb))
    api_key = settings.api_key.get_secret_value() if settings.api_key else ""
    if api_key:
        app.add_middleware(ApiKeyGate, key=api_key)
    paths = frozenset(route.path for router in routes.ROUTERS for route in router.routes)
    app.add_middleware(RequestMetrics, metrics=metrics, paths=paths)
    app.add_exception_handler(TooLarge, _too_large)
    app.add_exception_handler(Exception, _unexpected)
    for router in routes.ROUTERS:
        app.include_router(router)
    app.mount("/static", StaticFiles(directory=routes.STATIC_DIR), name="static")
    return app


async def _too_large(request: Request, exc: Exception) -> JSONResponse:
    return JSONResponse({"detail": str(exc)}, status_code=413)


async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    log.exception("unexpected error answering %s %s", request.method, request.url.path)
    return JSONResponse({"detail": f"internal error ({type(exc).__name__}); see the server log"}, status_code=500)
